"""What one end of a xenbus device does when the other end's state changes.

:data:`state.TRANSITIONS` says where an end *may* go; this module says
where it *does* go: for each end, a table from (the other end's state, our
state) to a :data:`Reaction`, a sequence of steps the device's
:mod:`lifecycle` runs in order.  A step is a XenbusState (switch to it) or
a :class:`Step` (call the driver's hook of that name, or run the
lifecycle's close handshake).  Nothing here does I/O: the tables are
tested over every pair of states.

Backend (blkback, netback, Linux's frontend_changed):

- the frontend is ready (Initialised or Connected for blkback, Connected
  only for netback, which never sees an Initialised from netfront): map
  its rings, then say Connected (see :data:`AFTER_CONNECT` for a connect
  that fails).  If we are Closed, the frontend has started over without
  our seeing its Initialising (a watch reports the node's value now, not
  each value it had): InitWait first, as if we had.
- the frontend starts over (Initialising) while we are Closing or Closed:
  drop what we held and wait for it in InitWait (from Closing through
  Closed: Closing -> InitWait is illegal).
- the frontend closes: drop the rings, follow it to Closing / Closed
  (never Closed -> Closing, which is illegal).

Frontend (blkfront, netfront):

- the backend closes (Closing or Closed) a device we had set up
  (Initialised or Connected): the device goes for good, CLOSE (fail what
  is in flight, Closing, wait for the backend, Closed).  A backend passing
  through Closed while we are still Initialising is part of a reconnect,
  not a reason to close.
- the backend vanishes (Unknown: its driver domain died) while we are
  Connected: LOST (hold I/O for the next backend), then Closed, so that a
  backend started in its place does not map the old rings (still granted
  to the dead domain) but waits for our reconnect.

A frontend's start-up (waiting for its backend) and its reconnect when the
toolstack moves the device to a restarted driver domain are sequences, not
reactions: see :class:`lifecycle.Frontend`.
"""

from __future__ import annotations

import enum

from domains.kernel.gnttab import GrantStatusError
from domains.kernel.xenbus.client import XsError
from domains.kernel.xenbus.state import BACKEND, FRONTEND
from hypervisor.public.errno import XenError
from hypervisor.public.grant_table import GNTST_general_error
from hypervisor.public.io.ring import RingError
from hypervisor.public.io.xenbus import XenbusState

S = XenbusState


class Step(enum.Enum):
    CONNECT = "connect"        # backend: map the frontend's rings (AFTER_CONNECT follows)
    DISCONNECT = "disconnect"  # drop what the connection holds
    LOST = "lost"              # frontend: the backend vanished; hold I/O for the next
    CLOSE = "close"            # frontend: the device goes for good (close handshake)


Reaction = tuple[Step | XenbusState, ...]
NOTHING: Reaction = ()

#: The frontend states after which a backend connects, by default
#: (blkback); netback connects on Connected only.
CONNECT_ON = frozenset({S.Initialised, S.Connected})
_SET_UP = frozenset({S.Initialised, S.Connected, S.Reconfiguring, S.Reconfigured})


def backend_reaction(frontend: XenbusState, ours: XenbusState,
                     connect_on: frozenset[XenbusState] = CONNECT_ON) -> Reaction:
    if frontend in connect_on:
        if ours in (S.InitWait, S.Initialised):
            return (Step.CONNECT,)
        if ours == S.Closed:
            return (S.InitWait, Step.CONNECT)
        return NOTHING
    if frontend == S.Initialising:
        if ours == S.Closing:
            return (Step.DISCONNECT, S.Closed, S.InitWait)
        if ours == S.Closed:
            return (Step.DISCONNECT, S.InitWait)
        return NOTHING
    if frontend == S.Closing:
        if ours in (S.Closed, S.Unknown):
            return NOTHING
        if ours == S.Closing:
            return (Step.DISCONNECT,)
        return (Step.DISCONNECT, S.Closing)
    if frontend in (S.Closed, S.Unknown):
        if ours == S.Closed:
            return (Step.DISCONNECT,)
        return (Step.DISCONNECT, S.Closed)
    return NOTHING


def frontend_reaction(backend: XenbusState, ours: XenbusState) -> Reaction:
    if backend in (S.Closing, S.Closed) and ours in _SET_UP:
        return (Step.CLOSE,)
    if backend == S.Unknown and ours == S.Connected:
        return (Step.LOST, S.Closed)
    return NOTHING


def reaction_table(end: str, connect_on: frozenset[XenbusState] = CONNECT_ON
                   ) -> dict[tuple[XenbusState, XenbusState], Reaction]:
    """(other end's state, our state) -> reaction, for every pair."""
    if end == BACKEND:
        return {(other, ours): backend_reaction(other, ours, connect_on)
                for other in S for ours in S}
    if end == FRONTEND:
        return {(other, ours): frontend_reaction(other, ours) for other in S for ours in S}
    raise ValueError(f"end must be {FRONTEND!r} or {BACKEND!r}, not {end!r}")


REACTIONS = {FRONTEND: reaction_table(FRONTEND), BACKEND: reaction_table(BACKEND)}


class Outcome(enum.Enum):
    CONNECTED = "connected"
    #: The rings are granted to another domain: a frontend that has not yet
    #: seen its backend move to us (a driver domain restart, a second kill
    #: during the handshake) still shows the previous connection's state
    #: and refs.  It starts over once it sees us: wait for that in InitWait,
    #: holding nothing.  Closing would be a dead end (Closing -> InitWait is
    #: illegal).
    FOREIGN_GRANTS = "foreign grants"
    FAILED = "failed"  # a frontend that broke the protocol: close the device


#: What a backend's CONNECT step leads to.
AFTER_CONNECT: dict[Outcome, Reaction] = {
    Outcome.CONNECTED: (S.Connected,),
    Outcome.FOREIGN_GRANTS: (Step.DISCONNECT,),
    Outcome.FAILED: (Step.DISCONNECT, S.Closing),
}


def connect_outcome(exc: BaseException | None) -> Outcome | None:
    """How a backend's connect went, by what it raised (None: nothing);
    None for an exception that is no protocol failure (a bug: it is
    raised on)."""
    if exc is None:
        return Outcome.CONNECTED
    if isinstance(exc, GrantStatusError):
        return Outcome.FOREIGN_GRANTS if exc.status == GNTST_general_error else Outcome.FAILED
    if isinstance(exc, (XsError, XenError, RingError, ValueError)):
        return Outcome.FAILED
    return None
