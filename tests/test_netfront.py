"""netfront's pure core, and round trips through netback's.

What netfront builds for a frame, netback's TxAssembler accepts as the
same frame; what netback's plan_rx puts in the posted pages, netfront's
RxAssembler reassembles into the same frame.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.netback import rx as back_rx
from backends.netback.tx import TxAssembler, TxError, TxPacket
from frontends.netfront.rx import (
    RxAssembler,
    RxError,
    RxFrame,
    make_rx_request,
    parse_rx_response,
)
from frontends.netfront.tx import (
    NetfrontProtocolError,
    ShadowFull,
    TxResponse,
    TxShadow,
    gso_extra_slot,
    parse_tx_response,
    split_frame,
    tx_requests,
)
from hypervisor.public.io import netif
from hypervisor.public.io.netif import (
    NETIF_RSP_DROPPED,
    NETIF_RSP_ERROR,
    NETIF_RSP_NULL,
    NETIF_RSP_OKAY,
    XEN_NETIF_EXTRA_TYPE_GSO,
    XEN_NETIF_GSO_TYPE_TCPV4,
    XEN_NETIF_GSO_TYPE_TCPV6,
    XEN_NETIF_NR_SLOTS_MIN,
    NETRXF_data_validated,
    NETRXF_extra_info,
    NETRXF_more_data,
    NETTXF_csum_blank,
    NETTXF_data_validated,
    NETTXF_extra_info,
    NETTXF_more_data,
)
from hypervisor.public.io.ring import BackRing
from tests.fakekernel import FakeKernel
from tests.packets import feed_all, response_bytes

pytestmark = pytest.mark.timeout(60)

PAGE = 4096


class Grants:
    """Pages granted by the frontend, by gref (the backend's grant copy)."""

    def __init__(self, first: int = 1000) -> None:
        self.pages: dict[int, bytearray] = {}
        self.next = first

    def grant(self, offset: int = 0, data: bytes = b"") -> int:
        gref, self.next = self.next, self.next + 1
        page = bytearray(PAGE)
        page[offset:offset + len(data)] = data
        self.pages[gref] = page
        return gref

    def read(self, gref: int, offset: int, length: int) -> bytes:
        return bytes(self.pages[gref][offset:offset + length])


def transmit(frame: bytes, grants: Grants, offset: int = 0):
    """netfront's segments for `frame`, its pieces granted."""
    return [(grants.grant(off, data), off, len(data))
            for off, data in split_frame(frame, offset)]


def backend_copy(packet: TxPacket, grants: Grants) -> bytes:
    return b"".join(grants.read(*seg) for seg in packet.segments())


# -- tx building ----------------------------------------------------------------

def test_split_frame() -> None:
    frame = bytes(range(256)) * 40  # 10240 bytes
    pieces = split_frame(frame, 100)
    assert [(o, len(d)) for o, d in pieces] == [(100, 3996), (0, 4096), (0, 2148)]
    assert b"".join(d for _, d in pieces) == frame
    assert split_frame(b"x" * 4096) == [(0, b"x" * 4096)]
    for bad in ((b"", 0), (b"x", 4096), (b"x", -1)):
        with pytest.raises(ValueError):
            split_frame(*bad)


def test_tx_requests_layout() -> None:
    entries = tx_requests([(7, 100, 1000), (8, 0, 500)], [3, 4],
                          flags=NETTXF_csum_blank, gso=(XEN_NETIF_GSO_TYPE_TCPV4, 1448))
    assert len(entries) == 3 and all(len(e) == 12 for e in entries)
    first = netif.netif_tx_request.from_buffer_copy(entries[0])
    assert (first.gref, first.offset, first.id, first.size) == (7, 100, 3, 1500)
    assert first.flags == NETTXF_csum_blank | NETTXF_more_data | NETTXF_extra_info
    assert entries[1] == gso_extra_slot((XEN_NETIF_GSO_TYPE_TCPV4, 1448))
    extra = netif.netif_extra_info.from_buffer_copy(entries[1])
    assert (extra.type, extra.flags, extra.u.gso.size) == (XEN_NETIF_EXTRA_TYPE_GSO, 0, 1448)
    last = netif.netif_tx_request.from_buffer_copy(entries[2])
    assert (last.gref, last.id, last.size, last.flags) == (8, 4, 500, 0)


@pytest.mark.parametrize("segments, ids, kw", [
    ([], [], {}),
    ([(1, 0, 10)], [1, 2], {}),
    ([(1, 4000, 100)], [1], {}),
    ([(1, 0, 10)], [0x10000], {}),
    ([(1 << 32, 0, 10)], [1], {}),
    ([(1, 0, 0)], [1], {}),
    ([(1, 0, 10)], [1], {"flags": NETTXF_more_data}),
    ([(1, 0, 10)], [1], {"gso": (3, 1448)}),
    ([(1, 0, 10)], [1], {"gso": (XEN_NETIF_GSO_TYPE_TCPV4, 0)}),
    ([(1, 0, 4096)] * 17, list(range(17)), {}),   # 69632 bytes > 65535
    ([(1, 0, 10)] * 19, list(range(19)), {}),     # 19 slots > 18
])
def test_tx_requests_refuses_what_the_protocol_cannot_carry(segments, ids, kw) -> None:
    with pytest.raises(ValueError):
        tx_requests(segments, ids, **kw)


# -- tx round trip through netback ----------------------------------------------

@pytest.mark.parametrize("size, offset, gso", [
    (60, 0, None), (1514, 2000, None), (4096, 0, None), (9014, 300, None),
    (65535, 0, (XEN_NETIF_GSO_TYPE_TCPV4, 1448)),
    (30000, 4095, (XEN_NETIF_GSO_TYPE_TCPV6, 1428)),
])
def test_tx_round_trip(size, offset, gso) -> None:
    frame = bytes((i * 7) % 256 for i in range(size))
    grants, shadow = Grants(), TxShadow()
    packet = shadow.add(transmit(frame, grants, offset), gso=gso,
                        flags=NETTXF_csum_blank | NETTXF_data_validated,
                        buffers="skb")
    [got] = feed_all(TxAssembler(), packet.requests)
    assert isinstance(got, TxPacket)
    assert backend_copy(got, grants) == frame and got.size == size
    assert got.flags & (NETTXF_csum_blank | NETTXF_data_validated)
    if gso:
        assert got.gso is not None
        assert (got.gso.gso_type, got.gso.gso_size) == gso
    assert len(shadow) == len(packet.slots)
    answered = [shadow.complete(r) for r in response_bytes(got)]
    assert [s.id for s in answered if s] == [s.id for s in packet.slots]
    assert packet.done and packet.status == NETIF_RSP_OKAY and packet.buffers == "skb"
    assert len(shadow) == 0 and shadow.inflight() == []


def test_many_frames_through_one_ring() -> None:
    grants, shadow, assembler = Grants(), TxShadow(64), TxAssembler()
    frames = [bytes([n]) * (60 + 997 * n) for n in range(12)]
    for frame in frames:
        packet = shadow.add(transmit(frame, grants))
        [got] = feed_all(assembler, packet.requests)
        assert backend_copy(got, grants) == frame
        # Answer in reverse order: ids are matched, not positions.
        for rsp in reversed(response_bytes(got)):
            shadow.complete(rsp)
        assert packet.done
    assert len(shadow) == 0


# -- the tx shadow --------------------------------------------------------------

def test_shadow_ids_and_errors() -> None:
    shadow = TxShadow(4)
    a = shadow.add([(10, 0, 100), (11, 0, 100)])
    assert [s.id for s in a.slots] == [0, 1] and shadow.free == 2
    with pytest.raises(ShadowFull):
        shadow.add([(12, 0, 60)] * 3)
    with pytest.raises(ValueError):
        shadow.add([(12, 4090, 60)])
    assert shadow.free == 2  # nothing recorded
    slot = shadow.complete(TxResponse(1, NETIF_RSP_DROPPED))
    assert slot is not None
    assert slot.gref == 11 and not a.done and a.status is None
    with pytest.raises(NetfrontProtocolError, match="duplicate"):
        shadow.complete(TxResponse(1, NETIF_RSP_OKAY))
    with pytest.raises(NetfrontProtocolError, match="unknown"):
        shadow.complete(TxResponse(3, NETIF_RSP_OKAY))
    with pytest.raises(NetfrontProtocolError):
        shadow.complete(TxResponse(99, NETIF_RSP_OKAY))
    with pytest.raises(NetfrontProtocolError, match="status"):
        shadow.complete(TxResponse(0, 5))
    shadow.complete(bytes(netif.netif_tx_response(0, NETIF_RSP_OKAY)))
    assert a.done and a.status == NETIF_RSP_DROPPED


def test_shadow_null_responses_only_for_extras() -> None:
    shadow = TxShadow(8)
    with pytest.raises(NetfrontProtocolError, match="NULL"):
        shadow.complete(TxResponse(0, NETIF_RSP_NULL))
    shadow.add([(1, 0, 2000)], gso=(XEN_NETIF_GSO_TYPE_TCPV4, 1000))
    assert shadow.complete(TxResponse(0, NETIF_RSP_NULL)) is None
    with pytest.raises(NetfrontProtocolError, match="NULL"):
        shadow.complete(TxResponse(0, NETIF_RSP_NULL))


def test_shadow_ids_are_reused_lifo_and_reset_returns_inflight() -> None:
    shadow = TxShadow(8)
    a = shadow.add([(1, 0, 60)])
    b = shadow.add([(2, 0, 60), (3, 0, 60)])
    shadow.complete(TxResponse(a.slots[0].id, NETIF_RSP_OKAY))
    c = shadow.add([(4, 0, 60)])
    assert c.slots[0].id == a.slots[0].id
    assert shadow.inflight() == [b, c]
    assert shadow.reset() == [b, c]
    assert len(shadow) == 0 and shadow.free == 8


def test_backend_error_fails_the_whole_frame() -> None:
    grants, shadow = Grants(), TxShadow()
    packet = shadow.add(transmit(bytes(5000), grants))
    [got] = feed_all(TxAssembler(), packet.requests)
    for rsp in response_bytes(got, NETIF_RSP_ERROR):  # e.g. a grant copy failed
        shadow.complete(rsp)
    assert packet.status == NETIF_RSP_ERROR


def test_backend_refusal_answers_every_slot() -> None:
    # A runt frame: netback answers ERROR (the extra slot NULL); the shadow
    # takes every answer.
    shadow = TxShadow()
    packet = shadow.add([(5, 0, 10)], gso=(XEN_NETIF_GSO_TYPE_TCPV4, 1448))
    [error] = feed_all(TxAssembler(), packet.requests)
    assert isinstance(error, TxError)
    results = [shadow.complete(r) for r in response_bytes(error)]
    assert results[1] is None and packet.done and packet.status == NETIF_RSP_ERROR


def test_parse_tx_response() -> None:
    assert parse_tx_response(netif.make_tx_response(9, -2) + bytes(8)) == TxResponse(9, -2)
    with pytest.raises(ValueError):
        parse_tx_response(b"\0\0")


# -- rx: posting, reassembly ----------------------------------------------------

class RxRing:
    """The rx ring between netfront and netback, by position."""

    def __init__(self, n: int) -> None:
        self.grants = Grants(5000)
        self.posted = [(i, self.grants.grant()) for i in range(n)]  # (id, gref)

    def deliver(self, frame: bytes, features: back_rx.RxFeatures, assembler: RxAssembler,
                csum_flags: int = 0, gso=None):
        requests = [netif.parse_rx_request(make_rx_request(*p)) for p in self.posted]
        plan = back_rx.plan_rx(frame, requests, features, csum_flags=csum_flags, gso=gso)
        assert isinstance(plan, back_rx.RxPlan)
        for _, gref, offset, data in plan.copies():
            self.grants.pages[gref][offset:offset + len(data)] = data
        results = []
        for (id, gref), rsp in zip(self.posted, plan.responses()):
            result = assembler.feed(rsp, self.grants.pages[gref], request_id=id)
            if result is not None:
                results.append(result)
        del self.posted[:plan.nr_requests]
        return plan, results


@pytest.mark.parametrize("size, features", [
    (60, back_rx.RxFeatures()),
    (4096, back_rx.RxFeatures(mtu=4082)),
    (9014, back_rx.RxFeatures(sg=True, mtu=9000)),
    (65535, back_rx.RxFeatures(sg=True, mtu=65521)),
])
def test_rx_round_trip(size, features) -> None:
    frame = bytes((i * 13) % 256 for i in range(size))
    ring = RxRing(20)
    plan, [got] = ring.deliver(frame, features, RxAssembler(),
                               csum_flags=NETRXF_data_validated)
    assert isinstance(got, RxFrame)
    assert got.data == frame and got.nr_slots == plan.nr_requests
    assert got.data_validated and not got.csum_blank and got.gso is None


def test_rx_round_trip_gso() -> None:
    tcp = bytes(12) + bytes([0x50, 0x10]) + bytes(6)
    payload = bytes(i % 256 for i in range(20000))
    ip = bytes([0x45, 0, 0, 0, 0, 0, 0, 0, 64, 6]) + bytes(10)
    frame = bytes(12) + b"\x08\x00" + ip + tcp + payload
    ring = RxRing(10)
    plan, [got] = ring.deliver(frame, back_rx.RxFeatures(sg=True, gso_tcpv4=True),
                               RxAssembler(), gso=(XEN_NETIF_GSO_TYPE_TCPV4, 1460))
    assert got.data == frame and got.gso == (XEN_NETIF_GSO_TYPE_TCPV4, 1460)
    assert got.nr_slots == plan.nr_requests == 6  # 5 data pages + the extra


def test_rx_frames_back_to_back() -> None:
    ring, assembler = RxRing(40), RxAssembler()
    frames = [bytes([n]) * (100 + 3000 * n) for n in range(5)]
    got = []
    for frame in frames:
        got += ring.deliver(frame, back_rx.RxFeatures(sg=True, mtu=20000), assembler)[1]
    assert [f.data for f in got] == frames


def rsp(id=0, offset=0, flags=0, status=0) -> bytes:
    return bytes(netif.netif_rx_response(id, offset, flags, status))


def gso_extra(size=1448, type=XEN_NETIF_GSO_TYPE_TCPV4, more=False) -> bytes:
    return netif.make_gso_extra(gso_type=type, size=size, more=more) if size else bytes(
        [XEN_NETIF_EXTRA_TYPE_GSO, 0, 0, 0, type, 0, 0, 0])


PAGE_DATA = bytes(range(256)) * 16
GOOD = rsp(7, 0, 0, 60)

BAD_RX = {
    "negative status": [rsp(0, 0, 0, NETIF_RSP_ERROR)],
    "leaves the page": [rsp(0, 100, 0, 4000)],
    "later slot leaves the page": [rsp(0, 0, NETRXF_more_data, 10), rsp(1, 4095, 0, 2)],
    "id mismatch": [rsp(1, 0, 0, 60)],
    "unknown extra": [rsp(0, 0, NETRXF_extra_info, 60), netif.make_extra(9)],
    "extra type 0": [rsp(0, 0, NETRXF_extra_info | NETRXF_more_data, 60),
                     netif.make_extra(0), rsp(2, 0, 0, 10)],
    "GSO size 0": [rsp(0, 0, NETRXF_extra_info, 60), gso_extra(size=0)],
    "duplicate GSO": [rsp(0, 0, NETRXF_extra_info, 60), gso_extra(more=True), gso_extra()],
    "too many slots": [rsp(i, 0, NETRXF_more_data if i < 18 else 0, 10)
                       for i in range(19)],
}


@pytest.mark.parametrize("name", list(BAD_RX))
def test_bad_rx_chain_is_refused_whole_and_the_next_frame_is_fine(name) -> None:
    assembler = RxAssembler()
    results = []
    for index, raw in enumerate(BAD_RX[name]):
        expected_id = 0 if index == 0 else index
        result = assembler.feed(raw, PAGE_DATA, request_id=expected_id)
        if result is not None:
            results.append(result)
    [error] = results
    assert isinstance(error, RxError) and error.nr_slots == len(BAD_RX[name])
    assert not assembler.in_progress
    [frame] = [assembler.feed(GOOD, PAGE_DATA, request_id=7)]
    assert isinstance(frame, RxFrame)
    assert frame.data == PAGE_DATA[:60]


def test_rx_without_sg_refuses_chains() -> None:
    assembler = RxAssembler(sg=False)
    assert assembler.feed(rsp(0, 0, NETRXF_more_data, 10), PAGE_DATA) is None
    error = assembler.feed(rsp(1, 0, 0, 10), PAGE_DATA)
    assert isinstance(error, RxError) and "feature-sg" in error.reason


def test_rx_abort_and_parse() -> None:
    assembler = RxAssembler()
    assert assembler.abort() is None
    assembler.feed(rsp(0, 0, NETRXF_more_data, 10), PAGE_DATA)
    aborted = assembler.abort()
    assert aborted is not None and aborted.nr_slots == 1 and not assembler.in_progress
    assert parse_rx_response(rsp(1, 2, 3, -1)).status == -1
    with pytest.raises(ValueError):
        assembler.feed(rsp(0, 0, 0, 10), None)  # a data slot needs its page
    assert make_rx_request(3, 0x99) == bytes(netif.netif_rx_request(id=3, gref=0x99))
    with pytest.raises(ValueError):
        make_rx_request(0x10000, 1)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=8, max_size=8), max_size=40))
def test_random_rx_responses_never_raise(responses) -> None:
    assembler = RxAssembler()
    consumed = 0
    for raw in responses:
        result = assembler.feed(raw, PAGE_DATA)
        if result is not None:
            consumed += result.nr_slots
            if isinstance(result, RxFrame):
                assert len(result.data) <= 0xFFFF
    tail = assembler.abort()
    consumed += tail.nr_slots if tail else 0
    assert consumed == len(responses)


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=14, max_size=30000), st.integers(0, 4095))
def test_any_frame_round_trips_both_ways(frame, offset) -> None:
    grants = Grants()
    packet = TxShadow().add(transmit(frame, grants, offset)) \
        if len(split_frame(frame, offset)) <= XEN_NETIF_NR_SLOTS_MIN else None
    if packet is not None:
        [got] = feed_all(TxAssembler(), packet.requests)
        assert backend_copy(got, grants) == frame
    ring = RxRing(10)
    _, [received] = ring.deliver(frame, back_rx.RxFeatures(sg=True, mtu=30000),
                                 RxAssembler())
    assert received.data == frame


def test_gso_types_round_trip_in_tx_extra() -> None:
    for gso_type in (XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_GSO_TYPE_TCPV6):
        extra = gso_extra_slot((gso_type, 9000))
        decoded = netif.netif_extra_info.from_buffer_copy(extra[:8])
        assert (decoded.u.gso.type, decoded.u.gso.size) == (gso_type, 9000)
    assert NETIF_RSP_OKAY == 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.binary(min_size=8, max_size=8),
    st.builds(lambda id, off, more, extra, status: rsp(id, off, (NETRXF_more_data if more else 0)
                                                       | (NETRXF_extra_info if extra else 0),
                                                       status),
              st.integers(0, 3), st.integers(0, 4100), st.booleans(), st.booleans(),
              st.integers(-2, 4200)),
    st.just(gso_extra())), max_size=60), st.booleans())
def test_rx_feed_block_is_feed_slot_by_slot(responses, sg) -> None:
    """The batch fast path decides exactly what feeding one slot at a time
    does."""
    pages = [bytes([i]) * 4096 for i in range(len(responses))]
    one = RxAssembler(sg=sg, max_slots=6)
    expected = [r for r in (one.feed(raw, page) for raw, page in zip(responses, pages))
                if r is not None]
    block = RxAssembler(sg=sg, max_slots=6)
    got = block.feed_block(b"".join(responses), [memoryview(p) for p in pages])
    assert [type(r) for r in got] == [type(r) for r in expected]
    for g, e in zip(got, expected):
        if isinstance(e, RxFrame):
            assert isinstance(g, RxFrame)
            assert (g.data, g.flags, g.extras, g.nr_slots) == (e.data, e.flags, e.extras,
                                                               e.nr_slots)
        else:
            assert g == e


def test_shadow_complete_block_matches_complete() -> None:
    shadow = TxShadow(16)
    a = shadow.add([(1, 0, 100), (2, 0, 100)], gso=(XEN_NETIF_GSO_TYPE_TCPV4, 50))
    b = shadow.add([(3, 0, 60)])

    def slots(*pairs) -> bytes:
        return b"".join(bytes(netif.netif_tx_response(i, s)) + bytes(8) for i, s in pairs)

    done = shadow.complete_block(slots((a.ids[0], NETIF_RSP_OKAY), (0, NETIF_RSP_NULL),
                                       (b.ids[0], NETIF_RSP_ERROR)))
    assert done == [b] and b.status == NETIF_RSP_ERROR and not a.done
    assert shadow.complete_block(slots((a.ids[1], NETIF_RSP_DROPPED))) == [a]
    assert a.status == NETIF_RSP_DROPPED and [s.status for s in a.slots] == [0, -2]
    for bad in ((a.ids[0], NETIF_RSP_OKAY), (0, NETIF_RSP_NULL), (99, 0), (0, 7)):
        with pytest.raises(NetfrontProtocolError):
            shadow.complete_block(slots(bad))


# -- the device's tx path: a GSO frame needs a ring slot for its extra ----------

def answer_all(ring_buf: bytearray) -> None:
    """The backend (netback's assembler) answers every request outstanding."""
    back = BackRing(ring_buf, 12, 4, entry_size=12)
    assembler = TxAssembler()
    n = back.has_unconsumed_requests()
    for result in assembler.feed_block(back.get_requests(n)):
        back.put_responses(result.response_slots())
    back.push_responses()


def test_a_gso_frame_needs_a_ring_slot_for_its_extra_not_only_ids() -> None:
    """netfront reads from the TAP only with room for any frame: ids and
    slots for READ_PAGES pages, and one slot more for a GSO extra."""
    import collections
    import threading

    from frontends.netfront.device import READ_PAGES, STALLED, NetfrontDevice
    from hypervisor.public.io.ring import FrontRing, shared_ring_init

    ring_buf = bytearray(4096)
    shared_ring_init(ring_buf)
    dev = object.__new__(NetfrontDevice)
    dev.tx_lock = threading.Lock()
    dev.tx = FrontRing(ring_buf, 12, 4, entry_size=12)
    dev.shadow = TxShadow(dev.tx.size)
    dev.refs = list(range(1000, 1600))
    dev.tx_pages, dev.generation, dev.closed = list(range(600)), 0, False
    dev.link_up = threading.Event()
    dev.link_up.set()
    kernel = FakeKernel()
    sent, watching = kernel.events.sent, kernel.events.watching
    watching[5] = None
    dev.kernel, dev.tx_port, dev.log, dev.tap_fd = kernel, 7, None, 5
    dev.staged, dev.staged_generation, dev.pending = [], 0, collections.deque()
    dev._tap_ready = "handler"  # type: ignore[method-assign,assignment]  # a marker to find
    gso = (XEN_NETIF_GSO_TYPE_TCPV4, 1448)
    assert READ_PAGES == 16
    # 15 GSO frames of 15 pages: 225 ids and 240 ring slots in flight.
    for n in range(15):
        assert dev._make_room() == 0
        dev._post(dev.staged[:15], 15 * 4096, 0, gso, 0)
        del dev.staged[:15]
    assert dev.shadow.free == 31 and dev.tx.free_requests() == 16
    # Ids for 16 pages are free, and 16 ring slots: not the 17th a GSO
    # extra takes.  netfront stops reading rather than wait or overflow,
    # after publishing the frames on the ring (the backend is told).
    assert dev._make_room() == STALLED
    assert dev.tx_stalled and 5 not in watching
    assert sent and dev.tx._header[0] == dev.tx._req_prod_pvt  # req_prod
    answer_all(ring_buf)
    assert dev._make_room() == 0
    assert not dev.tx_stalled and watching[5] == "handler"
    assert dev.tx.free_requests() == 256 and dev.shadow.free == 256


def test_rx_buffers_of_a_frame_under_way_are_not_posted_again() -> None:
    """netfront takes responses a few dozen slots at a time and posts those
    buffers again; a frame cut by that limit keeps its pages until it is
    written out, or the backend could fill them first."""
    import threading

    from frontends.netfront.device import RX_BATCH, NetfrontDevice
    from hypervisor.public.io.ring import FrontRing, shared_ring_init

    mem = bytearray(4096 * 257)
    pages = [memoryview(mem)[i * 4096:(i + 1) * 4096] for i in range(257)]
    shared_ring_init(pages[0])
    dev = object.__new__(NetfrontDevice)
    dev.rx_lock = threading.Lock()
    dev.rx = FrontRing(pages[0], 8, 8, entry_size=8)
    dev.pages, dev.rx_first, dev.offload = pages, 1, False
    dev.rx_requests = b"".join(make_rx_request(i, 100 + i) for i in range(256)) * 2
    dev.rx.put_requests(dev.rx_requests[:256 * 8])
    dev.rx.push_requests()
    dev.assembler = RxAssembler()
    back = BackRing(pages[0], 8, 8, entry_size=8)
    frames = [bytes([n]) * 14 + bytes((i * n) % 251 for i in range(15 * 4096 - 300))
              for n in range(1, 6)]  # 15 slots each: the 64-slot batch ends inside the 5th
    written: list[bytes] = []

    class Tap:
        closed = False

        def writev(self, chunks) -> None:
            frame = b"".join(chunks)
            # Where this frame began in the ring: none of its slots may have
            # gone back to the backend yet.
            first_slot = sum(-(-len(f) // 4096) for f in written)
            assert back._header[0] - 256 <= first_slot
            written.append(frame)

    dev.tap = Tap()
    dev.kernel, dev.rx_port, dev.log = FakeKernel(), 9, None
    for frame in frames:
        requests = [netif.parse_rx_request(r) for r in
                    struct_chunks(back.get_requests(-(-len(frame) // 4096)))]
        plan = back_rx.plan_rx(frame, requests, back_rx.RxFeatures(sg=True, mtu=70000))
        assert isinstance(plan, back_rx.RxPlan)
        for _, gref, offset, data in plan.copies():
            pages[gref - 100 + 1][offset:offset + len(data)] = data
        back.put_responses(b"".join(plan.responses()))
    back.push_responses()
    dev._rx_ready()
    assert written == frames and 4 * 15 < RX_BATCH < 5 * 15
    assert back._header[0] == 256 + 5 * 15  # every buffer posted again in the end


def struct_chunks(entries: bytes) -> list[bytes]:
    return [entries[i:i + 8] for i in range(0, len(entries), 8)]
