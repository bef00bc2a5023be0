"""One xenbus device's lifecycle, for every PV driver: both ends.

A driver gives its hooks (what only it knows: rings, grants, I/O) and the
lifecycle does the rest the same way for every driver: it watches the
other end's state and reacts as :mod:`.reactions`' tables say, moves our
own state (and tracks it: the tables look at it), waits for a backend,
reconnects a frontend whose device the toolstack moved to a restarted
driver domain (a new ``backend-id``), and runs the close handshake.

Threads: watch callbacks (the XenStore client's watch thread, xenwatch)
only record what they saw and queue the reaction on the kernel's
:class:`~domains.kernel.workqueue.WorkQueue`, under the device's path: a
device's work runs one item at a time, in order, and may wait (for the
other end's state, which xenwatch keeps delivering meanwhile).  A
reaction looks at both states as they are when it runs.  close() queues
the close handshake and waits for the device's work to end (drains it),
except on xenwatch, which must not wait for work that may wait for it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from domains.kernel.workqueue import WorkQueue
from domains.kernel.xenbus.client import XenStoreClient, XsError
from domains.kernel.xenbus.reactions import (
    AFTER_CONNECT,
    CONNECT_ON,
    Outcome,
    Reaction,
    Step,
    backend_reaction,
    connect_outcome,
    frontend_reaction,
)
from domains.kernel.xenbus.state import (
    BACKEND,
    FRONTEND,
    BackendMoves,
    IllegalTransition,
    OtherendWatch,
    allowed,
    read_state,
    switch_state,
    watch_otherend,
)
from hypervisor.public.io.xenbus import XenbusState

S = XenbusState
#: Seconds a frontend waits for each step of its backend's handshake.
HANDSHAKE_TIMEOUT = 30.0
#: Seconds close() waits for the device's work (its close handshake).
CLOSE_TIMEOUT = 60.0


def _nothing() -> None:
    pass


@dataclass
class FrontendHooks:
    """What a frontend driver does at each step of its lifecycle."""

    #: The backend waits for us (InitWait, or Connected already): read its
    #: features, set up our rings and publish them.
    connect: Callable[[], None]
    #: The backend is Connected: I/O flows (blkfront reissues first what
    #: the previous backend left unanswered; netfront raises carrier).
    resume: Callable[[], None]
    #: The backend vanished, or the device moved to another one: hold I/O
    #: (keep what was not answered, for the next backend).
    lost: Callable[[], None]
    #: Drop the connection (rings, channels, grant window); True when the
    #: device goes for good (end of its close handshake).
    disconnect: Callable[[bool], None]
    #: The device goes for good: fail what waits for it, at once.
    gone: Callable[[], None]


@dataclass
class BackendHooks:
    """What a backend driver does at each step of its lifecycle."""

    #: The frontend is ready: map its rings, bind its channels.  Raises
    #: as reactions.connect_outcome() reads it.
    connect: Callable[[], None]
    #: Drop what the connection holds (a connect that failed part way too).
    disconnect: Callable[[], None]
    #: Connected (said in XenStore): start serving.
    resume: Callable[[], None] = field(default=_nothing)
    #: The device is gone: release what start() took.
    remove: Callable[[], None] = field(default=_nothing)


def _on_watch_thread(xs: XenStoreClient) -> bool:
    on_watch = getattr(xs, "on_watch_thread", None)
    return bool(on_watch and on_watch())


class _Device:
    """What both ends share: our tracked state, its switches, the queue."""

    end = ""

    def __init__(self, xs: XenStoreClient, work: WorkQueue, log, path: str) -> None:
        self.xs, self.work, self.log, self.path = xs, work, log, path
        self.state = read_state(xs, path)  # ours, as we last set it
        self.watch: OtherendWatch | None = None

    def switch(self, state: XenbusState) -> bool:
        """Move our state; False if the device's node is gone (it is being
        removed) or the move is not ours to make from where we are."""
        if state not in allowed(self.state, self.end):
            self.log.error("xenbus state not moved", frm=self.state.name, to=state.name)
            return False
        try:
            if switch_state(self.xs, self.path, state, end=self.end) is None:
                return False
        except IllegalTransition as exc:  # the node was not what we last wrote
            self.log.error("xenbus state not moved", error=str(exc))
            self.state = read_state(self.xs, self.path)
            return False
        self.state = state
        return True

    def submit(self, fn: Callable[[], None]) -> bool:
        return self.work.submit(fn, self.path)

    def drain(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Wait for the device's work, unless that could wait for us."""
        if not _on_watch_thread(self.xs):
            self.work.drain(self.path, timeout)

    def _cancel_watch(self) -> None:
        watch, self.watch = self.watch, None
        if watch is not None:
            try:
                watch.cancel()
            except XsError:
                pass


class Frontend(_Device):
    """A frontend device's lifecycle (blkfront, netfront).

    `error` is the driver's exception for a backend that does not come
    (an OSError); `skip_initialised`: say Connected once the rings are
    published, without Initialised first (netfront)."""

    end = FRONTEND

    def __init__(self, xs: XenStoreClient, work: WorkQueue, log, path: str,
                 hooks: FrontendHooks, *, error: type[OSError] = OSError,
                 skip_initialised: bool = False, close_timeout: float = HANDSHAKE_TIMEOUT
                 ) -> None:
        super().__init__(xs, work, log, path)
        self.hooks = hooks
        self.error = error
        self.skip_initialised = skip_initialised
        self.close_timeout = close_timeout
        self.backend = xs.read(f"{path}/backend").decode()
        self.backend_id = int(xs.read(f"{path}/backend-id"))
        self.cond = threading.Condition()  # backend_state, moves, closed
        self.backend_state = S.Unknown
        self.moves = BackendMoves(self.cond, self.backend_id)
        self.closed = False
        self._moves_token: str | None = None

    def start(self) -> None:
        """Watch the backend's state, and our backend-id: a restarted
        driver domain comes back under a new domid, the toolstack points
        the device at it, and we reconnect."""
        self.watch = watch_otherend(self.xs, self.backend, self._backend_changed)
        token = f"backend-id-{self.path}"
        self.xs.watch(f"{self.path}/backend-id", token, self._backend_id_changed)
        self._moves_token = token

    # -- on xenwatch ---------------------------------------------------------------

    def _backend_changed(self, state: XenbusState) -> None:
        with self.cond:
            self.backend_state = state
            self.cond.notify_all()
        self.submit(self._react)

    def _backend_id_changed(self, _path: str, _token: str) -> None:
        try:
            backend_id = int(self.xs.read(f"{self.path}/backend-id"))
        except (XsError, ValueError):
            return
        # At once, not on the queue: a connect waiting for the old backend
        # gives up as soon as it is superseded.
        if self.moves.arrived(backend_id):
            self.submit(lambda: self._reconnect(backend_id))

    # -- on the device's work ---------------------------------------------------------

    def _react(self) -> None:
        if self.closed:
            return
        self.run(frontend_reaction(self.backend_state, self.state))

    def run(self, reaction: Reaction) -> None:
        for step in reaction:
            if step is Step.LOST:
                self.hooks.lost()
            elif step is Step.CLOSE:
                self.log.info("backend closing the device")
                self._go()
                self._close_handshake()
            elif isinstance(step, XenbusState):
                self.switch(step)
            else:
                raise ValueError(f"{step} is no frontend step")

    def connect(self) -> None:
        """The handshake, from Initialising: wait for the backend, set up
        (hook), Initialised (unless skipped), wait for the backend's
        Connected, Connected, resume (hook).  Raises `error` if the backend
        does not come, or the device moves or closes meanwhile."""
        self.wait_backend(S.InitWait, S.Connected)
        self.hooks.connect()
        if self.skip_initialised:
            self.switch(S.Connected)
            self.wait_backend(S.Connected)
        else:
            self.switch(S.Initialised)
            self.wait_backend(S.Connected)
            self.switch(S.Connected)
        self.hooks.resume()

    def _reconnect(self, backend_id: int) -> None:
        if self.closed or not self.moves.claim(backend_id):
            return  # a newer move came meanwhile: its own work connects
        try:
            self.hooks.lost()
            self.hooks.disconnect(False)
            self._cancel_watch()
            self.backend_id = backend_id
            with self.cond:
                self.backend_state = S.Unknown
                self.cond.notify_all()
            # Start over: Closed, Initialising, watching the new backend.
            self.backend = self.xs.read(f"{self.path}/backend").decode()
            self.switch(S.Closed)
            self.switch(S.Initialising)
            self.watch = watch_otherend(self.xs, self.backend, self._backend_changed)
            self.log.info("reconnecting to the new backend", backend=self.backend)
            self.connect()
        except (XsError, OSError) as exc:
            self.log.error("reconnect failed", error=str(exc))

    def wait_backend(self, *states: XenbusState, timeout: float = HANDSHAKE_TIMEOUT,
                     closing: bool = False) -> XenbusState:
        """Wait for the backend to reach one of `states`; `error` if it does
        not, or a newer move came, or (unless `closing`) the device closed."""
        def done() -> bool:
            return (self.backend_state in states or self.moves.superseded
                    or (self.closed and not closing))

        with self.cond:
            reached = self.cond.wait_for(done, timeout)
            if self.moves.superseded:
                why = "was replaced meanwhile"
            elif self.closed and not closing:
                why = "was left: the device is closing"
            elif not reached:
                why = f"stayed in {self.backend_state.name}"
            else:
                return self.backend_state
        raise self.error(f"backend {self.backend} {why}")

    # -- closing --------------------------------------------------------------------

    def moved_on(self) -> bool:
        """A connect gave up because the toolstack moved the device to a
        newer backend (a driver domain restarted meanwhile): the device is
        not failed, its reconnect to that backend is queued."""
        with self.cond:
            return self.moves.superseded and not self.closed

    def replaced(self) -> bool:
        """Closed for good, yet the device's directory says Initialising:
        the toolstack removed it and attached a new one at the same path
        before our bus looked (a vdev or vif index detached and attached
        again at once)."""
        if not self.closed:
            return False
        try:
            return read_state(self.xs, self.path) == S.Initialising
        except (XsError, ValueError):
            return False

    def _go(self) -> bool:
        """The device goes for good: False if it was going already."""
        with self.cond:
            if self.closed:
                return False
            self.closed = True
            self.cond.notify_all()  # a connect waiting gives up
        self.hooks.gone()
        return True

    def close(self, wait: bool = True) -> None:
        """Close the device (it was detached, or we stop): fail what waits,
        then Closing, wait for the backend to let go, Closed.  With `wait`,
        returns once that is done (not on xenwatch: it then runs after)."""
        if self._go() and not self.submit(self._close_handshake):
            self._close_handshake()  # the queue is closing: here and now
        if wait:
            self.drain()

    def _close_handshake(self) -> None:
        try:
            if S.Closing in allowed(self.state, FRONTEND) and self.state != S.Closed:
                self.switch(S.Closing)
                try:
                    self.wait_backend(S.Closing, S.Closed, S.Unknown,
                                      timeout=self.close_timeout, closing=True)
                except OSError as exc:
                    self.log.info("close", note=str(exc))
        except XsError as exc:
            self.log.info("close", note=str(exc))
        try:
            self.hooks.disconnect(True)
        finally:
            try:
                if self.state != S.Closed:
                    self.switch(S.Closed)
            except XsError as exc:
                self.log.info("close", note=str(exc))
            self._cancel_watch()
            token, self._moves_token = self._moves_token, None
            if token is not None:
                try:
                    self.xs.unwatch(f"{self.path}/backend-id", token)
                except XsError:
                    pass


class Backend(_Device):
    """A backend device's lifecycle (blkback, netback).  `connect_on`: the
    frontend states it connects after (reactions.CONNECT_ON by default);
    `frontend`: the frontend's path, if the driver read it already."""

    end = BACKEND

    def __init__(self, xs: XenStoreClient, work: WorkQueue, log, path: str,
                 hooks: BackendHooks, *, connect_on: frozenset[XenbusState] = CONNECT_ON,
                 frontend: str | None = None) -> None:
        super().__init__(xs, work, log, path)
        self.hooks = hooks
        self.connect_on = connect_on
        self.frontend = frontend or xs.read(f"{path}/frontend").decode()
        self.frontend_state = S.Unknown
        self.removed = False

    def start(self) -> None:
        """InitWait (the driver published its features), then follow the
        frontend."""
        self.switch(S.InitWait)
        self.watch = watch_otherend(self.xs, self.frontend, self._frontend_changed)

    def switch(self, state: XenbusState) -> bool:
        try:
            return super().switch(state)
        except XsError:
            return False  # the device's directory is gone: it is being removed

    def _frontend_changed(self, state: XenbusState) -> None:
        self.frontend_state = state
        self.submit(self._react)

    def _react(self) -> None:
        if not self.removed:
            self.run(backend_reaction(self.frontend_state, self.state, self.connect_on))

    def run(self, reaction: Reaction) -> None:
        for step in reaction:
            if step is Step.CONNECT:
                self._connect()
            elif step is Step.DISCONNECT:
                self.hooks.disconnect()
            elif isinstance(step, XenbusState):
                self.switch(step)
            else:
                raise ValueError(f"{step} is no backend step")

    def _connect(self) -> None:
        try:
            self.hooks.connect()
        except Exception as exc:
            outcome = connect_outcome(exc)
            if outcome is None:
                self.hooks.disconnect()
                raise
            if outcome is Outcome.FOREIGN_GRANTS:
                self.log.info("frontend's rings are not granted to us (yet): "
                              "waiting for it to start over", reason=str(exc))
            else:
                self.log.error("frontend misbehaved, closing", reason=f"cannot connect: {exc}")
            self.run(AFTER_CONNECT[outcome])
            return
        self.run(AFTER_CONNECT[Outcome.CONNECTED])
        self.hooks.resume()

    def fail(self) -> None:
        """The frontend broke the protocol on the data path (the driver
        logged how): drop the connection and close the device, on the
        device's work (not on the thread that found it: that may be the
        upcall thread, which the XenStore replies need)."""
        def close() -> None:
            if not self.removed:
                self.hooks.disconnect()
                if S.Closing in allowed(self.state, BACKEND) and self.state != S.Closed:
                    self.switch(S.Closing)

        self.submit(close)

    def close(self, wait: bool = True) -> None:
        """The device is gone (its directory removed): stop following the
        frontend, drop the connection, release what start() took."""
        self.removed = True

        def teardown() -> None:
            self._cancel_watch()
            try:
                self.hooks.disconnect()
            finally:
                self.hooks.remove()

        if not self.submit(teardown):
            teardown()
        if wait:
            self.drain()
