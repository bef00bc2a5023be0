"""Hostile guests: the OS-level attacks of issue 12, as workloads.

Each is the "kernel" of a guest (`workload = "tests.hostile:NAME"`) and
reports on a FIFO the test binds into its sandbox (`out=PATH`). The host
pids of the processes it goes after come on its command line (`victim=`,
`hv=`, `dom0=`), as an attacker who read them off `ps` would have them.

`probe` tries every attack a sandbox answers with an error and reports what
each one got; `attack` makes one call the seccomp filter answers by killing
the caller (it says `ready` first: if it ever reports again, it survived);
`hog` allocates 1 GiB in a small domain.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import socket

PR_GET_DUMPABLE = 3
PR_GET_SECCOMP = 21
PR_GET_NO_NEW_PRIVS = 39
CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000

_libc = ctypes.CDLL(None, use_errno=True)


def _send(path: str, obj) -> None:
    with open(path, "w") as f:
        f.write(json.dumps(obj) + "\n")


def _outcome(fn) -> str:
    """"ok" or the errno's name (ENOENT, EROFS ...)."""
    try:
        fn()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return "ok"


def _connect(path: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)


def _fork_bomb(limit: int = 200) -> dict:
    """Fork up to `limit` children that wait on a pipe; how many it got."""
    r, w = os.pipe()
    children, error = [], "ok"
    for _ in range(limit):
        try:
            pid = os.fork()
        except OSError as exc:
            error = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            break
        if pid == 0:
            os.close(w)
            os.read(r, 1)
            os._exit(0)
        children.append(pid)
    os.close(w)  # they all read EOF and go
    os.close(r)
    for pid in children:
        os.waitpid(pid, 0)
    return {"forked": len(children), "error": error}


def _capabilities() -> int:
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    data = (ctypes.c_uint32 * 6)()
    nr = {"x86_64": 125, "aarch64": 90}[os.uname().machine]
    if _libc.syscall(ctypes.c_long(nr), header, data) != 0:
        return -1
    return data[0] | data[3] << 32  # effective, both words


def probe(kernel) -> None:
    kernel.ready()
    args = kernel.args
    victim, hv = int(args["victim"]), int(args["hv"])
    run_dir = kernel.start_info["run_dir"]
    source = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    report = {
        # The open is the probe; the guest process ends right after.
        "proc_mem": _outcome(lambda: open(f"/proc/{victim}/mem", "rb").read(1)),  # noqa: SIM115
        "hv_fds": _outcome(lambda: os.listdir(f"/proc/{hv}/fd")),
        "map_files": _outcome(lambda: os.listdir(f"/proc/{victim}/map_files")),
        "host_netns": _outcome(lambda: open("/proc/1/ns/net", "rb").close()),
        "control_socket": _outcome(lambda: _connect(f"{run_dir}/control.sock")),
        "xenstored_socket": _outcome(lambda: _connect(f"{run_dir}/xenstored/socket")),
        "other_image": _outcome(lambda: open(f"{run_dir}/disks/{args['image']}", "rb")
                                .close()),
        "shadow": _outcome(lambda: open("/etc/shadow", "rb").close()),
        "source_write": _outcome(lambda: open(f"{source}/hypervisor/__init__.py", "a")
                                 .close()),
        "source_create": _outcome(lambda: open(f"{source}/hypervisor/evil.py", "w")
                                  .close()),
        "run_dir": sorted(os.listdir(run_dir)),
        "hv_dir": sorted(os.listdir(f"{run_dir}/hv")),
        "root": sorted(os.listdir("/")),
        "uid": os.getuid(),
        "caps": _capabilities(),
        "no_new_privs": _libc.prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0),
        "dumpable": _libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0),
        "seccomp": _libc.prctl(PR_GET_SECCOMP, 0, 0, 0, 0),
        "pid": os.getpid(),
        "environ": sorted(os.environ),
        "fork_bomb": _fork_bomb(),
    }
    _send(args["out"], report)
    kernel.heartbeat()  # and lives on


def _syscall(name: str, *args: int) -> int:
    import pyseccomp

    nr = pyseccomp.resolve_syscall(pyseccomp.system_arch(), name)
    return _libc.syscall(ctypes.c_long(nr), *(ctypes.c_long(a) for a in args))


def _attacks(victim: int, hv: int, dom0: int) -> dict:
    return {
        "ptrace": lambda: _syscall("ptrace", 16, victim, 0, 0),  # PTRACE_ATTACH
        "process_vm_readv": lambda: _syscall("process_vm_readv", victim, 0, 0, 0, 0, 0),
        "process_vm_writev": lambda: _syscall("process_vm_writev", victim, 0, 0, 0, 0, 0),
        "pidfd_open": lambda: _syscall("pidfd_open", victim, 0),
        "pidfd_getfd": lambda: _syscall("pidfd_getfd", 0, 3, 0),
        "pidfd_send_signal": lambda: _syscall("pidfd_send_signal", 0, 9, 0, 0),
        "kill_hypervisor": lambda: os.kill(hv, signal.SIGKILL),
        "stop_dom0": lambda: os.kill(dom0, signal.SIGSTOP),
        "kill_all": lambda: os.kill(-1, signal.SIGKILL),
        "tgkill_other": lambda: _syscall("tgkill", dom0, dom0, 9),
        "setns": lambda: _syscall("setns", 0, CLONE_NEWNET),
        "unshare": lambda: _syscall("unshare", CLONE_NEWUSER),
        "mount": lambda: _libc.mount(b"proc", b"/tmp", b"proc", 0, None),
        "pivot_root": lambda: _syscall("pivot_root", 0, 0),
        "bpf": lambda: _syscall("bpf", 0, 0, 0),
        "perf_event_open": lambda: _syscall("perf_event_open", 0, 0, -1, -1, 0),
        "keyctl": lambda: _syscall("keyctl", 0, 0, 0, 0, 0),
        "add_key": lambda: _syscall("add_key", 0, 0, 0, 0, 0),
        "init_module": lambda: _syscall("init_module", 0, 0, 0),
        "finit_module": lambda: _syscall("finit_module", 0, 0, 0),
    }


ATTACKS = tuple(_attacks(0, 0, 0))


def attack(kernel) -> None:
    kernel.ready()
    args = kernel.args
    name = args["attack"]
    call = _attacks(int(args["victim"]), int(args["hv"]), int(args["dom0"]))[name]
    _send(args["out"], {"ready": name})
    try:
        result = call()
    except OSError as exc:
        result = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    _send(args["out"], {"survived": name, "result": str(result),
                        "errno": ctypes.get_errno()})
    kernel.heartbeat()


def hog(kernel) -> None:
    """Touch 1 GiB, 16 MiB at a time, saying how far it got."""
    kernel.ready()
    held = []
    _send(kernel.args["out"], {"ready": True})
    for _ in range(64):
        chunk = bytearray(16 << 20)
        chunk[::4096] = b"\1" * (len(chunk) // 4096)  # every page written
        held.append(chunk)
    _send(kernel.args["out"], {"survived": True, "mib": 16 * len(held)})
    kernel.heartbeat()
