"""`pyxen boot` in the foreground: a live screen on a terminal, a change log
on a pipe, and the machine halted by Ctrl-C or by the reader going away
(`pyxen boot | tee log`, then Ctrl-C, used to leave it running)."""

import fcntl
import os
import pty
import signal
import subprocess
import sys
import termios

import pytest

from tests.harness import REPO

pytestmark = pytest.mark.timeout(90)

SMALL = """
    [platform]
    memory = 512
    [dom0]
    memory = 128
    [domain.dd]
    driver_domain = true
    memory = 64
    """


def boot(system, **kwargs) -> subprocess.Popen:
    system.booted = True  # halted by the fixture if the test fails
    return subprocess.Popen([sys.executable, "-m", "domains.dom0.cli", "boot",
                             str(system.write_topology(SMALL))],
                            env=system.env, cwd=REPO, **kwargs)


def read_until(fd: int, text: bytes, count: int = 1) -> bytes:
    seen = b""
    while seen.count(text) < count:
        chunk = os.read(fd, 65536)
        assert chunk, f"output ended before {text!r}: {seen[-500:]!r}"
        seen += chunk
    return seen


def drain(fd: int, proc: subprocess.Popen) -> bytes:
    """The rest of a pty's output, until the process has exited."""
    out = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the last writer closed the pty
            break
        if not chunk:
            break
        out += chunk
    proc.wait()
    return out


def test_a_terminal_gets_a_live_screen_and_ctrl_c_halts(system):
    master, slave = pty.openpty()

    def controlling_terminal():
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = boot(system, stdin=slave, stdout=slave, stderr=slave,
                preexec_fn=controlling_terminal)
    os.close(slave)
    try:
        screen = read_until(master, b"CPU(%)", count=2)  # drawn, then redrawn
        assert b"\x1b[H\x1b[2J" in screen
        text = screen.decode(errors="replace")
        assert "2 domains: " in text and "Domain-0" in text and " dd " in text
        os.write(master, b"\x03")  # Ctrl-C, through the terminal's line discipline
        rest = drain(master, proc).decode(errors="replace")
    finally:
        os.close(master)
    assert proc.returncode == 0
    assert "Halting (Ctrl-C)" in rest and "The machine has halted." in rest
    assert not (system.run_dir / "hypervisor.pid").exists()


def test_a_pipe_gets_a_change_log_and_its_reader_leaving_halts(system):
    proc = boot(system, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    first = read_until(proc.stdout.fileno(), b"\ndd ")  # the list, dd's row included
    assert b"domains:" in first and b"Domain-0" in first and b"\x1b[" not in first
    proc.stdout.close()  # as `| head` does once it has enough
    assert proc.wait() == 0
    assert not (system.run_dir / "hypervisor.pid").exists()


def test_ctrl_c_with_a_pipe_whose_reader_died_too_halts(system):
    """`pyxen boot | tee log`, Ctrl-C: SIGINT reaches both, tee goes first,
    and saying "Halting" to a closed pipe must not stop the halt."""
    proc = boot(system, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    read_until(proc.stdout.fileno(), b"domains:")
    proc.stdout.close()
    proc.send_signal(signal.SIGINT)
    assert proc.wait() == 0
    assert not (system.run_dir / "hypervisor.pid").exists()
