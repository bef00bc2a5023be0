"""netfront's vectorised data path decides as the slot-by-slot code does.

The encoders give byte-identical ring entries to the per-slot encoder
netfront had (kept here as the reference), the shadow's block answers
match answering one response at a time, RxAssembler.feed_ring matches
feeding one slot at a time however the responses are cut into blocks and
wherever the ring wraps, and vnet's fast paths match its general code.
The device's tx path is driven end to end with a socketpair for its TAP.
"""

from __future__ import annotations

import collections
import itertools
import socket
import struct
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.netback import rx as back_rx
from backends.netback.tx import TxAssembler, TxPacket
from domains.kernel import vnet
from frontends.netfront.rx import RxAssembler, RxError, RxFrame
from frontends.netfront.tx import (
    NetfrontProtocolError,
    ShadowFull,
    TxPageEncoder,
    TxShadow,
    gso_extra_slot,
    tx_entries,
    tx_requests,
)
from hypervisor.public.io import netif
from hypervisor.public.io.netif import (
    NETIF_RSP_DROPPED,
    NETIF_RSP_ERROR,
    NETIF_RSP_NULL,
    NETIF_RSP_OKAY,
    XEN_NETIF_GSO_TYPE_TCPV4,
    XEN_NETIF_GSO_TYPE_TCPV6,
    XEN_NETIF_MAX_TX_SIZE,
    XEN_NETIF_NR_SLOTS_MIN,
    NETRXF_csum_blank,
    NETRXF_data_validated,
    NETRXF_extra_info,
    NETRXF_more_data,
    NETTXF_csum_blank,
    NETTXF_data_validated,
    NETTXF_extra_info,
    NETTXF_more_data,
)
from tests.fakekernel import FakeKernel

pytestmark = pytest.mark.timeout(120)

PAGE = 4096
_REQUEST = struct.Struct("<IHHHH")


def reference_tx_requests(segments, ids, *, flags=0, gso=None,
                          max_slots=XEN_NETIF_NR_SLOTS_MIN, page_size=PAGE) -> list[bytes]:
    """netfront's per-slot encoder before it was vectorised."""
    count = len(segments)
    if not 1 <= count <= max_slots:
        raise ValueError
    if len(ids) != count:
        raise ValueError
    if flags & ~(NETTXF_csum_blank | NETTXF_data_validated):
        raise ValueError
    total = 0
    for gref, offset, length in segments:
        if not 0 <= gref < 1 << 32:
            raise ValueError
        if offset < 0 or length < 0 or offset + length > page_size:
            raise ValueError
        total += length
    if not 0 < total <= XEN_NETIF_MAX_TX_SIZE:
        raise ValueError
    if min(ids) < 0 or max(ids) > 0xFFFF:
        raise ValueError
    pack = _REQUEST.pack
    gref, offset, _ = segments[0]
    first_flags = flags | (NETTXF_more_data if count > 1 else 0)
    if gso is None:
        entries = [pack(gref, offset, first_flags, ids[0], total)]
    else:
        entries = [pack(gref, offset, first_flags | NETTXF_extra_info, ids[0], total),
                   gso_extra_slot(gso)]
    last = count - 1
    entries += [pack(gref, offset, NETTXF_more_data if index < last else 0, id, length)
                for index, ((gref, offset, length), id)
                in enumerate(zip(segments[1:], ids[1:]), 1)]
    return entries


def outcome(fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except ValueError:
        return ValueError


GSOS = st.one_of(st.none(), st.tuples(st.sampled_from([XEN_NETIF_GSO_TYPE_TCPV4,
                                                       XEN_NETIF_GSO_TYPE_TCPV6, 0, 3]),
                                      st.integers(0, 0x10000)))
FLAGS = st.sampled_from([0, NETTXF_csum_blank, NETTXF_data_validated,
                         NETTXF_csum_blank | NETTXF_data_validated, NETTXF_more_data])


# -- tx encoders ------------------------------------------------------------------

@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.integers(0, 2000), st.integers(-2, 1 << 33)),
                          st.integers(-1, 4100), st.integers(-1, 4100)),
                min_size=0, max_size=20),
       st.integers(-1, 70000), FLAGS, GSOS, st.integers(1, 20), st.booleans())
def test_tx_entries_are_the_per_slot_encoders(segments, first_id, flags, gso, max_slots,
                                              wrong_ids) -> None:
    ids = [(first_id + 7 * i) % 0x10001 for i in range(len(segments) + wrong_ids)]
    expected = outcome(reference_tx_requests, segments, ids, flags=flags, gso=gso,
                       max_slots=max_slots)
    got = outcome(tx_requests, segments, ids, flags=flags, gso=gso, max_slots=max_slots)
    assert got == expected
    blob = outcome(tx_entries, segments, ids, flags=flags, gso=gso, max_slots=max_slots)
    assert blob == (ValueError if expected is ValueError else b"".join(expected))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 100), st.integers(0, 10), st.integers(0, 10)),
                min_size=19, max_size=24))
def test_tx_entries_beyond_the_protocols_slots(segments) -> None:
    # A caller may allow more slots than netif's minimum: the long way.
    ids = list(range(len(segments)))
    expected = outcome(reference_tx_requests, segments, ids, max_slots=30)
    assert outcome(tx_requests, segments, ids, max_slots=30) == expected


@settings(max_examples=400, deadline=None)
@given(st.integers(1, 70000), st.integers(-2, 600), st.integers(0, 2), FLAGS, GSOS,
       st.integers(-1, 1))
def test_page_encoder_is_tx_entries_with_pages_for_ids(size, first, order, flags, gso,
                                                       miscount) -> None:
    grefs = [1000 + 3 * i for i in range(514)]
    count = max(1, -(-size // PAGE) + miscount)
    pages = [first + i for i in range(count)]
    if order == 1:
        pages.reverse()           # distinct, not consecutive
    elif order == 2 and count > 2:
        pages[1], pages[-1] = pages[-1], pages[1]
    got = outcome(TxPageEncoder(grefs).entries, pages, size, flags=flags, gso=gso)
    last = size - (count - 1) * PAGE
    if min(pages) < 0 or max(pages) >= len(grefs) or not 0 < last <= PAGE:
        assert got is ValueError
        return
    segments = [(grefs[p], 0, PAGE) for p in pages[:-1]] + [(grefs[pages[-1]], 0, last)]
    assert got == outcome(tx_entries, segments, pages, flags=flags, gso=gso)


def test_page_encoder_refuses_bad_tables() -> None:
    with pytest.raises(ValueError):
        TxPageEncoder([1 << 32])
    with pytest.raises(ValueError):
        TxPageEncoder([0] * 0x10001)


# -- the tx shadow's block answers ----------------------------------------------

def response_slots(pairs) -> bytes:
    return b"".join(bytes(netif.netif_tx_response(i, s)) + bytes(8) for i, s in pairs)


def shadow_with_frames(frame_sizes, gso_every):
    shadow = TxShadow(64)
    packets = []
    for n, size in enumerate(frame_sizes):
        gso = (XEN_NETIF_GSO_TYPE_TCPV4, 1448) if gso_every and n % gso_every == 0 else None
        packets.append(shadow.add([(100 + n, 0, 100)] * size, gso=gso, buffers=n))
    return shadow, packets


def answers(packets, order, statuses, junk):
    pairs = []
    for packet in packets:
        for k, id in enumerate(packet.ids):
            pairs.append((id, statuses[(id + k) % len(statuses)]))
        if packet.gso:
            pairs.append((0xFFFF, NETIF_RSP_NULL))
    pairs = [pairs[i % len(pairs)] for i in order] if order else pairs
    return pairs + junk


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=8), st.integers(0, 3),
       st.lists(st.integers(0, 60), max_size=40),
       st.lists(st.sampled_from([NETIF_RSP_OKAY, NETIF_RSP_OKAY, NETIF_RSP_ERROR,
                                 NETIF_RSP_DROPPED]), min_size=1, max_size=4),
       st.lists(st.tuples(st.integers(0, 70), st.integers(-3, 3)), max_size=3))
def test_complete_block_is_complete_one_by_one(sizes, gso_every, order, statuses,
                                               junk) -> None:
    pairs = answers(shadow_with_frames(sizes, gso_every)[1], order, statuses, junk)
    one, one_packets = shadow_with_frames(sizes, gso_every)
    done_one, error_one = [], None
    try:
        for id, status in pairs:
            slot = one.complete(bytes(netif.netif_tx_response(id, status)))
            if slot is not None and slot.packet.done:
                done_one.append(one_packets.index(slot.packet))
    except NetfrontProtocolError:
        error_one = True
    block, block_packets = shadow_with_frames(sizes, gso_every)
    try:
        done_block = [block_packets.index(p)
                      for p in block.complete_block(response_slots(pairs))]
        error_block = None
    except NetfrontProtocolError:
        error_block = True
    assert error_block == error_one
    if not error_one:
        assert done_block == done_one
        assert block.free == one.free and len(block) == len(one)
        for a, b in zip(one_packets, block_packets):
            assert (a.pending, a.status, a.statuses) == (b.pending, b.status, b.statuses)
            assert [s.status for s in a.slots] == [s.status for s in b.slots]


def test_numbered_ids() -> None:
    shadow = TxShadow(8)
    shadow.add_ids([300, 301, 302], 1)
    assert shadow.free == 5 and len(shadow) == 3
    for bad in ([302], [5, 5], [0x10000], [-1], []):
        with pytest.raises(ValueError):
            shadow.add_ids(bad)
    assert shadow.free == 5
    with pytest.raises(ShadowFull):
        shadow.add_ids(list(range(10, 16)))
    with pytest.raises(ValueError):
        shadow.add([(1, 0, 10)])  # the shadow's own ids: not in this one
    assert shadow.complete_ids(response_slots([(301, 0), (7, NETIF_RSP_NULL),
                                               (300, NETIF_RSP_ERROR)])) == [301, 300]
    assert shadow.free == 7
    for wrong in ([(9, NETIF_RSP_NULL)], [(301, 0)], [(302, 5)], [(302, 0), (302, 0)]):
        other = TxShadow(8)
        other.add_ids([302])
        with pytest.raises(NetfrontProtocolError):
            other.complete_ids(response_slots(wrong))
    with pytest.raises(ValueError):
        shadow.complete_block(response_slots([(302, 0)]))  # complete_ids' ids


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.integers(0, 40), min_size=1, max_size=5, unique=True),
                min_size=1, max_size=6),
       st.lists(st.tuples(st.integers(0, 45), st.sampled_from([0, 1, -1, -2, 2, -3])),
                max_size=30))
def test_complete_ids_is_one_by_one(frames, pairs) -> None:
    def shadow() -> TxShadow:
        s = TxShadow(256)
        used = set()
        for n, ids in enumerate(frames):
            ids = [i for i in ids if i not in used]
            if ids:
                s.add_ids(ids, n % 2)
                used.update(ids)
        return s

    one, answered_one, error_one = shadow(), [], False
    try:
        for pair in pairs:
            answered_one += one.complete_ids(response_slots([pair]))
    except NetfrontProtocolError:
        error_one = True
    block = shadow()
    try:
        answered_block, error_block = block.complete_ids(response_slots(pairs)), False
    except NetfrontProtocolError:
        error_block = True
    assert error_block == error_one
    if not error_one:
        assert answered_block == answered_one and block.free == one.free


# -- rx: feed_ring ------------------------------------------------------------------

def rsp(id=0, offset=0, flags=0, status=0) -> bytes:
    return bytes(netif.netif_rx_response(id, offset, flags, status))


def frame_responses(size: int, gso: bool, csum: int = 0) -> bytes:
    lengths = back_rx.rx_slot_lengths(size)
    ids = list(range(len(lengths) + gso))
    return back_rx.rx_response_slots(ids, lengths, csum,
                                     (XEN_NETIF_GSO_TYPE_TCPV4, 1448) if gso else None)


SLOT = st.one_of(
    st.binary(min_size=8, max_size=8),
    st.builds(lambda off, more, extra, status: rsp(0, off, (NETRXF_more_data if more else 0)
                                                   | (NETRXF_extra_info if extra else 0),
                                                   status),
              st.sampled_from([0, 0, 0, 1, 4000, 4096]), st.booleans(), st.booleans(),
              st.sampled_from([0, 10, 4095, 4096, 4096, 4097, -1, 30000])),
    st.just(netif.make_gso_extra(gso_type=XEN_NETIF_GSO_TYPE_TCPV4, size=1448)),
    st.just(netif.make_gso_extra(gso_type=XEN_NETIF_GSO_TYPE_TCPV6, size=1448, more=True)),
    st.just(netif.make_gso_extra(gso_type=9, size=1)),
)
def corrupted(entries: bytes, slot: int, field: int, value: int) -> bytes:
    """A frame's responses with one 16-bit field of one slot changed."""
    raw = bytearray(entries)
    at = (slot % (len(raw) // 8)) * 8 + 2 * field
    raw[at:at + 2] = (value & 0xFFFF).to_bytes(2, "little")
    return bytes(raw)


FRAMES = st.builds(frame_responses, st.integers(14, 65535), st.booleans(),
                   st.sampled_from([0, NETRXF_csum_blank | NETRXF_data_validated]))
CHAINS = st.one_of(
    FRAMES,
    st.builds(corrupted, FRAMES, st.integers(0, 17), st.integers(1, 3),
              st.sampled_from([0, 1, 4095, 4096, 4097, 0x8000, 0xFFFF, NETRXF_more_data,
                               NETRXF_extra_info, 0x10])),
    SLOT)


def compare(got, expected) -> None:
    assert [type(r) for r in got] == [type(r) for r in expected]
    for g, e in zip(got, expected):
        if isinstance(e, RxFrame):
            assert (g.data, g.flags, g.extras, g.nr_slots, g.size, g.gso) == \
                (e.data, e.flags, e.extras, e.nr_slots, e.size, e.gso)
        else:
            assert g == e


@settings(max_examples=400, deadline=None)
@given(st.lists(CHAINS, max_size=12), st.booleans(), st.integers(1, 18),
       st.lists(st.integers(1, 70), min_size=1, max_size=8), st.integers(0, 63),
       st.booleans())
def test_feed_ring_is_feed_slot_by_slot(chains, sg, max_slots, cuts, start, use_area) -> None:
    entries = b"".join(chains)[:64 * 8 * 4]
    n = len(entries) // 8
    ring = 64
    mem = bytearray(i % 251 for i in range(ring * PAGE))
    area = memoryview(mem)
    pages = [area[i * PAGE:(i + 1) * PAGE] for i in range(ring)]
    one = RxAssembler(sg=sg, max_slots=max_slots)
    expected = []
    for index in range(n):
        result = one.feed(entries[index * 8:index * 8 + 8], pages[(start + index) % ring])
        if result is not None:
            expected.append(result)
    block = RxAssembler(sg=sg, max_slots=max_slots)
    got = []
    index, k = 0, 0
    while index < n:
        take = min(cuts[k % len(cuts)], n - index)
        got += block.feed_ring(entries[index * 8:(index + take) * 8], pages,
                               (start + index) % ring, area if use_area else None)
        index += take
        k += 1
    compare(got, expected)
    assert block.in_progress == one.in_progress
    assert block.partial_slots == one.partial_slots
    compare([block.abort()] if block.in_progress else [], [one.abort()] if one.in_progress
            else [])


def test_feed_ring_joins_a_run_of_whole_pages() -> None:
    ring = 32
    mem = bytearray(ring * PAGE)
    area = memoryview(mem)
    pages = [area[i * PAGE:(i + 1) * PAGE] for i in range(ring)]
    gso = frame_responses(65226, True) + frame_responses(20000, False)
    [big, small] = RxAssembler().feed_ring(gso, pages, 0, area)
    assert isinstance(big, RxFrame) and isinstance(small, RxFrame)
    # The first page; then, past the extra's slot, one view of 15 pages.
    assert [len(c) for c in big.chunks] == [4096, 65226 - 4096]
    assert big.gso == (XEN_NETIF_GSO_TYPE_TCPV4, 1448) and big.nr_slots == 17
    assert [len(c) for c in small.chunks] == [20000]
    # Wrapping round the ring: two views.
    [wrapped] = RxAssembler().feed_ring(frame_responses(20000, False), pages, 30, area)
    assert isinstance(wrapped, RxFrame)
    assert [len(c) for c in wrapped.chunks] == [2 * PAGE, 20000 - 2 * PAGE]
    assert wrapped.data == bytes(mem[30 * PAGE:]) + bytes(mem[:20000 - 2 * PAGE])


def test_feed_ring_refuses_what_feed_refuses() -> None:
    bad = rsp(0, 0, NETRXF_more_data, 100) + rsp(1, 4000, 0, 200)  # leaves the page
    pages = [memoryview(bytearray(PAGE))] * 4
    [error] = RxAssembler().feed_ring(bad + rsp(2, 0, 0, 60), pages, 0)[:1]
    assert isinstance(error, RxError) and error.nr_slots == 2


# -- vnet fast paths -----------------------------------------------------------------

def tcp_frame(ipv6: bool, payload: int = 100) -> bytes:
    if ipv6:
        ip = bytes([0x60, 0, 0, 0]) + (20 + payload).to_bytes(2, "big") + bytes([6, 64]) \
            + bytes(32)
        eth = bytes(12) + b"\x86\xdd"
    else:
        ip = bytes([0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 6]) + bytes(10)
        eth = bytes(12) + b"\x08\x00"
    return eth + ip + bytes(12) + bytes([0x80, 0x10]) + bytes(18) + bytes(payload)


def mutated(ipv6: bool, at: int | None, value: int, length: int) -> bytes:
    frame = bytearray(tcp_frame(ipv6))
    if at is not None:
        frame[at] = value
    return bytes(frame[:length])


HEADS = st.builds(mutated, st.booleans(), st.one_of(st.none(), st.integers(0, 80)),
                  st.integers(0, 255), st.integers(0, 200))
VNET = st.builds(vnet.VNET_HDR.pack,
                 st.sampled_from([0, 1, 2, 3]),
                 st.sampled_from([0, 1, 3, 4, 5, 0x81, 0x80]),
                 st.integers(0, 100), st.sampled_from([0, 1448, 9000]),
                 st.sampled_from([0, 34, 54, 14]), st.sampled_from([0, 6, 16]))


@settings(max_examples=1000, deadline=None)
@given(VNET, HEADS, st.sets(st.sampled_from([XEN_NETIF_GSO_TYPE_TCPV4,
                                             XEN_NETIF_GSO_TYPE_TCPV6])),
       st.booleans())
def test_tx_offload_fast_agrees(hdr, head, gso_types, ipv6_csum) -> None:
    fast = vnet.tx_offload_fast(hdr, head, gso_types=frozenset(gso_types),
                                ipv6_csum=ipv6_csum)
    decision = vnet.tx_offload(vnet.parse_vnet_hdr(hdr), head, 60000,
                               gso_types=frozenset(gso_types), ipv6_csum=ipv6_csum)
    if fast is not None:
        assert not (decision.drop or decision.fill_csum or decision.segment)
        assert fast == (decision.flags, decision.gso)


def test_tx_offload_fast_takes_the_usual_frames() -> None:
    both = frozenset({XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_GSO_TYPE_TCPV6})
    for ipv6, l4 in ((False, 34), (True, 54)):
        head = tcp_frame(ipv6)
        gso = vnet.VNET_HDR.pack(1, 4 if ipv6 else 1, l4 + 32, 1448, l4, 16)
        assert vnet.tx_offload_fast(gso, head, gso_types=both, ipv6_csum=True) is not None
        csum = vnet.VNET_HDR.pack(1, 0, 0, 0, l4, 16)
        assert vnet.tx_offload_fast(csum, head, gso_types=both, ipv6_csum=True) is not None


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from([0, NETRXF_csum_blank, NETRXF_data_validated,
                        NETRXF_csum_blank | NETRXF_data_validated]),
       st.one_of(st.none(), st.tuples(st.sampled_from([0, 1, 2, 3]),
                                      st.sampled_from([0, 1448]))),
       HEADS)
def test_rx_vnet_header_fast_path_agrees(flags, gso, head) -> None:
    assert vnet.rx_vnet_header(flags, gso, head) == vnet._rx_vnet_header(flags, gso, head)


# -- the device's tx path, with a socketpair for its TAP -------------------------------

def tx_device(window: bool = True):
    from frontends.netfront.device import NetfrontDevice
    from hypervisor.public.io.ring import BackRing, FrontRing, shared_ring_init

    nr = 2 + 256
    mem = bytearray(nr * PAGE)
    pages = [memoryview(mem)[i * PAGE:(i + 1) * PAGE] for i in range(nr)]
    shared_ring_init(pages[0])
    dev = object.__new__(NetfrontDevice)
    dev.tx_lock = threading.Lock()
    dev.closed, dev.generation = False, 0
    dev.link_up = threading.Event()
    dev.link_up.set()
    dev.offload, dev.hdr = True, memoryview(bytearray(10))
    dev.refs = [7000 + i for i in range(nr)]
    dev.pages = pages
    if window:
        dev.window_view, dev.page_numbers = memoryview(mem), list(range(nr))
    dev.tx = FrontRing(pages[0], 12, 4, entry_size=12)
    dev.tx_pages = list(range(2, nr))
    dev.shadow = TxShadow(dev.tx.size)
    dev.gso_types = frozenset({XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_GSO_TYPE_TCPV6})
    dev.ipv6_csum = True
    dev.staged, dev.staged_generation, dev.pending = [], 0, collections.deque()
    kernel = FakeKernel()
    dev.log, dev.tx_port = kernel.log, 3
    watching = kernel.events.watching
    dev.kernel = kernel
    ours, tap = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (ours, tap):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    ours.setblocking(False)
    dev.tap_fd = ours.fileno()
    watching[dev.tap_fd] = dev._tap_ready
    return dev, BackRing(pages[0], 12, 4, entry_size=12), ours, tap


@pytest.mark.parametrize("window", [True, False])
def test_device_sends_frames_in_consecutive_pages(window) -> None:
    dev, back, ours, tap = tx_device(window)
    try:
        big = tcp_frame(False, 65226 - 66)
        gso_hdr = vnet.VNET_HDR.pack(1, 1, 66, 1448, 34, 16)
        ack = tcp_frame(True, 0)
        ack_hdr = vnet.VNET_HDR.pack(1, 0, 0, 0, 54, 16)
        assembler, page_of = TxAssembler(), {ref: i for i, ref in enumerate(dev.refs)}
        sent = 0
        for round in range(40):
            batch = [(gso_hdr, big), (ack_hdr, ack)] if round % 3 else [(gso_hdr, big)] * 3
            for hdr, frame in batch:
                tap.send(hdr + frame)
            dev._tap_ready()  # what the upcall loop runs: until the TAP is empty
            assert not dev._send_one()  # the TAP is empty
            for packet in assembler.feed_block(back.get_requests(back.has_unconsumed_requests())):
                assert isinstance(packet, TxPacket)
                data = b"".join(bytes(dev.pages[page_of[g]][o:o + n])
                                for g, o, n in packet.segments())
                assert data in (big, ack)
                assert packet.flags & NETTXF_csum_blank
                if data == big:
                    assert packet.gso is not None
                    assert (packet.gso.gso_type, packet.gso.gso_size) == \
                        (XEN_NETIF_GSO_TYPE_TCPV4, 1448)
                    numbers = [page_of[g] for g, _, _ in packet.segments()]
                    wraps = sum(b != a + 1 for a, b in itertools.pairwise(numbers))
                    assert wraps <= 1  # consecutive but where the pages wrap round
                back.put_responses(packet.response_slots())
                sent += 1
            back.push_responses()
        assert sent == sum(3 if r % 3 == 0 else 2 for r in range(40))
        # A frame beyond the largest netif carries is dropped, not cut.
        tap.send(gso_hdr + bytes(70000))
        assert dev._send_one() and back.has_unconsumed_requests() == 0
        assert dev.log.lines[-1][1]["reason"] == "too large"
    finally:
        ours.close()
        tap.close()


def test_a_lost_connection_stages_no_pages_of_the_old_one() -> None:
    """Pages staged on the old connection are not read into on the new
    one, whose free list holds the same page numbers: a page staged twice
    would go out twice (seen in `pyxen chaos` as "ids in flight")."""
    dev, _back, ours, tap = tx_device()
    dev.rx_lock = threading.Lock()
    try:
        assert dev._make_room() == 0 and len(dev.staged) == 16  # old connection's
        dev._lose_connection()
        assert dev._make_room() is None  # no carrier: nothing staged
        # The new connection: all pages free again, each handed out once.
        dev.tx_pages = list(range(2, 2 + 256))
        dev.link_up.set()
        tap.send(vnet.VNET_HDR.pack(1, 1, 66, 1448, 34, 16) + tcp_frame(False, 65226 - 66))
        dev._tap_ready()
        held = dev.tx_pages + dev.staged
        assert len(held) == len(set(held)) == 256 - 16  # 16 pages in flight
    finally:
        ours.close()
        tap.close()


def test_device_stops_watching_the_tap_when_the_tx_ring_is_full() -> None:
    """Never waiting for room: short of it, netfront stops watching the TAP
    (its poll is level-triggered) and asks for a tx event; the event's
    handler collects the responses and takes the TAP up again."""
    dev, back, ours, tap = tx_device()
    watching = dev.kernel.events.watching
    try:
        small = tcp_frame(True, 0)
        hdr = vnet.VNET_HDR.pack(1, 0, 0, 0, 54, 16)
        for _ in range(300):  # more than the ring's 256 slots
            tap.send(hdr + small)
        dev._tap_ready()
        # Stopped with room for less than a full frame (16 slots and the
        # extra), the rest left on the TAP.
        n = back.has_unconsumed_requests()
        assert 256 - 17 < n <= 256 - 16
        assert dev.tx_stalled and dev.tap_fd not in watching
        assert ours.recv(4096, socket.MSG_PEEK)  # frames still there
        # The backend asked for an event at the next response (rsp_event).
        assert back._header[3] == dev.tx._rsp_cons + 1  # rsp_event
        # A tx event with nothing answered changes nothing.
        dev._tx_done()
        assert dev.tx_stalled and dev.tap_fd not in watching
        # The backend answers: the tx event takes the TAP up again.
        assembler = TxAssembler()
        for packet in assembler.feed_block(back.get_requests(n)):
            back.put_responses(packet.response_slots())
        assert back.push_responses_and_check_notify()
        dev._tx_done()
        assert not dev.tx_stalled and watching[dev.tap_fd] == dev._tap_ready
        assert back.has_unconsumed_requests() == 300 - n
        with pytest.raises(BlockingIOError):
            ours.recv(4096)
    finally:
        ours.close()
        tap.close()


def test_fixed_up_frames_wait_in_a_bounded_list_not_for_room() -> None:
    from frontends.netfront import device

    dev, back, ours, tap = tx_device()
    try:
        dev.tx_pages = dev.tx_pages[:20]  # 16 staged, then room for 4 pages
        assert dev._make_room() == 0
        decision = vnet.TxOffload(flags=NETTXF_data_validated, fill_csum=True)
        hdr = vnet.parse_vnet_hdr(vnet.VNET_HDR.pack(1, 0, 0, 0, 20, 16))
        for i in range(device.PENDING_MAX + 3):
            dev._send_fixed(bytes([i % 256]) * 6000, hdr, decision)
        assert len(dev.pending) == device.PENDING_MAX
        assert dev.pending[0][0][0] == 3  # the oldest were dropped
        assert dev._make_room() == device.STALLED  # two frames sent: no room left
        assert back.has_unconsumed_requests() == 4 and dev.tx_stalled
        assert len(dev.pending) == device.PENDING_MAX - 2
    finally:
        ours.close()
        tap.close()


def test_frames_are_published_a_few_at_a_time_and_when_the_tap_is_empty() -> None:
    """The tx ring's req_prod moves every PUSH_EVERY frames and when the TAP
    runs dry, not once per frame: the backend takes several per wakeup, and
    nothing read is left unpublished."""
    from frontends.netfront import device

    dev, back, ours, tap = tx_device()
    try:
        hdr, ack = vnet.VNET_HDR.pack(1, 0, 0, 0, 54, 16), tcp_frame(True, 0)
        for _ in range(device.PUSH_EVERY + 1):
            tap.send(hdr + ack)
        for n in range(1, device.PUSH_EVERY):
            assert dev._send_one()
            assert back.has_unconsumed_requests() == 0, n
        assert dev._send_one()
        assert back.has_unconsumed_requests() == device.PUSH_EVERY
        assert dev._send_one() and back.has_unconsumed_requests() == device.PUSH_EVERY
        assert not dev._send_one()  # the TAP is empty: the last one goes out
        assert back.has_unconsumed_requests() == device.PUSH_EVERY + 1
    finally:
        ours.close()
        tap.close()


def test_a_closed_device_stops_polling_its_tap() -> None:
    """Closing (until _close_tap lets the TAP go, after the backend's
    answer): nothing reads the TAP, so the level-triggered poll must not keep
    waking the upcall loop for the frames left on it."""
    dev, back, ours, tap = tx_device()
    watching = dev.kernel.events.watching
    try:
        watching[dev.tap_fd] = dev._tap_ready
        tap.send(vnet.VNET_HDR.pack(1, 0, 0, 0, 54, 16) + tcp_frame(True, 0))
        dev.closed = True
        dev._tap_ready()
        assert dev.tap_fd not in watching and back.has_unconsumed_requests() == 0
    finally:
        ours.close()
        tap.close()
