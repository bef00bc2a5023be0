"""Entry point of a domain process: `python -m domains.kernel.boot`.

The hypervisor passes the start_info (as Xen passes a start_info page) in
the environment, with the fds of the domain's memory already open; or, to a
process it started on standby, both later over a socket.

A sandboxed domain (every one but Dom0, see hypervisor/jail/) is a standby
process of a jailing hypervisor: pid 1 of its own PID namespace, it unshares
its other namespaces before anything else, and once it is handed its domain
it builds its root, becomes its uid and drops its capabilities and system
calls (hypervisor/jail/confine.py) before the kernel runs a line.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import select
import signal
import socket
import sys

import setproctitle

from hypervisor.public.pyxen.start_info import STANDBY_ENV, START_INFO_ENV
from hypervisor.public.pyxen.title import process_title
from hypervisor.public.sched import SHUTDOWN_crash

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
JAIL_ENV = "PYXEN_JAIL"  # hypervisor/jail/sandbox.py's


def die_with_hypervisor(hv_pid: int, hv_sock: socket.socket | None = None) -> None:
    """A domain cannot outlive its hypervisor: the kernel kills us if it dies.
    If it died before the prctl took effect, we go now: our parent is then
    someone else (outside our PID namespace, where our ppid reads 0, the
    hypervisor's socket tells instead: it hangs up)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if hv_sock is not None and os.getppid() == 0:
        poller = select.poll()
        poller.register(hv_sock, select.POLLHUP)
        if poller.poll(0):
            os._exit(1)
    elif os.getppid() != hv_pid:
        os._exit(1)


def load_entry(spec: str):
    module, _, function = spec.partition(":")
    return getattr(importlib.import_module(module), function or "main")


class Standby:
    """A process started ahead of need (see hypervisor/process.py): import
    what kernels use, then wait for a domain's start_info and fds."""

    def __init__(self, spec: str, jail_mode: str | None) -> None:
        fd, hv_pid = (int(x) for x in spec.split(":"))
        self.sock = socket.socket(fileno=fd)
        self.jail_mode = jail_mode
        self.jail: dict | None = None
        self.jail_fds: list[int] = []
        die_with_hypervisor(hv_pid, self.sock)
        if jail_mode:
            from hypervisor.jail import confine

            confine.enter(self.sock, seccomp="seccomp" in jail_mode)
        setproctitle.setproctitle(process_title("standby"))
        for module in STANDBY_IMPORTS + (JAIL_IMPORTS if jail_mode else ()):
            importlib.import_module(module)

    def wait(self) -> dict:
        data, fds, _, _ = socket.recv_fds(self.sock, 1 << 20, 64)
        if not data:
            os._exit(0)  # retired unused
        message = json.loads(data)
        log, *rest = fds
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        names = message["fds"]
        start_info = message["start_info"]
        start_info["fds"] = dict(zip(names, rest[:len(names)]))
        self.jail = message.get("jail")
        self.jail_fds = rest[len(names):]
        if self.jail is None:
            self.sock.close()
        return start_info


# What kernels import (a standby process imports it before it is needed).
STANDBY_IMPORTS = ("domains.kernel.kernel", "domains.driver.main", "domains.guest.workloads")
# ... and what a jailed one needs before its root hides the host's files
# (pyseccomp finds libseccomp with ldconfig).
JAIL_IMPORTS = ("hypervisor.jail.confine", "pyseccomp", "domains.kernel.netns")


def confine_plain(sandbox: dict) -> None:
    """Dom0, or any domain without namespaces: the layers a process can give
    itself: no new privileges, not dumpable, its role's seccomp filter."""
    from hypervisor.jail import capabilities, seccomp_policy

    capabilities.no_new_privs()
    capabilities.libc.prctl(PR_SET_DUMPABLE, 0)
    if sandbox.get("seccomp"):
        seccomp_policy.install_role(sandbox["role"], sandbox.get("learn", False))


def main() -> None:
    jail_mode = os.environ.pop(JAIL_ENV, None)
    spec = os.environ.pop(STANDBY_ENV, None)
    standby = None
    if spec is not None:
        standby = Standby(spec, jail_mode)
        start_info = standby.wait()
    else:
        start_info = json.loads(os.environ.pop(START_INFO_ENV))
    if start_info.get("log_json"):
        # Before anything can print or raise: every line of the log is JSON.
        from domains.kernel.log import json_output

        json_output(start_info["name"], start_info["domid"])
    from domains.kernel.kernel import Kernel, parse_cmdline

    own_net = "netns" in parse_cmdline(start_info.get("cmdline", ""))
    if standby is not None and standby.jail is not None:
        from hypervisor.jail import confine

        confined = confine.confine(standby.jail, standby.jail_fds, standby.sock)
        standby.sock.close()
        if confined.uplinks:
            from domains.kernel.netns import give_uplinks

            give_uplinks(confined.uplinks)
        if confined.guest:
            # Its network namespace is the jail's own, empty until a vif's
            # TAP is made there on an fd the hypervisor hands over.
            from domains.kernel.netns import use_sandbox_netns

            use_sandbox_netns()
    else:
        die_with_hypervisor(start_info["hv_pid"])
        if own_net:
            # Before any thread exists: a namespace is per thread, and
            # threads inherit their creator's.
            from domains.kernel.netns import can_use_netns, enter_new_netns

            if can_use_netns()[0]:
                enter_new_netns()
        if start_info.get("sandbox"):
            confine_plain(start_info["sandbox"])
    setproctitle.setproctitle(process_title(f"dom{start_info['domid']} {start_info['name']}"))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the toolstack

    kernel = Kernel(start_info)
    try:
        load_entry(start_info["kernel"])(kernel)
    except SystemExit:
        raise
    except BaseException:
        # A kernel panic: say why, and crash the domain as Xen guests do.
        sys.excepthook(*sys.exc_info())  # JSON with --log-json (see log.py)
        sys.stdout.flush()
        if kernel.is_ready:
            kernel.shutdown(SHUTDOWN_crash)
        os._exit(1)
    kernel.shutdown()


if __name__ == "__main__":
    main()
