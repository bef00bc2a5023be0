"""XenStoreClient against a small fake xenstored, over a socket and over a ring."""

import queue
import socket
import threading

import pytest

from domains.kernel.xenbus.client import (
    XenStoreClient,
    XsClosed,
    XsError,
)
from domains.kernel.xenbus.ring import XenstoreRing, init_ring
from domains.kernel.xenbus.transport import RingTransport, TransportClosed, UnixTransport
from hypervisor.public import errno as xen_errno
from hypervisor.public.io import xs_wire as xs
from hypervisor.public.io.xs_wire import XSD_SOCKMSG as HEADER, Decoder, Message, WireError

pytestmark = pytest.mark.timeout(60)


def frame(mtype, rid, tx, payload=b""):
    return HEADER.pack(mtype, rid, tx, len(payload)) + payload


class FakeXenstored:
    """Just enough of xenstored's semantics for the client's tests."""

    def __init__(self):
        self.nodes = {"/": b""}
        self.perms = {}
        self.watches = []
        self.next_tx = 1
        self.txs = {}
        self.commit_failures = 0
        self.big = set()            # DIRECTORY answers E2BIG for these
        self.part_names = 2         # names per DIRECTORY_PART reply
        self.gen = 7
        self.bump_gen_after = None  # change the generation after this many parts
        self.parts_served = 0
        self.hang = set()           # READs of these are never answered
        self.hold = 0               # collect this many replies, send them reversed
        self.held = []
        self.requests = queue.Queue()
        self.log = []
        self.introduced = set()

    # -- helpers --

    def ok(self, mtype, rid, tx, body=b"OK\0"):
        return [frame(mtype, rid, tx, body)]

    def err(self, rid, tx, name):
        return [frame(xs.XS_ERROR, rid, tx, name.encode() + b"\0")]

    def children(self, path):
        prefix = path.rstrip("/") + "/"
        return sorted({p[len(prefix):].split("/")[0] for p in self.nodes
                       if p.startswith(prefix) and p != prefix})

    def fire(self, path):
        out = []
        for wpath, token in self.watches:
            if path == wpath or path.startswith(wpath.rstrip("/") + "/"):
                out.append(frame(xs.XS_WATCH_EVENT, 0, 0, f"{path}\0{token}\0".encode()))
        return out

    def put(self, path, value):
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            self.nodes.setdefault("/" + "/".join(parts[:i]), b"")
        self.nodes[path] = value
        return self.fire(path)

    # -- dispatch --

    def handle(self, mtype, rid, tx, payload):
        self.log.append((mtype, tx, payload))
        self.requests.put((mtype, payload))
        replies = self._handle(mtype, rid, tx, payload)
        if self.hold:
            self.held.extend(r for r in replies)
            if len(self.held) >= self.hold:
                out, self.held, self.hold = list(reversed(self.held)), [], 0
                return out
            return []
        return replies

    def _handle(self, mtype, rid, tx, payload):
        args = payload.split(b"\0")
        path = args[0].decode()
        if mtype == xs.XS_READ:
            if path in self.hang:
                return []
            if path == "/weird":
                return self.err(rid, tx, "EWHATEVER")
            value = self.txs.get(tx, {}).get(path, self.nodes.get(path))
            if value is None:
                return self.err(rid, tx, "ENOENT")
            return self.ok(mtype, rid, tx, value)
        if mtype == xs.XS_WRITE:
            value = payload[len(args[0]) + 1:]
            if tx:
                self.txs[tx][path] = value
                return self.ok(mtype, rid, tx)
            return self.ok(mtype, rid, tx) + self.put(path, value)
        if mtype == xs.XS_MKDIR:
            return self.ok(mtype, rid, tx) + (self.put(path, b"") if path not in self.nodes else [])
        if mtype == xs.XS_RM:
            if path not in self.nodes:
                return self.err(rid, tx, "ENOENT")
            for p in [p for p in self.nodes if p == path or p.startswith(path + "/")]:
                del self.nodes[p]
            return self.ok(mtype, rid, tx) + self.fire(path)
        if mtype == xs.XS_DIRECTORY:
            if path not in self.nodes:
                return self.err(rid, tx, "ENOENT")
            if path in self.big:
                return self.err(rid, tx, "E2BIG")
            return self.ok(mtype, rid, tx, b"".join(c.encode() + b"\0" for c in self.children(path)))
        if mtype == xs.XS_DIRECTORY_PART:
            offset = int(args[1])
            self.parts_served += 1
            if self.bump_gen_after is not None and self.parts_served > self.bump_gen_after:
                self.gen += 1
                self.bump_gen_after = None
            listing = b"".join(c.encode() + b"\0" for c in self.children(path))
            rest = listing[offset:]
            names = rest.split(b"\0")[:-1][:self.part_names]
            body = b"".join(n + b"\0" for n in names)
            if len(body) == len(rest):
                body += b"\0"  # the empty name: end of the list
            return self.ok(mtype, rid, tx, str(self.gen).encode() + b"\0" + body)
        if mtype == xs.XS_GET_PERMS:
            perms = self.perms.get(path, ["n0"])
            return self.ok(mtype, rid, tx, b"".join(p.encode() + b"\0" for p in perms))
        if mtype == xs.XS_SET_PERMS:
            self.perms[path] = [a.decode() for a in args[1:-1]]
            return self.ok(mtype, rid, tx)
        if mtype == xs.XS_WATCH:
            token = args[1].decode()
            self.watches.append((path, token))
            return self.ok(mtype, rid, tx) + [
                frame(xs.XS_WATCH_EVENT, 0, 0, f"{path}\0{token}\0".encode())]
        if mtype == xs.XS_UNWATCH:
            self.watches.remove((path, args[1].decode()))
            return self.ok(mtype, rid, tx)
        if mtype == xs.XS_RESET_WATCHES:
            self.watches.clear()
            return self.ok(mtype, rid, tx)
        if mtype == xs.XS_TRANSACTION_START:
            t, self.next_tx = self.next_tx, self.next_tx + 1
            self.txs[t] = {}
            return self.ok(mtype, rid, tx, f"{t}\0".encode())
        if mtype == xs.XS_TRANSACTION_END:
            writes = self.txs.pop(tx)
            if path == "T":
                if self.commit_failures:
                    self.commit_failures -= 1
                    return self.err(rid, 0, "EAGAIN")
                out = self.ok(mtype, rid, 0)
                for p, v in writes.items():
                    out += self.put(p, v)
                return out
            return self.ok(mtype, rid, 0)
        if mtype == xs.XS_GET_DOMAIN_PATH:
            return self.ok(mtype, rid, tx, f"/local/domain/{path}\0".encode())
        if mtype == xs.XS_INTRODUCE:
            self.introduced.add(int(path))
            return self.ok(mtype, rid, tx)
        if mtype == xs.XS_RELEASE:
            self.introduced.discard(int(path))
            return self.ok(mtype, rid, tx)
        if mtype == xs.XS_IS_DOMAIN_INTRODUCED:
            return self.ok(mtype, rid, tx, b"T\0" if int(path) in self.introduced else b"F\0")
        if mtype in (xs.XS_RESUME, xs.XS_SET_TARGET):
            return self.ok(mtype, rid, tx)
        if mtype == xs.XS_CONTROL:
            return self.ok(mtype, rid, tx, b"|".join(args[:-1]) + b"\0")
        return self.err(rid, tx, "ENOSYS")


class SocketServer:
    def __init__(self, store):
        self.store = store
        self.sock, theirs = socket.socketpair()
        self.transport = UnixTransport.from_socket(theirs)
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        decoder = Decoder()
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            for msg in decoder.feed(data):
                out = b"".join(self.store.handle(msg.type, msg.req_id, msg.tx_id, msg.payload))
                if out:
                    self.sock.sendall(out)

    def disconnect(self):
        self.sock.shutdown(socket.SHUT_RDWR)

    def stop(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.thread.join()
        self.sock.close()


class RingServer:
    """xenstored's half of a shared page; event channels are Condition kicks."""

    def __init__(self, store):
        self.store = store
        self.buf = bytearray(4096)
        init_ring(self.buf)
        self.ring = XenstoreRing(self.buf)
        self.cond = threading.Condition()
        self.stopping = False
        self.notifications = 0
        self.transport = RingTransport(XenstoreRing(self.buf), notify=self.notify)
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def notify(self):  # the domain's evtchn send -> xenstored's handler
        with self.cond:
            self.notifications += 1
            self.cond.notify_all()

    def run(self):
        decoder = Decoder()
        out = bytearray()
        while True:
            with self.cond:
                while not self.stopping and self.ring.request_available() == 0 and \
                        not (out and self.ring.response_space()):
                    self.cond.wait()
                if self.stopping:
                    return
            data = self.ring.read_request(4096)
            if data:
                self.transport.kick()
            for msg in decoder.feed(data):
                out += b"".join(self.store.handle(msg.type, msg.req_id, msg.tx_id, msg.payload))
            if out:
                n = self.ring.write_response(bytes(out))
                del out[:n]
                if n:
                    self.transport.kick()  # xenstored's evtchn send -> domain's handler

    def stop(self):
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        self.thread.join()


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
    store, client, _ = env
    errors = []

    def worker(i):
        try:
            for j in range(25):
                client.write(f"/w/{i}/{j}", f"{i}:{j}" * 20)
                assert client.read(f"/w/{i}/{j}") == (f"{i}:{j}" * 20).encode()
        except Exception as exc:  # pragma: no cover - reported below
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
        except BaseException as exc:
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
