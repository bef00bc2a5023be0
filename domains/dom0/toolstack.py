"""The toolstack (libxl's job): build domains from configs, publish them
and their devices in XenStore, watch them, apply their on_* actions.
Domains change only through hypercalls.

Threads: the control loop (main.py) calls in for every request and event;
a domain's creation waits for its kernel to boot, which a guest can make
last until the hypervisor's boot deadline, so creates run on worker
threads the toolstack starts and joins (`create_async`), and so do
detaches, which wait for a guest's frontend to close. `lock` guards
every bit of state here; it is never held across the createdomain wait,
and the control loop holds it while it handles a request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domains.dom0 import actions, devices, topocheck, xsnodes
from domains.dom0.announce import parse_announce
from domains.dom0.topology import DEFAULT_WEIGHT, DomainConfig, Platform
from domains.dom0.xc import Abandon, Abandoned, XenCtrl
from domains.dom0.xlspec import DiskSpec, VifSpec
from domains.kernel import fdtable
from domains.kernel.xenbus.client import XenStoreClient, XsError
from hypervisor.public.domctl import (
    XEN_DOMINF_blocked,
    XEN_DOMINF_dying,
    XEN_DOMINF_paused,
    XEN_DOMINF_running,
    XEN_DOMINF_shutdown,
    XEN_DOMINF_shutdownmask,
    XEN_DOMINF_shutdownshift,
)
from hypervisor.public.errno import (
    EBUSY,
    EEXIST,
    EINVAL,
    EIO,
    ENOENT,
    EPERM,
    ESRCH,
    ETIMEDOUT,
    XenError,
)
from hypervisor.public.io.xenbus import XenbusState
from hypervisor.public.sched import SHUTDOWN_NAMES, SHUTDOWN_crash

WORKLOADS = {
    "idle": "domains.guest.workloads:idle",
    "demo": "domains.guest.workloads:demo",
}
DRIVER_DOMAIN_KERNEL = "domains.driver.main:main"

#: How a detach's caller hears of its end: None, or what went wrong.
Detached = Callable[[XenError | None], None]


def kernel_for(config: DomainConfig) -> str:
    if ":" in config.workload:
        return config.workload
    if config.driver_domain and config.workload == "idle":
        return DRIVER_DOMAIN_KERNEL
    return WORKLOADS[config.workload]


@dataclass
class Managed:
    """A domain the toolstack built, and what it knows of it beyond Xen."""

    domid: int
    name: str
    config: DomainConfig | None  # None for Domain-0
    budget: actions.RestartBudget | None = None
    handled: bool = False  # its shutdown has been acted on
    # The devices it has now, by devid: its config's, plus those attached,
    # minus those detached at run time (libxl keeps them in the domain's
    # stored config): what a reboot gives it back and a backend's restart
    # republishes.
    disks: dict[int, DiskSpec] = field(default_factory=dict)
    vifs: dict[int, VifSpec] = field(default_factory=dict)
    note: str = ""  # why it is in the state it is, for `list` and `dmesg`
    # No domain is left in the hypervisor (it died restarting, and the
    # toolstack gave up): shown crashed, until `pyxen restart` or destroy.
    down: bool = False

    def start_devices(self, carried: Managed | None = None) -> None:
        """Its devices at creation: its config's, or those of the instance
        it replaces (a reboot keeps what was hot-plugged)."""
        if carried is not None:
            self.disks, self.vifs = dict(carried.disks), dict(carried.vifs)
        elif self.config is not None:
            self.disks = {d.virtual_device: d for d in self.config.disks}
            self.vifs = dict(enumerate(self.config.vifs))


@dataclass
class Booting:
    """A domain whose createdomain is still waiting for its kernel."""

    name: str
    abandon: Abandon = field(default_factory=Abandon)
    destroyed: bool = False  # `pyxen destroy` or halt: do not keep it
    carried: Managed | None = None  # the instance it replaces: its devices carry over


#: How many `pyxen create`s may wait for their kernels at once.
MAX_BOOTING = 64


@dataclass
class Toolstack:
    xc: XenCtrl
    xs: XenStoreClient
    platform: Platform
    log: Any
    disk_dir: Path = Path(".")  # where relative disk targets live
    announce: Callable[..., None] = lambda **event: None
    wake: Callable[[], None] = lambda: None  # a worker finished: the control loop looks
    domains: dict[int, Managed] = field(default_factory=dict)
    scheduled: list = field(default_factory=list)  # (when, old domain, config) restarts
    booting: dict[str, Booting] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)
    workers: set[threading.Thread] = field(default_factory=set)
    # Frontend paths being detached -> set to end the wait early (halt).
    detaching: dict[str, threading.Event] = field(default_factory=dict)
    halting: bool = False
    # Domains a XenStore quota refused, and what (xenstored's thread sets it).
    quota_errors: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.domains[0] = Managed(0, "Domain-0", None)
        self.xs.write("/local/domain/0/name", "Domain-0")
        self.xs.write("/local/domain/0/domid", "0")

    # -- lookups ------------------------------------------------------------

    def find(self, ident: str | int) -> Managed:
        """A domain by name or id, as xl accepts either."""
        for dom in self.domains.values():
            if dom.name == str(ident):
                return dom
        try:
            domid = int(ident)
        except (TypeError, ValueError):
            domid = -1
        if domid in self.domains:
            return self.domains[domid]
        if str(ident) in self.booting:
            raise XenError(EBUSY, f"{ident} is still booting (only `destroy` acts on it now)")
        raise XenError(ESRCH, f"no domain named '{ident}'")

    def running_names(self) -> set[str]:
        return {d.name for d in self.domains.values()} | set(self.booting)

    # -- building -------------------------------------------------------------

    def create(self, config: DomainConfig, budget: actions.RestartBudget | None = None) -> Managed:
        """Build a domain and wait for it here (the boot of the topology)."""
        return self._build(config, budget, self._reserve(config))

    def create_async(self, config: DomainConfig,
                     done: Callable[[Managed | None, XenError | None], None],
                     budget: actions.RestartBudget | None = None,
                     limit: int | None = MAX_BOOTING, carried: Managed | None = None) -> None:
        """Build a domain on a worker; `done(domain, None)` or `done(None,
        error)` is called on that worker once its kernel booted or failed
        to. Errors found before the wait (a name in use) raise here."""
        with self.lock:
            if self.halting:
                raise XenError(EBUSY, "the machine is halting")
            if limit is not None and len(self.booting) >= limit:
                raise XenError(EBUSY, f"{len(self.booting)} domains are booting already; "
                               "try again when one is up")
            booting = self._reserve(config)
            booting.carried = carried
            worker = threading.Thread(target=self._worker, name=f"create {config.name}",
                                      args=(config, budget, booting, done))
            self.workers.add(worker)
            worker.start()

    def _worker(self, config: DomainConfig, budget: actions.RestartBudget | None,
                booting: Booting, done: Callable) -> None:
        try:
            try:
                dom = self._build(config, budget, booting)
            except XenError as exc:
                done(None, exc)
            except Exception as exc:  # a bug: the caller still gets an answer
                self.log.exception("create failed", name=config.name)
                done(None, XenError(EIO, f"{config.name}: {exc!r}"))
            else:
                done(dom, None)
        finally:
            with self.lock:
                self.workers.discard(threading.current_thread())
            self.wake()

    def _reserve(self, config: DomainConfig) -> Booting:
        with self.lock:
            if config.name in self.running_names():
                raise XenError(EEXIST, f"a domain named '{config.name}' already exists")
            booting = self.booting[config.name] = Booting(config.name)
            return booting

    def _build(self, config: DomainConfig, budget: actions.RestartBudget | None,
               booting: Booting) -> Managed:
        try:
            created = self._boot(config, booting)
            with self.lock:
                return self._finish(config, budget, created, booting)
        finally:
            with self.lock:
                if self.booting.get(config.name) is booting:
                    del self.booting[config.name]
                booting.abandon.close()

    def _boot(self, config: DomainConfig, booting: Booting) -> dict:
        """createdomain: the wait for the kernel, without the lock."""
        cmdline = config.extra
        if not config.driver_domain:
            # Every guest gets its own network stack, empty until a vif
            # (at boot or by network-attach) puts a TAP in it.
            cmdline = f"{cmdline} netns".strip()
        if config.uplinks:
            # The net driver domain learns its bridges' host TAPs (the
            # hypervisor makes them: sandbox_for).
            arg = ";".join(uplink.to_arg() for uplink in config.uplinks)
            cmdline = f"{cmdline} uplink={arg}".strip()
        try:
            return self.xc.domain_create(config.name, config.memory, config.vcpus,
                                         kernel_for(config), cmdline, config.cpus,
                                         config.boot_timeout,
                                         config.max_grant_window_memory,
                                         abandon=booting.abandon,
                                         sandbox=self.sandbox_for(config))
        except Abandoned:
            raise XenError(ESRCH, f"{config.name} was destroyed while booting") from None
        except XenError as exc:
            if exc.errno == ETIMEDOUT:
                # The hypervisor's boot deadline: it destroyed the domain
                # (and if it did not, so do we).
                self.log.error("domain never booted", name=config.name, error=str(exc))
                self._destroy_by_name(config.name)
                raise XenError(ETIMEDOUT, f"{config.name} did not finish booting in time "
                               f"and was destroyed ({exc.message or exc.name})") from None
            raise

    def _finish(self, config: DomainConfig, budget: actions.RestartBudget | None,
                created: Any, booting: Booting) -> Managed:
        """The kernel is up: check what it handed us, publish it in XenStore."""
        domid = created["domid"]
        if booting.destroyed:
            self._discard(domid)
            raise XenError(ESRCH, f"{config.name} was destroyed while booting")
        try:
            announce = parse_announce(created.get("announce"))
        except XenError as exc:
            self._discard(domid)
            message = f"{config.name} (d{domid}): {exc.message}; destroyed"
            self.log.error("bad domain destroyed", name=config.name, domid=domid,
                           error=exc.message)
            self._console(f"toolstack: {message}")
            raise XenError(EINVAL, message) from None
        if config.weight != DEFAULT_WEIGHT or config.cap:
            # As libxl does once the domain is built: weight and cap are
            # scheduler parameters, not part of createdomain.
            try:
                self.xc.sched_credit2_domain_set(domid, config.weight, config.cap)
            except XenError as exc:
                self._discard(domid)
                raise XenError(exc.errno, f"{config.name}: cannot set its weight "
                               f"{config.weight} and cap {config.cap}: {exc.message}") from exc
        try:
            self.introduce(domid, config, announce, booting.carried)
        except (XenError, XsError) as exc:
            self._discard(domid)
            raise XenError(EIO, f"{config.name}: cannot set up its xenstore: {exc}") from exc
        if budget is None:
            budget = actions.RestartBudget(*config.restart_limit, *config.restart_backoff)
        dom = Managed(domid, config.name, config, budget)
        dom.start_devices(booting.carried)
        self.domains[domid] = dom
        self.log.info("domain created", name=config.name, domid=domid)
        self.announce(event="created", name=config.name, domid=domid)
        return dom

    def _discard(self, domid: int) -> None:
        """Destroy a domain that never became ours, and whatever of it
        reached XenStore."""
        try:
            self.xc.domain_destroy(domid)
        except XenError as exc:
            if exc.errno != ESRCH:
                raise
        self.forget(domid)

    def _hv_domid(self, name: str) -> int | None:
        """The domid the hypervisor gave a domain of that name, if it lives."""
        return next((i["domain"] for i in self.xc.domain_getinfolist()
                     if i["name"] == name and not i["flags"] & XEN_DOMINF_dying), None)

    def _destroy_by_name(self, name: str) -> int | None:
        domid = self._hv_domid(name)
        if domid is not None:
            try:
                self.xc.domain_destroy(domid)
            except XenError as exc:
                if exc.errno != ESRCH:
                    raise
        return domid

    def _console(self, line: str) -> None:
        try:
            self.xc.console_write(line)
        except XenError:
            pass

    def is_booting(self, name: str) -> bool:
        with self.lock:
            return name in self.booting

    def destroy_booting(self, name: str, halting: bool = False) -> None:
        """`pyxen destroy` of a domain whose kernel has not reported ready:
        destroy it in the hypervisor (which knows it) and stop its creator
        waiting. If the hypervisor does not list it yet, its creator
        destroys it as soon as createdomain answers (when halting, it stops
        waiting anyway: the hypervisor halts with Dom0)."""
        with self.lock:
            booting = self.booting.get(name)
            if booting is None:
                raise XenError(ESRCH, f"no domain named '{name}' is booting")
            booting.destroyed = True
            domid = self._destroy_by_name(name)
            if domid is None and not halting:
                return
            booting.abandon.set()
            self.log.info("booting domain destroyed", name=name, domid=domid)

    def sandbox_for(self, config: DomainConfig) -> dict:
        """What the hypervisor must put in the domain's sandbox beyond the
        default (hypervisor/jail/sandbox.py): its role, the host paths its
        `bind` key names, a net driver domain's uplink TAPs. No disk image
        is ever in a sandbox: the hypervisor opens each one and hands the
        fd over (disk_nodes), and a guest's TAP fds come the same way."""
        sandbox: dict[str, Any] = {"role": "driver" if config.driver_domain else "guest"}
        if config.uplinks:
            # The hypervisor makes the host TAPs and hands them over.
            sandbox["uplinks"] = [{"tap": u.tap, "ip": list(u.ip), "mtu": u.mtu,
                                   "mac": u.mac} for u in config.uplinks]
        if config.binds:
            sandbox["binds"] = [[path, writable] for path, writable in config.binds]
        return sandbox

    def introduce(self, domid: int, config: DomainConfig, announce: dict,
                  carried: Managed | None = None) -> None:
        """Write the domain's nodes and devices (its config's, or those of
        the instance it replaces), then hand its ring to xenstored."""
        uuid = self.xc.domain_getinfo(domid)["handle"]
        store = announce.get("store")
        nodes = xsnodes.domain_nodes(domid, config.name, uuid, config.memory * 1024,
                                     config.vcpus, store, announce.get("console"))
        devices_of = Managed(domid, config.name, config)
        devices_of.start_devices(carried)
        for disk in devices_of.disks.values():
            nodes += self.disk_nodes(domid, disk)
        for devid, vif in devices_of.vifs.items():
            self._hand_tap(domid, devid, config.name)
            nodes += self.vif_nodes(domid, config.name, devid, vif)
        for backend in {d.backend for d in devices_of.disks.values()} | {
                v.backend for v in devices_of.vifs.values()}:
            self.size_backend_quotas(backend, extra=devices_of)
        self.write_nodes(nodes)
        if store is not None:
            self.xs.introduce(domid, store["mfn"], store["port"])

    def disk_nodes(self, domid: int, disk: DiskSpec) -> list:
        """A disk's nodes, once its backend holds the image: the hypervisor
        opens it (as the disk's mode says) and hands the fd to the backend
        domain under the device's key before any node exists, as Xen's
        hotplug script sets up the backing device before blkback looks.
        Every path that writes a vbd's backend (boot, block-attach, a
        driver domain's restart) comes here, so a backend is never asked
        to open a path, and a new backend gets a fresh fd."""
        backend = self.find(disk.backend).domid
        try:
            params = devices.prepare_image(disk, self.disk_dir)
        except OSError as exc:
            raise XenError(ENOENT, str(exc)) from None
        key = fdtable.vbd_key(domid, disk.virtual_device)
        try:
            self.xc.pass_image(backend, key, str(params.absolute()), not disk.readonly)
        except XenError as exc:
            raise XenError(exc.errno, f"disk {disk.vdev}: {exc.message}") from None
        return devices.vbd_nodes(domid, backend, disk, params)

    def _hand_tap(self, domid: int, devid: int, name: str) -> None:
        """A boot vif's TAP fd for the guest (see network_attach). One that
        cannot be had (no root, no tun module) costs the guest that vif,
        not its boot, as before (its netfront says why too)."""
        try:
            self.xc.pass_tun(domid, fdtable.vif_key(devid))
        except XenError as exc:
            self.log.error("no TAP for a vif", domain=name, devid=devid, error=str(exc))

    def size_backend_quotas(self, backend: str, extra: Managed | None = None) -> None:
        """A backend's nodes are its own (as in Xen, where users raise the
        quotas of driver domains): size its XenStore quotas for the devices
        it serves (and those of `extra`, about to be added), before it
        writes their nodes. Never below the defaults."""
        try:
            driver = self.find(backend)
        except XenError:
            return
        if driver.domid == 0:
            return  # Dom0 is exempt from quotas
        served = len(self.serves(driver))
        if extra is not None:
            served += sum(d.backend == backend for d in extra.disks.values())
            served += sum(v.backend == backend for v in extra.vifs.values())
        for name, value in xsnodes.backend_quotas(served).items():
            try:
                self.xs.control("quota", "set", str(driver.domid), name, str(value))
            except XsError as exc:
                self.log.warning("backend quota not set", backend=backend, quota=name,
                                 error=str(exc))

    def republish(self, driver: Managed) -> None:
        """A driver domain came back under a new domid: give it back its
        devices and point their frontends at it (they reconnect and reissue
        what had no response)."""
        self.size_backend_quotas(driver.name)
        for dom in list(self.domains.values()):
            if dom.config is None or dom.domid == driver.domid:
                continue
            for disk in list(dom.disks.values()):
                if disk.backend != driver.name:
                    continue
                try:  # the new backend's own fd of the image
                    nodes = self.disk_nodes(dom.domid, disk)
                except XenError as exc:
                    self.log.error("disk not republished", domain=dom.name, vdev=disk.vdev,
                                   error=str(exc))
                    continue
                front = devices.vbd_frontend_path(dom.domid, disk.virtual_device)
                self._publish(nodes, front, dom.domid, driver.domid)
                self.log.info("disk republished", domain=dom.name, vdev=disk.vdev,
                              backend=driver.name, backend_id=driver.domid)
            for devid, vif in list(dom.vifs.items()):
                if vif.backend != driver.name:
                    continue
                nodes = self.vif_nodes(dom.domid, dom.name, devid, vif)
                front = devices.vif_frontend_path(dom.domid, devid)
                if not self.xs.exists(front):  # removed: the guest makes it anew
                    self._hand_tap(dom.domid, devid, dom.name)
                self._publish(nodes, front, dom.domid, driver.domid)
                self.log.info("vif republished", domain=dom.name, devid=devid,
                              backend=driver.name, backend_id=driver.domid)

    def _publish(self, nodes: list, front: str, fe: int, be: int) -> None:
        """A device of a restarted backend: its frontend moves over, or, if
        the device was removed when its backend was given up on, it is
        added back whole (the guest sees a new device)."""
        if self.xs.exists(front):
            self._move_frontend(nodes, front, fe, be)
        else:
            self.write_nodes(nodes)

    # -- block devices (xl block-attach / -detach / -list) -----------------------

    def block_attach(self, dom: Managed, disk: DiskSpec) -> int:
        devid = disk.virtual_device
        front = devices.vbd_frontend_path(dom.domid, devid)
        if self.xs.exists(front):
            raise XenError(EEXIST, f"{dom.name} already has a disk {disk.vdev}")
        in_use = [(d.name, other) for d in self.domains.values() for other in d.disks.values()]
        shared = topocheck.shared_image_problem(disk, in_use, self.disk_dir)
        if shared:
            raise XenError(EBUSY, shared)
        nodes = self.disk_nodes(dom.domid, disk)
        self.size_backend_quotas(disk.backend, extra=Managed(dom.domid, dom.name, None,
                                                             disks={devid: disk}))
        self.write_nodes(nodes)
        dom.disks[devid] = disk
        self.log.info("disk attached", domain=dom.name, vdev=disk.vdev, devid=devid)
        return devid

    def block_detach(self, dom: Managed, vdev: str, done: Detached) -> None:
        """Ask both ends to close (backend state Closing); a worker waits for
        the frontend and removes the device, then calls `done`."""
        for row in self.block_list(dom):
            if vdev in (row["vdev"], str(row["devid"])):
                break
        else:
            raise XenError(ENOENT, f"{dom.name} has no disk {vdev}")

        def removed() -> None:
            dom.disks.pop(row["devid"], None)
            self.log.info("disk detached", domain=dom.name, vdev=row["vdev"])

        self._detach(devices.vbd_frontend_path(dom.domid, row["devid"]),
                     row["backend_path"], removed, done)

    def _detach(self, front: str, back: str, removed: Callable[[], None],
                done: Detached) -> None:
        """libxl's device removal: the backend goes Closing, the frontend
        follows to Closed, then both directories go. The wait is a guest's
        to make last (up to DETACH_TIMEOUT), so it runs on a worker, as a
        create's does, and the control loop serves other requests meanwhile."""
        with self.lock:
            if self.halting:
                raise XenError(EBUSY, "the machine is halting")
            if front in self.detaching:
                raise XenError(EBUSY, f"{front} is being detached already")
            self.xs.write(f"{back}/online", "0")
            self.xs.write(f"{back}/state", str(int(XenbusState.Closing)))
            self.log.info("detaching: waiting for the frontend to close", device=front)
            settled = self.detaching[front] = threading.Event()

            def wait_then_remove() -> None:
                closed = wait_for_state(self.xs, front, {int(XenbusState.Closed)},
                                        DETACH_TIMEOUT, settled)
                with self.lock:
                    if not closed:
                        self.log.warning("frontend did not close, removing anyway",
                                         device=front)
                    self.xs.rm(front)
                    self.xs.rm(back)
                    removed()

            self._on_worker(f"detach {front}", wait_then_remove, done,
                            lambda: self.detaching.pop(front, None))

    def _on_worker(self, name: str, body: Callable[[], None], done: Detached,
                   cleanup: Callable[[], object] = lambda: None) -> None:
        """Run `body` on a tracked worker (halt joins it); `done` hears how
        it ended, always once. Call with the lock held."""
        def run() -> None:
            try:
                try:
                    body()
                except XenError as exc:
                    done(exc)
                except Exception as exc:  # a bug: the caller still gets an answer
                    self.log.exception("toolstack worker failed", worker=name)
                    done(XenError(EIO, f"{name}: {exc!r}"))
                else:
                    done(None)
            finally:
                with self.lock:
                    cleanup()
                    self.workers.discard(threading.current_thread())
                self.wake()

        worker = threading.Thread(target=run, name=name)
        self.workers.add(worker)
        worker.start()

    def wait_connected(self, dom: Managed, front: str, what: str, timeout: float,
                       done: Detached) -> None:
        """An attach's answer: once the device at `front` is Connected, or,
        past `timeout` seconds, an error naming its state and why (the
        device stays, and block-list / network-list keep saying why)."""
        if timeout <= 0:
            done(None)
            return
        connected = int(XenbusState.Connected)

        def wait() -> None:
            wait_for_state(self.xs, front, {connected}, timeout)
            with self.lock:
                state = self._int_or(f"{front}/state")
                if state == connected:
                    return
                back = self._read_or(f"{front}/backend", "")
                cause = self.device_cause(dom, front, back) or "it went away"
            names = {int(s): s.name for s in XenbusState}
            raise XenError(ETIMEDOUT, f"{dom.name}: {what} attached but not connected after "
                           f"{timeout:g} s (state {names.get(state, state)}): {cause}")

        with self.lock:
            if self.halting:
                raise XenError(EBUSY, "the machine is halting")
            self._on_worker(f"attach {front}", wait, done)

    # -- network devices (xl network-attach / -detach / -list) --------------------

    def network_attach(self, dom: Managed, vif: VifSpec) -> int:
        existing = [r["devid"] for r in self.network_list(dom)] + list(dom.vifs)
        devid = max(existing, default=-1) + 1
        # Its TAP fd first: the guest makes eth<devid> on it in its own
        # network namespace (it cannot open /dev/net/tun itself).
        self.xc.pass_tun(dom.domid, fdtable.vif_key(devid))
        self.size_backend_quotas(vif.backend, extra=Managed(dom.domid, dom.name, None,
                                                            vifs={devid: vif}))
        self.write_nodes(self.vif_nodes(dom.domid, dom.name, devid, vif))
        dom.vifs[devid] = vif
        self.log.info("vif attached", domain=dom.name, devid=devid)
        return devid

    def network_detach(self, dom: Managed, devid: int, done: Detached) -> None:
        for row in self.network_list(dom):
            if row["devid"] == devid:
                break
        else:
            raise XenError(ENOENT, f"{dom.name} has no vif {devid}")

        def removed() -> None:
            dom.vifs.pop(devid, None)
            self.log.info("vif detached", domain=dom.name, devid=devid)

        self._detach(devices.vif_frontend_path(dom.domid, devid), row["backend_path"],
                     removed, done)

    def network_list(self, dom: Managed) -> list[dict]:
        rows = []
        node, num = self._read_or, self._int_or
        for devid, front in self._device_dirs(dom, "vif"):
            rows.append({"devid": int(devid), "backend_id": num(f"{front}/backend-id"),
                         "mac": node(f"{front}/mac", "-"),
                         "state": num(f"{front}/state"),
                         "tx_evtchn": num(f"{front}/event-channel-tx",
                                          num(f"{front}/event-channel")),
                         "rx_evtchn": num(f"{front}/event-channel-rx",
                                          num(f"{front}/event-channel")),
                         "tx_ring_ref": num(f"{front}/tx-ring-ref"),
                         "rx_ring_ref": num(f"{front}/rx-ring-ref"),
                         "backend_path": node(f"{front}/backend", ""),
                         "cause": self.device_cause(dom, front, node(f"{front}/backend", ""))})
        return rows

    def quota_error(self, domid: int, text: str) -> None:
        """xenstored refused a request of `domid` on a quota. Called on
        xenstored's thread, which the toolstack may be waiting on: no lock,
        nothing that talks to xenstored."""
        self.quota_errors[domid] = text
        dom = self.domains.get(domid)
        name = dom.name if dom is not None else f"d{domid}"
        self.log.error("xenstore quota reached", domain=name, domid=domid, error=text)
        self._console(f"xenstored: {name} (d{domid}) {text}")

    def device_cause(self, dom: Managed, front: str, back: str) -> str:
        """Why the device at `front` is not Connected ("" if it is)."""
        front_state = self._int_or(f"{front}/state")
        back_state = self._int_or(f"{back}/state", -1) if back else -1
        backend_id = self._int_or(f"{front}/backend-id")
        backend = self.domains.get(backend_id)
        try:
            paused = bool(self.xc.domain_getinfo(dom.domid)["flags"] & XEN_DOMINF_paused)
        except XenError:
            paused = False
        return devices.device_cause(
            front_state, None if back_state < 0 else back_state, guest_paused=paused,
            backend_name=backend.name if backend is not None else f"d{backend_id}",
            backend_down=(backend.note or "stopped") if backend is not None and (
                backend.handled or backend.down) else "",
            backend_quota=self.quota_errors.get(backend_id, ""),
            frontend_quota=self.quota_errors.get(dom.domid, ""))

    def block_list(self, dom: Managed) -> list[dict]:
        rows = []
        node, num = self._read_or, self._int_or
        for devid, front in self._device_dirs(dom, "vbd"):
            back = node(f"{front}/backend", "")
            rows.append({"devid": int(devid), "vdev": node(f"{back}/dev", devid),
                         "backend_id": num(f"{front}/backend-id"),
                         "state": num(f"{front}/state"),
                         "event_channel": num(f"{front}/event-channel",
                                              num(f"{front}/queue-0/event-channel")),
                         "ring_ref": num(f"{front}/ring-ref",
                                         num(f"{front}/ring-ref0",
                                             num(f"{front}/queue-0/ring-ref0"))),
                         "backend_path": back,
                         "cause": self.device_cause(dom, front, back)})
        return rows

    def vif_nodes(self, domid: int, name: str, devid: int, vif: VifSpec) -> list:
        backend = self.find(vif.backend).domid
        mac = vif.mac or devices.default_mac(name, devid)
        return devices.vif_nodes(domid, backend, devid, vif, mac)

    def orphan(self, driver: Managed) -> None:
        """A driver domain stays down: remove the devices it served, so that
        their frontends fail what is pending with a clear error."""
        for dom in list(self.domains.values()):
            if dom.config is None or dom.domid == driver.domid:
                continue
            fronts = [devices.vbd_frontend_path(dom.domid, devid)
                      for devid, d in dom.disks.items() if d.backend == driver.name]
            fronts += [devices.vif_frontend_path(dom.domid, devid)
                       for devid, v in dom.vifs.items() if v.backend == driver.name]
            for front in fronts:
                try:
                    self.xs.rm(front)
                except XsError:
                    pass
                self.log.error("device lost its backend", domain=dom.name, device=front,
                               backend=driver.name)

    def _move_frontend(self, nodes: list, front: str, fe: int, be: int) -> None:
        """Write a device's backend directory under the new backend and point
        the frontend at it, leaving the frontend's own nodes alone."""
        backend_side = [n for n in nodes if n[0].startswith(f"{xsnodes.dom_path(be)}/")]
        moved = [n for n in nodes if n[0] in (f"{front}/backend", f"{front}/backend-id")]
        # The new backend must read what the frontend wrote, old and new.
        self.chmod_tree(front, [f"n{fe}", f"r{be}"])
        # Backend-id last: it is what the frontend watches.
        self.write_nodes(backend_side + sorted(moved, key=lambda n: n[0].endswith("-id")))

    def chmod_tree(self, path: str, perms: list[str]) -> None:
        self.xs.set_perms(path, perms)
        try:
            children = self.xs.directory(path)
        except XsError:
            return
        for child in children:
            self.chmod_tree(f"{path}/{child}", perms)

    def _device_dirs(self, dom: Managed, kind: str) -> list[tuple[str, str]]:
        """(devid, frontend path) of a domain's devices of one kind, in order."""
        root = f"{xsnodes.dom_path(dom.domid)}/device/{kind}"
        try:
            devids = self.xs.directory(root)
        except XsError:
            return []
        # The frontend's nodes are the guest's to write: only numbers count.
        numbered = [d for d in devids if d.isascii() and d.isdigit() and len(d) < 10]
        return [(devid, f"{root}/{devid}") for devid in sorted(numbered, key=int)]

    def _read_or(self, path: str, default: str = "-1") -> str:
        try:
            return self.xs.read(path).decode(errors="replace")
        except XsError:
            return default

    def _int_or(self, path: str, default: int = -1) -> int:
        """A number a guest may have written: anything else is `default`."""
        text = self._read_or(path, "")
        try:
            value = int(text, 10)
        except ValueError:
            return default
        return value if -(1 << 31) <= value < 1 << 32 else default

    def write_nodes(self, nodes: list) -> None:
        def write_all(tx: int) -> None:
            for path, value, perms in nodes:
                self.xs.write(path, value, tx)
                self.xs.set_perms(path, perms, tx)

        self.xs.transaction(write_all)

    def destroy(self, dom: Managed) -> None:
        if dom.domid == 0:
            raise XenError(EPERM, "Domain-0 cannot be destroyed; use `pyxen halt`")
        self.domains.pop(dom.domid, None)
        try:
            self.xc.domain_destroy(dom.domid)
        except XenError as exc:
            if exc.errno != ESRCH:
                raise
        self.forget(dom.domid)

    def destroy_requested(self, dom: Managed) -> str | None:
        """`pyxen destroy`. A driver domain is destroyed as if it had crashed:
        the guests it serves keep their devices, so its on_crash action
        applies (restart for driver domains, within the restart budget) and
        they reconnect; past the budget, or with no restart, its devices go.
        Returns what happens next, for the user."""
        if dom.config is None or not dom.config.driver_domain or dom.handled:
            self.destroy(dom)
            return None
        self.log.info("driver domain destroyed by request", name=dom.name, domid=dom.domid)
        action = self.stopped(dom, SHUTDOWN_crash)
        if self.domains.get(dom.domid) is dom:
            self.destroy(dom)  # kept by its action, but the user wants it gone
            if action == actions.PRESERVE:
                self.orphan(dom)
        if action in (actions.RESTART, actions.RENAME_RESTART):
            return (f"restarting it (on_crash={dom.config.on_crash}); the guests it "
                    "serves reconnect")
        if action == actions.GIVE_UP:
            return "not restarted (restart_limit spent); the devices it served were removed"
        return f"not restarted (on_crash={dom.config.on_crash}); the devices it served were removed"

    def forget(self, domid: int) -> None:
        """Release a destroyed domain from xenstored and remove its nodes."""
        try:
            vm = self.xs.read(f"{xsnodes.dom_path(domid)}/vm").decode()
        except XsError:
            vm = None
        backends = [f"{xsnodes.dom_path(d)}/backend/{kind}/{domid}"
                    for d in self.domains for kind in ("vbd", "vif")]
        for action in (lambda: self.xs.release(domid),
                       lambda: self.xs.rm(xsnodes.dom_path(domid)),
                       lambda: vm and self.xs.rm(vm),
                       *(lambda path=path: self.xs.rm(path) for path in backends)):
            try:
                action()
            except XsError:
                pass  # never introduced, or already gone

    def request_shutdown(self, dom: Managed, request: str) -> None:
        """xl shutdown/reboot: ask the guest through control/shutdown."""
        if dom.domid == 0:
            raise XenError(EINVAL, "use `pyxen halt` to stop Domain-0")
        self.xs.write(f"{xsnodes.dom_path(dom.domid)}/control/shutdown", request)

    # -- reacting to VIRQ_DOM_EXC ---------------------------------------------

    def domain_exceptions(self) -> None:
        """Look at every domain and act on those that stopped."""
        infos = {i["domain"]: i for i in self.xc.domain_getinfolist()}
        for domid, dom in list(self.domains.items()):
            info = infos.get(domid)
            if info is None:
                if domid != 0 and not dom.handled:
                    self.log.warning("domain vanished", name=dom.name, domid=domid)
                    self.domains.pop(domid, None)
                continue
            if info["flags"] & XEN_DOMINF_shutdown and not dom.handled:
                reason = (info["flags"] >> XEN_DOMINF_shutdownshift) & XEN_DOMINF_shutdownmask
                self.stopped(dom, reason)

    def stopped(self, dom: Managed, reason: int) -> str:
        """Apply the on_* action for why `dom` stopped; returns the action."""
        dom.handled = True
        config = dom.config
        why = SHUTDOWN_NAMES.get(reason, str(reason))
        action = actions.decide(config, reason, dom.budget, time.monotonic())
        self.log.info("domain stopped", name=dom.name, domid=dom.domid, reason=why,
                      action=action)
        if action == actions.PRESERVE:
            dom.note = f"{why}: preserved (on_{_key(reason)}=preserve)"
            return action
        if action == actions.GIVE_UP:
            limit, period = config.restart_limit
            dom.note = (f"{why}: not restarted, {limit} restarts in {period:g}s "
                        "already (restart_limit)")
            self.log.error("restart budget spent", name=dom.name, limit=limit,
                           period=period)
            # Kept, shown crashed with the reason (`pyxen list -v`), and said
            # on the hypervisor console (`pyxen dmesg`).
            self.xc.console_write(f"toolstack: {dom.name} (d{dom.domid}) {dom.note}")
            if config.driver_domain:
                self.orphan(dom)
            return action
        if action == actions.RENAME_RESTART:
            old = f"{dom.name}-{dom.domid}"
            self.log.info("renaming stopped domain", name=dom.name, to=old)
            dom.name = old
            dom.note = f"{why}: renamed"
        else:
            self.destroy(dom)
        if action in (actions.RESTART, actions.RENAME_RESTART):
            delay = dom.budget.backoff()
            if delay:
                self.log.info("restart backing off", name=config.name, seconds=delay)
            self.scheduled.append((time.monotonic() + delay, dom, config))
        elif config is not None and config.driver_domain:
            self.orphan(dom)  # on_*=destroy: its devices have no backend any more
        return action

    def restart(self, old: Managed, config: DomainConfig,
                then: Callable[[Managed | None, XenError | None], None] | None = None) -> None:
        """Start the domain again, on a worker: the control loop goes on. Its
        devices carry over (those hot-plugged too); a driver domain's are
        given back to it. A successor that dies before it is up counts as a
        crash (on_crash, the budget, the back-off apply)."""
        def done(new: Managed | None, error: XenError | None) -> None:
            with self.lock:
                if error is not None:
                    self._restart_failed(old, config, error)
                else:
                    self.log.info("domain restarted", name=new.name, old_domid=old.domid,
                                  domid=new.domid)
                    if config.driver_domain and self.domains.get(new.domid) is new:
                        self.republish(new)
            if then is not None:
                then(new, error)

        try:
            self.create_async(config, done, old.budget, limit=None, carried=old)
        except XenError as exc:
            with self.lock:
                self._restart_failed(old, config, exc)
            if then is not None:
                then(None, exc)

    def _restart_failed(self, old: Managed, config: DomainConfig, error: XenError) -> None:
        """The successor died booting (or could not be made): a crash like
        any other. Restart again within the budget; past it, the domain is
        kept as crashed in `pyxen list` with the reason, and a driver
        domain's devices are removed, so that their frontends fail clearly."""
        self.log.error("restart failed", name=config.name, error=str(error))
        if self.halting or error.errno == ESRCH:
            return  # destroyed while it booted: the user wants it gone
        action = actions.decide(config, SHUTDOWN_crash, old.budget, time.monotonic())
        if action in (actions.RESTART, actions.RENAME_RESTART):
            delay = old.budget.backoff()
            self.log.info("restarting again", name=config.name, seconds=delay)
            self.scheduled.append((time.monotonic() + delay, old, config))
            return
        limit, period = config.restart_limit
        why = ("not restarted, "
               f"{limit} restarts in {period:g}s already (restart_limit)"
               if action == actions.GIVE_UP else f"not restarted (on_crash={config.on_crash})")
        down = Managed(old.domid, config.name, config, old.budget, handled=True,
                       disks=old.disks, vifs=old.vifs, down=True,
                       note=f"crashed while restarting ({error.message}); {why}")
        self.domains[old.domid] = down
        self._console(f"toolstack: {config.name} {down.note}")
        if config.driver_domain:
            self.orphan(down)

    def revive(self, dom: Managed,
               done: Callable[[Managed | None, XenError | None], None]) -> None:
        """`pyxen restart NAME`, or `pyxen reboot` of a stopped domain: start
        a domain the toolstack stopped acting on (crashed and preserved, or
        given up on) again, with a fresh restart budget; a driver domain
        gets back the devices it served, and their guests see them again."""
        if dom.config is None:
            raise XenError(EINVAL, "Domain-0 cannot be restarted; use `pyxen halt`")
        if not dom.handled:
            raise XenError(EBUSY, f"{dom.name} is running; `pyxen reboot` asks it to restart")
        if any(d is dom for _, d, _ in self.scheduled) or self.is_booting(dom.name):
            raise XenError(EBUSY, f"{dom.name} is being restarted already")
        self.destroy(dom)  # what is left of it: a crashed domain, or nothing
        dom.budget = actions.RestartBudget(*dom.config.restart_limit,
                                           *dom.config.restart_backoff)
        self.log.info("restarting by request", name=dom.name, old_domid=dom.domid)
        self.restart(dom, dom.config, then=done)

    def serves(self, driver: Managed) -> list[str]:
        """The devices a driver domain serves, as `guest:vdev` / `guest:vif<N>`."""
        return ([f"{d.name}:{disk.vdev}" for d in self.domains.values() if d is not driver
                 for disk in d.disks.values() if disk.backend == driver.name] +
                [f"{d.name}:vif{devid}" for d in self.domains.values() if d is not driver
                 for devid, vif in d.vifs.items() if vif.backend == driver.name])

    def run_due(self) -> float | None:
        """Run the restarts whose back-off is over; seconds to the next one."""
        now = time.monotonic()
        due = [item for item in self.scheduled if item[0] <= now]
        self.scheduled = [item for item in self.scheduled if item[0] > now]
        for _, old, config in due:
            self.restart(old, config)
        return min((t for t, _, _ in self.scheduled), default=now) - now \
            if self.scheduled else None

    # -- views ----------------------------------------------------------------

    def list_rows(self) -> list[dict]:
        rows = []
        for info in self.xc.domain_getinfolist():
            dom = self.domains.get(info["domain"])
            note = dom.note if dom else ("booting" if info["name"] in self.booting else "")
            if not note and info["domain"] in self.quota_errors:
                note = f"XenStore quota: {self.quota_errors[info['domain']]}"
            flags = info["flags"]
            reason = (flags >> XEN_DOMINF_shutdownshift) & XEN_DOMINF_shutdownmask
            shutdown = bool(flags & XEN_DOMINF_shutdown)
            rows.append({
                "name": dom.name if dom else info["name"],
                "domid": info["domain"],
                "mem_mib": info["tot_pages"] * 4 // 1024,
                "window_mib": info.get("window_pages", 0) * 4 // 1024,
                "max_window_mib": info.get("max_window_pages", 0) * 4 // 1024,
                "vcpus": info["nr_online_vcpus"] or info["max_vcpu_id"] + 1,
                "running": bool(flags & XEN_DOMINF_running),
                "blocked": bool(flags & XEN_DOMINF_blocked),
                "paused": bool(flags & XEN_DOMINF_paused),
                "shutdown": shutdown,
                "crashed": shutdown and reason == SHUTDOWN_crash,
                "shutdown_reason": SHUTDOWN_NAMES.get(reason) if shutdown else None,
                "dying": bool(flags & XEN_DOMINF_dying),
                "cpu_time": info["cpu_time"] / 1e9,
                "pid": info["pid"],
                "note": note,
            })
        for dom in self.domains.values():
            if dom.down:  # no domain in the hypervisor: the toolstack's memory of it
                rows.append({
                    "name": dom.name, "domid": dom.domid, "mem_mib": 0, "window_mib": 0,
                    "max_window_mib": 0, "vcpus": dom.config.vcpus if dom.config else 0,
                    "running": False, "blocked": False, "paused": False, "shutdown": True,
                    "crashed": True, "shutdown_reason": "crash", "dying": False,
                    "cpu_time": 0.0, "pid": None, "note": dom.note,
                })
        rows.sort(key=lambda r: r["domid"])
        return rows

    def vcpu_rows(self, ident: str | None = None) -> list[dict]:
        doms = [self.find(ident)] if ident is not None else sorted(
            self.domains.values(), key=lambda d: d.domid)
        rows = []
        for dom in doms:
            info = self.xc.domain_getinfo(dom.domid)
            for vcpu in range(info["max_vcpu_id"] + 1):
                v = self.xc.vcpu_getinfo(dom.domid, vcpu)
                aff = self.xc.vcpu_getaffinity(dom.domid, vcpu)
                rows.append({
                    "name": dom.name, "domid": dom.domid, "vcpu": vcpu,
                    "cpu": v["cpu"], "online": v["online"],
                    "running": v["running"], "blocked": v["blocked"],
                    "cpu_time": v["cpu_time"] / 1e9,
                    "hard_affinity": _tuple(aff["cpumap_hard"]),
                    "soft_affinity": None,
                })
        return rows

    def sched_rows(self, ident: str | int | None = None) -> list[dict]:
        """xl sched-credit2's rows: name, domid, weight, cap."""
        doms = [self.find(ident)] if ident is not None else sorted(
            self.domains.values(), key=lambda d: d.domid)
        rows = []
        for dom in doms:
            try:
                params = self.xc.sched_credit2_domain_get(dom.domid)
            except XenError as exc:
                if exc.errno != ESRCH or ident is not None:
                    raise
                continue  # destroyed while we listed
            rows.append({"name": dom.name, "domid": dom.domid,
                         "weight": params["weight"], "cap": params["cap"]})
        return rows

    def halt(self) -> None:
        """Destroy every domain, guests before the driver domains they use;
        stop the creates in flight and wait for their workers. Called
        without the lock held (it waits for workers that need it)."""
        with self.lock:
            self.halting = True
            self.scheduled.clear()
            for settled in self.detaching.values():
                settled.set()  # detaches in flight remove their device now
            for name in list(self.booting):
                try:
                    self.destroy_booting(name, halting=True)
                except XenError as exc:
                    self.log.warning("halt: booting domain", name=name, error=str(exc))
        while True:
            with self.lock:
                workers = list(self.workers)
            if not workers:
                break
            for worker in workers:
                worker.join()
        with self.lock:
            for dom in sorted(self.domains.values(), key=_halt_order):
                if dom.domid != 0:
                    self.destroy(dom)


def _halt_order(dom: Managed) -> tuple[int, int]:
    driver = dom.config is not None and dom.config.driver_domain
    return (1 if driver else 0, -dom.domid)


def _tuple(cpus) -> tuple[int, ...] | None:
    return None if cpus is None else tuple(cpus)


def _key(reason: int) -> str:
    return {0: "poweroff", 1: "reboot", 3: "crash", 4: "watchdog"}.get(reason, "crash")


DETACH_TIMEOUT = 10.0


def wait_for_state(xs: XenStoreClient, path: str, states: set[int], timeout: float,
                   reached: threading.Event | None = None) -> bool:
    """Block until <path>/state is one of `states` (or the node is gone), or
    someone else sets `reached`."""
    reached = reached if reached is not None else threading.Event()
    token = f"wait-{path}"

    def check(_path: str, _token: str) -> None:
        try:
            if int(xs.read(f"{path}/state")) in states:
                reached.set()
        except (XsError, ValueError):
            reached.set()

    xs.watch(f"{path}/state", token, check)
    try:
        return reached.wait(timeout)
    finally:
        try:
            xs.unwatch(f"{path}/state", token)
        except XsError:
            pass
