"""Capabilities, no_new_privs and dumpability of a domain process.

After its root is built the domain keeps no capability (effective,
permitted, inheritable and ambient sets empty, bounding set cleared), with
one exception: a guest with its own network keeps CAP_NET_ADMIN, which is
only worth anything in its own network namespace (it configures its TAP
`eth0` there). Its root uid gets no capability back at an exec either
(SECBIT_NOROOT, locked), it can gain no privilege (PR_SET_NO_NEW_PRIVS),
and it is not dumpable: no core file, and its /proc entries belong to the
host's root.
"""

from __future__ import annotations

import ctypes

from hypervisor.jail import libc

CAP_NET_BIND_SERVICE = 10
CAP_NET_ADMIN = 12
CAP_SETPCAP = 8

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

SECBIT_NOROOT = 1 << 0
SECBIT_NOROOT_LOCKED = 1 << 1
SECBIT_NO_SETUID_FIXUP = 1 << 2
SECBIT_NO_SETUID_FIXUP_LOCKED = 1 << 3
SECBIT_KEEP_CAPS_LOCKED = 1 << 5
SECBIT_NO_CAP_AMBIENT_RAISE = 1 << 6
SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED = 1 << 7
LOCKED_SECUREBITS = (SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP
                     | SECBIT_NO_SETUID_FIXUP_LOCKED | SECBIT_KEEP_CAPS_LOCKED
                     | SECBIT_NO_CAP_AMBIENT_RAISE | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED)

_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_CAP_WORDS = 2
_SYS_CAPSET = {"x86_64": 126, "aarch64": 91}
_SYS_CAPGET = {"x86_64": 125, "aarch64": 90}


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _arch_nr(table: dict[str, int]) -> int:
    import os

    machine = os.uname().machine
    if machine not in table:
        raise OSError(38, f"capabilities: unknown syscall number on {machine}")
    return table[machine]


def capset(caps: int) -> None:
    """Effective = permitted = `caps` (a bit mask), inheritable empty."""
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * _CAP_WORDS)()
    for word in range(_CAP_WORDS):
        bits = (caps >> (32 * word)) & 0xFFFFFFFF
        data[word].effective = data[word].permitted = bits
        data[word].inheritable = 0
    libc.check(libc.syscall(_arch_nr(_SYS_CAPSET), ctypes.byref(header), data), "capset")


def capget() -> tuple[int, int, int]:
    """(effective, permitted, inheritable) of the calling thread."""
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * _CAP_WORDS)()
    libc.check(libc.syscall(_arch_nr(_SYS_CAPGET), ctypes.byref(header), data), "capget")
    out = [0, 0, 0]
    for word in range(_CAP_WORDS):
        for i, field in enumerate(("effective", "permitted", "inheritable")):
            out[i] |= getattr(data[word], field) << (32 * word)
    return out[0], out[1], out[2]


def clear_bounding_set() -> None:
    """Drop every capability from the bounding set (up to the kernel's last;
    needs CAP_SETPCAP, so it comes before capset)."""
    for cap in range(64):
        try:
            libc.prctl(PR_CAPBSET_DROP, cap)
        except OSError as exc:
            if exc.errno == 22:  # EINVAL: past the kernel's last capability
                break
            raise


def drop_all(keep: frozenset[int] = frozenset()) -> None:
    """Leave the process with only the capabilities in `keep`, none to gain
    back, no new privileges ever, and not dumpable."""
    libc.prctl(PR_SET_SECUREBITS, LOCKED_SECUREBITS)
    clear_bounding_set()
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    capset(sum(1 << c for c in keep))
    no_new_privs()
    libc.prctl(PR_SET_DUMPABLE, 0)


def no_new_privs() -> None:
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1)


#: What a guest with its own network namespace keeps (see the module's doc).
NET_CAPABILITIES = frozenset({CAP_NET_ADMIN, CAP_NET_BIND_SERVICE})
