"""A pyxen system under test: boot, CLI, halt, and leak checks.

Every system lives in its own short run directory under /tmp (unix socket
paths must stay short) and is halted by the fixture that made it, even when
the test fails.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # no stubs installed (types-psutil)

REPO = Path(__file__).resolve().parent.parent
PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """`pyxen boot --detach` leaves the hypervisor to its grandparent's care:
    make that us, so that we reap it and no zombie outlives a test."""
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1)


def reap_children() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def title(proc: psutil.Process) -> str:
    """The process title setproctitle gave it (padded with spaces in /proc)."""
    return " ".join(" ".join(proc.info["cmdline"] or []).split())


TITLE_RE = re.compile(r"^pyxen(\[[^\]]+\])?: ")


def what(title_: str) -> str:
    """A process title without its machine: `dom1 disk-dd`, `hypervisor`."""
    return TITLE_RE.sub("", title_)


def pyxen_processes() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if TITLE_RE.match(title(proc)) and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


def ours() -> list[psutil.Process]:
    """pyxen processes this test run started (the subreaper makes the detached
    hypervisors our children), not those of other sessions on the host."""
    mine = {p.pid for p in psutil.Process().children(recursive=True)}
    return [p for p in pyxen_processes() if p.pid in mine]


def memfd_segments(pids: list[int]) -> list[str]:
    names = []
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if "memfd:pyxen" in target:
                    names.append(target)
        except OSError:
            continue
    return names


class System:
    def __init__(self) -> None:
        self.run_dir = Path(tempfile.mkdtemp(prefix="pyxen-t-", dir="/tmp"))
        self.env = dict(os.environ, PYXEN_RUN_DIR=str(self.run_dir),
                        PYTHONPATH=os.pathsep.join(
                            p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
        self.booted = False
        self.prefix: list[str] = []  # what runs the CLI (tests/asuser.py: as another uid)

    def cli(self, *args: str, check: bool = True, timeout: float = 90
            ) -> subprocess.CompletedProcess:
        proc = subprocess.run([*self.prefix, sys.executable, "-m", "domains.dom0.cli", *args],
                              env=self.env, capture_output=True, text=True,
                              timeout=timeout, cwd=REPO, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"pyxen {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stdout}{proc.stderr}")
        return proc

    def write_topology(self, text: str, name: str = "topology.toml") -> Path:
        path = self.run_dir / name
        path.write_text(textwrap.dedent(text))
        return path

    def boot(self, topology: Path | None = None) -> subprocess.CompletedProcess:
        args = ["boot", "--detach"] + ([str(topology)] if topology else [])
        self.booted = True
        proc = self.cli(*args)
        match = re.search(r"as machine '([^']+)'", proc.stdout)
        self.machine = match.group(1) if match else None
        return proc

    def hypervisor_pid(self) -> int:
        return int((self.run_dir / "hypervisor.pid").read_text())

    def list(self) -> dict[str, dict]:
        """`pyxen list` parsed: name -> {domid, mem, vcpus, state}."""
        out = self.cli("list").stdout.splitlines()
        assert out[0].split() == ["Name", "ID", "Mem", "VCPUs", "State", "Time(s)"]
        rows = {}
        for line in out[1:]:
            name, domid, mem, vcpus, state, _ = line.split()
            rows[name] = {"domid": int(domid), "mem": int(mem), "vcpus": int(vcpus),
                          "state": state}
        return rows

    def pid_of(self, name: str) -> int:
        """The process of domain `name` of this system (not another's)."""
        hv = self.hypervisor_pid()
        for proc in pyxen_processes():
            if proc.ppid() != hv:
                continue
            parts = title(proc).split()
            if len(parts) == 3 and parts[2] == name:
                return proc.pid
        raise AssertionError(f"no process for domain {name}")

    def wait(self, name: str, until: str, not_domid: int | None = None) -> str:
        args = ["wait", name, "--until", until, "--timeout", "30"]
        if not_domid is not None:
            args += ["--not-domid", str(not_domid)]
        return self.cli(*args).stdout.strip()

    def _wait_text(self, path: Path, text: str, timeout: float = 30.0) -> None:
        """Block until `text` appears in a log: `tail -F` streams each new line
        as it is written (it waits on inotify), so this waits on an event."""
        proc = subprocess.Popen(["tail", "-n", "+1", "-F", str(path)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            timer = threading.Timer(timeout, proc.kill)
            timer.start()
            assert proc.stdout is not None
            for line in proc.stdout:
                if text in line:
                    return
            raise AssertionError(f"{text!r} never appeared in {path}")
        finally:
            timer.cancel()
            proc.kill()
            proc.wait()

    def wait_device_state(self, path: str, state: int, timeout: float = 30.0) -> None:
        """Block until a device's `<path>/state` is `state`: a XenStore
        watch, the way the toolstack waits."""
        from domains.dom0.toolstack import wait_for_state
        from domains.kernel.xenbus.client import XenStoreClient
        from domains.kernel.xenbus.transport import UnixTransport

        xs = XenStoreClient(UnixTransport(str(self.run_dir / "xenstored" / "socket")))
        try:
            reached = wait_for_state(xs, path, {state}, timeout)
            now = xs.read(f"{path}/state").decode() if xs.exists(path) else "gone"
        finally:
            xs.close()
        assert reached and now == str(state), f"{path}: state {now}, not {state}"

    def wait_console(self, name: str, text: str) -> None:
        self._wait_text(self.run_dir / "console" / f"{name}.log", text)

    def wait_log(self, name: str, text: str) -> None:
        self._wait_text(self.run_dir / "logs" / f"{name}.log", text)

    def halt(self) -> None:
        if self.booted and (self.run_dir / "hypervisor.pid").exists():
            self.cli("halt", check=False)
        self.booted = False
        reap_children()

    def keep_logs(self, test: str) -> None:
        """A failed test's logs, kept for the reader (the run dir goes)."""
        self.halt()
        dest = Path(tempfile.gettempdir()) / f"pyxen-failed-{test}"
        shutil.rmtree(dest, ignore_errors=True)
        if (self.run_dir / "logs").is_dir():
            shutil.copytree(self.run_dir / "logs", dest)
            print(f"\npyxen logs of the failed test kept in {dest}")

    def close(self) -> None:
        try:
            self.halt()
        finally:
            shutil.rmtree(self.run_dir, ignore_errors=True)


class Fifo:
    """A named pipe a test workload writes its JSON results to.

    A sandboxed domain sees it only when its topology binds it
    (`bind = [...]`, see `binds`), and runs as a uid of its own: the pipe is
    open to every uid (the run directory around it is 0700)."""

    def __init__(self, directory: Path, name: str) -> None:
        self.path = directory / name
        os.mkfifo(self.path)
        os.chmod(self.path, 0o666)

    @staticmethod
    def binds(*fifos: Fifo) -> str:
        """The topology line that lets a domain see these pipes."""
        return "bind = [" + ", ".join(f'"{f.path}"' for f in fifos) + "]"

    def read_json(self) -> dict:
        # Opening blocks until the domain opens its end: the wait is an event.
        with open(self.path) as f:
            return json.loads(f.readline())


# A machine with nothing but Dom0, for tests to add their domains to.
SMALL = """
[platform]
pcpus = 2
memory = 1024

[dom0]
memory = 256
"""


# The disk writer workload (tests.workloads:disk_writer) logs each write
# acknowledged as `acked ... n=N`.

def follow_acks(path: str | Path, until: int, timeout: float = 60.0) -> int:
    """Follow the writer's log until an ack numbered at least `until`."""
    proc = subprocess.Popen(["tail", "-n", "+1", "-F", str(path)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            match = re.search(r"acked\s+.*n=(\d+)", line)
            if match and int(match.group(1)) >= until:
                return int(match.group(1))
        raise AssertionError(f"the writer never acknowledged write {until}")
    finally:
        timer.cancel()
        proc.kill()
        proc.wait()


def last_ack(log: Path) -> int:
    """The newest write the writer has logged as acknowledged so far."""
    return max(int(n) for n in re.findall(r"acked\s+.*n=(\d+)", log.read_text()))
