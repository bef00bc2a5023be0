"""The xenbus state machine, and xenbus_client.c's helpers over XenStore.

Theory of operation
-------------------
A split driver has two ends: the *frontend* in the guest and the *backend*
in a driver domain. Each end owns a directory in XenStore (the toolstack
creates both and points each at the other with ``backend`` / ``frontend``)
and publishes its progress in a ``state`` node holding a XenbusState
number. Each end watches the other's ``state`` and reacts; neither ever
writes the other's state. The start-up dance of io/blkif.h:

    frontend                                 backend
    Initialising                             Initialising
                                             InitWait     (hotplug done; waiting
                                                           for the frontend)
    Initialised  (rings granted, published)
                                             Connected    (rings mapped)
    Connected

Some frontends (netfront) skip Initialised and go straight to Connected
once the backend is in InitWait; some backends (pciback) pass through
Initialised before Connected. InitWait is the backend's alone: a frontend
never publishes it. Tear-down: either end moves to Closing
(from any live state, e.g. on an error), then Closed; an end may jump
straight to Closed when the other end is already gone. From Closed an end
may start over: back to Initialising, and a backend that sees its
frontend re-initialise goes straight to InitWait. While Connected, an end
may renegotiate: Reconfiguring -> Reconfigured -> Connected (pciback,
netfront's XDP switch); netback answers its frontend's Reconfiguring by
going from Connected straight to Reconfigured.

Unknown (0) is not a state an end publishes: it is what a missing or
unreadable ``state`` node reads as (xenbus_read_driver_state), i.e. "no
device here". Nobody moves *to* Unknown; the node is removed instead.
Staying in the same state is always allowed and writes nothing (so no
watch fires needlessly, as __xenbus_switch_state avoids).

:data:`TRANSITIONS` is that description as a table, per end; what an end
does when the other moves is :mod:`.reactions`' table, which every
driver's :mod:`.lifecycle` follows.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass

from domains.kernel.xenbus.client import XBT_NULL, XenStoreClient, XsError
from hypervisor.public.io.xenbus import XenbusState

S = XenbusState
FRONTEND = "frontend"
BACKEND = "backend"

_CLOSE = {S.Closing, S.Closed}

TRANSITIONS: dict[str, dict[XenbusState, frozenset[XenbusState]]] = {
    FRONTEND: {
        S.Unknown: frozenset({S.Initialising, S.Closed}),
        S.Initialising: frozenset({S.Initialised, S.Connected, *_CLOSE}),
        S.Initialised: frozenset({S.Connected, *_CLOSE}),
        S.Connected: frozenset({S.Reconfiguring, *_CLOSE}),
        S.Reconfiguring: frozenset({S.Reconfigured, S.Connected, *_CLOSE}),
        S.Reconfigured: frozenset({S.Connected, *_CLOSE}),
        S.Closing: frozenset({S.Closed}),
        S.Closed: frozenset({S.Initialising}),
    },
    BACKEND: {
        S.Unknown: frozenset({S.Initialising, S.Closed}),
        S.Initialising: frozenset({S.InitWait, *_CLOSE}),
        S.InitWait: frozenset({S.Initialised, S.Connected, *_CLOSE}),
        S.Initialised: frozenset({S.Connected, *_CLOSE}),
        S.Connected: frozenset({S.Reconfiguring, S.Reconfigured, *_CLOSE}),
        S.Reconfiguring: frozenset({S.Reconfigured, S.Connected, *_CLOSE}),
        S.Reconfigured: frozenset({S.Connected, *_CLOSE}),
        S.Closing: frozenset({S.Closed}),
        S.Closed: frozenset({S.Initialising, S.InitWait}),
    },
}


class IllegalTransition(Exception):
    def __init__(self, old: XenbusState, new: XenbusState, end: str | None = None) -> None:
        self.old, self.new, self.end = XenbusState(old), XenbusState(new), end
        who = f"{end} " if end else ""
        super().__init__(f"illegal {who}transition {self.old.name} -> {self.new.name}")


def allowed(old: XenbusState, end: str | None = None) -> frozenset[XenbusState]:
    """States reachable from ``old`` in one step (either end when end is None)."""
    ends = (end,) if end else (FRONTEND, BACKEND)
    return frozenset(itertools.chain.from_iterable(
        TRANSITIONS[e].get(XenbusState(old), ()) for e in ends)) | {XenbusState(old)}


def check_transition(old: XenbusState, new: XenbusState, end: str | None = None) -> None:
    """Raise IllegalTransition unless ``end`` ("frontend", "backend" or None for
    either) may go from ``old`` to ``new``."""
    if end not in (None, FRONTEND, BACKEND):
        raise ValueError(f"end must be {FRONTEND!r}, {BACKEND!r} or None, not {end!r}")
    if XenbusState(new) not in allowed(old, end):
        raise IllegalTransition(old, new, end)


# -- helpers over XenStore (xenbus_client.c) ---------------------------------------

def _join(path: str, name: str) -> str:
    return f"{path.rstrip('/')}/{name}"


def _parse_state(raw: bytes) -> XenbusState:
    try:
        return XenbusState(int(raw.strip(b"\0 \n")))
    except ValueError:
        return XenbusState.Unknown


def read_state(client: XenStoreClient, path: str, tx: int = XBT_NULL) -> XenbusState:
    """The state published under ``path`` (a device directory).

    Like Linux's xenbus_read_driver_state, a missing or unparsable ``state``
    node reads as Unknown (so does a number outside the enum)."""
    try:
        return _parse_state(client.read(_join(path, "state"), tx))
    except XsError as exc:
        if exc.name in ("ENOENT", "EACCES", "EINVAL"):
            return XenbusState.Unknown
        raise


def switch_state(client: XenStoreClient, dev_path: str, new_state: XenbusState, *,
                 end: str | None = None, create: bool = False,
                 retries: int | None = None) -> XenbusState | None:
    """Move the device at ``dev_path`` to ``new_state``; returns the old state.

    In one transaction (retried on conflict): read the current state, check
    the transition, write the new one. Nothing is written when the state is
    unchanged. As Linux's __xenbus_switch_state, a device whose ``state``
    node is gone is not resurrected: None is returned and nothing written,
    unless ``create`` (the toolstack creating the device) is set, in which
    case the missing state counts as Unknown."""
    new_state = XenbusState(new_state)
    node = _join(dev_path, "state")

    def step(tx: int) -> XenbusState | None:
        try:
            old = _parse_state(client.read(node, tx))
        except XsError as exc:
            if exc.name != "ENOENT":
                raise
            if not create:
                return None
            old = XenbusState.Unknown
        check_transition(old, new_state, end)
        if old != new_state:
            client.write(node, str(int(new_state)), tx)
        return old

    return client.transaction(step, retries=retries)


@dataclass
class OtherendWatch:
    """A watch set by :func:`watch_otherend`; ``cancel()`` removes it."""

    client: XenStoreClient
    node: str
    token: str

    def cancel(self) -> None:
        self.client.unwatch(self.node, self.token)


_tokens = itertools.count(1)


def watch_otherend(client: XenStoreClient, path: str,
                   callback: Callable[[XenbusState], None],
                   token: str | None = None) -> OtherendWatch:
    """Watch ``<path>/state`` (the other end's directory) and call
    ``callback(state)`` with the freshly read state on every event,
    including the one xenstored fires when the watch is set. Callbacks run
    on the client's dispatcher thread and may use the client."""
    node = _join(path, "state")
    token = token or f"otherend-{next(_tokens)}"
    client.watch(node, token, lambda _path, _token: callback(read_state(client, path)))
    return OtherendWatch(client, node, token)


def read_feature(client: XenStoreClient, path: str, name: str, default: int = 0,
                 tx: int = XBT_NULL) -> int:
    """An unsigned node such as ``feature-persistent``; ``default`` when it is
    missing or not a number (xenbus_read_unsigned)."""
    try:
        raw = client.read(_join(path, name), tx)
    except XsError as exc:
        if exc.name == "ENOENT":
            return default
        raise
    try:
        value = int(raw.strip(b"\0 \n"), 10)
    except ValueError:
        return default
    return value if value >= 0 else default


def write_features(client: XenStoreClient, path: str, features: dict,
                   tx: int = XBT_NULL) -> None:
    """Write ``{name: value}`` under ``path``; ints and bools as decimal."""
    for name, value in features.items():
        text = str(int(value)) if isinstance(value, (bool, int)) else value
        client.write(_join(path, name), text, tx)


def gather(client: XenStoreClient, path: str, *names: str,
           tx: int = XBT_NULL) -> tuple[str, ...]:
    """Read several nodes under ``path`` as text; XsError ENOENT if any is
    missing (xenbus_gather fails as a whole)."""
    return tuple(client.read(_join(path, n), tx).decode("utf-8", "surrogateescape")
                 for n in names)


class BackendMoves:
    """Which backend a frontend follows when the toolstack moves its device
    to a restarted driver domain (a new backend-id). `cond` is the
    frontend's backend-state condition: a connect waiting on it gives up as
    soon as a newer move arrives (`superseded`, read with `cond` held)."""

    def __init__(self, cond: threading.Condition, backend_id: int) -> None:
        self.cond = cond
        self.target = backend_id  # the backend-id last moved to
        self.seen = self.serving = 0

    def arrived(self, backend_id: int) -> bool:
        """A move to `backend_id`; False when it is known already (a watch
        seen twice)."""
        with self.cond:
            if backend_id == self.target:
                return False
            self.target = backend_id
            self.seen += 1
            self.cond.notify_all()
            return True

    def claim(self, backend_id: int) -> bool:
        """Under the frontend's reconnect lock: True when `backend_id` is
        still the latest move, and the caller connects to it; False when a
        newer one came meanwhile (its own thread connects)."""
        with self.cond:
            if backend_id != self.target:
                return False
            self.serving = self.seen
            return True

    @property
    def superseded(self) -> bool:
        return self.seen != self.serving

    def wait(self, states: tuple[XenbusState, ...], current: Callable[[], XenbusState],
             timeout: float) -> str | None:
        """Wait, with `cond`, for the backend to reach one of `states`; why
        not, if it did not: it stayed elsewhere, or a newer move came."""
        with self.cond:
            reached = self.cond.wait_for(lambda: current() in states or self.superseded,
                                         timeout)
            if self.superseded:
                return "was replaced meanwhile"
            return None if reached else f"stayed in {current().name}"
