"""What a domain's root holds: the hypervisor's plan for hypervisor/jail/mounts.py.

Read-only, at the same paths as on the host (so that sys.path and the
interpreter's own paths hold inside): the interpreter (sys.prefix and the
base it was made from, with their site-packages), the system's library
directories and /etc/ld.so.cache, pyxen's own packages, the top-level
package of the domain's workload as the hypervisor finds it on its
sys.path (the launcher's PYTHONPATH), a few harmless devices, and the host
paths the topology's `bind` key names. Read-write: the domain's own
channel directory (hv/<key>/ seen as <run-dir>/hv). No disk image: a
driver domain gets each one it serves as an fd (hypervisor/devfds.py).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterable

from hypervisor.jail.mounts import Bind

PYXEN_PACKAGES = ("hypervisor", "domains", "backends", "frontends")
LIBRARY_DIRS = ("/lib", "/lib64", "/lib32", "/usr/lib", "/usr/lib64", "/usr/lib32",
                "/usr/local/lib", "/usr/local/lib64")
LIBRARY_FILES = ("/etc/ld.so.cache",)
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")


def _top_level_paths(module: str) -> list[str]:
    """Where the top-level package (or module) of `module` lives, found on
    our sys.path without importing it."""
    top = module.partition(":")[0].split(".")[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    if spec.submodule_search_locations:
        return [str(p) for p in spec.submodule_search_locations]
    return [spec.origin] if spec.origin and os.path.exists(spec.origin) else []


def interpreter_paths() -> list[str]:
    """The interpreter's trees and every site directory outside them."""
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix,
                                              sys.base_exec_prefix)}
    paths = set(prefixes)
    for entry in sys.path:
        real = os.path.realpath(entry) if entry else ""
        if (real and os.path.isdir(real) and any(s in real for s in ("site-packages",
                                                                    "dist-packages"))
                and not any(real == p or real.startswith(p + "/") for p in prefixes)):
            paths.add(real)
    return sorted(paths)


def code_paths(workload: str) -> list[str]:
    """pyxen's packages and the workload's top-level package."""
    paths: list[str] = []
    for name in (*PYXEN_PACKAGES, workload):
        for path in _top_level_paths(name):
            if path not in paths:
                paths.append(path)
    return paths


def plan(workload: str, chan_dir: str, run_dir: str,
         extra: Iterable[tuple[str, bool]] = ()) -> tuple[list[Bind], dict[str, str]]:
    """The binds and symlinks of a domain's root (see the module's doc)."""
    binds: list[Bind] = []
    symlinks: dict[str, str] = {}
    seen: set[str] = set()

    def add(path: str, writable: bool = False, dst: str | None = None) -> None:
        if not os.path.lexists(path):
            return
        real = os.path.realpath(path)
        if dst is None and real != os.path.abspath(path):
            # A symlink on the way (merged /usr: /lib -> usr/lib): the same
            # link inside, to the same place.
            if os.path.islink(path):
                symlinks[os.path.abspath(path)] = os.readlink(path)
            else:
                symlinks[os.path.abspath(path)] = real
        target = dst or real
        if target in seen:
            return
        seen.add(target)
        binds.append(Bind(real, target, writable))

    for path in interpreter_paths():
        add(path)
    for path in (*LIBRARY_DIRS, *LIBRARY_FILES, *DEVICES):
        add(path)
    for path in code_paths(workload):
        add(path)
    for path, writable in extra:
        add(path, writable)
    add(chan_dir, True, dst=os.path.join(run_dir, "hv"))
    return binds, symlinks
