"""A driver's fd polled by the kernel's upcall loop (EventChannels.watch_fd):
level-triggered, its handler on the upcall thread, changes from any thread."""

import os
import threading

import pytest
import zmq

from domains.kernel.events import EventChannels
from tests.fakekernel import RecordingLog

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def events(tmp_path):
    ctx = zmq.Context()
    n = id(ctx)
    ev = EventChannels(None, ctx, {"upcall": f"inproc://up-{n}"}, bytearray(8192), RecordingLog())
    yield ev
    ev.stop()
    ctx.term()


class Calls:
    """What the handlers did, with a wait for it (they run on the upcall
    thread)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()

    def note(self, action) -> None:
        with self.cond:
            action()
            self.cond.notify_all()

    def wait(self, predicate, timeout: float = 5.0) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, timeout)


def loop_turned(events) -> None:
    """Return once the upcall loop has polled again: a pipe made readable
    now is seen by that poll along with every other readable fd watched."""
    r, w = os.pipe()
    done = threading.Event()

    def marker(fd):
        events.unwatch_fd(fd)
        done.set()

    try:
        events.watch_fd(r, marker)
        os.write(w, b"!")
        assert done.wait(5)
    finally:
        os.close(r)
        os.close(w)


def test_watch_from_another_thread_then_unwatch_from_the_handler(events) -> None:
    r, w = os.pipe()
    try:
        seen, threads = [], set()

        calls = Calls()

        def handler(fd):
            threads.add(threading.current_thread())
            calls.note(lambda: seen.append(os.read(fd, 1)))
            if len(seen) == 3:
                events.unwatch_fd(fd)  # on the upcall thread: at once

        events.watch_fd(r, handler)
        os.write(w, b"abcde")  # level-triggered: read a byte at a time
        assert calls.wait(lambda: len(seen) == 3)
        loop_turned(events)  # "de" still there, and not read
        assert seen == [b"a", b"b", b"c"] and threads == {events.thread}
        # Watched again from here: what is left is read.
        events.watch_fd(r, handler)
        assert calls.wait(lambda: len(seen) == 5)
        # From another thread, unwatch returns once the loop let go.
        events.unwatch_fd(r)
        os.write(w, b"f")
        loop_turned(events)
        assert len(seen) == 5 and r not in events._fd_handlers
    finally:
        os.close(r)
        os.close(w)


def test_a_failing_handler_does_not_stop_the_loop(events) -> None:
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    try:
        calls, waits = [], Calls()

        def bad(fd):
            calls.append(fd)
            os.read(fd, 1)
            raise RuntimeError("driver bug")

        events.watch_fd(r1, bad)
        os.write(w1, b"x")
        loop_turned(events)  # polled after r1 was readable: its handler ran
        assert "fd handler failed" in events.log.events()
        got = []
        events.watch_fd(r2, lambda fd: waits.note(lambda: got.append(os.read(fd, 10))))
        os.write(w2, b"still")
        assert waits.wait(lambda: got == [b"still"])
        assert calls == [r1] and events.thread.is_alive()
        events.unwatch_fd(r1)
        events.unwatch_fd(r2)
    finally:
        for fd in (r1, w1, r2, w2):
            os.close(fd)


def test_stop_still_stops_and_unwatch_after_stop_returns(events) -> None:
    r, w = os.pipe()
    try:
        events.watch_fd(r, lambda fd: None)
        events.stop()
        assert not events.thread.is_alive()
        events.unwatch_fd(r)  # nothing polls: returns at once
        assert r not in events._fd_handlers
    finally:
        os.close(r)
        os.close(w)
