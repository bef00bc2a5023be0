"""A domain's own network: a Linux network namespace, and the TAPs made in it.

Each guest domain process moves itself into a fresh network namespace at
boot (:func:`enter_new_netns`) and creates a real TAP interface there
(:func:`create_tap`); the PV network frontend pumps raw Ethernet frames
between that TAP and the shared rings. Real tools then work inside the
domain's namespace: ``pyxen exec guest1 -- ping -c 3 10.0.0.2`` enters it
(:func:`join_netns` on :func:`netns_path`) and runs ``ping`` there.

The TAP device itself is hypervisor/public/pyxen/tap.py's (the hypervisor
makes TAPs too); what is here is the domain's side: its namespace, and the
TAP fds the hypervisor handed a sandboxed domain. The namespace calls go
through libc with ctypes. They act on the *calling thread*, which is why
the namespace must be entered on the main thread before any other thread
exists.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading

from hypervisor.public.pyxen.tap import ROOT_REASON, TUN_PATH, NetnsError, Tap, set_link_up

CLONE_NEWNET = 0x40000000

# <linux/capability.h>
CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _os_error(what: str) -> NetnsError:
    err = ctypes.get_errno()
    hint = f" ({ROOT_REASON})" if err == errno.EPERM else ""
    return NetnsError(err, f"{what}: {os.strerror(err)}{hint}")


def netns_path(pid: int) -> str:
    """The network namespace of process `pid` (its main thread), as a path."""
    return f"/proc/{pid}/ns/net"


def _effective_caps() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


# A sandboxed guest (hypervisor/jail/) is in a network namespace of its own
# from its first instruction, keeps CAP_NET_ADMIN there only, and cannot
# open /dev/net/tun (root's): it gets TAP fds opened for it ahead.
_sandboxed = False


def use_sandbox_netns() -> None:
    """This process is a sandboxed guest already in its own namespace:
    bring `lo` up; its TAPs are made on fds handed to it (see create_tap)."""
    global _sandboxed
    _sandboxed = True
    set_link_up("lo")


def sandboxed() -> bool:
    """Whether this is a sandboxed guest (its TAP fds are handed to it)."""
    return _sandboxed


def can_use_netns() -> tuple[bool, str]:
    """Whether this process may create network namespaces and TAP devices.

    Returns (True, "") or (False, reason), the reason one line a user can
    act on. Needs CAP_SYS_ADMIN (unshare/setns of a network namespace) and
    CAP_NET_ADMIN (TAP devices, interface configuration), which root has,
    and a usable /dev/net/tun.
    """
    if _sandboxed:
        return True, ""
    caps = _effective_caps()
    missing = [name for bit, name in ((CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
                                      (CAP_NET_ADMIN, "CAP_NET_ADMIN"))
               if not caps & (1 << bit)]
    if missing:
        who = f"uid {os.geteuid()}" if os.geteuid() else "root"
        return False, (f"{ROOT_REASON}; running as {who} without "
                       f"{' and '.join(missing)} (run as root, or in a container with "
                       "those capabilities)")
    if not os.path.exists(TUN_PATH):
        return False, (f"{ROOT_REASON}; {TUN_PATH} does not exist (load the `tun` "
                       "module, or give the container the device)")
    if not os.access(TUN_PATH, os.R_OK | os.W_OK):
        return False, f"{ROOT_REASON}; {TUN_PATH} is not readable and writable"
    if not os.path.exists(netns_path(os.getpid())):
        return False, f"{ROOT_REASON}; this kernel has no network namespaces"
    return True, ""


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def enter_new_netns(allow_threads: bool = False) -> None:
    """Move the calling process into a new, empty network namespace, `lo` up.

    unshare(CLONE_NEWNET) moves only the *calling thread* on Linux: threads
    that already exist stay in the old namespace, and /proc/<pid>/ns/net
    (what `pyxen exec` enters) shows the main thread's. So call this on the
    main thread early in the domain kernel's boot, before any thread exists
    (threads created afterwards inherit the new namespace). It refuses
    (RuntimeError) when called off the main thread, or while other threads
    exist unless `allow_threads` (e.g. threads that never touch the network).
    The namespace lives as long as the process: it dies, and every interface
    in it, when the process exits.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("enter_new_netns must be called on the main thread")
    if not allow_threads and _thread_count() > 1:
        raise RuntimeError(f"enter_new_netns: this process already has {_thread_count()} "
                           "threads and only the calling one would move; call it "
                           "before starting any thread")
    if _libc().unshare(CLONE_NEWNET) != 0:
        raise _os_error("unshare(CLONE_NEWNET)")
    set_link_up("lo")


def join_netns(path: str) -> None:
    """setns() the calling thread into the network namespace at `path`
    (e.g. :func:`netns_path` of a domain's pid). Exec right after it: the
    exec'd program then runs entirely in that namespace."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        hint = f" ({ROOT_REASON})" if exc.errno in (errno.EACCES, errno.EPERM) else ""
        raise NetnsError(exc.errno, f"{path}: {exc.strerror}{hint}") from None
    try:
        if _libc().setns(fd, CLONE_NEWNET) != 0:
            raise _os_error(f"setns({path})")
    finally:
        os.close(fd)


def create_tap(name: str = "eth0", *, fd: int | None = None, **options) -> Tap:
    """Tap.create(name, **options); a sandboxed guest cannot open
    /dev/net/tun and makes its TAPs on the `fd`s the hypervisor hands it."""
    if fd is None and _sandboxed:
        raise NetnsError(errno.EPERM, f"TAP {name}: a sandboxed guest makes its TAPs on "
                                      "fds handed to it")
    return Tap.create(name, fd=fd, **options)


#: A sandboxed driver domain cannot create TAPs on the host: the hypervisor
#: creates its uplinks and hands their fds over (hypervisor/jail/uplinks.py).
#: TAP name -> (fd, what the hypervisor says of it), or None when it does not.
_given_uplinks: dict[str, tuple[int, dict]] | None = None


def give_uplinks(taps: list[tuple[int, dict]]) -> None:
    """The uplink TAPs the hypervisor made for this driver domain (fd -1:
    it could not, and `error` says why)."""
    global _given_uplinks
    _given_uplinks = {str(config["tap"]): (fd, config) for fd, config in taps}


def given_uplinks() -> dict[str, tuple[int, dict]] | None:
    """The uplinks the hypervisor made for this domain, or None when it
    makes its own."""
    return _given_uplinks
