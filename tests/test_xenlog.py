"""The hypervisor's log: domains' words are stripped of control characters,
prefixed with their domain and rate-limited per domain; the file rotates."""

import os
import threading

import pytest

from hypervisor.public.xen import CONSOLEIO_write, HYPERVISOR_console_io
from hypervisor.tasks import parse_nspid, thread_ids
from hypervisor.xenlog import RATELIMIT_BURST, RotatingFile, TokenBucket, make_logger, printable
from tests.hvfakes import FakeMachine

pytestmark = pytest.mark.timeout(60)


def test_printable_strips_control_characters_but_keeps_tabs_and_text():
    assert printable("plain text, ünïcödé") == "plain text, ünïcödé"
    assert printable("a\tb") == "a\tb"
    assert printable("\x1b[2J\x1b]0;owned\x07red\r\n\x00\x7f\u202e") == "red"  # whole escape sequences go


def test_the_bucket_lets_a_burst_through_then_one_per_interval():
    bucket = TokenBucket(interval_ms=1000, burst=3)
    assert [bucket.admit(0) for _ in range(5)] == [(True, 0)] * 3 + [(False, 0)] * 2
    assert bucket.admit(999) == (False, 0)
    assert bucket.admit(1000) == (True, 3)  # and says how many it held back
    assert bucket.admit(1001) == (False, 0)
    assert [bucket.admit(100_000)[0] for _ in range(4)] == [True, True, True, False]


@pytest.fixture
def machine(sleeper, tmp_path):
    m = FakeMachine(sleeper, tmp_path)
    m.add("Domain-0", domid=0, privileged=True)
    yield m
    m.close()


def test_a_guest_s_console_lines_are_its_own_clean_and_limited(machine):
    import msgpack

    from hypervisor.loop import serve

    guest = machine.add("guest")
    forged = "(XEN) [2026-01-01 00:00:00] d0 Domain-0: shutdown\x1b[31m\r\n" * 3
    for _ in range(100):
        serve(machine, guest.domid, None,
              msgpack.packb([HYPERVISOR_console_io, CONSOLEIO_write, {"buf": forged}, 0]))
    lines = [line for line in machine.console if "Domain-0: shutdown" in line]
    assert len(lines) == RATELIMIT_BURST
    assert all(line.startswith(f"(d{guest.domid}) [") for line in lines)
    assert not any("\x1b" in line or "\r" in line for line in machine.console)
    # Dom0's own lines are not limited (the toolstack's console_write).
    dom0 = machine.domains[0]
    for i in range(50):
        machine.guest_write(dom0, f"toolstack line {i}")
    assert sum("toolstack line" in line for line in machine.console) == 50


def test_the_first_line_after_a_quiet_spell_says_what_was_suppressed(machine, monkeypatch):
    import hypervisor.machine as hm

    now = [1_000_000_000_000]
    monkeypatch.setattr(hm.time, "monotonic_ns", lambda: now[0])
    guest = machine.add("noisy")
    for i in range(25):
        machine.log_about(guest, f"d{guest.domid} bad thing {i}")
    now[0] += 5_000 * 1_000_000
    machine.log_about(guest, f"d{guest.domid} bad thing again")
    text = "\n".join(machine.console)
    assert f"d{guest.domid}: 15 messages about it suppressed" in text
    assert "bad thing 9" in text and "bad thing 10" not in text
    assert text.index("suppressed") < text.index("bad thing again")


def test_the_log_file_is_capped_and_rotated(tmp_path):
    path = tmp_path / "hypervisor.log"
    f = RotatingFile(path, max_bytes=1000, backups=2)
    for i in range(100):
        f.write(f"line {i:04d} " + "x" * 40 + "\n")
    f.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["hypervisor.log", "hypervisor.log.1", "hypervisor.log.2"]
    assert all(p.stat().st_size <= 1000 for p in tmp_path.iterdir())
    assert "line 0099" in path.read_text()
    logger = make_logger(tmp_path / "logs" / "xen.log", max_bytes=2000, backups=1)
    for i in range(500):
        logger.info(f"message {i}")
    total = sum(p.stat().st_size for p in (tmp_path / "logs").iterdir())
    assert total <= 2 * 2000


def test_nspid_maps_a_namespace_tid_to_ours():
    assert parse_nspid("Name:\tpython\nNSpid:\t4242\n") == (4242, 4242)
    assert parse_nspid("Name:\tpython\nNSpid:\t4242\t7\n") == (4242, 7)
    assert parse_nspid("Name:\tpython\nNSpid:\t4242\t100\t3\n") == (4242, 3)
    assert parse_nspid("Name:\tpython\nPid:\t1\n") is None
    # This process, in no pid namespace of its own: each thread is itself.
    ready = threading.Event()
    stop = threading.Event()

    def worker():
        ready.set()
        stop.wait()

    t = threading.Thread(target=worker)
    t.start()
    ready.wait()
    try:
        ids = thread_ids(os.getpid())
        assert ids[threading.get_native_id()] == threading.get_native_id()
        assert ids[t.native_id] == t.native_id
    finally:
        stop.set()
        t.join()
    assert thread_ids(2**30) == {}
