"""The xenbus reaction table, pure: every (other end's state, our state)
pair of both ends, the moves it asks for, and the outcomes of a backend's
connect (the rings granted to another domain among them)."""

import pytest

from domains.kernel.gnttab import GrantStatusError
from domains.kernel.xenbus.client import XsError
from domains.kernel.xenbus.reactions import (
    AFTER_CONNECT,
    REACTIONS,
    Outcome,
    Step,
    backend_reaction,
    connect_outcome,
    frontend_reaction,
    reaction_table,
)
from domains.kernel.xenbus.state import BACKEND, FRONTEND, check_transition
from hypervisor.public.errno import EINVAL, XenError
from hypervisor.public.grant_table import GNTST_bad_gntref, GNTST_general_error
from hypervisor.public.io.ring import RingError
from hypervisor.public.io.xenbus import XenbusState as S

CONNECT, DISCONNECT, LOST, CLOSE = Step.CONNECT, Step.DISCONNECT, Step.LOST, Step.CLOSE
NETBACK = frozenset({S.Connected})
LIVE = [S.Initialising, S.InitWait, S.Initialised, S.Connected, S.Reconfiguring,
        S.Reconfigured]


def expected_backend(frontend, ours, connect_on):
    """The backend's reactions, written out pair by pair (the table's spec)."""
    spec = {}
    for ready in connect_on:
        spec[ready, S.InitWait] = (CONNECT,)
        spec[ready, S.Initialised] = (CONNECT,)
        spec[ready, S.Closed] = (S.InitWait, CONNECT)  # it started over unseen
    spec[S.Initialising, S.Closing] = (DISCONNECT, S.Closed, S.InitWait)
    spec[S.Initialising, S.Closed] = (DISCONNECT, S.InitWait)
    for live in LIVE:
        spec[S.Closing, live] = (DISCONNECT, S.Closing)
        spec[S.Closed, live] = (DISCONNECT, S.Closed)
        spec[S.Unknown, live] = (DISCONNECT, S.Closed)
    spec[S.Closing, S.Closing] = (DISCONNECT,)
    for gone in (S.Closed, S.Unknown):
        spec[gone, S.Closing] = (DISCONNECT, S.Closed)
        spec[gone, S.Closed] = (DISCONNECT,)
        spec[gone, S.Unknown] = (DISCONNECT, S.Closed)
    return spec.get((frontend, ours), ())


def expected_frontend(backend, ours):
    spec = {}
    for closing in (S.Closing, S.Closed):
        for set_up in (S.Initialised, S.Connected, S.Reconfiguring, S.Reconfigured):
            spec[closing, set_up] = (CLOSE,)
    spec[S.Unknown, S.Connected] = (LOST, S.Closed)
    return spec.get((backend, ours), ())


PAIRS = [(other, ours) for other in S for ours in S]


@pytest.mark.parametrize("other,ours", PAIRS)
def test_every_pair_has_its_reaction(other, ours):
    assert len(PAIRS) == 81
    assert REACTIONS[BACKEND][other, ours] == expected_backend(
        other, ours, {S.Initialised, S.Connected})
    assert reaction_table(BACKEND, NETBACK)[other, ours] == expected_backend(
        other, ours, NETBACK)
    assert REACTIONS[FRONTEND][other, ours] == expected_frontend(other, ours)


def walk(reaction, ours, end, outcome=None):
    """Follow `reaction`'s switches from `ours`, checking each is legal; a
    CONNECT is followed by `outcome`'s steps, a frontend's CLOSE by its close
    handshake (Closing, Closed). Returns where it ends."""
    for step in reaction:
        if step is CONNECT:
            ours = walk(AFTER_CONNECT[outcome], ours, end)
        elif step is CLOSE:
            ours = walk((S.Closing, S.Closed), ours, end)
        elif isinstance(step, S):
            check_transition(ours, step, end)
            ours = step
    return ours


@pytest.mark.parametrize("outcome", list(Outcome))
@pytest.mark.parametrize("other,ours", PAIRS)
def test_every_reaction_moves_only_as_the_state_machine_allows(other, ours, outcome):
    for connect_on in ({S.Initialised, S.Connected}, NETBACK):
        walk(backend_reaction(other, ours, frozenset(connect_on)), ours, BACKEND, outcome)
    walk(frontend_reaction(other, ours), ours, FRONTEND)


def test_a_backend_waits_in_initwait_for_a_frontend_whose_rings_are_granted_elsewhere():
    """A frontend that has not seen its backend move to a restarted driver
    domain still shows Connected and the old connection's ring refs: the new
    backend's map fails with GNTST_general_error.  It drops what it mapped and
    stays in InitWait (Closing would be a dead end), and connects once the
    frontend starts over."""
    assert backend_reaction(S.Connected, S.InitWait) == (CONNECT,)
    foreign = connect_outcome(GrantStatusError(GNTST_general_error, "map ring"))
    assert foreign is Outcome.FOREIGN_GRANTS
    assert AFTER_CONNECT[foreign] == (DISCONNECT,)
    assert walk((CONNECT,), S.InitWait, BACKEND, foreign) == S.InitWait
    # The frontend starts over: its Closed, Initialising, then Initialised.
    assert backend_reaction(S.Closed, S.InitWait) == (DISCONNECT, S.Closed)
    assert backend_reaction(S.Initialising, S.Closed) == (DISCONNECT, S.InitWait)
    assert backend_reaction(S.Initialised, S.InitWait) == (CONNECT,)
    assert walk((CONNECT,), S.InitWait, BACKEND, Outcome.CONNECTED) == S.Connected
    # netback waits for netfront's Connected (netfront skips Initialised).
    assert backend_reaction(S.Initialised, S.InitWait, NETBACK) == ()
    assert backend_reaction(S.Connected, S.InitWait, NETBACK) == (CONNECT,)
    # Seen only as far as Closed, then Initialised: InitWait first, then connect.
    assert walk(backend_reaction(S.Initialised, S.Closed), S.Closed, BACKEND,
                Outcome.CONNECTED) == S.Connected


def test_other_failures_of_a_connect_close_the_device():
    for exc in (GrantStatusError(GNTST_bad_gntref, "map ring"), XsError("ENOENT", "ring-ref"),
                XenError(EINVAL, "bind"), RingError("bad ring"), ValueError("9 queues")):
        assert connect_outcome(exc) is Outcome.FAILED
        assert walk((CONNECT,), S.InitWait, BACKEND, Outcome.FAILED) == S.Closing
    assert connect_outcome(None) is Outcome.CONNECTED
    assert connect_outcome(KeyError("a bug")) is None  # raised on, not hidden
    # Closed after a failure, the device still takes a frontend that starts over.
    assert walk(backend_reaction(S.Initialising, S.Closing), S.Closing, BACKEND) == S.InitWait


def test_a_frontend_holds_io_when_its_backend_vanishes_and_closes_when_it_closes():
    assert walk(frontend_reaction(S.Unknown, S.Connected), S.Connected, FRONTEND) == S.Closed
    assert frontend_reaction(S.Unknown, S.Connected)[0] is LOST
    # A new backend passing through Closed while we start over is no reason to close.
    for ours in (S.Initialising, S.Closed):
        assert frontend_reaction(S.Closed, ours) == ()
    assert frontend_reaction(S.Closing, S.Connected) == (CLOSE,)
    assert frontend_reaction(S.Closed, S.Initialised) == (CLOSE,)
