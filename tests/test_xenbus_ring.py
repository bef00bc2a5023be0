import ctypes
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domains.kernel.xenbus.ring import (
    INTERFACE_SIZE,
    RingError,
    XenstoreRing,
    init_ring,
)
from hypervisor.public.io.xs_wire import (
    XENSTORE_CONNECTED,
    XENSTORE_ERROR_NONE,
    XENSTORE_ERROR_RINGIDX,
    XENSTORE_RING_SIZE,
    XENSTORE_SERVER_FEATURE_ERROR,
    XENSTORE_SERVER_FEATURE_RECONNECTION,
    xenstore_domain_interface,
)

pytestmark = pytest.mark.timeout(60)


def page():
    return bytearray(4096)


def intf(buf) -> xenstore_domain_interface:
    return xenstore_domain_interface.from_buffer(buf)


def test_init_ring_zeroes_and_connects():
    buf = bytearray(b"\xff" * 4096)
    init_ring(buf)
    s = intf(buf)
    assert s.req_cons == s.req_prod == s.rsp_cons == s.rsp_prod == 0
    assert s.connection == XENSTORE_CONNECTED
    assert s.error == XENSTORE_ERROR_NONE
    assert s.server_features == (XENSTORE_SERVER_FEATURE_RECONNECTION
                                 | XENSTORE_SERVER_FEATURE_ERROR)
    assert bytes(buf[:2048]) == bytes(2048)
    assert bytes(buf[INTERFACE_SIZE:]) == b"\xff" * (4096 - INTERFACE_SIZE)


def test_rejects_small_or_readonly_buffers():
    with pytest.raises(ValueError):
        XenstoreRing(bytearray(INTERFACE_SIZE - 1))
    with pytest.raises(ValueError):
        XenstoreRing(bytes(4096))


def test_request_and_response_round_trip_at_struct_offsets():
    buf = page()
    ring = init_ring(buf)
    assert ring.write_request(b"hello") == 5
    s = intf(buf)
    assert s.req_prod == 5 and s.req_cons == 0
    assert bytes(buf[xenstore_domain_interface.req.offset:][:5]) == b"hello"
    assert ring.read_request(3) == b"hel"
    assert ring.read_request() == b"lo"
    assert ring.read_request() == b""
    assert s.req_cons == 5
    assert ring.write_response(b"OK\0") == 3
    assert bytes(buf[xenstore_domain_interface.rsp.offset:][:3]) == b"OK\0"
    assert ring.read_response() == b"OK\0"
    assert s.rsp_cons == s.rsp_prod == 3


def test_wraps_around_the_end_of_the_ring():
    buf = page()
    client = XenstoreRing(memoryview(buf))
    server = XenstoreRing(buf)
    assert client.write_request(b"x" * 1000) == 1000
    assert server.read_request(2000) == b"x" * 1000
    data = bytes(range(100))
    assert client.write_request(data) == 100  # 24 bytes at the end, 76 at the start
    s = intf(buf)
    req = xenstore_domain_interface.req.offset
    assert bytes(buf[req + 1000:req + 1024]) == data[:24]
    assert bytes(buf[req:req + 76]) == data[24:]
    assert server.read_request(2000) == data
    assert s.req_prod == s.req_cons == 1100


def test_free_running_indexes_wrap_at_2_32():
    buf = page()
    s = intf(buf)
    s.rsp_cons = s.rsp_prod = 0xFFFF_FFF0
    ring = XenstoreRing(buf)
    assert ring.write_response(b"a" * 40) == 40
    assert s.rsp_prod == (0xFFFF_FFF0 + 40) & 0xFFFF_FFFF
    assert ring.response_available() == 40
    assert ring.read_response() == b"a" * 40
    assert s.rsp_cons == s.rsp_prod


def test_partial_writes_when_full():
    ring = init_ring(page())
    assert ring.write_request(b"a" * 1000) == 1000
    assert ring.request_space() == 24
    assert ring.write_request(b"b" * 100) == 24
    assert ring.write_request(b"c") == 0
    assert ring.request_available() == XENSTORE_RING_SIZE
    assert ring.read_request(10) == b"a" * 10
    assert ring.write_request(b"d" * 50) == 10
    got = ring.read_request(4096)
    assert got == b"a" * 990 + b"b" * 24 + b"d" * 10


def test_client_detects_corrupt_response_index():
    buf = page()
    ring = init_ring(buf)
    intf(buf).rsp_prod = XENSTORE_RING_SIZE + 1
    with pytest.raises(RingError):
        ring.read_response()
    with pytest.raises(RingError):
        ring.response_available()
    assert intf(buf).error == XENSTORE_ERROR_NONE  # only xenstored reports errors


def test_client_detects_consumer_ahead_of_producer():
    buf = page()
    ring = init_ring(buf)
    intf(buf).req_cons = 5  # xenstored "consumed" bytes never produced
    with pytest.raises(RingError):
        ring.write_request(b"x")


def test_server_flags_ringidx_error():
    buf = page()
    ring = init_ring(buf)
    intf(buf).req_prod = 2000
    with pytest.raises(RingError):
        ring.read_request()
    assert intf(buf).error == XENSTORE_ERROR_RINGIDX

    buf = page()
    ring = init_ring(buf)
    intf(buf).rsp_cons = 0xFFFF_0000
    with pytest.raises(RingError):
        ring.write_response(b"x")
    assert ring.error == XENSTORE_ERROR_RINGIDX


def test_exactly_full_is_legal():
    buf = page()
    ring = init_ring(buf)
    s = intf(buf)
    s.req_cons, s.req_prod = 0xFFFF_FE00, (0xFFFF_FE00 + XENSTORE_RING_SIZE) & 0xFFFF_FFFF
    assert ring.request_available() == XENSTORE_RING_SIZE
    assert ring.write_request(b"x") == 0


def test_works_over_mmap():
    import mmap
    m = mmap.mmap(-1, 4096)
    try:
        view = memoryview(m)
        ring = init_ring(view)
        assert ring.write_request(b"abc") == 3
        assert ring.read_request() == b"abc"
        del ring
        view.release()
    finally:
        m.close()


@settings(max_examples=60, deadline=None)
@given(
    payload=st.binary(min_size=0, max_size=5000),
    writes=st.lists(st.integers(1, 1500), min_size=1, max_size=40),
    reads=st.lists(st.integers(1, 1500), min_size=1, max_size=40),
    start=st.integers(0, 0xFFFF_FFFF),
)
def test_random_chunking_preserves_the_stream(payload, writes, reads, start):
    buf = page()
    s = intf(buf)
    s.req_cons = s.req_prod = s.rsp_cons = s.rsp_prod = start
    client, server = XenstoreRing(buf), XenstoreRing(buf)
    for producer, consumer in ((client.write_request, server.read_request),
                               (server.write_response, client.read_response)):
        sent, received = 0, bytearray()
        i = 0
        while len(received) < len(payload):
            w, r = writes[i % len(writes)], reads[i % len(reads)]
            n = producer(payload[sent:sent + w])
            assert 0 <= n <= w
            sent += n
            chunk = consumer(r)
            assert len(chunk) <= r
            received += chunk
            i += 1
        assert bytes(received) == payload
        assert sent == len(payload)
    assert s.error == XENSTORE_ERROR_NONE
    assert struct.unpack_from("<4I", buf, xenstore_domain_interface.req_cons.offset) == \
        ((start + len(payload)) & 0xFFFF_FFFF,) * 4
    assert ctypes.sizeof(xenstore_domain_interface) == INTERFACE_SIZE
