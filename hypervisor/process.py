"""Domain processes: spawn, signal, reap.

A domain is an OS process. It is started with exactly the file descriptors
that are its capabilities (its RAM, grant-table and shared-info segments, its
memory channel) and nothing else, which is why this uses subprocess with an
explicit `pass_fds` rather than a fork of the hypervisor: a fork would hand
every domain every other domain's memory. Its environment is an allow-list
(hypervisor/jail/env.py).

Starting Python and importing the kernel takes a few hundred milliseconds,
most of a driver domain's restart. So the hypervisor keeps one process on
standby (StandbyPool): started ahead, imports done, holding no capability
until it is handed a domain's fds over its socket (SCM_RIGHTS).

Sandboxed (hypervisor/jail/), every domain but Dom0 starts that way, the
standby process and a cold start alike: the hypervisor spawns it as pid 1
of a new PID namespace (still its direct child), it unshares its other
namespaces at once and says so on its socket; when it is given a domain the
hypervisor writes its uid map, makes its cgroup, and sends the domain with
the jail's plan; the process builds its root, drops to its uid and
capabilities, loads its role's seccomp filter and boots.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil

from hypervisor.jail.confine import READY
from hypervisor.jail.namespaces import children_in_new_pid_namespace
from hypervisor.jail.sandbox import JAIL_ENV, Jail, Sandbox
from hypervisor.public.pyxen.start_info import STANDBY_ENV, START_INFO_ENV

#: How long a freshly started process may take to unshare its namespaces
#: (it does so first thing; a Python start on a loaded 2-core host).
UNSHARE_TIMEOUT_S = 20.0


class SpawnError(OSError):
    pass


class DomainProcess:
    """One running domain process, watched through a pidfd."""

    def __init__(self, boot_module: str, start_info: dict, pass_fds: list[int],
                 log_path: Path, env: dict[str, str] | None = None) -> None:
        """A cold start outside any jail (Dom0, or --no-sandbox), running
        `python -m boot_module` (the loader names it: the hypervisor knows
        no domain code)."""
        env = dict(os.environ if env is None else env)
        env[START_INFO_ENV] = json.dumps(start_info)
        self.standby: socket.socket | None = None
        self.jail: Jail | None = None
        self.unshared = False
        with open(log_path, "ab") as log:
            self._start(boot_module, pass_fds, log, env)

    def _start(self, boot_module: str, pass_fds: list[int], out, env: dict) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, "-m", boot_module],
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
    def on_standby(cls, boot_module: str, sandbox: Sandbox | None = None
                   ) -> DomainProcess:
        """A domain process started ahead of need: it does the slow part of
        starting (the interpreter and the kernel's imports) and then waits,
        holding no capability, until `assign` hands it a domain. With a
        sandbox that jails, it starts in namespaces of its own."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        proc = cls.__new__(cls)
        proc.standby = None
        proc.jail = None
        proc.unshared = False
        box = sandbox if sandbox is not None and sandbox.jails else None
        try:
            extra = {STANDBY_ENV: f"{theirs.fileno()}:{os.getpid()}"}
            if box is not None:
                extra[JAIL_ENV] = "seccomp" if box.seccomp else "1"
            env = sandbox.environment(**extra) if sandbox is not None else \
                {**os.environ, **extra}
            if box is not None:
                proc.jail = box.new_jail()
                with children_in_new_pid_namespace():
                    proc._start(boot_module, [theirs.fileno()], subprocess.DEVNULL, env)
            else:
                proc._start(boot_module, [theirs.fileno()], subprocess.DEVNULL, env)
        except BaseException:
            ours.close()
            if proc.jail is not None and sandbox is not None:
                sandbox.release(proc.jail)
            raise
        finally:
            theirs.close()
        proc.standby = ours
        return proc

    def wait_unshared(self, timeout: float = UNSHARE_TIMEOUT_S) -> None:
        """Block until a jailed process has its own namespaces (its first
        act), so that its maps can be written. SpawnError if it died first
        or took longer than `timeout`."""
        if self.unshared:
            return
        assert self.standby is not None
        # poll, not select: the hypervisor holds far more than 1024 fds
        # with a few dozen domains.
        waiter = select.poll()
        waiter.register(self.standby, select.POLLIN)
        if not waiter.poll(timeout * 1000):
            raise SpawnError(110, f"process {self.pid} did not set up its namespaces "
                                  f"within {timeout:.0f} s")
        word = self.standby.recv(64)
        if word != READY:
            raise SpawnError(5, f"process {self.pid} could not set up its namespaces"
                                f" (said {word!r})")
        self.unshared = True

    def assign(self, start_info: dict, fds: dict[str, int], log_path: Path,
               jail: dict | None = None, jail_fds: list[int] | tuple = ()) -> None:
        """Make this standby process the domain of `start_info`: it gets the
        domain's fds (and its log as stdout) now, as a cold start gets them
        at exec, and, jailed, its jail's plan and fds."""
        assert self.standby is not None, "only a standby process is assigned a domain"
        names = list(fds)
        message = {"start_info": start_info, "fds": names}
        if jail is not None:
            message["jail"] = jail
        with open(log_path, "ab") as log:
            socket.send_fds(self.standby, [json.dumps(message).encode()],
                            [log.fileno(), *(fds[n] for n in names), *jail_fds])
        if self.jail is None:
            self.standby.close()
            self.standby = None
        # A jailed process keeps our end open for as long as it runs: its
        # parent is outside its PID namespace (ppid 0), so a hang-up on
        # this socket is how it knows we are gone after it re-arms
        # PR_SET_PDEATHSIG (hypervisor/jail/confine.py).

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
        if self.standby is not None:
            self.standby.close()
            self.standby = None

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

    def __init__(self, enabled: bool, boot_module: str, sandbox: Sandbox | None = None
                 ) -> None:
        self.enabled = enabled
        self.boot_module = boot_module
        self.sandbox = sandbox
        self.spare: DomainProcess | None = None

    def take(self) -> DomainProcess | None:
        spare, self.spare = self.spare, None
        if spare is not None and spare.reap() is not None:
            self.discard(spare)  # it died waiting: start cold
            return None
        return spare

    def discard(self, proc: DomainProcess) -> None:
        proc.retire()
        if self.sandbox is not None:
            self.sandbox.release(proc.jail)

    def refill(self) -> None:
        if self.enabled and self.spare is None:
            try:
                self.spare = DomainProcess.on_standby(self.boot_module, self.sandbox)
            except OSError:
                self.spare = None  # cold starts still work

    def close(self) -> None:
        self.enabled = False
        spare, self.spare = self.spare, None
        if spare is not None:
            self.discard(spare)
