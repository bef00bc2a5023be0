"""A Machine with no processes and no sockets, for the hypervisor's pure tests.

Domains are real (memfd RAM, grant tables, event channels) but their
"process" is a stand-in whose pid is a real, idle two-thread child process
of the test (so that the hypervisor's /proc checks of vCPU threads have
threads to find), and the transport records what would go on the wire.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from hypervisor.domain import Domain
from hypervisor.machine import Machine, Platform
from hypervisor.memchan import MemChannel
from hypervisor.process import DomainProcess
from hypervisor.tasks import thread_ids

IDLE_THREADS = ("import threading, time\n"
                "threading.Thread(target=time.sleep, args=(1e6,), daemon=True).start()\n"
                "print(flush=True)\n"
                "time.sleep(1e6)\n")


class Sleeper:
    """An idle child process with two threads."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", IDLE_THREADS],
                                     stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        self.proc.stdout.readline()  # both threads are up
        self.pid = self.proc.pid

    def tids(self) -> list[int]:
        return sorted(thread_ids(self.pid))

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()


class FakeProcess(DomainProcess):
    """A domain process that is not started: the methods the machine calls
    on a running domain, recorded (DomainProcess's own start is skipped)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.pidfd = -1
        self.exit_status: int | None = None
        self.signals: list[int] = []

    @property
    def alive(self) -> bool:
        return self.exit_status is None

    def signal(self, sig: int) -> None:
        self.signals.append(sig)

    def kill(self) -> None:
        self.exit_status = -9

    def reap(self) -> int | None:
        return self.exit_status

    def close(self) -> None:
        pass

    def cpu_time(self) -> int:
        return 0

    def running(self) -> bool:
        return False


class FakeTransport:
    def __init__(self) -> None:
        self.replies: list[tuple[Any, int, Any]] = []
        self.upcalls: list[tuple[int, int]] = []

    def endpoints(self, domid: int) -> dict[str, str]:
        return {}

    def attach(self, dom: Domain) -> None:
        pass

    def detach(self, dom: Domain) -> None:
        pass

    def upcall(self, domid: int, port: int) -> None:
        self.upcalls.append((domid, port))

    def reply(self, token: Any, rc: int, result: Any) -> None:
        self.replies.append((token, rc, result))


class FakeMachine(Machine):
    """Domains whose process is `sleeper`'s; their memory channel's other
    end is kept (and closed with the machine)."""

    def __init__(self, sleeper: Sleeper, run_dir: Path, pcpus: int = 2,
                 memory: int = 1024, fd_limit: int | None = None) -> None:
        super().__init__(Platform("virt", pcpus, memory), run_dir, FakeTransport(),
                         fd_limit=fd_limit)
        self.sleeper = sleeper
        self.peer_ends: list[socket.socket] = []

    def _spawn(self, dom: Domain, config: dict) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for end in (ours, theirs):
            end.setblocking(False)  # a full channel is an error here, not a hang
        dom.memchan = MemChannel(ours)
        self.peer_ends.append(theirs)
        dom.process = FakeProcess(self.sleeper.pid)
        self.transport.attach(dom)

    def add(self, name: str, vcpus: int = 1, memory_mib: int = 16, ready: bool = True,
            domid: int | None = None, privileged: bool = False, **config: Any) -> Domain:
        dom = self.create_domain({"name": name, "max_vcpus": vcpus,
                                  "max_memkb": memory_mib * 1024, **config},
                                 domid=domid, privileged=privileged)
        if ready:
            self.domain_ready(dom, self.sleeper.tids()[:vcpus])
        return dom

    def close(self) -> None:
        self.halt("test over")
        for end in self.peer_ends:
            end.close()


def drain(sock: socket.socket) -> int:
    """Receive and close every fd waiting on a memory channel's end."""
    n = 0
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(sock, 4096, 16)
        except BlockingIOError:
            return n
        for fd in fds:
            os.close(fd)
        if not data:
            return n  # the hypervisor's end is closed: its domain is gone
        n += 1
