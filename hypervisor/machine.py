"""The machine: domains, their memory, events, grants and timers.

This is the hypervisor's state and the lifecycle of domains. The loop's
channels (hypercalls in, upcalls out, the answer to a deferred hypercall) go
through the `Transport` the loop provides. The lifecycle is I/O done here:
building a domain makes its memory channel (a socketpair) and spawns its
process (hypervisor/process.py, with its jail and cgroup); the memory
channel then carries file descriptors to it (grant windows, send_fds);
scheduling pins and renices its threads (sched_setaffinity, credit2.py);
destroying it kills and reaps the process. Tests that want none of that
override `_spawn` (tests/hvfakes.py, tests/inproc.py).
"""

from __future__ import annotations

import os
import resource
import socket
import time
from collections import deque
from pathlib import Path
from typing import Any, Protocol

from hypervisor import devfds
from hypervisor.connections import FdBudget, cap_for
from hypervisor.credit2 import (
    DEFAULT_WEIGHT,
    MAX_WEIGHT,
    MIN_WEIGHT,
    each_thread,
    renice_threads,
    weight_to_nice,
)
from hypervisor.domain import SHARED_INFO_PAGES, Domain
from hypervisor.doorbell import DoorbellBroker
from hypervisor.event_channel import Delivery, EventChannels
from hypervisor.grant_table import GrantDomain, Grants, GrantTable
from hypervisor.jail.cgroups import weight_to_shares
from hypervisor.jail.sandbox import Sandbox
from hypervisor.memchan import MemChannel
from hypervisor.memory import PAGES_PER_MIB, Physmap, PlatformMemory, Region
from hypervisor.process import DomainProcess, StandbyPool
from hypervisor.public.errno import (
    EBUSY,
    EINVAL,
    EIO,
    ENOMEM,
    ENOSPC,
    ESRCH,
    ETIMEDOUT,
    XenError,
)
from hypervisor.public.grant_table import GNTST_eagain, GNTST_general_error
from hypervisor.public.pyxen.platform import Platform
from hypervisor.public.sched import SHUTDOWN_NAMES, SHUTDOWN_crash, SHUTDOWN_watchdog
from hypervisor.public.xen import VIRQ_DOM_EXC, VIRQ_TIMER
from hypervisor.tasks import thread_ids
from hypervisor.timers import Timers
from hypervisor.xenlog import TokenBucket, printable

NR_WATCHDOGS = 2  # Xen's NR_DOMAIN_WATCHDOG_TIMERS
# A kernel that has not reported ready this long after its process started
# is destroyed and its creator told ETIMEDOUT (createdomain's boot_timeout).
# Generous: a machine booting a hundred guests on two cores is slow, not hung.
DEFAULT_BOOT_TIMEOUT = 30.0
# Grant windows a domain may hold: at most this many (each is a memfd the
# hypervisor keeps open), and at most max(this, its RAM) of memory unless its
# creator says otherwise (createdomain's max_window_kb).
MAX_WINDOWS = 128
MIN_WINDOW_MIB = 64
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


class Transport(Protocol):
    def endpoints(self, domid: int) -> dict[str, str]: ...
    def attach(self, dom: Domain) -> None: ...
    def detach(self, dom: Domain) -> None: ...
    def upcall(self, domid: int, port: int) -> None: ...
    def reply(self, token: Any, rc: int, result: Any) -> None: ...


class Machine:
    def __init__(self, platform: Platform, run_dir: Path, transport: Transport,
                 logger: Any = None, log_json: bool = False, standby: bool = False,
                 sandbox: Sandbox | None = None, fd_limit: int | None = None,
                 boot_module: str | None = None) -> None:
        """`boot_module`: what every domain process runs (`python -m`), as
        the loader names it; without one no domain process can be spawned
        (tests that override `_spawn` need none)."""
        self.platform = platform
        self.run_dir = run_dir
        self.transport = transport
        self.logger = logger
        self.log_json = log_json
        self.memory = PlatformMemory(platform.memory)
        self.evtchn = EventChannels()
        self.grants = Grants(lookup=self._grant_lookup, log=self._grant_log)
        self.doorbells = DoorbellBroker(self._memchan_of)
        self.domains: dict[int, Domain] = {}
        self.next_domid = 1
        self.next_window = 1
        # Keys: ("virq", domid, vcpu), ("wd", domid, id), ("boot", domid, seconds).
        self.timers = Timers()
        self.console: deque[str] = deque(maxlen=2000)
        self.log_limits: dict[tuple[int, str], TokenBucket] = {}
        self.boot_time = time.time()
        self.halted = False
        self.sandbox = sandbox
        self.boot_module = boot_module
        self.standby = StandbyPool(standby and boot_module is not None, boot_module or "",
                                   sandbox)
        # What every domain may cost us in fds must fit our limit.
        if fd_limit is None:
            fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.fds = FdBudget(fd_limit)

    # -- logging ------------------------------------------------------------

    def log(self, message: str) -> None:
        """The hypervisor's own line on its console (what `pyxen dmesg`
        shows) and in its log file."""
        self._emit("(XEN)", printable(message))

    def log_about(self, dom: Domain, message: str) -> None:
        """A line a domain's own doing made the hypervisor write (a refused
        grant, a bad hypercall): rate-limited per domain, as Xen's gdprintk."""
        if self._admit(dom, "xen"):
            self.log(message)

    def guest_write(self, dom: Domain, text: str) -> None:
        """CONSOLEIO_write: the domain's lines, each prefixed "(dN)", stripped
        of control characters and rate-limited per domain (xenlog)."""
        for line in text.split("\n"):
            line = printable(line).rstrip()
            if line and self._admit(dom, "guest"):
                self._emit(f"(d{dom.domid})", line)

    def _admit(self, dom: Domain, kind: str) -> bool:
        if dom.privileged:
            return True  # Dom0 is trusted, and its console unthrottled, as in Xen
        bucket = self.log_limits.setdefault((dom.domid, kind), TokenBucket())
        admitted, lost = bucket.admit(time.monotonic_ns() // 1_000_000)
        if lost:
            what = "console lines" if kind == "guest" else "messages about it"
            self.log(f"d{dom.domid}: {lost} {what} suppressed")
        return admitted

    def _emit(self, prefix: str, text: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self.console.append(f"{prefix} [{stamp}] {text}")
        if self.logger is not None:
            try:
                self.logger.info(text if prefix == "(XEN)" else f"{prefix} {text}")
            except OSError:
                pass  # a full disk loses log lines, not the machine

    # -- lookups ------------------------------------------------------------

    def domain(self, domid: int) -> Domain:
        dom = self.domains.get(domid)
        if dom is None:
            raise XenError(ESRCH, f"no domain {domid}")
        return dom

    def _memchan_of(self, domid: int) -> MemChannel | None:
        dom = self.domains.get(domid)
        return dom.memchan if dom is not None and not dom.dying else None

    def _grant_lookup(self, domid: int) -> GrantDomain | None:
        dom = self.domains.get(domid)
        return dom.grant_domain if dom is not None and not dom.dying else None

    def _grant_log(self, domid: int, message: str) -> None:
        dom = self.domains.get(domid)
        if dom is not None:
            self.log_about(dom, message)

    # -- creation -----------------------------------------------------------

    def create_domain(self, config: dict, domid: int | None = None,
                      privileged: bool = False) -> Domain:
        """Allocate a domain and start its kernel; it reports ready later.

        On any failure nothing stays allocated.
        """
        name = str(config["name"])
        vcpus = int(config.get("max_vcpus", 1))
        # Only the loader passes a weight here (Dom0's); the toolstack sets
        # other domains' with XEN_DOMCTL_scheduler_op once they are built.
        weight = int(config.get("weight") or DEFAULT_WEIGHT)
        self._check_weight(weight)
        nr_pages = int(config["max_memkb"]) * 1024 // os.sysconf("SC_PAGE_SIZE")
        if not 1 <= vcpus <= 128:
            raise XenError(EINVAL, f"{name}: max_vcpus {vcpus} out of range")
        if nr_pages < 1:
            raise XenError(EINVAL, f"{name}: no memory")
        cpus = config.get("cpus")
        if cpus is not None and (not cpus or any(
                not 0 <= c < self.platform.pcpus for c in cpus)):
            raise XenError(EINVAL, f"{name}: bad CPU set {list(cpus)} "
                           f"(platform has {self.platform.pcpus} pCPUs)")
        max_window_kb = config.get("max_window_kb")
        if max_window_kb is None:
            max_window_kb = max(MIN_WINDOW_MIB * 1024, int(config["max_memkb"]))
        max_window_pages = max_window_kb * 1024 // os.sysconf("SC_PAGE_SIZE")
        if any(d.name == name and not d.dying for d in self.domains.values()):
            raise XenError(EINVAL, f"a domain named {name} already exists")
        fd_cost = self.fds.domain_cost(cap_for(vcpus, privileged))
        self.fds.commit(fd_cost, f"{name} (its hypercall connections and memory)")
        if domid is None:
            domid = self.next_domid
            self.next_domid += 1
        allocated = []
        try:
            ram = self.memory.allocate(f"pyxen-{name}-ram", nr_pages, f"{name}'s RAM")
            allocated.append(ram)
            shinfo = self.memory.allocate(f"pyxen-{name}-shinfo", SHARED_INFO_PAGES,
                                          f"{name}'s shared info")
            allocated.append(shinfo)
            gnttab = GrantTable(self.memory, domid, name)
        except XenError as exc:
            for seg in allocated:
                self.memory.free(seg)
            self.fds.release(fd_cost)
            self.log(f"d{domid} {name}: creation failed: {exc}")
            raise
        physmap = Physmap()
        physmap.add(Region(0, ram))
        dom = Domain(domid=domid, name=name, privileged=privileged, max_vcpus=vcpus,
                     max_pages=nr_pages, ram=ram, shared_info=shinfo, gnttab=gnttab,
                     physmap=physmap, weight=weight, max_window_pages=max_window_pages,
                     fd_cost=fd_cost)
        for vcpu in range(vcpus):
            dom.affinity[vcpu] = tuple(cpus) if cpus is not None else None
        self.domains[domid] = dom
        self.evtchn.add_domain(domid)
        try:
            self._spawn(dom, config)
        except OSError as exc:
            self._release(dom)
            raise XenError(EIO, f"{name}: cannot start its process: {exc}") from exc
        self.log(f"d{domid} {name}: created, {nr_pages // PAGES_PER_MIB} MiB, "
                 f"{vcpus} vCPU(s), pid {dom.process.pid}")
        return dom

    def _spawn(self, dom: Domain, config: dict) -> None:
        hv_end, dom_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        dom.memchan = MemChannel(hv_end)
        fds = {
            "ram": dom.ram.fd,
            "shared_info": dom.shared_info.fd,
            "gnttab": dom.gnttab.entries.fd,
            "gntstatus": dom.gnttab.status.fd,
            "memchan": dom_end.fileno(),
        }
        # Only the loader hands Dom0 extra fds (its boot-progress pipe).
        extra = [int(fd) for fd in config.get("extra_fds", ())]
        if extra:
            fds["extra"] = extra
        start_info = {
            "domid": dom.domid,
            "name": dom.name,
            "privileged": dom.privileged,
            "nr_pages": dom.ram.nr_pages,
            "max_vcpus": dom.max_vcpus,
            "gnttab_frames": dom.gnttab.max_frames,
            "kernel": config["kernel"],
            "cmdline": config.get("cmdline", ""),
            "run_dir": str(self.run_dir),
            "log_json": self.log_json,
            "hv_pid": os.getpid(),
            # At most this many hypercalls in flight (connections) at once.
            "hypercall_channels": cap_for(dom.max_vcpus, dom.privileged),
            "fds": fds,
            **self.transport.endpoints(dom.domid),
        }
        log_dir = self.run_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{dom.name}.log"
        try:  # an earlier instance's lines are not this one's
            dom.log_start = log_path.stat().st_size
        except OSError:
            dom.log_start = 0
        box = self.sandbox
        try:
            if box is not None and box.jails and not dom.privileged and not extra:
                self._spawn_jailed(dom, config, start_info, fds, log_path)
            else:
                self._spawn_plain(dom, config, start_info, fds, log_path, bool(extra))
        finally:
            dom_end.close()
        for fd in (dom.ram.fd, dom.shared_info.fd, dom.gnttab.entries.fd,
                   dom.gnttab.status.fd):
            os.set_inheritable(fd, False)

    def _spawn_plain(self, dom: Domain, config: dict, start_info: dict, fds: dict,
                     log_path: Path, cold: bool) -> None:
        """Dom0 (trusted, as in Xen: no namespaces), and every domain when
        the sandbox is off or this host has no namespaces for it. What
        layers there are still apply: its cgroup, and the process itself
        sets no_new_privs, non-dumpable and its role's seccomp filter."""
        box = self.sandbox
        if box is not None and box.enabled:
            start_info["sandbox"] = {
                "role": self._role(dom, config),
                "seccomp": box.seccomp, "learn": box.learn}
        spare = None if cold else self.standby.take()
        if spare is not None:
            try:
                spare.assign(start_info, fds, log_path)
                dom.process = spare
            except OSError:  # it died just now: start cold
                self.standby.discard(spare)
                spare = None
        if spare is None:
            pass_fds = [fd for v in fds.values()
                        for fd in (v if isinstance(v, list) else [v])]
            env = box.environment() if box is not None else None
            dom.process = DomainProcess(self._boot_module(), start_info, pass_fds,
                                        log_path, env)
        if box is not None and box.enabled:
            box.note_role(dom.process.pid, start_info["sandbox"]["role"])
            try:
                dom.process.jail = box.place_unjailed(
                    dom.process.pid, dom.ram.nr_pages * PAGE_BYTES, dom.max_vcpus,
                    limited=not dom.privileged)
            except OSError as exc:
                self.log(f"d{dom.domid} {dom.name}: no cgroup: {exc}")
        self.transport.attach(dom)

    def _spawn_jailed(self, dom: Domain, config: dict, start_info: dict, fds: dict,
                      log_path: Path) -> None:
        """A driver domain or guest: the standby process (or a new one, for
        a cold start: the same way, assigned at once) gets the domain and
        its jail (see hypervisor/process.py)."""
        box = self.sandbox
        assert box is not None
        proc = self.standby.take()
        if proc is not None:
            try:
                proc.wait_unshared()
            except OSError:  # it died waiting: start cold
                self.standby.discard(proc)
                proc = None
        if proc is None:
            proc = DomainProcess.on_standby(self._boot_module(), box)
        try:
            proc.wait_unshared()
            config = {**config, "sandbox": {**(config.get("sandbox") or {}),
                                            "role": self._role(dom, config)}}
            try:
                jail, jail_fds = box.assign(proc.jail, proc.pid, dom.domid, config,
                                            dom.ram.nr_pages * PAGE_BYTES, dom.max_vcpus)
            except ValueError as exc:  # a domid without a sandbox uid
                raise OSError(22, str(exc)) from exc
            while box.warnings:
                self.log(f"d{dom.domid} {dom.name}: sandbox: {box.warnings.pop(0)}")
            dom.process = proc
            self.transport.attach(dom)  # its channels exist before it looks
            try:
                proc.assign(start_info, fds, log_path, jail, jail_fds)
            finally:
                for fd in jail_fds:
                    os.close(fd)
        except OSError:
            if dom.process is proc:
                self.transport.detach(dom)
                dom.process = None
            self.standby.discard(proc)
            raise

    def _boot_module(self) -> str:
        if self.boot_module is None:
            raise OSError(8, "the loader named no module for domain processes "
                             "(--domain-boot)")  # ENOEXEC
        return self.boot_module

    @staticmethod
    def _role(dom: Domain, config: dict) -> str:
        if dom.privileged:
            return "dom0"
        role = (config.get("sandbox") or {}).get("role")
        return "driver" if role == "driver" else "guest"

    def domain_ready(self, dom: Domain, vcpu_tids: list[int], announce: Any = None) -> None:
        """The kernel booted. `announce` is opaque to the hypervisor: what the
        kernel tells its creator (e.g. its xenstore ring), passed through.

        `vcpu_tids` are the kernel's vCPU threads as it sees them (in its own
        pid namespace, if it has one); each must be a thread of the domain's
        own process, and is kept as the hypervisor sees it: those are the
        threads it pins and renices."""
        if dom.ready:
            raise XenError(EINVAL, f"d{dom.domid} already reported ready")
        if len(vcpu_tids) != dom.max_vcpus:
            raise XenError(EINVAL, f"d{dom.domid} reported {len(vcpu_tids)} vCPUs, "
                           f"has {dom.max_vcpus}")
        if len(set(vcpu_tids)) != len(vcpu_tids):
            raise XenError(EINVAL, f"d{dom.domid} reported a thread twice")
        own = thread_ids(dom.process.pid) if dom.process is not None else {}
        strangers = [t for t in vcpu_tids if t not in own]
        if strangers:
            raise XenError(EINVAL, f"d{dom.domid} reported threads {strangers[:4]} "
                           "that are not its own")
        dom.vcpu_tids = [own[t] for t in vcpu_tids]
        for vcpu, cpus in dom.affinity.items():
            self.set_vcpu_affinity(dom, vcpu, cpus)
        # Its process may be a standby started long before it was this
        # domain's, at the hypervisor's nice: give its threads the domain's.
        self._apply_weight(dom)
        dom.ready = True
        self.timers.cancel_where(k for k in self.timers.live
                                 if k[0] == "boot" and k[1] == dom.domid)
        self.log(f"d{dom.domid} {dom.name}: kernel ready")
        # The next domain starts warm too; started only now, so that a new
        # Python does not compete for the CPU with the one that is booting
        # (a driver domain's restart is what the standby is for).
        self.standby.refill()
        if dom.pending_create is not None:
            token, dom.pending_create = dom.pending_create, None
            self.transport.reply(token, 0, {"domid": dom.domid, "announce": announce})

    def arm_boot_deadline(self, dom: Domain, seconds: float | None = None) -> None:
        """Destroy `dom` unless it reports ready within `seconds` of now (its
        process was just started): its creator then gets ETIMEDOUT."""
        seconds = DEFAULT_BOOT_TIMEOUT if seconds is None else seconds
        self.timers.set(("boot", dom.domid, seconds),
                        time.monotonic_ns() + int(seconds * 1_000_000_000))

    def _boot_expired(self, domid: int, seconds: float) -> None:
        dom = self.domains.get(domid)
        if dom is None or dom.ready or dom.dying:
            return
        self.log(f"d{domid} {dom.name}: did not report ready within {seconds:g} s: "
                 "destroyed")
        token, dom.pending_create = dom.pending_create, None
        if dom.process is not None and dom.process.alive:
            dom.process.kill()
        self._release(dom)
        if token is not None:
            tail = self.log_tail(dom)
            self.transport.reply(token, -ETIMEDOUT, f"{dom.name} did not boot within "
                                 f"{seconds:g} s{': ' + tail if tail else ''}")

    # -- vCPUs --------------------------------------------------------------

    def host_cpus(self, cpus: tuple[int, ...] | None) -> set[int]:
        """Map platform pCPUs onto the host's CPUs (wrapping if it has fewer)."""
        host = sorted(os.sched_getaffinity(0))
        wanted = range(self.platform.pcpus) if cpus is None else cpus
        return {host[c % len(host)] for c in wanted}

    def set_vcpu_affinity(self, dom: Domain, vcpu: int,
                          cpus: tuple[int, ...] | None) -> None:
        if not 0 <= vcpu < dom.max_vcpus:
            raise XenError(EINVAL, f"d{dom.domid} has no vCPU {vcpu}")
        if cpus is not None and (not cpus or any(
                not 0 <= c < self.platform.pcpus for c in cpus)):
            raise XenError(EINVAL, f"bad CPU set {list(cpus)} "
                           f"(platform has {self.platform.pcpus} pCPUs)")
        dom.affinity[vcpu] = tuple(cpus) if cpus is not None else None
        if not dom.vcpu_tids or dom.process is None or not dom.process.alive:
            return
        host = self.host_cpus(cpus)
        try:
            if vcpu == 0:
                # Xen delivers event channels to vCPU 0 (unless
                # EVTCHNOP_bind_vcpu says otherwise): the kernel's threads
                # that run its event handlers, and its other service
                # threads, are vCPU 0's work.
                each_thread(dom.process.pid, lambda tid: os.sched_setaffinity(tid, host),
                            skip=frozenset(dom.vcpu_tids[1:]))
            else:
                os.sched_setaffinity(dom.vcpu_tids[vcpu], host)
        except ProcessLookupError:
            pass  # the domain is gone: process_exited deals with that
        except OSError as exc:
            # Recorded (getvcpuaffinity reports it); the host said no.
            self.log(f"d{dom.domid} {dom.name}: vCPU {vcpu} affinity {sorted(host)} "
                     f"recorded, but the host refused it: {exc.strerror}")

    # -- scheduling weight (credit2) ------------------------------------------

    @staticmethod
    def _check_weight(weight: int) -> None:
        if not MIN_WEIGHT <= weight <= MAX_WEIGHT:
            raise XenError(EINVAL, f"credit2 weight {weight} is not between "
                           f"{MIN_WEIGHT} and {MAX_WEIGHT}")

    def set_sched(self, dom: Domain, weight: int, cap: int) -> None:
        """credit2's putinfo: record the weight (0: unchanged) and the cap
        (percent of one pCPU, 0: none) and apply them: the domain's cgroup's
        CPU share and quota (hypervisor/jail/cgroups.py), or, where there is
        no cpu cgroup, the weight as its threads' nice value and no cap."""
        if weight:
            self._check_weight(weight)
        if not 0 <= cap <= 100 * dom.max_vcpus:
            raise XenError(EINVAL, f"cap {cap} is not between 0 (none) and "
                           f"{100 * dom.max_vcpus} (all of its {dom.max_vcpus} vCPUs)")
        if cap and self._cpu_cgroup(dom) is None and dom.process is not None:
            # Refused rather than recorded: a cap nobody enforces would be a lie.
            raise XenError(EINVAL, f"cap {cap}: d{dom.domid} has no cpu cgroup to cap it "
                           f"with ({self._no_cpu_cgroup_why()})")
        old = (dom.weight, dom.cap)
        dom.weight, dom.cap = weight or dom.weight, cap
        if (dom.weight, dom.cap) != old and self._apply_weight(dom):
            group = self._cpu_cgroup(dom)
            how = (f"cgroup cpu share {weight_to_shares(dom.weight)}/1024"
                   + (f", quota {cap}% of a pCPU" if cap else ", no cap")
                   if group is not None else
                   f"its threads run at nice {weight_to_nice(dom.weight)}")
            self.log(f"d{dom.domid} {dom.name}: credit2 weight {dom.weight} cap {dom.cap}: "
                     f"{how}")

    def set_weight(self, dom: Domain, weight: int) -> None:
        self.set_sched(dom, weight, dom.cap)

    @staticmethod
    def _cpu_cgroup(dom: Domain):
        jail = getattr(dom.process, "jail", None)
        group = jail.cgroup if jail is not None else None
        return group if group is not None and "cpu" in group.paths else None

    def _no_cpu_cgroup_why(self) -> str:
        box = self.sandbox
        if box is None:
            return "no sandbox"
        return box.layers["cgroup-cpu"].why or "the sandbox is off"

    def _apply_weight(self, dom: Domain) -> bool:
        """Apply the weight and cap to the domain's cgroup; without one,
        renice every thread of its process (threads it starts later inherit
        the value from their creator). False if it was not applied: no
        process, or the host refused (said on the console)."""
        proc = dom.process
        if proc is None or not proc.alive:
            return False
        group = self._cpu_cgroup(dom)
        if group is not None:
            try:
                group.set_weight(dom.weight)
                group.set_cap(dom.cap)
            except OSError as exc:
                self.log(f"d{dom.domid} {dom.name}: credit2 weight {dom.weight} recorded, "
                         f"but its cgroup refused it: {exc}")
                return False
            return True
        nice = weight_to_nice(dom.weight)
        try:
            renice_threads(proc.pid, nice)
        except ProcessLookupError:
            return False  # it died: process_exited deals with that
        except PermissionError:
            # The weight stays recorded (getinfo reports it); the threads
            # keep the nice value they had.
            self.log(f"d{dom.domid} {dom.name}: credit2 weight {dom.weight} recorded, "
                     f"but the host did not allow nice {nice} for its threads "
                     "(a lower nice needs root or CAP_SYS_NICE)")
            return False
        return True

    # -- lifecycle ----------------------------------------------------------

    def pause(self, dom: Domain) -> None:
        if dom.process is None or not dom.process.alive:
            raise XenError(EINVAL, f"d{dom.domid} is not running")
        dom.process.signal(19)  # SIGSTOP: the process really stops
        dom.paused = True

    def unpause(self, dom: Domain) -> None:
        if dom.process is not None:
            dom.process.signal(18)  # SIGCONT
        dom.paused = False

    def shutdown(self, dom: Domain, code: int, remote: bool = False) -> None:
        """Mark a domain shut down with `code` and tell Dom0."""
        if dom.shutdown_code is not None:
            return
        dom.shutdown_code = code
        reason = SHUTDOWN_NAMES.get(code, str(code))
        self.log(f"d{dom.domid} {dom.name}: shutdown ({reason})"
                 f"{' requested by the toolstack' if remote else ''}")
        if remote and dom.process is not None:
            # A remote shutdown deschedules the domain for good; its state
            # stays until the toolstack destroys it.
            dom.process.kill()
            self._release_runtime(dom)
        if dom.domid == 0:
            self.halt(f"Domain 0 shut down ({reason}): halting the machine")
            return
        self.send_global_virq(VIRQ_DOM_EXC)

    def process_exited(self, dom: Domain) -> None:
        """The domain's process ended: a crash unless it shut down first."""
        status = dom.process.reap()
        if status is None:
            return
        self.transport.detach(dom)
        if not dom.ready:
            self.log(f"d{dom.domid} {dom.name}: died during boot (exit status {status})")
            token, dom.pending_create = dom.pending_create, None
            self._release(dom)
            if token is not None:
                tail = self.log_tail(dom)
                self.transport.reply(token, -EIO, f"{dom.name} failed to boot "
                                     f"(exit status {status}){': ' + tail if tail else ''}")
            if dom.domid == 0:
                self.halt("Domain 0 failed to boot: halting the machine")
            return
        self._release_runtime(dom)
        if dom.shutdown_code is None:
            self.log(f"d{dom.domid} {dom.name}: crashed (exit status {status})")
            if dom.domid == 0:
                self.halt("Domain 0 crashed: halting the machine")
                return
            dom.shutdown_code = SHUTDOWN_crash
            self.send_global_virq(VIRQ_DOM_EXC)

    def log_tail(self, dom: Domain) -> str:
        """The last line this instance of the domain logged (a restarted
        domain appends to its predecessor's log: never quote that one)."""
        try:
            with open(self.run_dir / "logs" / f"{dom.name}.log", "rb") as f:
                f.seek(dom.log_start)
                lines = f.read()[-65536:].decode(errors="replace").splitlines()
        except OSError:
            return ""
        return lines[-1].strip()[:300] if lines else ""

    def _release_runtime(self, dom: Domain) -> None:
        """Drop what only a live domain needs: its maps and its timers."""
        self.grants.release_mapper(dom.gnttab)
        # its timers, watchdogs and boot deadline
        self.timers.cancel_where(k for k in self.timers.live if k[1] == dom.domid)

    def destroy(self, dom: Domain) -> None:
        dom.dying = True
        if dom.process is not None and dom.process.alive:
            dom.process.kill()
        self.log(f"d{dom.domid} {dom.name}: destroyed")
        # Destroyed while it booted: its creator is still waiting for an answer.
        token, dom.pending_create = dom.pending_create, None
        self._release(dom)
        if token is not None:
            self.transport.reply(token, -ESRCH, f"{dom.name} was destroyed while booting")
        if dom.domid != 0:
            self.send_global_virq(VIRQ_DOM_EXC)

    def _release(self, dom: Domain) -> None:
        dom.dying = True
        self.transport.detach(dom)
        self._release_runtime(dom)
        self.evtchn.remove_domain(dom.domid)
        self.doorbells.forget(dom.domid)
        if dom.process is not None:
            dom.process.close()
            if self.sandbox is not None and not dom.process.alive:
                self.sandbox.release(dom.process.jail)
                dom.process.jail = None
        if dom.memchan is not None:
            dom.memchan.close()
        self.fds.release(dom.fd_cost + len(dom.windows))
        dom.fd_cost = 0
        dom.free(self.memory)
        self.domains.pop(dom.domid, None)
        for kind in ("xen", "guest"):
            self.log_limits.pop((dom.domid, kind), None)

    def halt(self, reason: str) -> None:
        if self.halted:
            return
        self.log(reason)
        self.halted = True
        self.standby.close()
        for dom in sorted(self.domains.values(), key=lambda d: d.domid, reverse=True):
            if dom.process is not None and dom.process.alive:
                dom.process.kill()
            self._release(dom)

    # -- events -------------------------------------------------------------

    def deliver(self, delivery: Delivery | None) -> None:
        if delivery is None:
            return
        dom = self.domains.get(delivery.domid)
        if dom is None or dom.dying:
            return
        if dom.bitmap.set_pending(delivery.port):
            self.transport.upcall(dom.domid, delivery.port)

    def send_virq(self, domid: int, virq: int, vcpu: int = 0) -> None:
        self.deliver(self.evtchn.virq_port(domid, virq, vcpu))

    def send_global_virq(self, virq: int) -> None:
        # Global VIRQs go to the hardware domain, Dom0.
        self.send_virq(0, virq)

    # -- grant windows --------------------------------------------------------

    def add_window(self, dom: Domain, peer: int, nr_frames: int) -> Region:
        """A grant window is charged to the domain that opens it, as Xen
        charges grant frames and maptrack to their domain: at most
        MAX_WINDOWS of them, and `dom.max_window_pages` pages in all (ENOMEM
        past it, for this domain only), then to the platform's memory."""
        self.domain(peer)
        if not 1 <= nr_frames <= 4096:
            raise XenError(EINVAL, f"grant window of {nr_frames} frames")
        if len(dom.windows) >= MAX_WINDOWS:
            raise XenError(ENOSPC, f"d{dom.domid} already has {MAX_WINDOWS} grant windows")
        if dom.window_pages + nr_frames > dom.max_window_pages:
            raise XenError(ENOMEM, f"d{dom.domid}: a window of {nr_frames} pages would "
                           f"take its windows past {dom.max_window_pages} pages "
                           f"({dom.window_pages} in use)")
        self.fds.commit(1, f"d{dom.domid}'s grant window")
        window_id = self.next_window
        try:
            segment = self.memory.allocate(f"pyxen-{dom.name}-window{window_id}", nr_frames,
                                          f"{dom.name}'s grant window")
        except XenError:
            self.fds.release(1)
            raise
        self.next_window += 1
        region = Region(dom.physmap.next_free_gfn(), segment, peer=peer,
                        window_id=window_id)
        dom.physmap.add(region)
        dom.windows[window_id] = region
        self.log_about(dom, f"d{dom.domid}: grant window {window_id} for d{peer}, "
                       f"{nr_frames} frames at gfn {region.gfn:#x}")
        return region

    def close_window(self, dom: Domain, window_id: int) -> None:
        """Give one of `dom`'s windows back (a frontend whose backend came
        back under a new domid: a window has exactly one peer, so the next
        connection gets a new one). EBUSY while anything in it is mapped.
        The memory stays as long as the domain still maps it."""
        region = dom.windows.get(window_id)
        if region is None:
            raise XenError(EINVAL, f"d{dom.domid} has no grant window {window_id}")
        if region.mapped:
            raise XenError(EBUSY, f"grant window {window_id} is still mapped "
                           f"(d{region.peer})")
        del dom.windows[window_id]
        dom.physmap.remove(region)
        for other in self.domains.values():
            other.known_windows.discard(window_id)
        self.memory.free(region.segment)
        self.fds.release(1)
        self.log_about(dom, f"d{dom.domid}: grant window {window_id} closed")

    def open_window(self, dom: Domain, peer: int, nr_frames: int) -> Region:
        """PYXEN_op_grant_window: a new window, its fd handed to `dom`; when
        that cannot be done (its memory channel is full or closed), the
        window is given back and the errno is the caller's."""
        region = self.add_window(dom, peer, nr_frames)
        try:
            self.pass_window(dom, region.window_id)
        except XenError:
            self.close_window(dom, region.window_id)
            raise
        return region

    def pass_window(self, dom: Domain, window_id: int) -> None:
        """Hand `dom` the fd of a window, before the hypercall that names it
        is answered, so the kernel finds the fd waiting on its channel.
        Never waits: XenError (EBUSY, ENOTCONN) when it cannot be queued."""
        owner = next(d for d in self.domains.values() if window_id in d.windows)
        region = owner.windows[window_id]
        dom.memchan.send({"tag": "window", "window": window_id, "owner": owner.domid,
                          "gfn": region.gfn, "nr_frames": region.segment.nr_pages},
                         [region.segment.fd])
        dom.known_windows.add(window_id)

    def pass_mapped_window(self, dom: Domain, result: dict) -> dict:
        """A map of a grant in a window `dom` has no fd of: hand it over, or
        undo the map (GNTST_eagain while its memory channel is full,
        GNTST_general_error once it is closed)."""
        try:
            self.pass_window(dom, result["window"])
        except XenError as exc:
            self.grants.unmap_grant_ref(dom.domid, {"handle": result["handle"]})
            return {"status": GNTST_eagain if exc.errno == EBUSY else GNTST_general_error,
                    "handle": -1}
        return result

    # -- devices' fds ----------------------------------------------------------

    def pass_fd(self, dom: Domain, key: str, kind: str, path: str | None = None,
                writable: bool = False) -> dict:
        """PYXEN_op_pass_fd (Dom0's): open what one of `dom`'s devices needs
        (kind "image": the file or block device at `path`; "tun": a
        /dev/net/tun fd of its own network namespace) and queue it on its
        memory channel under `key`; our copy is closed once queued. Returns
        what the toolstack writes about it (the image's type and size)."""
        if dom.dying or dom.process is None or not dom.process.alive:
            raise XenError(ESRCH, f"d{dom.domid} has no running process")
        if kind == "image":
            if path is None:
                raise XenError(EINVAL, "an image needs a path")
            fd, typ, size = devfds.open_image(path, writable)
            meta = {"tag": "fd", "key": key, "kind": kind, "type": typ, "size": size,
                    "writable": writable}
        elif kind == "tun":
            fd, typ, size = devfds.open_tun_in(dom.process.pid), "tun", 0
            meta = {"tag": "fd", "key": key, "kind": kind}
        else:
            raise XenError(EINVAL, f"no fd of kind {kind!r} (image, tun)")
        try:
            assert dom.memchan is not None
            dom.memchan.send(meta, [fd])
        finally:
            os.close(fd)
        self.log_about(dom, f"d{dom.domid}: {kind} fd {key!r} handed over"
                       + (f" ({path}, {'rw' if writable else 'ro'})" if path else ""))
        return {"type": typ, "size": size}

    # -- timers -------------------------------------------------------------

    def set_timer(self, dom: Domain, vcpu: int, deadline_ns: int) -> None:
        """set_timer_op: VIRQ_TIMER to `vcpu` at `deadline_ns`; 0 cancels."""
        if deadline_ns == 0:
            self.timers.cancel(("virq", dom.domid, vcpu))
        else:
            self.timers.set(("virq", dom.domid, vcpu), deadline_ns)

    def watchdog(self, dom: Domain, wd_id: int, timeout_s: int) -> int:
        """SCHEDOP_watchdog: id 0 creates one, a timeout pokes it, 0 removes it."""
        if wd_id == 0:
            if timeout_s <= 0:
                raise XenError(EINVAL, "a new watchdog needs a timeout")
            free = [i for i in range(1, NR_WATCHDOGS + 1) if i not in dom.watchdogs]
            if not free:
                raise XenError(EBUSY, f"d{dom.domid} has {NR_WATCHDOGS} watchdogs")
            wd_id = free[0]
        elif wd_id not in dom.watchdogs:
            raise XenError(EINVAL, f"d{dom.domid} has no watchdog {wd_id}")
        if timeout_s <= 0:
            del dom.watchdogs[wd_id]
            self.timers.cancel(("wd", dom.domid, wd_id))
            return 0
        dom.watchdogs[wd_id] = timeout_s
        self.timers.set(("wd", dom.domid, wd_id),
                        time.monotonic_ns() + timeout_s * 1_000_000_000)
        return wd_id

    def _watchdog_expired(self, domid: int, wd_id: int) -> None:
        dom = self.domains.get(domid)
        if dom is None or dom.shutdown_code is not None or wd_id not in dom.watchdogs:
            return
        if dom.paused:  # a paused domain cannot poke: wait for it to run again
            self.timers.set(("wd", domid, wd_id), time.monotonic_ns()
                            + dom.watchdogs[wd_id] * 1_000_000_000)
            return
        self.log(f"d{domid} {dom.name}: watchdog {wd_id} expired: the domain hangs")
        self.shutdown(dom, SHUTDOWN_watchdog, remote=True)

    def fire_timers(self, now_ns: int) -> int | None:
        """Deliver due VIRQ_TIMERs, watchdogs and boot deadlines; returns the
        next deadline."""
        for kind, domid, arg in self.timers.pop_due(now_ns):
            if kind == "virq":
                self.send_virq(domid, VIRQ_TIMER, arg)
            elif kind == "wd":
                self._watchdog_expired(domid, arg)
            elif kind == "boot":
                self._boot_expired(domid, arg)
        return self.timers.next_deadline()

    # -- information ----------------------------------------------------------

    def physinfo(self) -> dict:
        return {
            "nr_cpus": self.platform.pcpus,
            "max_cpu_id": self.platform.pcpus - 1,
            "threads_per_core": 1,
            "cores_per_socket": self.platform.pcpus,
            "nr_nodes": 1,
            "max_node_id": 0,
            "cpu_khz": 0,
            "total_pages": self.memory.total_pages,
            "free_pages": self.memory.free_pages,
            "scrub_pages": 0,
            "outstanding_pages": 0,
            "capabilities": 0,
            "platform": self.platform.name,
            "sandbox": self._sandbox_info(),
        }

    def _sandbox_info(self) -> dict:
        """What `pyxen info` says of the domains' sandbox: its layers, and
        for each missing one why."""
        box = self.sandbox
        if box is None:
            return {"enabled": False, "active": [], "missing": []}
        return {"enabled": box.enabled, "active": box.active(),
                "missing": [[layer.name, layer.why] for layer in box.missing()]}

