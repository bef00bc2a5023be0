"""A cgroup per domain: its memory, its number of tasks, its CPU share.

Created under the cgroup the hypervisor was started in (never at the root
of a hierarchy someone else manages: under it, in a `pyxen-<hv pid>` group
of its own), in cgroup v2 where the host mounts it with the controller,
else in the v1 hierarchy of that controller (hosts that still mount v1
controllers, and a v2 tree with only hugetlb, are common). A controller
that is in neither, or that we may not write, is a missing layer: the
domain runs without that limit and `pyxen info` says so.

Limits (see hypervisor/jail/sandbox.py for the numbers): memory (its RAM,
its grant windows and the interpreter), tasks (processes and threads), and
the credit2 weight as the group's CPU share (cpu.shares 1024 or cpu.weight
100 is weight 256) with the credit2 cap as a CPU quota (cap 50 = half a
pCPU per period).
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path

CONTROLLERS = ("memory", "pids", "cpu")
CGROUP_ROOT = Path("/sys/fs/cgroup")
CFS_PERIOD_US = 100_000
DEFAULT_WEIGHT = 256


@dataclass
class Hierarchy:
    """Where one controller lives: a mount, v1 or v2, and our cgroup in it."""
    controller: str
    mount: Path
    v2: bool
    own: str   # our cgroup's path relative to the mount

    @property
    def base(self) -> Path:
        return self.mount / self.own.lstrip("/")


def _mounts(mountinfo: str) -> list[tuple[Path, str, set[str]]]:
    """(mount point, fstype, super options) of every cgroup mount."""
    found = []
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        found.append((Path(fields[4]), tail[0], set(tail[2].split(","))))
    return found


def _own_paths(proc_cgroup: str) -> tuple[dict[str, str], str | None]:
    """Our cgroup per v1 controller, and in v2, from /proc/self/cgroup."""
    v1: dict[str, str] = {}
    v2 = None
    for line in proc_cgroup.splitlines():
        hid, _, rest = line.partition(":")
        names, _, path = rest.partition(":")
        if hid == "0" and names == "":
            v2 = path
        for name in names.split(","):
            if name:
                v1[name] = path
    return v1, v2


def find_hierarchies(mountinfo: str, proc_cgroup: str) -> dict[str, Hierarchy]:
    """controller -> the hierarchy pyxen uses for it: v2 when the v2 tree
    offers it in our cgroup, else its v1 mount."""
    v1_paths, v2_path = _own_paths(proc_cgroup)
    found: dict[str, Hierarchy] = {}
    for mount, fstype, options in _mounts(mountinfo):
        if fstype == "cgroup2" and v2_path is not None:
            try:
                offered = (mount / v2_path.lstrip("/") / "cgroup.controllers").read_text().split()
            except OSError:
                continue
            for name in CONTROLLERS:
                if name in offered:
                    found[name] = Hierarchy(name, mount, True, v2_path)
        elif fstype == "cgroup":
            for name in CONTROLLERS:
                if name in options and name not in found and name in v1_paths:
                    found.setdefault(name, Hierarchy(name, mount, False, v1_paths[name]))
    return found


def weight_to_shares(weight: int) -> int:
    """credit2 weight -> cgroup v1 cpu.shares (256 -> 1024, proportional)."""
    return max(2, min(262144, weight * 1024 // DEFAULT_WEIGHT))


def weight_to_cpu_weight(weight: int) -> int:
    """credit2 weight -> cgroup v2 cpu.weight (256 -> 100, proportional)."""
    return max(1, min(10000, round(weight * 100 / DEFAULT_WEIGHT)))


def cap_to_quota_us(cap: int, period_us: int = CFS_PERIOD_US) -> int | None:
    """credit2 cap (percent of one pCPU, 0 = none) -> CFS quota per period."""
    return None if cap <= 0 else max(1000, cap * period_us // 100)


class CgroupError(OSError):
    pass


@dataclass
class DomainCgroup:
    """One domain's group in each hierarchy pyxen uses."""
    paths: dict[str, Path] = field(default_factory=dict)   # controller -> dir

    def _write(self, controller: str, name: str, value: str) -> bool:
        path = self.paths.get(controller)
        if path is None:
            return False
        (path / name).write_text(value)
        return True

    def limit_memory(self, nbytes: int) -> bool:
        path = self.paths.get("memory")
        if path is None:
            return False
        v2 = (path / "memory.max").exists()
        if v2:
            (path / "memory.max").write_text(str(nbytes))
            (path / "memory.swap.max").exists() and (path / "memory.swap.max").write_text("0")
        else:
            (path / "memory.limit_in_bytes").write_text(str(nbytes))
            swap = path / "memory.memsw.limit_in_bytes"
            if swap.exists():
                try:
                    swap.write_text(str(nbytes))
                except OSError:
                    pass  # no swap accounting
        return True

    def limit_tasks(self, count: int) -> bool:
        return self._write("pids", "pids.max", str(count))

    def set_weight(self, weight: int) -> bool:
        path = self.paths.get("cpu")
        if path is None:
            return False
        if (path / "cpu.weight").exists():
            (path / "cpu.weight").write_text(str(weight_to_cpu_weight(weight)))
        else:
            (path / "cpu.shares").write_text(str(weight_to_shares(weight)))
        return True

    def set_cap(self, cap: int) -> bool:
        path = self.paths.get("cpu")
        if path is None:
            return False
        quota = cap_to_quota_us(cap)
        if (path / "cpu.max").exists():
            (path / "cpu.max").write_text(f"{quota or 'max'} {CFS_PERIOD_US}")
        else:
            (path / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
            (path / "cpu.cfs_quota_us").write_text(str(quota or -1))
        return True

    def add(self, pid: int) -> None:
        """Move process `pid` (all its threads) into every hierarchy's group."""
        for path in self.paths.values():
            (path / "cgroup.procs").write_text(str(pid))

    def remove(self) -> None:
        """rmdir each group (its processes are gone: reaped)."""
        for path in self.paths.values():
            try:
                path.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
        self.paths.clear()


class Cgroups:
    """pyxen's groups: `pyxen-<pid>` under our own cgroup in each hierarchy,
    one child per domain."""

    def __init__(self, hierarchies: dict[str, Hierarchy], name: str) -> None:
        self.parents: dict[str, Path] = {}
        self.missing: dict[str, str] = {}
        for controller in CONTROLLERS:
            hierarchy = hierarchies.get(controller)
            if hierarchy is None:
                self.missing[controller] = "not mounted (neither cgroup v2 nor v1)"
                continue
            parent = hierarchy.base / name
            try:
                parent.mkdir(exist_ok=True)
                if hierarchy.v2:
                    _enable_v2(hierarchy, parent, controller)
            except OSError as exc:
                self.missing[controller] = f"{parent}: {exc.strerror}"
                continue
            self.parents[controller] = parent

    @classmethod
    def for_this_process(cls) -> Cgroups:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
            own = Path("/proc/self/cgroup").read_text()
        except OSError:
            mountinfo = own = ""
        return cls(find_hierarchies(mountinfo, own), f"pyxen-{os.getpid()}")

    def create(self, key: str) -> DomainCgroup:
        group = DomainCgroup()
        for controller, parent in self.parents.items():
            path = parent / key
            path.mkdir(exist_ok=True)  # v2: one group serves every controller
            group.paths[controller] = path
        return group

    def close(self) -> None:
        for parent in self.parents.values():
            for child in parent.iterdir() if parent.is_dir() else ():
                if child.is_dir():
                    try:
                        child.rmdir()
                    except OSError:
                        pass
            try:
                parent.rmdir()
            except OSError:
                pass
        self.parents.clear()


def _enable_v2(hierarchy: Hierarchy, parent: Path, controller: str) -> None:
    """In v2 a controller reaches a child only when each ancestor enables it
    in cgroup.subtree_control: ours (which we may not be allowed to, when it
    holds processes) and the parent's."""
    own = hierarchy.base
    for group in (own, parent):
        enabled = (group / "cgroup.subtree_control").read_text().split()
        if controller not in enabled:
            (group / "cgroup.subtree_control").write_text(f"+{controller}")
