"""What the privileged spawner opens for a domain: a disk image, a TAP.

A sandboxed driver domain has no image in its root and a guest cannot open
/dev/net/tun (root's): Dom0 asks the hypervisor (PYXEN_op_pass_fd) to open
what a device needs and hand the fd over the domain's memory channel, the
way Xen's hotplug script sets up the backing device before blkback opens
it. The domain only ever holds the fd.

Errors are Xen's errno names, as the toolstack reports them: ENOENT (no
such image), EACCES/EPERM/EROFS (not allowed as asked), EINVAL (not a
regular file or block device, a relative path; a domain without a network
namespace of its own for a TAP), ESRCH (the domain's process is gone).
"""

from __future__ import annotations

import errno as host_errno
import os
import stat
import threading

from hypervisor.jail import libc
from hypervisor.jail.namespaces import CLONE_NEWNET
from hypervisor.public.errno import (
    EACCES,
    EINVAL,
    EIO,
    ENOENT,
    ESRCH,
    XenError,
    errorcode,
)

TUN_PATH = "/dev/net/tun"


def _xen_error(exc: OSError, what: str) -> XenError:
    """The host's errno as Xen's (the same numbers for what open(2) says;
    EIO for one Xen has no name for)."""
    code = exc.errno if exc.errno in errorcode else EIO
    if exc.errno == host_errno.EISDIR:
        code = EINVAL
    return XenError(code, f"{what}: {exc.strerror or exc}")


def open_image(path: str, writable: bool) -> tuple[int, str, int]:
    """An image for blkback: (fd, "file" or "phy", size in bytes). Only a
    regular file or a block device, opened as the disk's mode says,
    close-on-exec. Never blocks on what it opens (O_NONBLOCK until it is
    known to be a file or a disk: a FIFO would wait for a writer)."""
    if not os.path.isabs(path):
        raise XenError(EINVAL, f"{path!r}: an image path must be absolute")
    flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC | os.O_NOCTTY \
        | os.O_NONBLOCK
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise _xen_error(exc, path) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            kind, size = "file", st.st_size
        elif stat.S_ISBLK(st.st_mode):
            kind, size = "phy", os.lseek(fd, 0, os.SEEK_END)
            os.lseek(fd, 0, os.SEEK_SET)
        else:
            raise XenError(EINVAL, f"{path}: not a regular file or block device")
        os.set_blocking(fd, True)
    except OSError as exc:
        os.close(fd)
        raise _xen_error(exc, path) from None
    except BaseException:
        os.close(fd)
        raise
    return fd, kind, size


def _netns(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def open_tun_in(pid: int) -> int:
    """A /dev/net/tun fd belonging to process `pid`'s network namespace: a
    TAP made on it (TUNSETIFF) appears there, and only its owner (the
    domain, holding CAP_NET_ADMIN over its own namespace) can make one.
    Opened on a thread of its own that enters that namespace and ends: the
    hypervisor's threads never leave the host's. EINVAL for a process that
    shares the hypervisor's namespace (it would put a TAP on the host)."""
    try:
        target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (host_errno.ENOENT, host_errno.ESRCH):
            raise XenError(ESRCH, f"process {pid} is gone") from None
        raise _xen_error(exc, f"network namespace of process {pid}") from None
    try:
        st = os.fstat(target)
        if (st.st_dev, st.st_ino) == _netns("/proc/thread-self/ns/net"):
            raise XenError(EINVAL, "the domain has no network namespace of its own "
                                   "(a TAP made there would be the host's)")
        outcome: list = []

        def opener() -> None:
            try:
                libc.setns(target, CLONE_NEWNET)
                outcome.append(os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC))
            except OSError as exc:
                outcome.append(exc)

        thread = threading.Thread(target=opener, name="pyxen-tun-open", daemon=True)
        thread.start()
        thread.join()
    finally:
        os.close(target)
    result = outcome[0] if outcome else OSError(EIO, "the opener thread died")
    if isinstance(result, OSError):
        if result.errno == host_errno.EACCES:
            raise XenError(EACCES, f"{TUN_PATH}: {result.strerror}") from None
        if result.errno == host_errno.ENOENT:
            raise XenError(ENOENT, f"{TUN_PATH} does not exist (load the tun module)") \
                from None
        raise _xen_error(result, TUN_PATH)
    return result
