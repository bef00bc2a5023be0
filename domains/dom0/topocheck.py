"""Checks across a topology's devices, before anything starts (pure).

Each check reads the domains as parsed and returns the problems it found,
each tied to the device entry the user has to change; topology.py turns
them into `file:line: key: message` errors. What Xen's tools refuse is
refused here too: two disks at one vdev, one image writable by two
domains (the block hotplug script's sharing check), one MAC on two vifs,
one IP twice on a bridge. And what would only fail once domains are
running is caught now: an image that does not exist and cannot be created,
a directory that is not there, a workload module nobody can import.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from domains.dom0.xlspec import DOM0_NAME, DiskSpec, VifSpec

BUILTIN_WORKLOADS = ("idle", "demo")


class _Domain(Protocol):
    name: str
    driver_domain: bool
    disks: tuple[DiskSpec, ...]
    vifs: tuple[VifSpec, ...]
    uplinks: tuple
    workload: str


@dataclass(frozen=True)
class Problem:
    domain: str
    key: str          # the domain's key the problem is in: disk, vif, workload
    index: int | None  # which entry of a list key
    message: str


def image_path(disk: DiskSpec, disk_dir: Path | None) -> Path | None:
    """Where the disk's image is: an absolute target as written, a relative
    one under the run directory's disks/ (None when that is not known)."""
    if disk.target is None:
        return None
    target = Path(disk.target)
    if target.is_absolute():
        return target
    return disk_dir / target if disk_dir is not None else None


def _identity(disk: DiskSpec, disk_dir: Path | None) -> str | None:
    """What makes two disks the same image: its real path."""
    if disk.target is None:
        return None
    path = image_path(disk, disk_dir)
    if path is None:  # relative, no run dir yet: the same text is the same image
        return "disks/" + os.path.normpath(disk.target)
    return os.path.realpath(path)


def disk_problems(domains: Iterable[_Domain], disk_dir: Path | None) -> list[Problem]:
    problems: list[Problem] = []
    users: dict[str, tuple[str, int, bool]] = {}  # image -> first (domain, index, writable)
    for dom in domains:
        vdevs: dict[int, str] = {}
        for i, disk in enumerate(dom.disks):
            devid = disk.virtual_device
            if devid in vdevs:
                problems.append(Problem(dom.name, "disk", i, (
                    f"disk[{i}]: vdev {disk.vdev} is the same device as {vdevs[devid]} "
                    "of an earlier disk (one disk per vdev)")))
            vdevs.setdefault(devid, disk.vdev)
            problem = _target_problem(disk, disk_dir)
            if problem:
                problems.append(Problem(dom.name, "disk", i, f"disk[{i}]: {problem}"))
            image = _identity(disk, disk_dir)
            if image is None:
                continue
            first = users.get(image)
            if first is None:
                users[image] = (dom.name, i, not disk.readonly)
            elif not disk.readonly or first[2]:
                problems.append(Problem(dom.name, "disk", i, f"disk[{i}]: " + _shared(
                    disk, f"{first[0]} (disk[{first[1]}])")))
    return problems


def _shared(disk: DiskSpec, user: str) -> str:
    return (f"image {disk.target} is already used by {user}; an image may be "
            "shared only when every user has it read-only (access=ro)")


def shared_image_problem(disk: DiskSpec, in_use: Iterable[tuple[str, DiskSpec]],
                         disk_dir: Path | None) -> str | None:
    """block-attach's check: `disk` against the disks of running domains."""
    image = _identity(disk, disk_dir)
    if image is None:
        return None
    for owner, other in in_use:
        if _identity(other, disk_dir) == image and not (disk.readonly and other.readonly):
            return _shared(disk, f"{owner} ({other.vdev})")
    return None


def _target_problem(disk: DiskSpec, disk_dir: Path | None) -> str | None:
    if disk.target is None:
        return None
    target = Path(disk.target)
    if not target.is_absolute() and ".." in target.parts:
        return (f"target {disk.target} leaves the run directory's disks/ "
                "(use an absolute path for an image elsewhere)")
    path = image_path(disk, disk_dir)
    if path is None or path.exists():
        return None
    if disk.size is None:
        return (f"image {path} does not exist, and the spec gives no size= "
                "to create it")
    if target.is_absolute() and not path.parent.is_dir():
        return (f"directory {path.parent} does not exist (pyxen creates the "
                "image, not the directories above it)")
    return None


def vif_problems(domains: Iterable[_Domain]) -> list[Problem]:
    problems: list[Problem] = []
    macs: dict[str, str] = {}
    addresses: dict[tuple[str, str, str], str] = {}
    for dom in domains:
        for i, vif in enumerate(dom.vifs):
            where = f"{dom.name} vif[{i}]"
            if vif.mac is not None:
                if vif.mac in macs:
                    problems.append(Problem(dom.name, "vif", i, (
                        f"vif[{i}]: mac {vif.mac} is already the address of "
                        f"{macs[vif.mac]}")))
                macs.setdefault(vif.mac, where)
            for ip in vif.ip:
                address = ip.split("/")[0]
                key = (vif.backend, vif.bridge, address)
                if key in addresses:
                    problems.append(Problem(dom.name, "vif", i, (
                        f"vif[{i}]: ip {address} is already used on bridge "
                        f"{vif.bridge} of {vif.backend} by {addresses[key]}")))
                addresses.setdefault(key, where)
    return problems


def net_backends(domains: Iterable[_Domain]) -> list[str]:
    """The driver domains a vif without `backend=` may go to: those that
    already serve vifs or own an uplink, else every driver domain."""
    domains = list(domains)
    drivers = [d.name for d in domains if d.driver_domain]
    serving = {v.backend for d in domains for v in d.vifs} | {
        d.name for d in domains if d.driver_domain and d.uplinks}
    named = [n for n in drivers if n in serving]
    return named or drivers


def default_vif_backend(candidates: list[str]) -> str:
    """Xen's default vif backend is Domain-0; pyxen's Dom0 runs no netback,
    so a vif that names none goes to the one net driver domain."""
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ValueError("no backend= and no driver domain to serve it (Domain-0 runs "
                         "no netback in pyxen: add a driver domain and name it in backend=)")
    raise ValueError(f"no backend=, and more than one driver domain could serve it "
                     f"({', '.join(candidates)}): name one in backend=")


def names_backend(spec: str) -> bool:
    """Whether an xl vif spec names its backend (parse_vif fills in Dom0)."""
    return any(token.partition("=")[0].strip() == "backend" for token in spec.split(","))


def dom0_vif_problem(vif: VifSpec) -> str | None:
    if vif.backend == DOM0_NAME:
        return f"backend {DOM0_NAME} runs no netback in pyxen; name a driver domain"
    return None


def workload_problem(workload: str) -> str | None:
    """A `package.module:function` workload must name a module the
    launcher can find and a function defined in it; found without
    importing it (a workload runs in its domain, not in the CLI)."""
    if workload in BUILTIN_WORKLOADS or ":" not in workload:
        return None
    module, _, function = workload.partition(":")
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        spec = None  # a package above it is missing
    except (ImportError, ValueError) as exc:
        return f"workload {workload}: cannot find module {module} ({exc})"
    if spec is None:
        return (f"workload {workload}: no module {module} on the launcher's "
                "PYTHONPATH")
    origin = spec.origin
    if not origin or not origin.endswith(".py"):
        return None  # a compiled or namespace module: its domain will say
    try:
        tree = ast.parse(Path(origin).read_bytes(), origin)
    except (OSError, SyntaxError) as exc:
        return f"workload {workload}: cannot read {origin} ({exc})"
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == function:
            return None
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == function for t in node.targets):
            return None
        if isinstance(node, (ast.Import, ast.ImportFrom)) and any(
                (a.asname or a.name.split(".")[0]) == function for a in node.names):
            return None
    return f"workload {workload}: {origin} defines no function {function}"
