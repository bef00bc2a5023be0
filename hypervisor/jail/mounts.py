"""A domain's root: an empty tmpfs with read-only bind mounts of what it may
see, built inside its own mount namespace and made its root with
pivot_root, as bubblewrap and minijail do. Nothing else of the host's
file system stays reachable: the old root is detached.

The plan (what to bind where) is the hypervisor's (hypervisor/jail/binds.py);
this module only carries it out, in the domain process, in two steps:
`clone_binds` while the process still has the host's root uid (the
interpreter may live under a 0700 /root), making a detached copy of each
source (open_tree), and `build_root` once it has its own unprivileged uid,
attaching them (move_mount) under the new root.
"""

from __future__ import annotations

import ctypes
import os
import stat
from dataclasses import dataclass

from hypervisor.jail import libc

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MNT_DETACH = 0x2
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
OPEN_TREE_CLONE = 1
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4

STAGING = "/tmp"   # where the new root is built, in our mount namespace only


@dataclass(frozen=True)
class Bind:
    """Host path `src` seen at `dst` inside the domain (read-only unless
    `writable`)."""
    src: str
    dst: str
    writable: bool = False

    def to_json(self) -> list:
        return [self.src, self.dst, self.writable]

    @classmethod
    def from_json(cls, item: list) -> Bind:
        src, dst, writable = item
        return cls(str(src), str(dst), bool(writable))


@dataclass(frozen=True)
class Tree:
    """A detached mount (an fd) to attach at `dst`."""
    fd: int
    dst: str
    is_dir: bool


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def open_tree(path: str) -> int:
    """A detached recursive copy of the mount tree at `path`."""
    return libc.check(libc.syscall(libc.SYS_OPEN_TREE, AT_FDCWD, path.encode(),
                                   OPEN_TREE_CLONE | os.O_CLOEXEC | AT_RECURSIVE),
                      f"open_tree({path})")


def set_attrs(tree: int, attr_set: int, userns_fd: int = 0, what: str = "") -> None:
    attr = _MountAttr(attr_set, 0, 0, userns_fd)
    libc.check(libc.syscall(libc.SYS_MOUNT_SETATTR, tree, b"", AT_EMPTY_PATH | AT_RECURSIVE,
                            ctypes.byref(attr), ctypes.sizeof(attr)),
               f"mount_setattr({what})")


def clone_binds(binds: list[Bind]) -> list[Tree]:
    """Detached copies of every bind's source, read-only (but for writable
    ones), nosuid, and nodev but for devices. A source that has vanished
    is left out."""
    trees = []
    try:
        for bind in binds:
            try:
                st = os.stat(bind.src)
            except FileNotFoundError:
                continue
            fd = open_tree(bind.src)
            trees.append(Tree(fd, bind.dst, stat.S_ISDIR(st.st_mode)))
            device = stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
            set_attrs(fd, MOUNT_ATTR_NOSUID | (0 if device else MOUNT_ATTR_NODEV)
                      | (0 if bind.writable else MOUNT_ATTR_RDONLY), what=bind.src)
    except OSError:
        for tree in trees:
            os.close(tree.fd)
        raise
    return trees


def _attach(tree: Tree, root: str) -> None:
    target = root + tree.dst
    os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
    if not os.path.lexists(target):
        if tree.is_dir:
            os.mkdir(target, 0o755)
        else:
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))
    libc.check(libc.syscall(libc.SYS_MOVE_MOUNT, tree.fd, b"", AT_FDCWD, target.encode(),
                            MOVE_MOUNT_F_EMPTY_PATH), f"move_mount to {tree.dst}")
    os.close(tree.fd)


def build_root(trees: list[Tree], symlinks: dict[str, str], tmp_mib: int = 16) -> None:
    """Make the calling process's root a fresh tmpfs holding only `trees`
    (attached at their paths, shallowest first), `symlinks` (path ->
    target) and an empty /tmp of `tmp_mib` MiB; the root itself read-only."""
    libc.mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing propagates back
    libc.mount("tmpfs", STAGING, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=4m")
    # /tmp first: binds of host paths under /tmp (a test's run directory)
    # go on top of it.
    os.mkdir(STAGING + "/tmp", 0o755)
    libc.mount("tmpfs", STAGING + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV,
               f"mode=1777,size={tmp_mib}m")
    for tree in sorted(trees, key=lambda t: t.dst.count("/")):
        _attach(tree, STAGING)
    for path, target in symlinks.items():
        os.makedirs(os.path.dirname(STAGING + path), mode=0o755, exist_ok=True)
        if not os.path.lexists(STAGING + path):
            os.symlink(target, STAGING + path)
    os.chdir(STAGING)
    libc.pivot_root(".", ".")          # the host's root ends up on top...
    libc.umount2(".", MNT_DETACH)      # ...and is detached, with all below it
    os.chdir("/")
    libc.mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
