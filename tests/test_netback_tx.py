"""netback's tx side: decoding, packet assembly, a status for every bad slot."""

import ctypes
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.netback import offload
from backends.netback.tx import (
    ENTRY_SIZE,
    ExtraInfo,
    TxAssembler,
    TxBlock,
    TxError,
    TxLimits,
    TxPacket,
    TxRequest,
    answer_extra,
    answer_status,
    parse_extra,
    tx_response_block,
)
from domains.kernel import netpkt
from hypervisor.public.io import netif
from hypervisor.public.io.netif import (
    NETIF_RSP_DROPPED,
    NETIF_RSP_ERROR,
    NETIF_RSP_NULL,
    NETIF_RSP_OKAY,
    XEN_NETIF_EXTRA_FLAG_MORE,
    XEN_NETIF_EXTRA_TYPE_GSO,
    XEN_NETIF_EXTRA_TYPE_HASH,
    XEN_NETIF_EXTRA_TYPE_MCAST_ADD,
    XEN_NETIF_GSO_TYPE_TCPV4,
    XEN_NETIF_GSO_TYPE_TCPV6,
    XEN_NETIF_NR_SLOTS_MIN,
    NETTXF_csum_blank,
    NETTXF_data_validated,
    NETTXF_extra_info,
    NETTXF_more_data,
    make_tx_response,
    parse_tx_request,
)
from tests import packets as P
from tests.packets import feed_all, response_bytes

pytestmark = pytest.mark.timeout(60)


def req(id, size, gref=None, offset=0, flags=0) -> bytes:
    return bytes(netif.netif_tx_request(100 + id if gref is None else gref,
                                        offset, flags, id, size))


def extra(type, more=False, u=b"") -> bytes:
    data = bytes([type, XEN_NETIF_EXTRA_FLAG_MORE if more else 0]) + u
    return data + bytes(ENTRY_SIZE - len(data))


def gso(size=1448, type=XEN_NETIF_GSO_TYPE_TCPV4, more=False) -> bytes:
    return extra(XEN_NETIF_EXTRA_TYPE_GSO, more,
                 size.to_bytes(2, "little") + bytes([type, 0, 0, 0]))


def chain(first_id, sizes, offset=0, flags=0, extras=()) -> list[bytes]:
    """A packet of slots of `sizes` (the first size is the total)."""
    total = sum(sizes)
    first_flags = flags | (NETTXF_more_data if len(sizes) > 1 else 0) | (
        NETTXF_extra_info if extras else 0)
    out = [req(first_id, total, offset=offset, flags=first_flags)]
    out += list(extras)
    for index, size in enumerate(sizes[1:], 1):
        more = NETTXF_more_data if index < len(sizes) - 1 else 0
        out.append(req(first_id + index, size, flags=more))
    return out


DEFAULT_LIMITS = TxLimits()


def run(entries, limits: TxLimits = DEFAULT_LIMITS):
    return feed_all(TxAssembler(limits), entries)


GOOD = chain(50, [60])  # a 60-byte frame in one slot


def assert_good_follows(assembler: TxAssembler) -> None:
    [packet] = feed_all(assembler, GOOD)
    assert isinstance(packet, TxPacket)
    assert packet.responses() == [(50, NETIF_RSP_OKAY)]


# -- decoding -----------------------------------------------------------------

def test_parse_tx() -> None:
    raw = req(7, 1514, gref=0xDEADBEEF, offset=66, flags=NETTXF_csum_blank)
    r = parse_tx_request(bytearray(raw))
    assert (r.gref, r.offset, r.flags, r.id, r.size) == (0xDEADBEEF, 66, 1, 7, 1514)
    assert r.encode() == raw
    assert not r.more_data and not r.extra_info
    assert TxRequest(0xDEADBEEF, 66, 1, 7, 1514).encode() == raw
    with pytest.raises(ValueError):
        parse_tx_request(raw[:11])


def test_parse_extra() -> None:
    e = parse_extra(gso(9000, XEN_NETIF_GSO_TYPE_TCPV6, more=True))
    assert (e.type, e.more, e.gso_size, e.gso_type) == (1, True, 9000, 2)
    h = parse_extra(extra(XEN_NETIF_EXTRA_TYPE_HASH,
                          u=bytes([3, 1]) + (0x12345678).to_bytes(4, "little"))[:8])
    assert (h.hash_type, h.hash_algorithm, h.hash_value) == (3, 1, 0x12345678)
    with pytest.raises(ValueError):
        parse_extra(bytes(7))


# -- good packets -------------------------------------------------------------

def test_single_slot_packet() -> None:
    [packet] = run(chain(3, [1514], offset=100, flags=NETTXF_csum_blank | NETTXF_data_validated))
    assert packet.first_id == 3 and packet.size == 1514
    assert packet.segments() == [(103, 100, 1514)]
    assert packet.flags == NETTXF_csum_blank | NETTXF_data_validated
    assert packet.responses() == [(3, NETIF_RSP_OKAY)]
    assert response_bytes(packet) == [make_tx_response(3, 0)]
    assert packet.nr_slots == 1 and packet.gso is None


def test_multi_slot_packet_first_slot_length_is_the_rest() -> None:
    entries = chain(10, [100, 4096, 4096, 20])
    assembler = TxAssembler()
    results = [assembler.feed(e) for e in entries]
    assert results[:-1] == [None, None, None]
    packet = results[-1]
    assert isinstance(packet, TxPacket)
    assert packet.size == 100 + 4096 + 4096 + 20
    assert packet.segments() == [(110, 0, 100), (111, 0, 4096), (112, 0, 4096),
                                 (113, 0, 20)]
    assert [id for id, _ in packet.responses()] == [10, 11, 12, 13]
    assert not assembler.in_progress


def test_extras_answered_null_right_after_the_first_slot() -> None:
    hash_u = bytes([0, 1, 1, 2, 3, 4])
    entries = chain(0, [1000, 3000], extras=[
        gso(more=True), extra(XEN_NETIF_EXTRA_TYPE_HASH, u=hash_u)])
    [packet] = run(entries)
    assert packet.gso.gso_size == 1448 and packet.hash.hash_value == 0x04030201
    assert packet.extra_count == 2 and packet.nr_slots == 4
    assert packet.responses() == [(0, 0), (0, NETIF_RSP_NULL), (0, NETIF_RSP_NULL),
                                  (1, 0)]
    assert packet.segments() == [(100, 0, 1000), (101, 0, 3000)]


def test_gso_extra_without_more_data() -> None:
    [packet] = run(chain(4, [4000], extras=[gso(536, XEN_NETIF_GSO_TYPE_TCPV6)]))
    assert packet.gso.gso_type == XEN_NETIF_GSO_TYPE_TCPV6
    assert packet.responses() == [(4, 0), (0, NETIF_RSP_NULL)]


def test_zero_length_slot_and_whole_page() -> None:
    [packet] = run(chain(0, [4096, 0]))
    assert packet.segments() == [(100, 0, 4096), (101, 0, 0)]


def test_mcast_update_needs_no_frame() -> None:
    mac = bytes.fromhex("01005e000001")
    [packet] = run([req(9, 0, flags=NETTXF_extra_info),
                    extra(XEN_NETIF_EXTRA_TYPE_MCAST_ADD, u=mac)])
    assert packet.mcast.addr == mac
    assert packet.responses() == [(9, 0), (0, NETIF_RSP_NULL)]


def test_configured_larger_slot_limit() -> None:
    sizes = [100] * 20
    errors = run(chain(0, sizes))
    assert all(isinstance(e, TxError) and e.status == NETIF_RSP_DROPPED
               for e in errors)
    assert sum(e.nr_slots for e in errors) == 20
    [packet] = run(chain(0, sizes), TxLimits(max_slots=20))
    assert len(packet.slots) == 20
    with pytest.raises(ValueError):
        TxLimits(max_slots=XEN_NETIF_NR_SLOTS_MIN - 1)


def test_eighteen_slots_are_always_accepted() -> None:
    [packet] = run(chain(0, [1000] * XEN_NETIF_NR_SLOTS_MIN))
    assert isinstance(packet, TxPacket)


def test_a_bad_grant_fails_its_packet_only() -> None:
    a, b = run(chain(0, [100, 200]) + chain(5, [300]))
    assert a.responses(NETIF_RSP_ERROR) == [(0, -1), (1, -1)]
    assert b.responses() == [(5, 0)]


# -- bad packets: each gets its status, and the next one is fine ----------------

BAD = {
    "first slot crosses its page": (chain(0, [200], offset=4000), NETIF_RSP_ERROR),
    "first slot's own part crosses": (chain(0, [4000, 100], offset=200), NETIF_RSP_ERROR),
    "later slot crosses its page": (
        [req(0, 300, flags=NETTXF_more_data), req(1, 200, offset=3900)], NETIF_RSP_ERROR),
    "slots hold more than the packet": (
        [req(0, 100, flags=NETTXF_more_data), req(1, 101)], NETIF_RSP_ERROR),
    "runt packet": (chain(0, [13]), NETIF_RSP_ERROR),
    "empty packet": (chain(0, [0]), NETIF_RSP_ERROR),
    "too many slots": (chain(0, [64] * 19), NETIF_RSP_DROPPED),
    "extra of type 0": (chain(0, [100], extras=[extra(0)]), NETIF_RSP_ERROR),
    "extra of type MAX": (chain(0, [100], extras=[extra(5)]), NETIF_RSP_ERROR),
    "extra of type 200": (chain(0, [100, 50], extras=[extra(200)]), NETIF_RSP_ERROR),
    "GSO size 0": (chain(0, [100], extras=[gso(size=0)]), NETIF_RSP_ERROR),
    "GSO type NONE": (chain(0, [100], extras=[gso(type=0)]), NETIF_RSP_ERROR),
    "GSO type 3": (chain(0, [100], extras=[gso(type=3)]), NETIF_RSP_ERROR),
    "two GSO extras": (chain(0, [100], extras=[gso(more=True), gso()]), NETIF_RSP_ERROR),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_packet_gets_its_status_and_the_next_is_fine(name) -> None:
    entries, status = BAD[name]
    assembler = TxAssembler()
    results = feed_all(assembler, entries)
    assert results and all(isinstance(r, TxError) for r in results)
    assert {r.status for r in results} == {status}
    responses = [rsp for r in results for rsp in r.responses()]
    assert len(responses) == len(entries)  # one per slot consumed
    assert not assembler.in_progress
    assert_good_follows(assembler)


def test_error_ids_and_extra_responses_in_ring_order() -> None:
    entries = [req(7, 100, flags=NETTXF_extra_info | NETTXF_more_data),
               extra(0), req(8, 200)]
    [error] = run(entries)
    assert error.ids == [7, 8] and error.extra_count == 1
    assert error.responses() == [(7, -1), (0, NETIF_RSP_NULL), (8, -1)]
    assert response_bytes(error)[0] == make_tx_response(7, -1)
    assert "type 0" in error.reason


def test_overlong_chain_is_answered_early_then_slot_by_slot() -> None:
    entries = chain(0, [10] * 30)
    assembler = TxAssembler()
    results = [assembler.feed(e) for e in entries]
    first_error = next(r for r in results if r is not None)
    assert results.index(first_error) == XEN_NETIF_NR_SLOTS_MIN  # the 19th slot
    assert isinstance(first_error, TxError)
    assert first_error.ids == list(range(19))
    rest = [r for r in results[19:]]
    assert all(isinstance(r, TxError) and len(r.ids) == 1 for r in rest)
    assert [r.ids[0] for r in rest if isinstance(r, TxError)] == list(range(19, 30))
    assert_good_follows(assembler)


def test_endless_extra_chain_is_answered_early() -> None:
    entries = [req(0, 100, flags=NETTXF_extra_info)] + [
        extra(XEN_NETIF_EXTRA_TYPE_HASH, more=True)] * 10 + [extra(4)]
    assembler = TxAssembler()
    results = feed_all(assembler, entries)
    assert sum(r.nr_slots for r in results) == len(entries)
    assert all(r.status == NETIF_RSP_ERROR for r in results)
    assert Counter(s for r in results for _, s in r.responses()) == {
        NETIF_RSP_ERROR: 1, NETIF_RSP_NULL: 11}
    assert_good_follows(assembler)


def test_abort_answers_the_unfinished_packet() -> None:
    assembler = TxAssembler()
    assert assembler.abort() is None
    assert assembler.feed(req(1, 300, flags=NETTXF_more_data | NETTXF_extra_info)) is None
    assert assembler.feed(gso()) is None
    assert assembler.feed(req(2, 100, flags=NETTXF_more_data)) is None
    error = assembler.abort("frontend disconnected")
    assert error is not None
    assert error.responses() == [(1, -1), (0, NETIF_RSP_NULL), (2, -1)]
    assert not assembler.in_progress
    assert_good_follows(assembler)


def test_abort_while_dropping_answers_nothing_twice() -> None:
    assembler = TxAssembler()
    answered = sum(r.nr_slots for r in feed_all(assembler, 
        chain(0, [10] * 25)[:-1]))  # the chain never ends
    assert answered == 24
    assert assembler.in_progress and assembler.abort() is None
    assert_good_follows(assembler)


def test_interleaved_good_and_bad_packets() -> None:
    stream, expected = [], []
    for n, (name, (entries, status)) in enumerate(BAD.items()):
        stream += chain(200 + n, [60 + n, 40])
        expected.append(("ok", 60 + n + 40))
        stream += entries
        expected.append(("error", status))
    results = feed_all(TxAssembler(), stream)
    summary = [("ok", r.size) if isinstance(r, TxPacket) else ("error", r.status)
               for r in results]
    # The overlong chain yields several errors: collapse repeats.
    collapsed = [s for i, s in enumerate(summary) if i == 0 or s != summary[i - 1]
                 or s[0] == "ok"]
    assert collapsed == expected
    assert sum(r.nr_slots for r in results) == len(stream)


def test_feed_rejects_a_wrong_entry_size() -> None:
    with pytest.raises(ValueError):
        TxAssembler().feed(bytes(8))


# -- fuzzing ------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=12, max_size=12), max_size=60))
def test_random_entries_never_raise_and_every_slot_is_answered(entries) -> None:
    assembler = TxAssembler()
    results = feed_all(assembler, entries)
    tail = assembler.abort()
    if tail is not None:
        results.append(tail)
    responses = [rsp for r in results for rsp in r.responses()]
    assert len(responses) == len(entries)
    assert all(isinstance(r, (TxPacket, TxError)) for r in results)
    fed_ids = Counter(parse_tx_request(e).id for e in entries)
    answered = Counter(id for id, status in responses if status != NETIF_RSP_NULL)
    assert not answered - fed_ids  # only ids the frontend sent
    for r in results:
        if isinstance(r, TxPacket):
            assert all(0 <= o and o + n <= 4096 for _, o, n in r.segments())
            assert 14 <= r.size == sum(n for _, _, n in r.segments())


@st.composite
def packets(draw):
    """A chain of well-formed structure (flags) with random contents."""
    nslots = draw(st.integers(1, 22))
    sizes = draw(st.lists(st.integers(0, 4200), min_size=nslots, max_size=nslots))
    total = draw(st.one_of(st.just(sum(sizes)), st.integers(0, 0xFFFF)))
    offsets = draw(st.lists(st.integers(0, 4200), min_size=nslots, max_size=nslots))
    extras = draw(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 3),
                                     st.integers(0, 2000)), max_size=5))
    return nslots, sizes, total, offsets, extras


@settings(max_examples=300, deadline=None)
@given(st.lists(packets(), max_size=8))
def test_structured_fuzz_answers_exactly_the_slots_sent(stream) -> None:
    entries, request_ids, nr_extras, next_id = [], [], 0, 0
    for nslots, sizes, total, offsets, extras in stream:
        for index in range(nslots):
            flags = NETTXF_more_data if index < nslots - 1 else 0
            if index == 0 and extras:
                flags |= NETTXF_extra_info
            size = (total if index == 0 else sizes[index]) & 0xFFFF
            entries.append(req(next_id, size, offset=offsets[index] & 0xFFFF,
                               flags=flags))
            request_ids.append(next_id)
            next_id += 1
            if index == 0:
                for n, (type, gso_type, gso_size) in enumerate(extras):
                    u = gso_size.to_bytes(2, "little") + bytes([gso_type, 0, 0, 0])
                    entries.append(extra(type, n < len(extras) - 1, u))
                    nr_extras += 1
    results = feed_all(TxAssembler(), entries)
    responses = [rsp for r in results for rsp in r.responses()]
    assert sorted(id for id, s in responses if s != NETIF_RSP_NULL) == request_ids
    assert sum(1 for _, s in responses if s == NETIF_RSP_NULL) == nr_extras
    assert len(results) >= len(stream)


def test_extra_info_dataclass_defaults() -> None:
    e = ExtraInfo(XEN_NETIF_EXTRA_TYPE_GSO, 0)
    assert e.gso_size == 0 and not e.more
    assert ctypes.sizeof(netif.netif_tx_request) == ENTRY_SIZE


# -- GSO extras, untrusted, through the offload checks ---------------------------

FRAMES = [P.tcp4_frame(3000), P.tcp6_frame(3000), P.udp4_frame(2000), P.tcp4_frame(0),
          P.eth(0x0806, bytes(28))]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3000), st.integers(0, 3),
                          st.sampled_from(range(len(FRAMES))), st.booleans(),
                          st.binary(max_size=4)), max_size=10))
def test_gso_extras_are_checked_as_untrusted_input(stream) -> None:
    """Random GSO extras (type, size, stray bytes in the padding) on real
    and bogus frames: the assembler refuses malformed extras, offload.py
    refuses claims the frame does not bear out, and whatever passes both
    is a TCP frame of the GSO type's IP version with payload past its
    headers."""
    both = frozenset({XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_GSO_TYPE_TCPV6})
    assembler = TxAssembler()
    for n, (gso_type, gso_size, flags, which, with_extra, junk) in enumerate(stream):
        frame = FRAMES[which]
        u = gso_size.to_bytes(2, "little") + bytes([gso_type]) + junk[:3]
        extras = [extra(XEN_NETIF_EXTRA_TYPE_GSO, u=u)] if with_extra else []
        sizes = [min(len(frame), 4096)] + ([len(frame) - 4096] if len(frame) > 4096 else [])
        entries = chain(100 * n, sizes, flags=flags, extras=extras)
        [result] = feed_all(assembler, entries)
        if with_extra and (gso_size == 0 or gso_type not in (1, 2)):
            assert isinstance(result, TxError)
            continue
        assert isinstance(result, TxPacket)
        gso_info = result.gso
        claimed = None if gso_info is None else (gso_info.gso_type, gso_info.gso_size)
        verdict = offload.tx_offload(frame[:256], result.size, result.flags, claimed,
                                     gso_types=both, ipv6_csum=True)
        if isinstance(verdict, offload.Drop):
            continue
        if claimed is not None:
            hdrs = netpkt.parse_headers(frame)
            assert hdrs is not None and hdrs.proto == 6
            assert hdrs.ipv6 == (claimed[0] == XEN_NETIF_GSO_TYPE_TCPV6)
            end = netpkt.tcp_header_end(frame, hdrs)
            assert end is not None and end < len(frame)
            assert verdict.gso == claimed and verdict.flags == offload.CSUM_PARTIAL


class OneSlotAtATime(TxAssembler):
    """The assembler without its batch fast path: every slot through the
    per-state methods."""

    def feed_block(self, entries: bytes) -> list:
        out = []
        for offset in range(0, len(entries), ENTRY_SIZE):
            raw = entries[offset:offset + ENTRY_SIZE]
            if self._state == "extras":
                result = self._extra(parse_extra(raw))
            elif self._state == "first":
                result = self._start(parse_tx_request(raw))
            else:
                result = self._frag(parse_tx_request(raw))
            if result is not None:
                out.append(result)
        return out


@settings(max_examples=300, deadline=None)
@given(st.lists(packets(), max_size=8), st.integers(18, 20))
def test_batch_fast_path_decides_as_slot_by_slot(stream, max_slots) -> None:
    entries = []
    for n, (nslots, sizes, total, offsets, extras) in enumerate(stream):
        for index in range(nslots):
            flags = NETTXF_more_data if index < nslots - 1 else 0
            if index == 0 and extras:
                flags |= NETTXF_extra_info
            size = (total if index == 0 else sizes[index]) & 0xFFFF
            entries.append(req(n * 30 + index, size, offset=offsets[index] & 0xFFFF,
                               flags=flags))
            if index == 0:
                for k, (type, gso_type, gso_size) in enumerate(extras):
                    u = gso_size.to_bytes(2, "little") + bytes([gso_type, 0, 0, 0])
                    entries.append(extra(type, k < len(extras) - 1, u))
    limits = TxLimits(max_slots=max_slots)
    blob = b"".join(entries)
    assert TxAssembler(limits).feed_block(blob) == OneSlotAtATime(limits).feed_block(blob)


def test_block_responses_are_the_packets_own() -> None:
    """What the switch's fast path writes for a block (every slot's id and
    OKAY, extras NULL, a refused chain's slots ERROR) is what the
    assembler's packets answer slot by slot."""
    entries = (chain(10, [1514])
               + chain(20, [3000, 1000, 4096], extras=[gso()])
               + chain(30, [60, 60]))
    blob = b"".join(entries)
    block = TxBlock(blob)
    out = tx_response_block(block)
    index, expected = 0, []
    for n, packet in enumerate(TxAssembler().feed_block(blob)):
        found = block.chain(index, TxLimits())
        assert found is not None and block.packet(index, found) == packet
        if found[3] is not None:
            answer_extra(out, index + 1)
        status = NETIF_RSP_ERROR if n == 2 else NETIF_RSP_OKAY
        if status:
            answer_status(out, index, found, status)
        expected.append(packet.response_slots(status))
        index = found[0]
    assert out.tobytes() == b"".join(expected)
