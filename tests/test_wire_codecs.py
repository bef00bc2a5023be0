"""One codec per wire: what one end encodes, the other end decodes, field
by field, and every byte sits where the ctypes ABI class (checked against
Xen's C headers in test_*_abi.py) puts it."""

from __future__ import annotations

import ctypes
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.blkback.response import response_for
from backends.blkback.validate import parse_request, with_indirect_segments
from backends.netback import rx as back_rx
from backends.netback.tx import TxAssembler, TxBlock, TxPacket
from domains.dom0.xenstored import wire as xenstored_wire
from domains.kernel import console_ring
from domains.kernel import gnttab as kernel_gnttab
from domains.kernel.xenbus import client as xenbus_client
from frontends.blkfront import requests as blkfront
from frontends.netfront import rx as front_rx
from frontends.netfront.tx import TxPageEncoder, TxShadow, gso_extra_slot, tx_entries
from hypervisor import grant_table as hv_grant_table
from hypervisor.public import grant_table
from hypervisor.public.io import blkif, netif, xs_wire
from hypervisor.public.io.netif import (
    XEN_NETIF_EXTRA_TYPE_GSO,
    XEN_NETIF_GSO_TYPE_TCPV4,
    XEN_NETIF_GSO_TYPE_TCPV6,
    NETTXF_csum_blank,
    NETTXF_data_validated,
    NETTXF_extra_info,
    NETTXF_more_data,
    parse_tx_request,
)
from hypervisor.public.pyxen.layout import Column, layout

pytestmark = pytest.mark.timeout(120)

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
s16 = st.integers(-0x8000, 0x7FFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 2**64 - 1)
gso_types = st.sampled_from([XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_GSO_TYPE_TCPV6])


# -- the builder ---------------------------------------------------------------------


def test_layout_follows_the_ctypes_offsets() -> None:
    class odd(ctypes.Structure):
        _fields_ = [("a", ctypes.c_uint8), ("b", ctypes.c_int32), ("c", ctypes.c_uint16 * 3)]

    codec = layout(odd)
    assert codec.size == ctypes.sizeof(odd) == 16
    raw = codec.pack(7, -5, 1, 2, 3)
    back = odd.from_buffer_copy(raw)
    assert (back.a, back.b, list(back.c)) == (7, -5, [1, 2, 3])
    assert layout(odd, ("b",), base=odd.b.offset).pack(-1) == bytes(odd(b=-1))[4:8]
    assert Column(odd, "b", 16).read(raw * 3) == [-5] * 3
    with pytest.raises(ValueError):
        layout(odd, ("c", "a"))  # out of order
    with pytest.raises(ValueError):
        layout(netif.netif_extra_info)  # a union: say which member


# -- netif ---------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(u32, st.integers(0, 2048), st.integers(1, 2048)), min_size=1,
                max_size=18),
       st.sampled_from([0, NETTXF_csum_blank, NETTXF_csum_blank | NETTXF_data_validated]),
       st.none() | st.tuples(gso_types, st.integers(1, 0xFFFF)), st.data())
def test_tx_requests_netfront_encodes_netback_decodes(segments, flags, gso, data) -> None:
    ids = data.draw(st.lists(u16, min_size=len(segments), max_size=len(segments), unique=True))
    entries = tx_entries(segments, ids, flags=flags, gso=gso)
    block = TxBlock(entries)
    slots = [parse_tx_request(entries[i:i + 12]) for i in range(0, len(entries), 12)]
    requests = [slots[0]] + slots[1 + (gso is not None):]
    total = sum(length for _, _, length in segments)
    assert [(r.gref, r.offset, r.id) for r in requests] == [
        (gref, offset, id) for (gref, offset, _), id in zip(segments, ids)]
    assert requests[0].size == total
    assert [r.size for r in requests[1:]] == [length for _, _, length in segments[1:]]
    assert requests[0].flags & (NETTXF_csum_blank | NETTXF_data_validated) == flags
    assert [bool(r.flags & NETTXF_more_data) for r in requests] == \
        [True] * (len(requests) - 1) + [False]
    assert bool(requests[0].flags & NETTXF_extra_info) == (gso is not None)
    # The column reads the switch uses see the same fields.
    at = [0] + list(range(1 + (gso is not None), block.count))
    assert [block.request(i) for i in at] == requests
    if gso is not None:
        extra = block.extra(1)
        assert (extra.type, extra.gso_type, extra.gso_size, extra.more) == (
            XEN_NETIF_EXTRA_TYPE_GSO, gso[0], gso[1], False)
        ctype = netif.netif_extra_info.from_buffer_copy(entries[12:20])
        assert (ctype.u.gso.type, ctype.u.gso.size) == gso
    if total >= 14:  # not a runt: netback takes it
        (packet,) = TxAssembler().feed_block(entries)
        assert isinstance(packet, TxPacket)
        assert packet.segments() == [tuple(s) for s in segments]


def test_tx_page_encoder_matches_tx_entries() -> None:
    encoder = TxPageEncoder([100 + n for n in range(8)])
    got = encoder.entries([2, 3, 4], 9000, flags=NETTXF_csum_blank,
                          gso=(XEN_NETIF_GSO_TYPE_TCPV6, 1440))
    want = tx_entries([(102, 0, 4096), (103, 0, 4096), (104, 0, 808)], [2, 3, 4],
                      flags=NETTXF_csum_blank, gso=(XEN_NETIF_GSO_TYPE_TCPV6, 1440))
    assert got == want


@settings(max_examples=200, deadline=None)
@given(u16, st.sampled_from([0, -1, -2]))
def test_tx_response_netback_encodes_netfront_decodes(id, status) -> None:
    slot = back_rx_tx_response_slot(id, status)
    assert netif.parse_tx_response(slot) == (id, status)
    ctype = netif.netif_tx_response.from_buffer_copy(slot[:4])
    assert (ctype.id, ctype.status) == (id, status)
    assert netif.TX_RESPONSE_ID.read(slot) == [id]
    assert netif.TX_RESPONSE_STATUS.read(slot) == [status]
    shadow = TxShadow(size=0x10000)
    shadow.add_ids([id])
    assert shadow.complete_ids(slot) == [id]


def back_rx_tx_response_slot(id: int, status: int) -> bytes:
    """netback's answer to a one-slot packet whose id is `id`."""
    from backends.netback.tx import TxError
    return TxError([id], status, "test").response_slots() if status else \
        TxAssembler().feed_block(netif.TX_REQUEST.pack(1, 0, 0, id, 60))[0].response_slots()


@settings(max_examples=200, deadline=None)
@given(u16, u32)
def test_rx_request_netfront_encodes_netback_decodes(id, gref) -> None:
    raw = front_rx.make_rx_request(id, gref)
    assert netif.parse_rx_request(raw) == (id, gref)
    assert (netif.RX_REQUEST_ID.read(raw * 2), netif.RX_REQUEST_GREF.read(raw * 2)) == (
        [id, id], [gref, gref])
    ctype = netif.netif_rx_request.from_buffer_copy(raw)
    assert (ctype.id, ctype.gref) == (id, gref)


@settings(max_examples=200, deadline=None)
@given(u16, u16, u16, s16)
def test_rx_response_netback_encodes_netfront_decodes(id, offset, flags, status) -> None:
    raw = netif.make_rx_response(id, offset, flags, status)
    assert front_rx.parse_rx_response(raw) == (id, offset, flags, status)
    for column, value in ((netif.RX_RESPONSE_OFFSET, offset), (netif.RX_RESPONSE_FLAGS, flags),
                          (netif.RX_RESPONSE_STATUS, status)):
        assert column.read(raw) == [value]
    ctype = netif.netif_rx_response.from_buffer_copy(raw)
    assert (ctype.id, ctype.offset, ctype.flags, ctype.status) == (id, offset, flags, status)


@settings(max_examples=100, deadline=None)
@given(st.lists(u16, min_size=2, max_size=18, unique=True), st.integers(1, 65535 - 14),
       gso_types, st.integers(1, 0xFFFF))
def test_rx_responses_of_a_gso_frame_reach_netfront(ids, extra_size, gso_type, mss) -> None:
    size = min(14 + extra_size, (len(ids) - 1) * 4096)
    ids = ids[:back_rx.rx_slots_needed(size, gso=True)]
    if len(ids) < 2:
        return
    slots = back_rx.rx_response_block(ids, size, 0, (gso_type, mss))
    assert slots == back_rx.rx_response_slots(ids, back_rx.rx_slot_lengths(size), 0,
                                              (gso_type, mss))
    pages = [bytes(4096)] * len(ids)
    (frame,) = front_rx.RxAssembler().feed_block(slots, pages)
    assert isinstance(frame, front_rx.RxFrame)
    assert (frame.size, frame.gso, frame.nr_slots) == (size, (gso_type, mss), len(ids))


@settings(max_examples=200, deadline=None)
@given(gso_types, st.integers(1, 0xFFFF), st.booleans())
def test_gso_extra_one_codec_both_directions(gso_type, size, more) -> None:
    # netback -> netfront (rx, an 8-byte slot)
    rx = netif.make_gso_extra(gso_type=gso_type, size=size, more=more)
    extra = front_rx.parse_extra(rx)
    assert (extra.type, extra.gso, extra.more, extra.gso_features) == (
        XEN_NETIF_EXTRA_TYPE_GSO, (gso_type, size), more, 0)
    # netfront -> netback (tx, a 12-byte slot)
    tx = gso_extra_slot((gso_type, size))
    assert len(tx) == 12 and tx[:8] == netif.make_gso_extra(gso_type=gso_type, size=size)
    extra = netif.parse_extra(tx)
    assert (extra.gso_type, extra.gso_size, extra.more) == (gso_type, size, False)
    ctype = netif.netif_extra_info.from_buffer_copy(rx)
    assert (ctype.type, ctype.u.gso.type, ctype.u.gso.size) == (1, gso_type, size)


def test_gso_extra_arguments_are_keywords() -> None:
    with pytest.raises(TypeError):
        netif.make_gso_extra(1448, XEN_NETIF_GSO_TYPE_TCPV4)  # type: ignore[misc]
    with pytest.raises(ValueError):
        netif.make_gso_extra(gso_type=XEN_NETIF_GSO_TYPE_TCPV4, size=0)


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 4), st.binary(min_size=6, max_size=6), st.booleans())
def test_other_extras_decode_field_by_field(type_, u, more) -> None:
    raw = netif.make_extra(type_, u, more=more, slot=12)
    extra = netif.parse_extra(raw)
    ctype = netif.netif_extra_info.from_buffer_copy(raw[:8])
    assert (extra.type, extra.more, extra.u) == (type_, more, u)
    assert extra.addr == bytes(ctype.u.mcast.addr)
    assert (extra.hash_type, extra.hash_algorithm) == (ctype.u.hash.type,
                                                       ctype.u.hash.algorithm)
    assert extra.hash_value == int.from_bytes(bytes(ctype.u.hash.value), "little")


# -- blkif ---------------------------------------------------------------------------


segments = st.lists(st.tuples(u32, st.integers(0, 7), st.integers(0, 7)).map(
    lambda s: (s[0], min(s[1], s[2]), max(s[1], s[2]))), min_size=1, max_size=11)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([blkif.BLKIF_OP_READ, blkif.BLKIF_OP_WRITE]), u64, u64, u16, segments)
def test_rw_request_blkfront_encodes_blkback_decodes(op, id, sector, handle, segs) -> None:
    request = parse_request(blkfront.rw(op, id, sector, segs, handle))
    assert (request.operation, request.id, request.sector_number, request.handle,
            request.nr_segments) == (op, id, sector, handle, len(segs))
    assert request.segments is not None
    assert [(s.gref, s.first_sect, s.last_sect) for s in request.segments] == segs


@settings(max_examples=100, deadline=None)
@given(u64, u64, u64, u16, st.booleans())
def test_discard_request_blkfront_encodes_blkback_decodes(id, sector, count, handle,
                                                          secure) -> None:
    request = parse_request(blkfront.discard(id, sector, count, handle, secure))
    assert (request.operation, request.id, request.sector_number, request.nr_sectors,
            request.handle, request.flag) == (blkif.BLKIF_OP_DISCARD, id, sector, count,
                                              handle, int(secure))


@settings(max_examples=100, deadline=None)
@given(u64, u64, u16, st.sampled_from([blkif.BLKIF_OP_READ, blkif.BLKIF_OP_WRITE]),
       st.integers(1, 4096), st.data())
def test_indirect_request_blkfront_encodes_blkback_decodes(id, sector, handle, op, n,
                                                           data) -> None:
    pages = blkif.indirect_pages(n)
    grefs = data.draw(st.lists(u32, min_size=pages, max_size=pages))
    request = parse_request(blkfront.indirect(id, op, sector, n, grefs, handle))
    assert (request.operation, request.indirect_op, request.id, request.sector_number,
            request.handle, request.nr_segments, list(request.indirect_grefs)) == (
        blkif.BLKIF_OP_INDIRECT, op, id, sector, handle, n, grefs)
    specs = [(g, 0, 7) for g in data.draw(st.lists(u32, min_size=n, max_size=n))]
    full = with_indirect_segments(request, blkfront.indirect_pages(specs))
    assert full.segments is not None
    assert [(s.gref, s.first_sect, s.last_sect) for s in full.segments] == specs


@settings(max_examples=200, deadline=None)
@given(u64, u8, st.sampled_from([0, -1, -2]))
def test_response_blkback_encodes_blkfront_decodes(id, operation, status) -> None:
    raw = blkif.make_response(id, operation, status)
    assert blkfront.parse_response(raw + bytes(96)) == (id, operation, status)
    ctype = blkif.blkif_response.from_buffer_copy(raw)
    assert (ctype.id, ctype.operation, ctype.status) == (id, operation, status)
    assert len(raw) == ctypes.sizeof(blkif.blkif_response) == blkif.RESPONSE.size
    request = parse_request(blkfront.flush(id))
    assert blkfront.parse_response(response_for(request, status)) == (
        id, blkif.BLKIF_OP_FLUSH_DISKCACHE, status)


# -- xs_wire -------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(u32, u32, u32, st.binary(max_size=xs_wire.XENSTORE_PAYLOAD_MAX), st.integers(1, 64))
def test_xs_message_one_end_to_the_other(type_, req_id, tx_id, payload, chunk) -> None:
    raw = xs_wire.encode(xs_wire.Message(type_, req_id, tx_id, payload))
    header = xs_wire.xsd_sockmsg.from_buffer_copy(raw[:16])
    assert (header.type, header.req_id, header.tx_id, header.len) == (
        type_, req_id, tx_id, len(payload))
    # The client and xenstored frame with the same decoder.
    assert xenstored_wire.Decoder is xenbus_client.Decoder is xs_wire.Decoder
    decoder = xs_wire.Decoder()
    got = []
    for at in range(0, len(raw) * 2, chunk):
        got += decoder.feed((raw * 2)[at:at + chunk])
    assert got == [xs_wire.Message(type_, req_id, tx_id, payload)] * 2
    assert decoder.pending == 0


def test_xs_oversized_payload_breaks_the_stream() -> None:
    decoder = xs_wire.Decoder()
    good = xs_wire.encode(xs_wire.Message(xs_wire.XS_READ, 1, 0, b"a\0"))
    bad = xs_wire.XSD_SOCKMSG.pack(xs_wire.XS_READ, 2, 0, xs_wire.XENSTORE_PAYLOAD_MAX + 1)
    with pytest.raises(xs_wire.WireError) as caught:
        decoder.feed(good + bad)
    assert caught.value.messages == [xs_wire.Message(xs_wire.XS_READ, 1, 0, b"a\0")]
    with pytest.raises(xs_wire.WireError):
        decoder.feed(good)


# -- grant entries -------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 7), u16, u32, st.booleans())
def test_grant_entry_kernel_writes_hypervisor_reads(ref, domid, frame, readonly) -> None:
    entries, status = bytearray(4096), bytearray(4096)
    table = kernel_gnttab.GrantTable(None, entries, status, 1, None)  # type: ignore[arg-type]
    assert table.grant_access(domid, frame, readonly, ref=ref) == ref
    xen_side = object.__new__(hv_grant_table.GrantTable)
    xen_side.entries = SimpleNamespace(map=entries)  # type: ignore[assignment]
    flags = grant_table.GTF_permit_access | (grant_table.GTF_readonly if readonly else 0)
    assert xen_side.read_entry(ref) == (flags, domid, frame)
    ctype = grant_table.grant_entry_v1.from_buffer_copy(entries, ref * 8)
    assert (ctype.flags, ctype.domid, ctype.frame) == (flags, domid, frame)
    table.end_access(ref)
    assert xen_side.read_entry(ref) == (0, domid, frame)


# -- console -------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=700), max_size=8))
def test_console_ring_domain_writes_daemon_reads(chunks) -> None:
    page = bytearray(4096)
    domain, daemon = console_ring.XenconsRing(page), console_ring.XenconsRing(page)
    sent = received = b""
    for chunk in chunks:
        n = domain.write_out(chunk)
        sent += chunk[:n]
        received += daemon.read_out()
        assert daemon.write_in(chunk[:100]) == min(len(chunk), 100)
        assert domain.read_in() == chunk[:100]
    assert received == sent
    ctype = console_ring.xencons_interface.from_buffer(page)
    assert ctype.out_prod == ctype.out_cons == len(sent)


# -- event ports ---------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(u32)
def test_event_port_message_hypervisor_and_doorbell_share_one_codec(port) -> None:
    from domains.kernel import doorbell
    from hypervisor import loop
    from hypervisor.public import event_channel

    assert loop.PORT is doorbell.PORT is event_channel.PYXEN_EVTCHN_PORT
    raw = loop.PORT.pack(port)
    assert len(raw) == ctypes.sizeof(event_channel.evtchn_port_t)
    assert doorbell.PORT.unpack(raw) == (port,)
    assert event_channel.evtchn_port_t.from_buffer_copy(raw).value == port
