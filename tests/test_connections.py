"""Hypercall connections: the per-domain cap and the hypervisor's fd budget
(hypervisor/connections.py); the attack itself is in test_hostile_hypercalls."""

import pytest

from hypervisor.connections import (
    FIXED_PER_DOMAIN,
    RESERVE,
    ConnectionCap,
    FdBudget,
    cap_for,
)
from hypervisor.public.errno import EMFILE, XenError
from tests.hvfakes import FakeMachine


def test_the_cap_grows_with_vcpus_and_dom0_has_none():
    assert cap_for(1, False) == 8
    assert cap_for(4, False) == 20
    assert cap_for(1, True) is None


def test_connections_past_the_cap_are_refused_until_one_closes():
    cap = ConnectionCap(2)
    assert cap.accepted(10) and cap.accepted(11)
    assert not cap.accepted(12)
    cap.closed(12)  # the refused one's hang-up: nothing to forget
    assert not cap.accepted(13)
    cap.closed(10)
    assert cap.accepted(14)
    assert list(cap.open) == [11, 14] and cap.refused == 2


def test_no_cap_refuses_nothing():
    cap = ConnectionCap(None)
    assert all(cap.accepted(fd) for fd in range(1000))


def test_the_budget_refuses_what_would_not_fit_and_gets_it_back():
    budget = FdBudget(RESERVE + 100)
    budget.commit(60, "a")
    with pytest.raises(XenError) as exc:
        budget.commit(41, "b")
    assert exc.value.errno == EMFILE
    budget.release(60)
    budget.commit(100, "b")


def test_a_create_that_would_not_fit_the_fd_limit_fails_with_emfile(sleeper, tmp_path):
    per_guest = FIXED_PER_DOMAIN + cap_for(1, False)
    m = FakeMachine(sleeper, tmp_path, fd_limit=RESERVE + 2 * per_guest + 1)
    try:
        a = m.add("a")
        b = m.add("b")
        with pytest.raises(XenError) as exc:
            m.add("c")
        assert exc.value.errno == EMFILE
        assert "c" not in {d.name for d in m.domains.values()}
        m.destroy(b)  # its fds go back to the budget
        c = m.add("c")
        m.add_window(a, c.domid, 1)  # the one fd left
        with pytest.raises(XenError) as exc:  # a window is an fd too
            m.add_window(a, c.domid, 1)
        assert exc.value.errno == EMFILE
    finally:
        m.close()
