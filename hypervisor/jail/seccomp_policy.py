"""seccomp-bpf filters: an allow-list per role, through pyseccomp
(ctypes over the host's libseccomp).

A call not on its role's list fails with ENOSYS, so libc and Python take
their fallbacks (clone3 is refused that way on purpose: glibc then uses
clone, whose flags a filter can read). Calls that only an attacker makes
kill the caller at once (KILLED): reading or writing another process
(ptrace, process_vm_*, pidfd_getfd), signalling one, leaving or making
namespaces, mounting, loading BPF, kernel modules or keys. kill and tgkill
are allowed toward the caller itself only (else it is killed), and clone
only without namespace flags.

The lists were taken from what a booted machine (strace -f) and then the
whole test suite and the benchmarks make each role call, not guessed
(tests/seccomp_learn.py says how to learn them again: with
PYXEN_SECCOMP_LEARN=<file> unlisted calls are allowed and audited), plus
the few any Python program needs whether observed or not (_PYTHON). Names
this architecture does not have are skipped.
"""

from __future__ import annotations

import errno
import os

ROLES = ("hypervisor", "dom0", "driver", "guest")

#: Never allowed to a domain: the caller is killed.
KILLED = frozenset({
    "ptrace", "process_vm_readv", "process_vm_writev",
    "pidfd_open", "pidfd_getfd", "pidfd_send_signal",
    "tkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo",
    "setns", "unshare", "mount", "umount2", "pivot_root", "chroot",
    "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    "bpf", "perf_event_open", "keyctl", "add_key", "request_key",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "reboot", "swapon", "swapoff", "acct", "iopl", "ioperm", "quotactl",
    "userfaultfd", "lookup_dcookie", "name_to_handle_at", "open_by_handle_at",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "syslog",
    "setdomainname", "sethostname", "vhangup", "personality",
})
#: Killed in the hypervisor too. It spawns, maps ids and opens a guest's
#: TAP fds in its network namespace (setns, on a thread of its own), so it
#: keeps setns, unshare, pidfd_open and the mount calls; and its children inherit its filter under their own, so it also
#: allows what a new domain process does before its role's filter is on
#: (building its root: mount, umount2, pivot_root, move_mount).
SETUP_CALLS = frozenset({"mount", "umount2", "pivot_root", "open_tree", "move_mount",
                         "mount_setattr"})
KILLED_HYPERVISOR = KILLED - SETUP_CALLS - {"setns", "unshare", "pidfd_open",
                                            "pidfd_send_signal"}

# Observed, not guessed: `strace -f` of a booted default machine per role,
# then the whole test suite and the benchmarks in learning mode (see the
# module's doc) for what that missed.
# Any Python program's, observed or not: returning from a signal handler,
# sleeping, yielding (a workload that sleeps must not get ENOSYS).
_PYTHON = """
    rt_sigreturn sigaltstack clock_nanosleep nanosleep sched_yield
"""
# What every role calls (the interpreter, pyzmq's threads, msgpack, memfd
# mappings, Unix sockets, the upcall loop).
_COMMON = """
    access arch_prctl bind brk close close_range connect dup2 epoll_create1 epoll_ctl
    epoll_wait eventfd2 exit exit_group fcntl futex getcwd getdents64 getegid geteuid
    getgid getpeername getpid getppid getrandom getsockname getsockopt gettid getuid
    ioctl lseek madvise mmap mprotect mremap munmap newfstatat openat pipe2 poll prctl
    pread64 prlimit64 pselect6 read readlink recvfrom recvmsg restart_syscall rseq
    rt_sigaction rt_sigprocmask sched_getaffinity sched_getparam sched_getscheduler
    sched_setscheduler sendmsg sendto set_robust_list set_tid_address shutdown socket sysinfo
    uname write
""" + _PYTHON
_GUEST = """
    readv writev wait4 capget
"""
_DRIVER = """
    fdatasync fallocate preadv2 pwritev2 readv writev
"""
_DOM0 = """
    accept4 chmod ftruncate listen mkdir unlink
"""
# The hypervisor's own, and what a domain process does under the
# hypervisor's filter (inherited) before its role's is on: start Python,
# unshare, build its root, take its uid, drop its capabilities.
_HYPERVISOR = """
    accept4 execve exit_group ftruncate kill listen memfd_create mkdir pidfd_open rmdir
    sched_getaffinity sched_setaffinity sendmsg setpriority setsid socketpair unlink
    vfork wait4 waitid
    clone tgkill setns unshare pidfd_send_signal chown fchown
    mount umount2 pivot_root open_tree move_mount mount_setattr chdir fchdir symlink
    setgroups setresuid setresgid capget capset seccomp
"""

_ROLES = {"guest": _COMMON + _GUEST, "driver": _COMMON + _DRIVER, "dom0": _COMMON + _DOM0}
ALLOWED: dict[str, frozenset[str]] = {role: frozenset(text.split())
                                      for role, text in _ROLES.items()}
ALLOWED["hypervisor"] = frozenset(
    (_COMMON + _GUEST + _DRIVER + _DOM0 + _HYPERVISOR).split())

CLONE_NAMESPACE_FLAGS = (0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000
                         | 0x20000000 | 0x40000000 | 0x00000080)  # NEWNS..NEWNET, NEWTIME
LEARN_ENV = "PYXEN_SECCOMP_LEARN"


def available() -> tuple[bool, str]:
    """Whether filters can be installed here, and if not, why."""
    if not os.path.exists("/proc/sys/kernel/seccomp/actions_avail"):
        return False, "this kernel has no seccomp filters"
    try:
        import pyseccomp  # noqa: F401
    except (ImportError, RuntimeError, OSError) as exc:
        return False, (f"pyseccomp is not usable ({exc}; pip install pyseccomp, " \
                      "apt-get install libseccomp2)")
    return True, ""


def _add(flt, action: int, name: str, *args) -> None:
    try:
        flt.add_rule(action, name, *args)
    except ValueError:
        return  # not a call of this architecture
    except OSError as exc:
        if exc.errno == errno.EACCES:
            return  # the filter's default action already: nothing to add
        if exc.errno in (errno.EFAULT, errno.EINVAL, errno.EDOM):
            return  # not a call of this architecture
        raise


def build(role: str, learn: bool = False):
    """The filter of `role` (a pyseccomp.SyscallFilter, not loaded)."""
    import pyseccomp as sc

    if role not in ALLOWED:
        raise ValueError(f"no seccomp role {role!r}")
    default = sc.LOG if learn else sc.ERRNO(errno.ENOSYS)
    flt = sc.SyscallFilter(default)
    killed = KILLED_HYPERVISOR if role == "hypervisor" else KILLED
    for name in sorted(ALLOWED[role] - killed - {"kill", "tgkill", "clone", "clone3"}):
        _add(flt, sc.ALLOW, name)
    for name in sorted(killed):
        _add(flt, sc.KILL_PROCESS, name)
    if role == "hypervisor":
        for name in ("kill", "tgkill", "clone"):
            _add(flt, sc.ALLOW, name)
        _add(flt, sc.ERRNO(errno.ENOSYS), "clone3")
    else:
        me = os.getpid()
        _add(flt, sc.ALLOW, "kill", sc.Arg(0, sc.EQ, me))
        _add(flt, sc.KILL_PROCESS, "kill", sc.Arg(0, sc.NE, me))
        _add(flt, sc.ALLOW, "tgkill", sc.Arg(0, sc.EQ, me))
        _add(flt, sc.KILL_PROCESS, "tgkill", sc.Arg(0, sc.NE, me))
        # Threads and forks, never new namespaces (ENOSYS, the default).
        _add(flt, sc.ALLOW, "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_NAMESPACE_FLAGS, 0))
        _add(flt, sc.ERRNO(errno.ENOSYS), "clone3")
    return flt


def install_role(role: str, learn: bool = False) -> None:
    """Load `role`'s filter on the calling process (every thread it starts
    after this inherits it; call it before starting any)."""
    build(role, learn).load()


def install_generic() -> None:
    """A standby process's filter until it is given a role: everything but
    the calls no domain ever makes (KILLED less what building its root
    needs: mount, umount2, pivot_root, open_tree, move_mount, mount_setattr)."""
    import pyseccomp as sc

    flt = sc.SyscallFilter(sc.ALLOW)
    for name in sorted(KILLED - SETUP_CALLS):
        _add(flt, sc.KILL_PROCESS, name)
    flt.load()
