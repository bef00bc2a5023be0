import itertools
import queue

import pytest

from domains.kernel.xenbus.client import XenStoreClient, XsError
from domains.kernel.xenbus.state import (
    BACKEND,
    FRONTEND,
    TRANSITIONS,
    IllegalTransition,
    allowed,
    check_transition,
    gather,
    read_feature,
    read_state,
    switch_state,
    watch_otherend,
    write_features,
)
from hypervisor.public.io import xs_wire as xs
from hypervisor.public.io.xenbus import XenbusState as S
from tests.fakexenstored import FakeXenstored, SocketServer

pytestmark = pytest.mark.timeout(60)

FRONT_START = [S.Initialising, S.Initialised, S.Connected, S.Closing, S.Closed]
BACK_START = [S.Initialising, S.InitWait, S.Connected, S.Closing, S.Closed]


def walk(path, end):
    for old, new in itertools.pairwise(path):
        check_transition(old, new, end)


def test_blkif_start_up_and_tear_down():
    walk(FRONT_START, FRONTEND)
    walk(BACK_START, BACKEND)
    walk([S.Unknown, S.Initialising, S.InitWait, S.Initialised, S.Connected], BACKEND)  # pciback
    walk([S.Initialising, S.Connected, S.Closed], FRONTEND)  # netfront; Closed on a dead peer


def test_reconnect_and_reconfigure_paths():
    walk([S.Closed, S.Initialising, S.Initialised, S.Connected], FRONTEND)
    walk([S.Closed, S.InitWait, S.Connected], BACKEND)  # blkback: "prepare for reconnect"
    walk([S.Connected, S.Reconfiguring, S.Reconfigured, S.Connected], BACKEND)
    walk([S.Connected, S.Reconfigured, S.Connected], BACKEND)  # netback answering XDP
    walk([S.Connected, S.Reconfiguring, S.Connected], FRONTEND)  # netfront XDP


@pytest.mark.parametrize("state", list(S))
@pytest.mark.parametrize("end", [FRONTEND, BACKEND, None])
def test_staying_put_is_always_legal(state, end):
    check_transition(state, state, end)


@pytest.mark.parametrize("old", [s for s in S if s != S.Unknown])
def test_nobody_returns_to_unknown(old):
    with pytest.raises(IllegalTransition):
        check_transition(old, S.Unknown)


@pytest.mark.parametrize("old,end", [
    (s, end) for s in S for end in (FRONTEND, BACKEND)
    if s not in (S.Closing, S.Closed, S.Unknown)
    and not (end == FRONTEND and s == S.InitWait)  # a frontend never is in InitWait
])
def test_any_live_state_may_close(old, end):
    check_transition(old, S.Closing, end)
    check_transition(old, S.Closed, end)


@pytest.mark.parametrize("old,new,end", [
    (S.Initialising, S.Connected, BACKEND),      # backend must wait for the frontend
    (S.Initialising, S.InitWait, FRONTEND),      # InitWait is the backend's
    (S.Initialising, S.Initialised, BACKEND),
    (S.Connected, S.Initialising, None),         # must close first
    (S.Connected, S.InitWait, None),
    (S.Closing, S.Connected, None),
    (S.Closing, S.Initialising, None),
    (S.Closed, S.Connected, None),
    (S.Closed, S.Closing, None),
    (S.Closed, S.InitWait, FRONTEND),
    (S.Unknown, S.Connected, None),
    (S.Reconfigured, S.Reconfiguring, None),
    (S.Initialised, S.InitWait, None),
    (S.Connected, S.Reconfigured, FRONTEND),
])
def test_illegal(old, new, end):
    with pytest.raises(IllegalTransition) as info:
        check_transition(old, new, end)
    assert (info.value.old, info.value.new, info.value.end) == (old, new, end)
    assert old.name in str(info.value) and new.name in str(info.value)


def test_table_shape():
    for table in TRANSITIONS.values():
        for old, news in table.items():
            assert S.Unknown not in news
            assert news <= allowed(old, None)
    assert allowed(S.Closed, None) >= {S.Initialising, S.InitWait, S.Closed}
    with pytest.raises(ValueError):
        check_transition(S.Closed, S.Initialising, "sideways")


@pytest.fixture
def xs_env():
    store = FakeXenstored()
    server = SocketServer(store)
    client = XenStoreClient(server.transport)
    try:
        yield store, client
    finally:
        client.close()
        server.stop()


def test_read_state(xs_env):
    store, client = xs_env
    assert read_state(client, "/dev/vbd/1") == S.Unknown  # missing node
    store.nodes["/dev/vbd/1/state"] = b"4"
    assert read_state(client, "/dev/vbd/1") == S.Connected
    store.nodes["/dev/vbd/1/state"] = b"junk"
    assert read_state(client, "/dev/vbd/1") == S.Unknown
    store.nodes["/dev/vbd/1/state"] = b"42"
    assert read_state(client, "/dev/vbd/1/") == S.Unknown


def test_switch_state(xs_env):
    store, client = xs_env
    dev = "/local/domain/1/device/vbd/51712"
    assert switch_state(client, dev, S.Initialising) is None  # not resurrected
    assert not client.exists(f"{dev}/state")
    assert switch_state(client, dev, S.Initialising, create=True) == S.Unknown
    assert client.read(f"{dev}/state") == b"1"
    assert switch_state(client, dev, S.Initialised, end=FRONTEND) == S.Initialising
    writes = sum(1 for t, *_ in store.log if t == xs.XS_WRITE)
    assert switch_state(client, dev, S.Initialised) == S.Initialised
    assert sum(1 for t, *_ in store.log if t == xs.XS_WRITE) == writes  # no-op
    with pytest.raises(IllegalTransition):
        switch_state(client, dev, S.InitWait, end=FRONTEND)
    assert read_state(client, dev) == S.Initialised
    # a conflicting transaction is retried
    store.commit_failures = 2
    assert switch_state(client, dev, S.Connected) == S.Initialised
    assert read_state(client, dev) == S.Connected
    ends = [p for t, _tx, p in store.log if t == xs.XS_TRANSACTION_END]
    assert ends[-3:] == [b"T\0"] * 3


def test_watch_otherend(xs_env):
    _, client = xs_env
    backend = "/local/domain/0/backend/vbd/1/51712"
    seen = queue.Queue()
    w = watch_otherend(client, backend, seen.put)
    assert seen.get(timeout=10) == S.Unknown  # the initial event; no node yet
    switch_state(client, backend, S.Initialising, create=True)
    assert seen.get(timeout=10) == S.Initialising
    switch_state(client, backend, S.InitWait)
    assert seen.get(timeout=10) == S.InitWait
    w.cancel()
    switch_state(client, backend, S.Connected)
    client.read(f"{backend}/state")
    assert seen.empty()


def test_features_and_gather(xs_env):
    _, client = xs_env
    path = "/local/domain/0/backend/vbd/1/51712"
    tx = client.transaction_start()
    write_features(client, path, {"feature-flush-cache": True, "sectors": 2048,
                                  "mode": "w"}, tx)
    client.transaction_end(tx)
    assert read_feature(client, path, "feature-flush-cache") == 1
    assert read_feature(client, path, "sectors") == 2048
    assert read_feature(client, path, "feature-persistent") == 0
    assert read_feature(client, path, "feature-persistent", default=7) == 7
    assert read_feature(client, path, "mode", default=3) == 3  # not a number
    assert gather(client, path, "mode", "sectors") == ("w", "2048")
    with pytest.raises(XsError) as info:
        gather(client, path, "mode", "missing")
    assert info.value.name == "ENOENT"


def test_backend_moves_are_followed_once_and_the_latest_wins():
    import threading

    from domains.kernel.xenbus.state import BackendMoves

    cond = threading.Condition()
    moves = BackendMoves(cond, 1)
    assert not moves.arrived(1)  # where we are already
    assert moves.arrived(3) and not moves.arrived(3)  # a watch seen twice counts once
    assert moves.claim(3) and not moves.superseded  # this thread connects to 3
    assert moves.arrived(4)
    with cond:
        assert moves.superseded  # the connect to 3 gives up
    assert moves.arrived(5)
    assert not moves.claim(4)  # 4's thread steps aside: 5 is newer
    assert moves.claim(5) and not moves.superseded


def test_waiting_on_a_backend_says_why_it_gave_up():
    import threading

    from domains.kernel.xenbus.state import BackendMoves

    cond = threading.Condition()
    moves = BackendMoves(cond, 1)
    state = [S.InitWait]
    assert moves.wait((S.InitWait,), lambda: state[0], 1) is None
    assert moves.wait((S.Connected,), lambda: state[0], 0) == "stayed in InitWait"
    assert moves.arrived(2) and moves.claim(2)
    threading.Timer(0.05, lambda: moves.arrived(3)).start()  # a newer move, while waiting
    assert moves.wait((S.Connected,), lambda: state[0], 30) == \
        "was replaced meanwhile"
