"""Domain processes: spawn, signal, reap.

A domain is an OS process. It is started with exactly the file descriptors
that are its capabilities (its RAM, grant-table and shared-info segments, its
memory channel) and nothing else, which is why this uses subprocess with an
explicit `pass_fds` rather than a fork of the hypervisor: a fork would hand
every domain every other domain's memory.

Starting Python and importing the kernel takes a few hundred milliseconds,
most of a driver domain's restart. So the hypervisor keeps one process on
standby (StandbyPool): started ahead, imports done, holding no capability
until it is handed a domain's fds over its socket (SCM_RIGHTS).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil

from hypervisor.public.pyxen.start_info import STANDBY_ENV, START_INFO_ENV


class DomainProcess:
    """One running domain process, watched through a pidfd."""

    def __init__(self, start_info: dict, pass_fds: list[int], log_path: Path) -> None:
        env = dict(os.environ)
        env[START_INFO_ENV] = json.dumps(start_info)
        with open(log_path, "ab") as log:
            self._start(pass_fds, log, env)
        self.standby: socket.socket | None = None

    def _start(self, pass_fds: list[int], out, env: dict) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "domains.kernel.boot"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            pass_fds=pass_fds,
            env=env,
            close_fds=True,
        )
        self.pid = self.popen.pid
        self.pidfd = os.pidfd_open(self.pid)
        self.exit_status: int | None = None
        self.cpu_time_ns = 0
        self._ps = psutil.Process(self.pid)

    @classmethod
    def on_standby(cls) -> "DomainProcess":
        """A domain process started ahead of need: it does the slow part of
        starting (the interpreter and the kernel's imports) and then waits,
        holding no capability, until `assign` hands it a domain."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        proc = cls.__new__(cls)
        try:
            env = dict(os.environ)
            env[STANDBY_ENV] = f"{theirs.fileno()}:{os.getpid()}"
            proc._start([theirs.fileno()], subprocess.DEVNULL, env)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        proc.standby = ours
        return proc

    def assign(self, start_info: dict, fds: dict[str, int], log_path: Path) -> None:
        """Make this standby process the domain of `start_info`: it gets the
        domain's fds (and its log as stdout) now, as a cold start gets them
        at exec."""
        names = list(fds)
        with open(log_path, "ab") as log:
            socket.send_fds(self.standby, [json.dumps({"start_info": start_info,
                                                       "fds": names}).encode()],
                            [log.fileno(), *(fds[n] for n in names)])
        self.standby.close()
        self.standby = None

    def retire(self) -> None:
        """A standby process no longer needed: end it."""
        if self.standby is not None:
            self.standby.close()  # it reads EOF and exits...
            self.standby = None
        self.kill()  # ...or is killed, and reaped either way
        self.close()

    @property
    def alive(self) -> bool:
        return self.exit_status is None

    def reap(self) -> int | None:
        """Collect the exit status if the process has ended (non-blocking)."""
        if self.exit_status is not None:
            return self.exit_status
        try:
            pid, status, rusage = os.wait4(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status, rusage = self.pid, 0, None
        if pid == 0:
            return None
        self.exit_status = os.waitstatus_to_exitcode(status)
        self.popen.returncode = self.exit_status  # we reaped it, not Popen
        if rusage is not None:
            self.cpu_time_ns = int((rusage.ru_utime + rusage.ru_stime) * 1e9)
        return self.exit_status

    def signal(self, sig: int) -> None:
        if self.alive:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """SIGKILL and reap: destroy must not leave a zombie behind."""
        self.signal(signal.SIGKILL)
        if self.alive:
            os.waitid(os.P_PIDFD, self.pidfd, os.WEXITED | os.WNOWAIT)
            self.reap()

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1

    def cpu_time(self) -> int:
        if not self.alive:
            return self.cpu_time_ns
        try:
            t = self._ps.cpu_times()
            return int((t.user + t.system) * 1e9)
        except psutil.Error:
            return self.cpu_time_ns

    def running(self) -> bool:
        """True when the kernel reports the process on a CPU right now."""
        try:
            return self._ps.status() == psutil.STATUS_RUNNING
        except psutil.Error:
            return False


def thread_stat(pid: int, tid: int) -> tuple[int, int, str]:
    """(cpu time ns, last CPU, state letter) of one thread, from /proc."""
    try:
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            data = f.read()
    except OSError:
        return 0, -1, "X"
    # comm may contain spaces and parentheses: split after the last ')'.
    fields = data[data.rindex(")") + 2:].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu_ns = (int(fields[11]) + int(fields[12])) * 1_000_000_000 // ticks
    return cpu_ns, int(fields[36]), fields[0]


class StandbyPool:
    """At most one standby domain process, replaced as soon as it is used."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.spare: DomainProcess | None = None

    def take(self) -> DomainProcess | None:
        spare, self.spare = self.spare, None
        if spare is not None and spare.reap() is not None:
            spare.close()  # it died waiting: start cold
            return None
        return spare

    def refill(self) -> None:
        if self.enabled and self.spare is None:
            try:
                self.spare = DomainProcess.on_standby()
            except OSError:
                self.spare = None  # cold starts still work

    def close(self) -> None:
        self.enabled = False
        spare, self.spare = self.spare, None
        if spare is not None:
            spare.retire()
