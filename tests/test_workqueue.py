"""The kernel's work queue: a device's work in order, devices side by side,
drained and joined at close, without threads left behind."""

import threading

import pytest

from domains.kernel.workqueue import WorkQueue
from tests.fakekernel import RecordingLog

pytestmark = pytest.mark.timeout(60)


def test_work_of_one_key_runs_in_order_one_at_a_time():
    queue = WorkQueue(RecordingLog())
    gate = threading.Event()
    done: list[int] = []
    queue.submit(gate.wait, "dev")
    for i in range(20):
        queue.submit(lambda i=i: done.append(i), "dev")
    assert queue.busy("dev") and done == []  # behind the first item
    gate.set()
    assert queue.drain("dev", 10)
    assert done == list(range(20)) and not queue.busy("dev")
    assert queue.close(10)


def test_work_of_other_keys_runs_meanwhile():
    queue = WorkQueue(RecordingLog())
    gate = threading.Event()
    queue.submit(gate.wait, "a")
    ran = threading.Event()
    queue.submit(ran.set, "b")
    assert ran.wait(10)  # "a" still waits: "b" did not
    gate.set()
    assert queue.close(10)


def test_close_drains_the_work_and_joins_every_worker():
    log = RecordingLog()
    queue = WorkQueue(log)
    before = set(threading.enumerate())
    gates = [threading.Event() for _ in range(4)]
    finished = []
    for i, gate in enumerate(gates):
        queue.submit(lambda i=i, gate=gate: (gate.wait(10), finished.append(i)), f"dev{i}")
    assert len(queue.threads) == 4
    closer = threading.Thread(target=queue.close)
    closer.start()
    for gate in gates:
        gate.set()
    closer.join(10)
    assert sorted(finished) == [0, 1, 2, 3]
    assert not queue.threads
    assert set(threading.enumerate()) - before - {closer} == set()
    assert not queue.submit(lambda: finished.append(9), "late")  # closed: refused
    assert len(finished) == 4 and log.lines[-1][0].startswith("work refused")


def test_idle_workers_end_and_are_still_joined_by_close():
    queue = WorkQueue(RecordingLog(), idle=0.01)
    ran = threading.Event()
    queue.submit(ran.set)
    assert ran.wait(10)
    (worker,) = queue.threads or [None]
    if worker is not None:
        worker.join(10)  # it ends on its own once idle
    assert not queue.threads
    queue.submit(ran.set)  # a new worker for new work
    assert queue.close(10) and not queue.threads


def test_work_cannot_wait_for_its_own_key_and_a_failure_stops_nothing():
    log = RecordingLog()
    queue = WorkQueue(log)
    seen = []

    def inner() -> None:
        seen.append((queue.running_here("dev"), queue.drain("dev", 10)))
        raise RuntimeError("a driver bug")

    queue.submit(inner, "dev")
    queue.submit(lambda: seen.append("next"), "dev")
    assert queue.drain("dev", 10)
    assert seen == [(True, False), "next"]
    assert any(event == "work failed" and "a driver bug" in kw["error"]
               for event, kw in log.lines)
    assert queue.close(10)
