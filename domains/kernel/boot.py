"""Entry point of a domain process: `python -m domains.kernel.boot`.

The hypervisor passes the start_info (as Xen passes a start_info page) in
the environment, with the fds of the domain's memory already open; or, to a
process it started on standby, both later over a socket.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import signal
import socket
import sys
import traceback

import setproctitle

from hypervisor.public.pyxen.start_info import STANDBY_ENV, START_INFO_ENV
from hypervisor.public.sched import SHUTDOWN_crash

PR_SET_PDEATHSIG = 1


def die_with_hypervisor(hv_pid: int) -> None:
    """A domain cannot outlive its hypervisor: the kernel kills us if it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != hv_pid:  # it died before the prctl took effect
        os._exit(1)


def load_entry(spec: str):
    module, _, function = spec.partition(":")
    return getattr(importlib.import_module(module), function or "main")


def wait_on_standby(spec: str) -> dict:
    """A process started ahead of need (see hypervisor/process.py): import
    what kernels use, then wait for a domain's start_info and fds."""
    fd, hv_pid = (int(x) for x in spec.split(":"))
    die_with_hypervisor(hv_pid)
    setproctitle.setproctitle("pyxen: standby")
    for module in STANDBY_IMPORTS:
        importlib.import_module(module)
    with socket.socket(fileno=fd) as sock:
        data, fds, _, _ = socket.recv_fds(sock, 1 << 16, 16)
    if not data:
        os._exit(0)  # retired unused
    message = json.loads(data)
    log, *capabilities = fds
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    start_info = message["start_info"]
    start_info["fds"] = dict(zip(message["fds"], capabilities))
    return start_info


# What kernels import (a standby process imports it before it is needed).
STANDBY_IMPORTS = ("domains.kernel.kernel", "domains.driver.main", "domains.guest.workloads")


def main() -> None:
    standby = os.environ.pop(STANDBY_ENV, None)
    if standby is not None:
        start_info = wait_on_standby(standby)
    else:
        start_info = json.loads(os.environ.pop(START_INFO_ENV))
    die_with_hypervisor(start_info["hv_pid"])
    setproctitle.setproctitle(f"pyxen: dom{start_info['domid']} {start_info['name']}")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the toolstack

    from domains.kernel.kernel import Kernel, parse_cmdline

    if "netns" in parse_cmdline(start_info.get("cmdline", "")):
        # Before any thread exists: a namespace is per thread, and threads
        # inherit their creator's.
        from frontends.netfront.tap import can_use_netns, enter_new_netns

        if can_use_netns()[0]:
            enter_new_netns()
    kernel = Kernel(start_info)
    try:
        load_entry(start_info["kernel"])(kernel)
    except SystemExit:
        raise
    except BaseException:
        # A kernel panic: say why, and crash the domain as Xen guests do.
        traceback.print_exc()
        sys.stdout.flush()
        if kernel.is_ready:
            kernel.shutdown(SHUTDOWN_crash)
        os._exit(1)
    kernel.shutdown()


if __name__ == "__main__":
    main()
