"""Domain processes: spawn, signal, reap.

A domain is an OS process. It is started with exactly the file descriptors
that are its capabilities (its RAM, grant-table and shared-info segments, its
memory channel) and nothing else, which is why this uses subprocess with an
explicit `pass_fds` rather than a fork of the hypervisor: a fork would hand
every domain every other domain's memory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil

START_INFO_ENV = "PYXEN_START_INFO"


class DomainProcess:
    """One running domain process, watched through a pidfd."""

    def __init__(self, start_info: dict, pass_fds: list[int], log_path: Path) -> None:
        env = dict(os.environ)
        env[START_INFO_ENV] = json.dumps(start_info)
        with open(log_path, "ab") as log:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "domains.kernel.boot"],
                stdin=subprocess.DEVNULL,
                stdout=log,
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
