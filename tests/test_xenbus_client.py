"""XenStoreClient against a small fake xenstored, over a socket and over a ring."""

import queue
import threading

import pytest

from domains.kernel.xenbus.client import (
    XenStoreClient,
    XsClosed,
    XsError,
)
from domains.kernel.xenbus.ring import XenstoreRing, init_ring
from domains.kernel.xenbus.transport import RingTransport, TransportClosed
from hypervisor.public import errno as xen_errno
from hypervisor.public.io import xs_wire as xs
from hypervisor.public.io.xs_wire import XSD_SOCKMSG as HEADER
from hypervisor.public.io.xs_wire import Decoder, Message, WireError
from tests.fakexenstored import FakeXenstored, RingServer, SocketServer, frame

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["socket", "ring"])
def env(request):
    store = FakeXenstored()
    server = (SocketServer if request.param == "socket" else RingServer)(store)
    client = XenStoreClient(server.transport, name=f"test-{request.param}")
    try:
        yield store, client, server
    finally:
        client.close()
        server.stop()


def wait_request(store, mtype):
    while True:
        t, payload = store.requests.get(timeout=10)
        if t == mtype:
            return payload


# -- tests ---------------------------------------------------------------------------

def test_frame_decoder_is_incremental():
    stream = frame(xs.XS_READ, 1, 0, b"abc") + frame(xs.XS_WATCH_EVENT, 0, 0, b"p\0t\0") \
        + frame(xs.XS_RM, 3, 9)
    decoder = Decoder()
    got = []
    for i in range(len(stream)):
        got += list(decoder.feed(stream[i:i + 1]))
    assert got == [Message(xs.XS_READ, 1, 0, b"abc"), Message(xs.XS_WATCH_EVENT, 0, 0, b"p\0t\0"),
                   Message(xs.XS_RM, 3, 9, b"")]
    with pytest.raises(WireError):
        list(Decoder().feed(HEADER.pack(xs.XS_READ, 1, 0, xs.XENSTORE_PAYLOAD_MAX + 1)))


def test_nodes(env):
    store, client, _ = env
    client.write("/a/b", "hello")
    client.write(b"/a/c", b"\x00\xffbin")
    assert client.read("/a/b") == b"hello"
    assert client.read("/a/c") == b"\x00\xffbin"
    assert store.log[0] == (xs.XS_WRITE, 0, b"/a/b\0hello")
    client.mkdir("/a/d")
    assert client.directory("/a") == ["b", "c", "d"]
    assert client.directory("/a/d") == []
    assert client.exists("/a/b") and not client.exists("/nope")
    client.rm("/a/b")
    assert client.directory("/a") == ["c", "d"]
    client.set_perms("/a", ["n0", "r3"], 0)
    assert store.log[-1] == (xs.XS_SET_PERMS, 0, b"/a\0n0\0r3\0")
    assert client.get_perms("/a") == ["n0", "r3"]


def test_error_names_and_errnos(env):
    _, client, _ = env
    with pytest.raises(XsError) as info:
        client.read("/missing")
    assert info.value.name == "ENOENT"
    assert info.value.errno == xen_errno.ENOENT
    with pytest.raises(XsError) as info:
        client.rm("/missing")
    assert (info.value.name, info.value.errno) == ("ENOENT", 2)
    with pytest.raises(XsError) as info:
        client.read("/weird")
    assert info.value.name == "EWHATEVER"
    assert info.value.errno == xen_errno.EINVAL  # libxenstore's get_error() default
    with pytest.raises(XsError) as info:
        client.write("/big", b"x" * (xs.XENSTORE_PAYLOAD_MAX + 1))
    assert info.value.name == "E2BIG"
    assert all(XsError(n).errno == getattr(xen_errno, n) for n in xs.xsd_errors)


def test_replies_out_of_order_reach_their_callers(env):
    store, client, _ = env
    for i in range(4):
        store.nodes[f"/n{i}"] = f"v{i}".encode()
    store.hold = 4
    results = {}

    def reader(i):
        results[i] = client.read(f"/n{i}")

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: f"v{i}".encode() for i in range(4)}


def test_many_concurrent_requests(env):
    _store, client, _ = env
    errors = []

    def worker(i):
        try:
            for j in range(25):
                client.write(f"/w/{i}/{j}", f"{i}:{j}" * 20)
                assert client.read(f"/w/{i}/{j}") == (f"{i}:{j}" * 20).encode()
        except Exception as exc:  # noqa: BLE001 - any failure of a thread is reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(client.directory("/w")) == 8


def test_large_values_cross_the_ring_in_pieces(env):
    _, client, server = env
    value = bytes(range(256)) * 15  # 3840 bytes: several ring-fulls each way
    client.write("/big", value)
    assert client.read("/big") == value
    if isinstance(server, RingServer):
        assert server.notifications > 4


def test_watch_callbacks_may_issue_requests(env):
    _, client, _ = env
    seen = queue.Queue()

    def on_change(path, token):
        try:
            value = client.read(path)
        except XsError as exc:
            value = exc.name
        seen.put((path, token, value))

    client.write("/dev/x", "0")
    client.watch("/dev", "tok", on_change)
    assert seen.get(timeout=10) == ("/dev", "tok", b"")  # fired once when set
    client.write("/dev/x", "1")
    assert seen.get(timeout=10) == ("/dev/x", "tok", b"1")
    client.rm("/dev/x")
    assert seen.get(timeout=10) == ("/dev/x", "tok", "ENOENT")
    client.unwatch("/dev", "tok")
    client.write("/dev/y", "2")
    assert client.read("/dev/y") == b"2"  # event, if any, would have come before this reply
    assert seen.empty()


def test_watch_tokens_route_events(env):
    _, client, _ = env
    a, b = queue.Queue(), queue.Queue()
    client.watch("/x", "A", lambda p, t: a.put(p))
    client.watch("/y", "B", lambda p, t: b.put(p))
    assert a.get(timeout=10) == "/x" and b.get(timeout=10) == "/y"
    client.write("/y/1", "v")
    assert b.get(timeout=10) == "/y/1"
    client.read("/y/1")
    assert a.empty()
    with pytest.raises(XsError):
        client.watch("/x", "A", lambda p, t: None)  # already registered
    client.reset_watches()
    client.write("/x/2", "v")
    client.read("/x/2")
    assert a.empty()


def test_transaction_retries_on_eagain(env):
    store, client, _ = env
    store.commit_failures = 2
    calls = []

    def body(tx):
        calls.append(tx)
        assert tx != 0
        client.write("/t/a", f"attempt{len(calls)}", tx)
        return len(calls)

    assert client.transaction(body) == 3
    assert len(calls) == 3 and len(set(calls)) == 3
    assert client.read("/t/a") == b"attempt3"
    ends = [p for t, _tx, p in store.log if t == xs.XS_TRANSACTION_END]
    assert ends == [b"T\0"] * 3


def test_transaction_gives_up_and_aborts(env):
    store, client, _ = env
    store.commit_failures = 10
    with pytest.raises(XsError) as info:
        client.transaction(lambda tx: client.write("/t/b", "x", tx), retries=2)
    assert info.value.name == "EAGAIN"
    assert not client.exists("/t/b")

    class Boom(Exception):
        pass

    def failing(tx):
        client.write("/t/c", "x", tx)
        raise Boom

    store.commit_failures = 0
    with pytest.raises(Boom):
        client.transaction(failing)
    assert store.log[-1][0] == xs.XS_TRANSACTION_END and store.log[-1][2] == b"F\0"
    assert not client.exists("/t/c")
    tx = client.transaction_start()
    client.write("/t/d", "y", tx)
    client.transaction_end(tx, commit=True)
    assert client.read("/t/d") == b"y"


def test_directory_part_fallback(env):
    store, client, _ = env
    names = [f"child{i:02d}" for i in range(7)]
    for n in names:
        store.nodes[f"/many/{n}"] = b""
    store.nodes["/many"] = b""
    store.big.add("/many")
    assert client.directory("/many") == names
    kinds = [t for t, _tx, _p in store.log]
    assert kinds[0] == xs.XS_DIRECTORY and kinds.count(xs.XS_DIRECTORY_PART) == 4
    assert [p for t, _tx, p in store.log if t == xs.XS_DIRECTORY_PART][1] == \
        b"/many\0" + str(len("child00\0child01\0")).encode() + b"\0"

    # the node changes between two parts: the listing restarts from offset 0
    store.log.clear()
    store.parts_served = 0
    store.bump_gen_after = 2
    assert client.directory("/many") == names
    offsets = [p.split(b"\0")[1] for t, _tx, p in store.log if t == xs.XS_DIRECTORY_PART]
    assert offsets[:4] == [b"0", b"16", b"32", b"0"]

    store.nodes["/empty"] = b""
    store.big.add("/empty")
    assert client.directory("/empty") == []


def test_domain_operations(env):
    store, client, _ = env
    assert client.get_domain_path(3) == "/local/domain/3"
    assert not client.is_domain_introduced(3)
    client.introduce(3, 0x1234, 7)
    assert store.log[-1] == (xs.XS_INTRODUCE, 0, b"3\x004660\x007\0")
    assert client.is_domain_introduced(3)
    client.set_target(4, 3)
    assert store.log[-1] == (xs.XS_SET_TARGET, 0, b"4\x003\0")
    client.resume(3)
    client.release(3)
    assert not client.is_domain_introduced(3)
    assert client.control("log", "on") == b"log|on"
    assert store.log[-1] == (xs.XS_CONTROL, 0, b"log\0on\0")


def test_close_wakes_waiters(env):
    store, client, _ = env
    store.hang.add("/hang")
    outcome = queue.Queue()

    def blocked():
        try:
            client.read("/hang")
        except BaseException as exc:  # noqa: BLE001 - what the waiter got, whatever it is
            outcome.put(exc)

    t = threading.Thread(target=blocked)
    t.start()
    wait_request(store, xs.XS_READ)
    client.close()
    t.join(10)
    assert not t.is_alive()
    err = outcome.get_nowait()
    assert isinstance(err, XsClosed) and isinstance(err, XsError)
    with pytest.raises(XsClosed):
        client.read("/x")
    client.close()  # idempotent


def test_server_disconnect_fails_waiters():
    store = FakeXenstored()
    server = SocketServer(store)
    client = XenStoreClient(server.transport)
    try:
        store.hang.add("/hang")
        outcome = queue.Queue()
        t = threading.Thread(target=lambda: outcome.put(
            pytest.raises(XsClosed, client.read, "/hang")))
        t.start()
        wait_request(store, xs.XS_READ)
        server.disconnect()
        t.join(10)
        assert not t.is_alive() and outcome.get_nowait()
        assert client.closed
    finally:
        client.close()
        server.stop()


def test_ring_transport_close_wakes_recv_and_send():
    buf = bytearray(4096)
    init_ring(buf)
    transport = RingTransport(XenstoreRing(buf), notify=lambda: None)
    got = queue.Queue()

    def recv():
        got.put(transport.recv())

    def send():
        try:
            transport.send(b"x" * 3000)  # nobody consumes: blocks when full
        except TransportClosed as exc:
            got.put(exc)

    threads = [threading.Thread(target=recv), threading.Thread(target=send)]
    for t in threads:
        t.start()
    transport.close()
    for t in threads:
        t.join(10)
        assert not t.is_alive()
    results = [got.get_nowait(), got.get_nowait()]
    assert b"" in results
    assert any(isinstance(r, TransportClosed) for r in results)
    assert transport.recv() == b""


def test_corrupt_ring_closes_the_client():
    buf = bytearray(4096)
    init_ring(buf)
    transport = RingTransport(XenstoreRing(buf), notify=lambda: None)
    client = XenStoreClient(transport)
    try:
        intf = xs.xenstore_domain_interface.from_buffer(buf)
        intf.rsp_prod = 5000
        transport.kick()
        with pytest.raises(XsClosed):
            client.read("/x")  # either the reader already died or it dies now
    finally:
        client.close()
