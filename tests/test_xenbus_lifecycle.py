"""One xenbus device's lifecycle, both ends, against a real xenstored in
this process (no domains): the hooks drivers give are called as the other
end moves; a frontend follows its device to a new backend; a backend
waits in InitWait for a frontend whose rings are granted elsewhere; close()
returns once its handshake is done, and no thread is left after."""

from __future__ import annotations

import threading
from contextlib import contextmanager

import pytest

from domains.dom0.xenstored.daemon import Xenstored
from domains.kernel.gnttab import GrantStatusError
from domains.kernel.workqueue import WorkQueue
from domains.kernel.xenbus.client import XenStoreClient
from domains.kernel.xenbus.lifecycle import Backend, BackendHooks, Frontend, FrontendHooks
from domains.kernel.xenbus.transport import UnixTransport
from hypervisor.public.grant_table import GNTST_general_error
from hypervisor.public.io.xenbus import XenbusState as S
from tests.fakekernel import FakeKernel, RecordingLog, quiet_logger

pytestmark = pytest.mark.timeout(60)

FE = "/local/domain/5/device/vbd/51712"


def be_path(domid: int) -> str:
    return f"/local/domain/{domid}/backend/vbd/5/51712"


class Store:
    """xenstored, and clients of it for each end and the toolstack."""

    def __init__(self, tmp_path) -> None:
        self.daemon = Xenstored(FakeKernel(log=quiet_logger()), tmp_path)
        self.daemon.start()
        self.daemon.ready.wait()
        self.clients: list[XenStoreClient] = []
        self.tool = self.client("tool")

    def client(self, name: str) -> XenStoreClient:
        client = XenStoreClient(UnixTransport(str(self.daemon.path)), name=name)
        self.clients.append(client)
        return client

    def state(self, path: str) -> S:
        return S(int(self.tool.read(f"{path}/state")))

    def set_state(self, path: str, state: S) -> None:
        self.tool.write(f"{path}/state", str(int(state)))

    @contextmanager
    def watching(self, path: str):
        """`until(state)` waits for `path`'s state node to read `state`
        (woken by a watch, no polling)."""
        cond = threading.Condition()

        def changed(_p: str, _t: str) -> None:
            with cond:
                cond.notify_all()

        token = f"test-{path}"
        self.tool.watch(f"{path}/state", token, changed)

        def until(state: S, timeout: float = 20.0) -> None:
            def now() -> S | None:
                try:
                    return self.state(path)
                except Exception:  # noqa: BLE001 - no state node yet (or gone) reads as none
                    return None
            with cond:
                assert cond.wait_for(lambda: now() == state, timeout), \
                    f"{path} stayed {now()}, not {state.name}"

        try:
            yield until
        finally:
            self.tool.unwatch(f"{path}/state", token)

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.daemon.stop()


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path)
    try:
        yield s
    finally:
        s.close()


def create_device(store: Store, backend: int) -> None:
    """What the toolstack writes for a device served by `backend`."""
    def write(tx: int) -> None:
        tool = store.tool
        tool.write(f"{FE}/backend", be_path(backend), tx)
        tool.write(f"{FE}/backend-id", str(backend), tx)
        tool.write(f"{FE}/state", str(int(S.Initialising)), tx)
        tool.write(f"{be_path(backend)}/frontend", FE, tx)
        tool.write(f"{be_path(backend)}/state", str(int(S.Initialising)), tx)
    store.tool.transaction(write)


def move_device(store: Store, backend: int) -> None:
    """The toolstack points the device at a restarted driver domain."""
    def write(tx: int) -> None:
        tool = store.tool
        tool.write(f"{be_path(backend)}/frontend", FE, tx)
        tool.write(f"{be_path(backend)}/state", str(int(S.Initialising)), tx)
        tool.write(f"{FE}/backend", be_path(backend), tx)
        tool.write(f"{FE}/backend-id", str(backend), tx)
    store.tool.transaction(write)


class FrontDriver:
    """A frontend driver's hooks, recorded: its rings are granted to the
    backend it connects to (`ring-owner`)."""

    def __init__(self, store: Store, work: WorkQueue, **kw) -> None:
        self.calls: list[str] = []
        self.xs = store.client("front")
        self.life = Frontend(self.xs, work, RecordingLog(), FE, FrontendHooks(
            connect=self.connect, resume=lambda: self.calls.append("resume"),
            lost=lambda: self.calls.append("lost"),
            disconnect=lambda gone: self.calls.append(f"disconnect gone={gone}"),
            gone=lambda: self.calls.append("gone")), **kw)
        self.life.start()

    def connect(self) -> None:
        self.calls.append(f"connect {self.life.backend_id}")
        self.xs.write(f"{FE}/ring-owner", str(self.life.backend_id))


class BackDriver:
    """A backend driver's hooks: its map fails with GNTST_general_error
    while the frontend's rings are granted to another domain."""

    def __init__(self, store: Store, work: WorkQueue, domid: int) -> None:
        self.domid = domid
        self.calls: list[str] = []
        self.cond = threading.Condition()
        self.xs = store.client(f"back{domid}")
        self.life = Backend(self.xs, work, RecordingLog(), be_path(domid), BackendHooks(
            connect=self.connect, disconnect=lambda: self.call("disconnect"),
            resume=lambda: self.call("resume"), remove=lambda: self.call("remove")))
        self.life.start()

    def call(self, what: str) -> None:
        with self.cond:
            self.calls.append(what)
            self.cond.notify_all()

    def called(self, count: int) -> list[str]:
        """The calls, once there are `count` of them."""
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.calls) >= count, 20), self.calls
            return list(self.calls)

    def connect(self) -> None:
        owner = int(self.xs.read(f"{FE}/ring-owner"))
        self.call(f"connect owner={owner}")
        if owner != self.domid:
            raise GrantStatusError(GNTST_general_error, "map ring-ref")


def test_backend_waits_in_initwait_for_a_frontend_with_foreign_grants(store):
    """The frontend still shows the Connected of its previous backend (domid
    1, dead) when the restarted one (domid 2) comes up: the map fails, the
    backend stays in InitWait, and serves the frontend once it starts over."""
    work = WorkQueue(RecordingLog())
    create_device(store, 1)
    store.tool.write(f"{FE}/ring-owner", "1")
    store.set_state(FE, S.Connected)
    move_device(store, 2)
    with store.watching(be_path(2)) as until:
        back = BackDriver(store, work, 2)
        assert back.called(2) == ["connect owner=1", "disconnect"]
        assert work.drain(back.life.path, 20)
        assert store.state(be_path(2)) == S.InitWait  # not Closing: a dead end
        # The frontend sees the move and starts over, rings granted to 2.
        store.set_state(FE, S.Closed)
        until(S.Closed)
        store.set_state(FE, S.Initialising)
        until(S.InitWait)
        store.tool.write(f"{FE}/ring-owner", "2")
        store.set_state(FE, S.Initialised)
        until(S.Connected)
    assert work.drain(back.life.path, 20)
    assert back.calls[2:] == ["disconnect", "disconnect", "connect owner=2", "resume"]
    back.life.close()
    assert back.calls[-2:] == ["disconnect", "remove"]
    assert work.close(20) and not work.threads


def test_backend_seeing_only_closed_then_initialised_still_connects(store):
    """Watches report a node's value now: a backend that saw its frontend's
    Closed and then Initialised (Initialising unseen) goes InitWait, then
    connects."""
    work = WorkQueue(RecordingLog())
    create_device(store, 2)
    store.tool.write(f"{FE}/ring-owner", "2")
    with store.watching(be_path(2)) as until:
        back = BackDriver(store, work, 2)
        until(S.InitWait)
        store.set_state(FE, S.Closed)
        until(S.Closed)
        store.set_state(FE, S.Initialised)
        until(S.Connected)
    back.life.close()
    assert work.close(20) and not work.threads


def test_frontend_reconnects_when_its_backend_id_changes(store):
    work = WorkQueue(RecordingLog())
    before = set(threading.enumerate())
    create_device(store, 1)
    front = FrontDriver(store, work, error=ConnectionError)
    backs = {1: BackDriver(store, work, 1)}
    with store.watching(FE) as until:
        work.submit(front.life.connect, FE)
        until(S.Connected)
        assert work.drain(FE, 20)
        assert front.calls == ["connect 1", "resume"]
        # Driver domain 1 dies: the toolstack removes its backend directory.
        store.tool.rm(be_path(1))
        until(S.Closed)  # our rings are gone: no new backend maps them
        assert work.drain(FE, 20)
        assert front.calls[2:] == ["lost"]
        # ... and restarts it as domid 2; the device moves there.
        move_device(store, 2)
        backs[2] = BackDriver(store, work, 2)
        until(S.Connected)
    assert work.drain(FE, 20)
    assert front.calls[3:] == ["lost", "disconnect gone=False", "connect 2", "resume"]
    assert store.state(be_path(2)) == S.Connected
    assert ("reconnecting to the new backend", {"backend": be_path(2)}) in front.life.log.lines
    # close() returns once the handshake is done: Closed on both ends.
    with store.watching(be_path(2)) as until:
        front.life.close()
        assert store.state(FE) == S.Closed
        assert front.calls[-2:] == ["gone", "disconnect gone=True"]
        until(S.Closed)  # the backend followed
    for back in backs.values():
        back.life.close()
    assert work.close(20)
    clients = {t for client in store.clients for t in client.threads}  # the fixture's
    assert set(threading.enumerate()) - before - clients == set()


def test_a_newer_move_supersedes_a_connect_waiting_for_its_backend(store):
    """Driver domain 2 dies before it ever reaches InitWait: the reconnect
    waiting for it gives up at once when the device moves on to 3."""
    work = WorkQueue(RecordingLog())
    create_device(store, 1)
    front = FrontDriver(store, work, error=ConnectionError)
    back1 = BackDriver(store, work, 1)
    with store.watching(FE) as until:
        work.submit(front.life.connect, FE)
        until(S.Connected)
        store.tool.rm(be_path(1))
        move_device(store, 2)  # no backend driver runs for 2: it stays Initialising
        until(S.Initialising)
        move_device(store, 3)
        back3 = BackDriver(store, work, 3)
        until(S.Connected)
    assert work.drain(FE, 20)
    assert "connect 2" not in front.calls and front.calls[-2:] == ["connect 3", "resume"]
    assert any(event == "reconnect failed" and "replaced meanwhile" in kw["error"]
               for event, kw in front.life.log.lines)
    for end in (front, back1, back3):
        end.life.close()
    assert work.close(20) and not work.threads


def test_backend_closing_a_connected_device_closes_the_frontend_for_good(store):
    work = WorkQueue(RecordingLog())
    create_device(store, 1)
    store.tool.write(f"{FE}/ring-owner", "1")
    front = FrontDriver(store, work, error=ConnectionError)
    with store.watching(FE) as until:
        work.submit(front.life.connect, FE)
        store.set_state(be_path(1), S.InitWait)  # a backend moved by hand
        until(S.Initialised)
        store.set_state(be_path(1), S.Connected)
        until(S.Connected)
        store.set_state(be_path(1), S.Closing)  # a protocol error, say
        until(S.Closing)
        assert front.life.closed
        store.set_state(be_path(1), S.Closed)
        until(S.Closed)
    assert work.drain(FE, 20)
    assert front.calls[-2:] == ["gone", "disconnect gone=True"]
    front.life.close()  # again: nothing more
    assert front.calls.count("gone") == 1
    assert work.close(20) and not work.threads


def test_close_during_the_handshake_gives_up_waiting(store):
    """A device closed while its connect waits for a backend that never
    comes: the connect gives up at once, and the close handshake runs."""
    work = WorkQueue(RecordingLog())
    create_device(store, 1)
    front = FrontDriver(store, work, error=ConnectionError)
    failed = []

    def connect() -> None:
        try:
            front.life.connect()
        except ConnectionError as exc:
            failed.append(str(exc))

    work.submit(connect, FE)
    front.life.close(wait=False)
    store.set_state(be_path(1), S.Closed)  # the backend lets go
    assert work.drain(FE, 20)
    assert failed and "closing" in failed[0]
    assert store.state(FE) == S.Closed
    assert work.close(20) and not work.threads
