"""xenstored's flow control (Xen 4.17's outstanding and memory quotas) and
its I/O: a domain that floods its ring and never reads replies is stalled,
a socket client that never reads blocks nobody, output is never copied."""

from __future__ import annotations

import socket
import struct

import pytest

from domains.dom0.xenstored import Message, Quotas, XenStore, encode
from domains.dom0.xenstored.daemon import Xenstored, pump_ring
from domains.dom0.xenstored.outbox import Outbox
from domains.dom0.xenstored.wire import HEADER_SIZE
from domains.kernel.xenbus.client import XenStoreClient
from domains.kernel.xenbus.ring import XenstoreRing, init_ring
from domains.kernel.xenbus.transport import UnixTransport
from hypervisor.public.io import xs_wire as xs
from tests.fakekernel import FakeKernel, quiet_logger
from tests.xsclient import Client, guest_dir

pytestmark = pytest.mark.timeout(60)


def read_request(req_id: int, path: bytes = b"name") -> bytes:
    return struct.pack("<IIII", xs.XS_READ, req_id, 0, len(path) + 1) + path + b"\0"


# -- the outbox ----------------------------------------------------------------------


def test_outbox_counts_until_the_last_byte_is_sent():
    box = Outbox()
    reply = Message(xs.XS_READ, 1, 0, b"value")
    event = Message(xs.XS_WATCH_EVENT, 0, 0, b"/a\0tok\0")
    box.append(reply)
    box.append(event)
    assert (box.replies, box.bytes) == (1, 2 * HEADER_SIZE + 5 + 7)
    assert box.has_event(event.payload) and event in box and len(box) == 2
    views = box.chunks()
    assert b"".join(views) == encode(reply) + encode(event)
    assert not box and box.sending          # taken, not sent yet
    assert box.replies == 1 and not box.has_event(event.payload)
    box.advance(HEADER_SIZE)                # part of the reply
    assert box.replies == 1
    assert bytes(box.chunks()[0]) == b"value"   # the rest of it, not a copy of all
    box.advance(5 + 3)
    assert box.replies == 0 and box.bytes == HEADER_SIZE + 7  # counted until all sent
    box.advance(HEADER_SIZE + 4)
    assert not box.sending and box.bytes == 0


def test_clear_keeps_a_message_half_sent():
    box = Outbox()
    box.append(Message(xs.XS_READ, 1, 0, b"x" * 100))
    box.chunks()
    box.advance(10)
    box.append(Message(xs.XS_READ, 2, 0, b"y"))
    box.clear()
    assert box.replies == 1 and len(b"".join(box.chunks())) == HEADER_SIZE + 90


# -- the ring: a domain that never reads its replies ------------------------------------


def flood_setup(quotas: Quotas | None = None):
    xsd = XenStore(quotas)
    dom0 = Client(xsd, 0)
    guest_dir(dom0, 1, "n1")
    dom0.write("/local/domain/1/name", "flooder")
    page = bytearray(4096)
    init_ring(page)
    return xsd, dom0, xsd.connect(1), XenstoreRing(page)


def test_a_flooding_domain_that_never_reads_is_stalled():
    xsd, dom0, conn, ring = flood_setup()
    stream = b"".join(read_request(i) for i in range(20000))
    written = 0
    for _ in range(2000):  # the guest writes whenever there is room, never reads
        written += ring.write_request(stream[written:])
        moved, _ = pump_ring(xsd, conn, ring)
        if not moved:
            break
    else:
        pytest.fail("xenstored kept reading a domain that reads no replies")
    assert written < 200 * len(read_request(0))      # a ring or two, not 20000 requests
    assert conn.outstanding == xsd.quotas.outstanding
    assert not xsd.may_read(conn) and not xsd.wants_input(conn)
    assert xsd.domain_memory(1) < xsd.quotas.memory
    assert ring.response_space() == 0                 # replies wait in its own ring
    # Everybody else is served meanwhile.
    assert dom0.read("/local/domain/1/name") == b"flooder"
    # The domain reads its replies: it is served again.
    got = ring.read_response(4096)
    assert got.startswith(struct.pack("<I", xs.XS_READ))
    moved, _ = pump_ring(xsd, conn, ring)
    assert moved and conn.outstanding <= xsd.quotas.outstanding


def test_a_domain_over_its_memory_quota_is_stalled_and_loses_events():
    quotas = Quotas(memory=4096)
    xsd, dom0, _conn, _ring = flood_setup(quotas)
    guest = Client(xsd, 1)
    guest.watch("/local/domain/1", "t")
    guest.take_events()
    guest.write("a", "x" * 1500)
    guest.write("b", "x" * 1500)
    assert guest.error(xs.XS_WRITE, "c", "y" * 1000) == "ENOMEM"   # write_node()
    guest.rm("b")
    for i in range(100):  # events for it pile up unread
        dom0.write(f"/local/domain/1/e{i}", "z")
    events = [m for m in guest.conn.outbox if m.type == xs.XS_WATCH_EVENT]
    assert 10 < len(events) < 100                    # the rest were dropped
    assert not xsd.may_read(guest.conn)
    guest.conn.outbox.clear()
    for i in range(100):
        dom0.rm(f"/local/domain/1/e{i}")
    guest.conn.outbox.clear()
    assert xsd.may_read(guest.conn)


def test_requests_beyond_the_quota_wait_unread():
    xsd, _dom0, conn, _ring = flood_setup(Quotas(outstanding=2))
    xsd.receive(conn, b"".join(read_request(i) for i in range(5)))
    xsd.process(conn)
    assert [m.req_id for m in conn.outbox] == [0, 1] and len(conn.pending) == 3
    assert not xsd.wants_input(conn)
    conn.outbox.popleft()
    xsd.process(conn)
    assert [m.req_id for m in conn.outbox] == [1, 2]
    dom0_conn = xsd.connect(0)
    xsd.handle_bytes(dom0_conn, b"".join(read_request(i, b"/local/domain/1/name")
                                         for i in range(50)))
    assert len(dom0_conn.outbox) == 50                 # Dom0 is exempt


# -- the socket: a client that never reads --------------------------------------------


@pytest.fixture
def daemon(tmp_path):
    xsd = Xenstored(FakeKernel(log=quiet_logger()), tmp_path)
    xsd.start()
    xsd.ready.wait()
    try:
        yield xsd
    finally:
        xsd.stop()


def test_a_socket_client_that_never_reads_blocks_nobody(daemon):
    hog = socket.socket(socket.AF_UNIX)
    hog.connect(str(daemon.path))
    hog.setblocking(False)
    sent = 0
    burst = read_request(1, b"/local/domain") * 1000
    while True:  # until xenstored stops reading it, or drops it
        try:
            sent += hog.send(burst)
        except BlockingIOError:
            break
        except (BrokenPipeError, ConnectionResetError):
            break  # too far behind on its replies: dropped, as it may be
    client = XenStoreClient(UnixTransport(str(daemon.path)))
    try:
        for i in range(20):
            client.write(f"/tool/x{i}", "1")
            assert client.read(f"/tool/x{i}") == b"1"
    finally:
        client.close()
        hog.close()
    assert sent < 64 << 20


def test_a_socket_client_too_far_behind_is_dropped(daemon, monkeypatch):
    import domains.dom0.xenstored.daemon as module
    monkeypatch.setattr(module, "SOCKET_BACKLOG", 64 * 1024)
    hog = socket.socket(socket.AF_UNIX)
    hog.connect(str(daemon.path))
    hog.sendall(struct.pack("<IIII", xs.XS_WATCH, 1, 0, 4) + b"/\0t\0")
    client = XenStoreClient(UnixTransport(str(daemon.path)))
    try:
        # An event each for a client that reads none: more than the kernel
        # buffers and the backlog allowed.
        for i in range(15000):
            client.write(f"/tool/d{i % 150}/n{i // 150}", "v")
        assert client.read("/tool/d0/n0") == b"v"
    finally:
        client.close()
    hog.settimeout(30)
    while hog.recv(1 << 20):  # what was sent, then xenstored's hang-up
        pass
    hog.close()
