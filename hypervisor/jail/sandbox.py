"""The privileged spawner's side of the sandbox: which layers this machine
can give, and what the hypervisor does for a domain's jail when it hands a
process its domain (uid maps, channel directory, cgroup, uplink TAPs), and
undoes when the domain goes. Disk images and guests' TAPs are not part of a
jail: they are handed over as fds when a device needs them (devfds.py).

Layers (`pyxen info` lists them, the boot log says which are missing and
why): namespaces (user, pid, mount, ipc, uts, net: needs root here), uid
(an unprivileged host uid per domain, needs root), root (a pivot_root'd
tmpfs of read-only binds), caps (none left; CAP_NET_ADMIN in its own net
namespace for a guest), nnp, nodump, seccomp (role allow-lists),
cgroup-memory, cgroup-pids, cgroup-cpu, env (allow-listed environment).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypervisor.jail import binds, namespaces, seccomp_policy, uplinks
from hypervisor.jail.cgroups import Cgroups, DomainCgroup
from hypervisor.jail.env import domain_environment

JAIL_ENV = "PYXEN_JAIL"   # "1": the process unshares and confines itself
LAYERS = ("namespaces", "uid", "root", "caps", "nnp", "nodump", "seccomp",
          "cgroup-memory", "cgroup-pids", "cgroup-cpu", "env")
MIB = 1 << 20
#: What a domain process uses besides its RAM and grant windows: the
#: interpreter, pyzmq and the kernel's imports, its tmpfs /tmp.
INTERPRETER_OVERHEAD = 192 * MIB
#: Tasks (processes and threads) a domain may have beyond two per vCPU: the
#: kernel's upcall, timer and I/O threads, pyzmq's, its devices'.
BASE_TASKS = 96


def memory_limit(ram_bytes: int) -> int:
    """A domain's memory cgroup limit: its RAM, as much again for the grant
    windows it may open (its cap, max(64 MiB, RAM)), and the interpreter."""
    return ram_bytes + max(64 * MIB, ram_bytes) + INTERPRETER_OVERHEAD


def task_limit(vcpus: int) -> int:
    return BASE_TASKS + 2 * vcpus


@dataclass
class Layer:
    name: str
    active: bool
    why: str = ""


@dataclass
class Jail:
    """One domain process's sandbox, as the hypervisor tracks it: its
    channel directory (None outside namespaces), uid and cgroup."""
    chan_dir: Path | None
    uid: int | None = None
    cgroup: DomainCgroup | None = None


@dataclass
class Sandbox:
    run_dir: Path
    enabled: bool = True
    layers: dict[str, Layer] = field(default_factory=dict)
    cgroups: Cgroups | None = None
    learn: bool = False
    warnings: list[str] = field(default_factory=list)  # for the hypervisor's log
    _seq: int = 0

    @classmethod
    def probe(cls, run_dir: Path, enabled: bool = True) -> Sandbox:
        """What this machine gives (`enabled` False: --no-sandbox, nothing)."""
        box = cls(run_dir, enabled)
        box.learn = bool(os.environ.get(seccomp_policy.LEARN_ENV))
        if not enabled:
            for name in LAYERS:
                box.layers[name] = Layer(name, False, "off (pyxen boot --no-sandbox)")
            return box
        root = os.geteuid() == 0
        ns_ok, ns_why = _probe_namespaces() if root else (
            False, ("needs root (the hypervisor creates each domain's PID namespace and "
                   "writes its uid map)"))
        for name in ("namespaces", "uid", "root"):
            box.layers[name] = Layer(name, ns_ok, ns_why)
        box.layers["caps"] = Layer("caps", True)
        box.layers["nnp"] = Layer("nnp", True)
        box.layers["nodump"] = Layer("nodump", True)
        sc_ok, sc_why = seccomp_policy.available()
        box.layers["seccomp"] = Layer("seccomp", sc_ok, sc_why)
        box.layers["env"] = Layer("env", True)
        box.cgroups = Cgroups.for_this_process()
        for controller in ("memory", "pids", "cpu"):
            why = box.cgroups.missing.get(controller, "")
            box.layers[f"cgroup-{controller}"] = Layer(f"cgroup-{controller}", not why, why)
        return box

    # -- what the layers mean for a spawn ----------------------------------------

    @property
    def jails(self) -> bool:
        """Domains (but Dom0) run in namespaces of their own, own root and uid."""
        return self.layers["namespaces"].active

    @property
    def seccomp(self) -> bool:
        return self.layers["seccomp"].active

    def active(self) -> list[str]:
        return [n for n in LAYERS if self.layers[n].active]

    def missing(self) -> list[Layer]:
        return [self.layers[n] for n in LAYERS if not self.layers[n].active]

    def environment(self, **extra: str) -> dict[str, str]:
        if not self.layers["env"].active:
            return {**os.environ, **extra}
        return domain_environment(os.environ, **extra)

    # -- a jailed process's life ---------------------------------------------------

    def note_role(self, pid: int, role: str) -> None:
        """Learning mode (PYXEN_SECCOMP_LEARN=<file>): which process has
        which role, for reading the kernel's seccomp log afterwards."""
        path = os.environ.get(seccomp_policy.LEARN_ENV, "")
        if self.learn and path.startswith("/"):
            with open(path, "a") as f:
                f.write(f"{pid} {role}\n")

    def new_jail(self) -> Jail:
        """A channel directory for a process about to be spawned: its own,
        seen as <run-dir>/hv inside it (see hypervisor/loop.py)."""
        self._seq += 1
        path = self.run_dir / "hv" / f"j{self._seq:x}"
        path.mkdir(mode=0o700, parents=True, exist_ok=False)
        return Jail(path)

    def assign(self, jail: Jail, pid: int, domid: int, config: dict[str, Any],
               ram_bytes: int, vcpus: int) -> tuple[dict, list[int]]:
        """Give process `pid` (it has unshared its namespaces) domain `domid`:
        its uid, channel directory, cgroup and uplinks (no disk image: those
        come as fds, PYXEN_op_pass_fd).
        Returns the jail part of its assignment and the fds that go with it
        (the caller sends, then closes them)."""
        sandbox = dict(config.get("sandbox") or {})
        uid = namespaces.domain_id(domid)
        namespaces.write_id_maps(pid, uid, uid)
        jail.uid = uid
        assert jail.chan_dir is not None
        os.chown(jail.chan_dir, uid, uid)
        os.chmod(jail.chan_dir, 0o700)
        self._cgroup(jail, pid, ram_bytes, vcpus, limited=True)
        workload = str(config.get("kernel", ""))
        extra = [(str(p), bool(rw)) for p, rw in sandbox.get("binds", ())]
        fds: list[int] = []
        made_uplinks: list[list] = []
        try:
            for uplink in sandbox.get("uplinks", ()):
                try:
                    tap, made = uplinks.create(dict(uplink))
                except (OSError, ValueError) as exc:
                    # As when a driver domain made its own: it says why in
                    # its log, and serves its vifs anyway.
                    made_uplinks.append([-1, {"tap": uplink.get("tap"), "error": str(exc)}])
                    continue
                fds.append(os.dup(tap.fileno()))
                tap.close()  # ours only: the TAP lives with the domain's copy
                made_uplinks.append([len(fds) - 1, made])
        except OSError:
            for fd in fds:
                os.close(fd)
            raise
        plan, symlinks = binds.plan(workload, str(jail.chan_dir), str(self.run_dir), extra)
        role = "driver" if sandbox.get("role") == "driver" else "guest"
        self.note_role(pid, role)
        message = {
            "role": role,
            "binds": [b.to_json() for b in plan],
            "symlinks": symlinks,
            "nproc": task_limit(vcpus),
            "seccomp": self.seccomp,
            "learn": self.learn,
            "uplinks": made_uplinks,
        }
        return message, fds

    def place_unjailed(self, pid: int, ram_bytes: int, vcpus: int, limited: bool) -> Jail:
        """A process outside namespaces (Dom0; every domain when namespaces
        are missing) still gets a cgroup."""
        jail = Jail(chan_dir=None)
        self._cgroup(jail, pid, ram_bytes, vcpus, limited)
        return jail

    def _cgroup(self, jail: Jail, pid: int, ram_bytes: int, vcpus: int,
                limited: bool) -> None:
        if self.cgroups is None or not self.cgroups.parents:
            return
        group = self.cgroups.create(f"p{pid}")
        try:
            if limited:
                group.limit_memory(memory_limit(ram_bytes))
                group.limit_tasks(task_limit(vcpus))
            group.add(pid)
        except OSError:
            group.remove()
            raise
        jail.cgroup = group

    def release(self, jail: Jail | None) -> None:
        """The process is gone (reaped): its cgroup and channel directory go."""
        if jail is None:
            return
        if jail.cgroup is not None:
            jail.cgroup.remove()
            jail.cgroup = None
        if jail.chan_dir is not None:
            shutil.rmtree(jail.chan_dir, ignore_errors=True)

    def close(self) -> None:
        if self.cgroups is not None:
            self.cgroups.close()


def _probe_namespaces() -> tuple[bool, str]:
    """Try what a jailed spawn does, in a throw-away child: a PID namespace
    for it, and its own user, mount, ipc, uts and net namespaces."""
    try:
        with namespaces.children_in_new_pid_namespace():
            pid = os.fork()
            if pid == 0:
                try:
                    namespaces.enter_domain_namespaces()
                    os._exit(0)
                except OSError as exc:
                    os._exit(min(exc.errno or 1, 255))
                except BaseException:
                    os._exit(255)
    except OSError as exc:
        return False, f"cannot make a PID namespace ({exc.strerror})"
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        return False, (f"cannot make user/mount/ipc/uts/net namespaces "
                       f"({os.strerror(code) if 0 < code < 255 else 'failed'}; "
                       "are user namespaces enabled? /proc/sys/user/max_user_namespaces)")
    return True, ""


def sandbox_report(box: Sandbox) -> list[str]:
    """The boot log's lines on the sandbox: what is active, what is missing
    and why."""
    if not box.enabled:
        return [("sandbox: OFF (pyxen boot --no-sandbox): domains run with the "
                "hypervisor's uid, namespaces and privileges")]
    lines = [f"sandbox: active layers: {' '.join(box.active()) or 'none'}"]
    for layer in box.missing():
        lines.append(f"sandbox: MISSING {layer.name}: {layer.why}")
    return lines
