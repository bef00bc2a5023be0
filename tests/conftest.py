import os
import signal

import pytest

from tests.harness import System, become_subreaper, ours, reap_children, title
from tests.hvfakes import Sleeper

become_subreaper()


def _interrupted(signum: int, frame: object) -> None:
    # A run stopped by SIGTERM (a CI timeout, a kill) still tears its
    # fixtures down, halting the machines it booted: as Ctrl-C does.
    raise KeyboardInterrupt(f"signal {signum}")


signal.signal(signal.SIGTERM, _interrupted)


@pytest.fixture(autouse=True)
def no_leaks():
    """Every test must leave no pyxen process and no /dev/shm segment behind."""
    before = {p.pid for p in ours()}
    shm_before = set(os.listdir("/dev/shm"))
    yield
    reap_children()
    leaked = [p for p in ours() if p.pid not in before]
    assert not leaked, f"leaked processes: {[title(p) for p in leaked]}"
    shm_new = {n for n in set(os.listdir("/dev/shm")) - shm_before if "pyxen" in n}
    assert not shm_new, f"leaked shared memory: {shm_new}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if call.when == "call":
        item.failed_call = outcome.get_result().failed


@pytest.fixture
def system(request):
    sys_ = System()
    try:
        yield sys_
    finally:
        if getattr(request.node, "failed_call", False):
            sys_.keep_logs(request.node.name)
        sys_.close()


@pytest.fixture(scope="module")
def sleeper():
    """An idle two-thread process whose threads the hypervisor's pure tests
    hand out as a fake domain's vCPUs (tests/hvfakes.py)."""
    s = Sleeper()
    yield s
    s.close()
