"""The guest kernel: what every domain process runs under its role.

It maps the memory the hypervisor handed over, connects the hypercall and
upcall channels, brings up one thread per vCPU and offers the role the
services a Xen guest kernel has: hypercalls, event channels, grant tables,
a virtual timer, shutdown.
"""

from __future__ import annotations

import mmap
import os
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING

import zmq

from domains.kernel.console import Console, ConsoleTee
from domains.kernel.control import watch_shutdown
from domains.kernel.events import EventChannels
from domains.kernel.fdtable import FdTable
from domains.kernel.gnttab import GrantTable, Windows
from domains.kernel.hypercall import Hypercalls
from domains.kernel.log import make_logger
from domains.kernel.memchan import MemChannel
from domains.kernel.threads import OwnedThread
from domains.kernel.workqueue import WorkQueue
from domains.kernel.xenstore import connect_ring
from hypervisor.public.sched import SCHEDOP_shutdown, SCHEDOP_watchdog, SHUTDOWN_poweroff
from hypervisor.public.xen import (
    PAGE_SIZE,
    VIRQ_TIMER,
    HYPERVISOR_pyxen_op,
    HYPERVISOR_sched_op,
    HYPERVISOR_set_timer_op,
    PYXEN_op_ready,
)


class VCpu(OwnedThread):
    """A vCPU beyond vCPU0: a thread that runs what the role gives it."""

    def __init__(self, index: int) -> None:
        super().__init__(f"vcpu{index}")
        self.index = index
        self.work: list = []
        self.wake = threading.Condition()
        self.started_tid = threading.Event()

    def run(self) -> None:
        self.started_tid.set()
        while True:
            with self.wake:
                while not self.work:
                    self.wake.wait()
                fn = self.work.pop(0)
            if fn is None:
                return
            fn()

    def submit(self, fn) -> None:
        with self.wake:
            self.work.append(fn)
            self.wake.notify()

    def stop(self, timeout: float = 5.0) -> None:
        """After what it was given: the thread ends, and is joined."""
        self.submit(None)
        if self is not threading.current_thread():
            self.join(timeout)


class Kernel:
    def __init__(self, start_info: dict) -> None:
        self.start_info = start_info
        self.domid: int = start_info["domid"]
        self.name: str = start_info["name"]
        self.privileged: bool = start_info["privileged"]
        self.cmdline: str = start_info.get("cmdline", "")
        self.args = parse_cmdline(self.cmdline)
        self.log = make_logger(self.name, self.domid, start_info.get("log_json", False))
        fds = start_info["fds"]
        self.ram = mmap.mmap(fds["ram"], start_info["nr_pages"] * PAGE_SIZE)
        self.shared_info = mmap.mmap(fds["shared_info"], 0)
        entries = mmap.mmap(fds["gnttab"], 0)
        # The status frames are the hypervisor's to write: mapped read-only.
        status = mmap.mmap(fds["gntstatus"], 0, prot=mmap.PROT_READ)
        for key in ("ram", "shared_info", "gnttab", "gntstatus"):
            os.close(fds[key])
        # Read by the upcall loop and by whoever needs a window: the sinks
        # (windows, doorbells) are in place before the loop starts.
        self.memchan = MemChannel(socket.socket(fileno=fds["memchan"]), self.log)
        windows = Windows(self.memchan)
        # Devices' fds (images, TAPs) the hypervisor opened for us, by key.
        self.fds = FdTable(self.memchan)
        self.ctx = zmq.Context()
        self.hypercall = Hypercalls(self.ctx, start_info["hypercall"],
                                    start_info.get("hypercall_channels"))
        self.events = EventChannels(self.hypercall, self.ctx, start_info,
                                    self.shared_info, self.log, memchan=self.memchan)
        self.gnttab = GrantTable(self.hypercall, entries, status,
                                 start_info["gnttab_frames"], windows)
        self.vcpus = [VCpu(i) for i in range(1, start_info["max_vcpus"])]
        for vcpu in self.vcpus:
            vcpu.start()
            vcpu.started_tid.wait()
        self._timer_fired = threading.Event()
        self.events.bind_virq(VIRQ_TIMER, lambda port: self._timer_fired.set())
        self.is_ready = False
        # Dom0 hosts xenstored and reaches it over its unix socket (see
        # domains.dom0.main); every other domain gets a xenstore ring.
        self.xenstore = None
        self.console: Console | None = None
        self.announce: dict = {}
        if not self.privileged:
            self.xenstore, self.announce["store"] = connect_ring(self)
            self.console = Console(self)
            self.announce["console"] = self.console.announce
            # Prints and logs go to the console too (and to the domain log).
            sys.stdout = ConsoleTee(sys.stdout, self.console)  # JSON lines or not
            self.log = make_logger(self.name, self.domid,
                                   start_info.get("log_json", False), sys.stdout)
        # Where drivers' xenbus work runs (handshakes, reconnects, closes):
        # the xenbus watch thread stays free to deliver what they wait for.
        self.work = WorkQueue(self.log)

    # -- boot -------------------------------------------------------------------

    def ready(self) -> None:
        """Tell the hypervisor this domain has booted (its creator waits for it)."""
        tids = [threading.get_native_id()] + [v.native_id for v in self.vcpus]
        self.hypercall(HYPERVISOR_pyxen_op, PYXEN_op_ready,
                       {"vcpu_tids": tids, "announce": self.announce})
        self.is_ready = True
        if not self.privileged:
            # Blocks until the toolstack has introduced us to xenstored.
            watch_shutdown(self)
        self.log.info("booted", vcpus=len(tids), memory_mib=len(self.ram) >> 20)

    def close(self, timeout: float = 60.0) -> None:
        """Stop the kernel's threads and join them: the work queue (after
        the work queued: close the drivers first, their close handshakes
        run there), the XenStore client's, the upcall loop, the vCPUs.
        Hypercalls still work after (shutdown())."""
        self.work.close(timeout)
        if self.xenstore is not None:
            self.xenstore.close()
        self.events.stop()
        for vcpu in self.vcpus:
            vcpu.stop()

    # -- time -------------------------------------------------------------------

    @staticmethod
    def system_time() -> int:
        """Xen's NOW(): ns of CLOCK_MONOTONIC, the same clock in every domain."""
        return time.monotonic_ns()

    def set_timer(self, deadline_ns: int) -> None:
        self.hypercall(HYPERVISOR_set_timer_op, 0, {"timeout": deadline_ns})

    def sleep(self, seconds: float) -> None:
        """Block until VIRQ_TIMER fires at now + seconds."""
        self._timer_fired.clear()
        self.set_timer(self.system_time() + max(1, int(seconds * 1e9)))
        self._timer_fired.wait()

    # -- watchdog -----------------------------------------------------------------

    def watchdog(self, timeout_s: int, wd_id: int = 0) -> int:
        """SCHEDOP_watchdog: arm (id 0) or poke a watchdog; returns its id."""
        return self.hypercall(HYPERVISOR_sched_op, SCHEDOP_watchdog,
                              {"id": wd_id, "timeout": timeout_s})

    def heartbeat(self, timeout_s: int = 3, period_s: float = 1.0) -> None:
        """Poke a watchdog forever from this thread, on the virtual timer: if
        the domain stops running, the hypervisor shuts it down (on_watchdog)."""
        wd_id = self.watchdog(timeout_s)
        while True:
            self.sleep(period_s)
            self.watchdog(timeout_s, wd_id)

    # -- shutdown -----------------------------------------------------------------

    def shutdown(self, reason: int = SHUTDOWN_poweroff) -> None:
        """SCHEDOP_shutdown, then the process ends: the domain is gone."""
        self.log.info("shutting down", reason=reason)
        self.hypercall(HYPERVISOR_sched_op, SCHEDOP_shutdown, {"reason": reason})
        os._exit(0)


def parse_cmdline(cmdline: str) -> dict[str, str]:
    """`key=value` words of the kernel command line (a bare word maps to "")."""
    args: dict[str, str] = {}
    for word in cmdline.split():
        key, _, value = word.partition("=")
        args[key] = value
    return args


if TYPE_CHECKING:
    from domains.kernel.api import DriverKernel

    def _fits(kernel: Kernel) -> DriverKernel:
        """mypy checks here that the real kernel is what drivers are written against."""
        return kernel
