"""netback's rx side: how a frame goes into the frontend's posted pages."""

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.netback.rx import (
    RxDrop,
    RxFeatures,
    RxPlan,
    page_runs,
    plan_rx,
    rx_response_block,
    rx_response_slots,
    rx_slot_lengths,
    rx_slots_needed,
    scatter,
)
from hypervisor.public.io import netif
from hypervisor.public.io.netif import (
    NETIF_RSP_ERROR,
    XEN_NETIF_EXTRA_FLAG_MORE,
    XEN_NETIF_EXTRA_TYPE_GSO,
    XEN_NETIF_GSO_TYPE_TCPV4,
    XEN_NETIF_GSO_TYPE_TCPV6,
    NETRXF_csum_blank,
    NETRXF_data_validated,
    NETRXF_extra_info,
    NETRXF_more_data,
    RxRequest,
    make_extra,
    make_gso_extra,
    make_rx_response,
    make_tx_response,
    parse_rx_request,
)

pytestmark = pytest.mark.timeout(60)

DST = bytes.fromhex("00163e000001")
SRC = bytes.fromhex("00163e000002")


def eth(ethertype: int, payload: bytes, vlan: int | None = None) -> bytes:
    tag = b"" if vlan is None else (0x8100).to_bytes(2, "big") + vlan.to_bytes(2, "big")
    return DST + SRC + tag + ethertype.to_bytes(2, "big") + payload


def tcp_header(options: int = 0) -> bytes:
    doff = 5 + options // 4
    return bytes(12) + bytes([doff << 4, 0x10]) + bytes(6) + bytes(options)


def ipv4_tcp(payload_len: int, options: int = 0, frag: int = 0, vlan=None) -> bytes:
    tcp = tcp_header(options)
    total = 20 + len(tcp) + payload_len
    ip = bytes([0x45, 0]) + total.to_bytes(2, "big") + bytes(2) + frag.to_bytes(2, "big") \
        + bytes([64, 6]) + bytes(10)
    return eth(0x0800, ip + tcp + bytes(i % 251 for i in range(payload_len)), vlan)


def ipv6_tcp(payload_len: int) -> bytes:
    tcp = tcp_header()
    ip = bytes([0x60, 0, 0, 0]) + (len(tcp) + payload_len).to_bytes(2, "big") \
        + bytes([6, 64]) + bytes(32)
    return eth(0x86DD, ip + tcp + bytes(payload_len))


def udp_frame(ip_len: int) -> bytes:
    """An IPv4 (non-TCP) frame whose IP packet is `ip_len` bytes."""
    return eth(0x0800, bytes([0x45]) + bytes(8) + bytes([17]) + bytes(ip_len - 10))


def planned(*args: Any, **kw: Any) -> RxPlan:
    """plan_rx, for a frame that must be planned."""
    plan = plan_rx(*args, **kw)
    assert isinstance(plan, RxPlan), plan
    return plan


def dropped(*args: Any, **kw: Any) -> RxDrop:
    """plan_rx, for a frame that must be dropped."""
    drop = plan_rx(*args, **kw)
    assert isinstance(drop, RxDrop), drop
    return drop


def requests(n: int, first_id: int = 0) -> list[RxRequest]:
    return [RxRequest(first_id + i, 500 + i) for i in range(n)]


SG = RxFeatures(sg=True)
GSO4 = RxFeatures(sg=True, gso_tcpv4=True)


# -- encoders -----------------------------------------------------------------

def test_make_responses() -> None:
    assert make_tx_response(0x1234, -1) == bytes.fromhex("3412ffff")
    assert make_rx_response(1, 2, 3, 1514) == bytes.fromhex("01000200030" "0ea05")
    rsp = netif.netif_rx_response.from_buffer_copy(make_rx_response(9, 0, 4, -2))
    assert (rsp.id, rsp.offset, rsp.flags, rsp.status) == (9, 0, 4, -2)
    for bad in ((0x10000, 0), (0, 0x8000), (0, -0x8001), (-1, 0)):
        with pytest.raises(ValueError):
            make_tx_response(*bad)
    with pytest.raises(ValueError):
        make_rx_response(0, 0, 0x10000, 0)


def test_make_extras() -> None:
    assert make_gso_extra(gso_type=XEN_NETIF_GSO_TYPE_TCPV6, size=1448, more=True) == bytes(
        [XEN_NETIF_EXTRA_TYPE_GSO, XEN_NETIF_EXTRA_FLAG_MORE, 0xA8, 0x05, 2, 0, 0, 0])
    assert make_extra(2, bytes(range(6))) == bytes([2, 0, 0, 1, 2, 3, 4, 5])
    with pytest.raises(ValueError):
        make_gso_extra(gso_type=XEN_NETIF_GSO_TYPE_TCPV4, size=0)


def test_parse_rx_request() -> None:
    raw = bytes(netif.netif_rx_request(id=7, gref=0xABCDEF01))
    assert parse_rx_request(raw) == RxRequest(7, 0xABCDEF01)
    with pytest.raises(ValueError):
        parse_rx_request(raw + b"\0")


def test_features_say_what_the_receiver_takes() -> None:
    f = RxFeatures(csum=False, ipv6_csum=True, gso_tcpv6=True)
    # GSO frames span pages: without feature-sg the receiver takes none.
    assert not f.receiver.gso_tcpv6 and f.receiver.ipv6_csum and not f.receiver.csum
    assert RxFeatures(sg=True, gso_tcpv4=True).receiver.takes_gso(XEN_NETIF_GSO_TYPE_TCPV4)


# -- plans --------------------------------------------------------------------

def test_small_frame_takes_one_slot() -> None:
    frame = udp_frame(60)
    plan = plan_rx(frame, requests(4), RxFeatures(),
                   csum_flags=NETRXF_data_validated)
    assert isinstance(plan, RxPlan) and plan.nr_requests == 1
    [slot] = plan.slots
    assert (slot.id, slot.gref, slot.offset, slot.length) == (0, 500, 0, len(frame))
    assert slot.flags == NETRXF_data_validated
    assert plan.copies() == [(0, 500, 0, frame)]
    assert plan.responses() == [make_rx_response(0, 0, NETRXF_data_validated, len(frame))]


def test_multi_slot_frame_with_sg() -> None:
    frame = udp_frame(9000)
    plan = planned(frame, requests(5, 10), RxFeatures(sg=True, mtu=9000))
    assert [s.length for s in plan.slots] == [4096, 4096, 9000 + 14 - 8192]
    assert [s.flags for s in plan.slots] == [NETRXF_more_data, NETRXF_more_data, 0]
    assert [s.id for s in plan.slots] == [10, 11, 12]
    assert b"".join(d for _, _, _, d in plan.copies()) == frame


def test_without_sg_only_one_page() -> None:
    jumbo = RxFeatures(sg=False, mtu=9000)
    assert isinstance(plan_rx(udp_frame(4096 - 14), requests(1), jumbo), RxPlan)
    drop = plan_rx(udp_frame(4096 - 13), requests(5), jumbo)
    assert isinstance(drop, RxDrop) and "feature-sg" in drop.reason


def test_frames_over_the_mtu_are_dropped_unless_gso() -> None:
    assert isinstance(plan_rx(udp_frame(1500), requests(4), SG), RxPlan)
    assert isinstance(plan_rx(udp_frame(1501), requests(4), SG), RxDrop)
    assert isinstance(plan_rx(ipv4_tcp(5000), requests(4), SG), RxDrop)
    # A GSO frame only with the sender's GSO extra, and only of a type the
    # frontend takes.
    assert isinstance(plan_rx(ipv4_tcp(5000), requests(4), GSO4), RxDrop)
    four = (XEN_NETIF_GSO_TYPE_TCPV4, 1460)
    assert isinstance(plan_rx(ipv4_tcp(5000), requests(4), GSO4, gso=four), RxPlan)
    six = RxFeatures(sg=True, gso_tcpv6=True)
    assert "GSO" in dropped(ipv4_tcp(5000), requests(4), six, gso=four).reason
    tagged = eth(0x0800, bytes([0x45]) + bytes(1499), vlan=3)   # 1518 bytes
    assert isinstance(plan_rx(tagged, requests(1), RxFeatures()), RxPlan)


def test_gso_frame_gets_an_extra_slot_after_the_first() -> None:
    frame = ipv4_tcp(10000)
    plan = planned(frame, requests(6), GSO4, csum_flags=NETRXF_csum_blank | NETRXF_data_validated,
                   gso=(XEN_NETIF_GSO_TYPE_TCPV4, 1460))
    assert plan.gso == (XEN_NETIF_GSO_TYPE_TCPV4, 1460)
    assert plan.nr_requests == 4 == rx_slots_needed(len(frame), gso=True)
    first, ext, second, third = plan.slots
    assert first.flags == (NETRXF_more_data | NETRXF_extra_info | NETRXF_csum_blank
                           | NETRXF_data_validated)
    assert ext.is_extra and ext.response() == make_gso_extra(gso_type=XEN_NETIF_GSO_TYPE_TCPV4, size=1460)
    assert (second.flags, third.flags) == (NETRXF_more_data, 0)
    assert [s.id for s in plan.slots] == [0, 1, 2, 3]
    copies = plan.copies()
    assert [c[0] for c in copies] == [0, 2, 3]              # no copy for the extra
    assert b"".join(c[3] for c in copies) == frame
    responses = plan.responses()
    assert len(responses) == 4 and responses[1] == ext.extra


def test_gso_v6() -> None:
    plan = planned(ipv6_tcp(3000), requests(3), RxFeatures(sg=True, gso_tcpv6=True),
                   gso=(XEN_NETIF_GSO_TYPE_TCPV6, 1440))
    assert plan.gso == (XEN_NETIF_GSO_TYPE_TCPV6, 1440) and plan.nr_requests == 2


def test_not_enough_requests_means_wait() -> None:
    frame = ipv4_tcp(10000)
    gso = (XEN_NETIF_GSO_TYPE_TCPV4, 1460)
    assert plan_rx(frame, requests(3), GSO4, gso=gso) is None
    assert plan_rx(udp_frame(100), [], RxFeatures()) is None
    assert planned(frame, [(1, 2), (3, 4), (5, 6), (7, 8)], GSO4, gso=gso).slots[2].gref == 6


def test_failed_copy_answers_error() -> None:
    plan = planned(udp_frame(9000), requests(3), RxFeatures(sg=True, mtu=9000))
    responses = plan.responses(failed={1})
    status = [netif.netif_rx_response.from_buffer_copy(r).status for r in responses]
    assert status == [4096, NETIF_RSP_ERROR, 9014 - 8192]


def test_drops() -> None:
    assert "runt" in dropped(bytes(13), requests(1)).reason
    huge = RxFeatures(sg=True, mtu=65535)
    assert isinstance(plan_rx(udp_frame(65535 - 14), requests(20), huge), RxPlan)
    assert isinstance(plan_rx(udp_frame(65535 - 13), requests(20), huge), RxDrop)
    with pytest.raises(ValueError):
        plan_rx(udp_frame(60), requests(1), csum_flags=NETRXF_more_data)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=20000), st.booleans(), st.booleans(),
       st.sampled_from([576, 1500, 9000]), st.integers(0, 8))
def test_any_frame_plans_consistently(frame, sg, gso, mtu, posted) -> None:
    features = RxFeatures(sg=sg, gso_tcpv4=gso, gso_tcpv6=gso, mtu=mtu)
    plan = plan_rx(frame, requests(posted), features,
                   gso=(XEN_NETIF_GSO_TYPE_TCPV4, 1000) if gso else None)
    if plan is None or isinstance(plan, RxDrop):
        return
    assert plan.nr_requests <= posted
    assert b"".join(d for _, _, _, d in plan.copies()) == frame
    assert all(s.offset + s.length <= 4096 for s in plan.slots)
    assert len(plan.responses()) == plan.nr_requests


# -- the fast path's pieces -----------------------------------------------------

def test_fast_path_pieces_match_the_plan() -> None:
    for frame, features, gso, flags in [
            (udp_frame(60), RxFeatures(), None, NETRXF_data_validated),
            (udp_frame(9000), RxFeatures(sg=True, mtu=9000), None, 0),
            (ipv4_tcp(60000), GSO4, (XEN_NETIF_GSO_TYPE_TCPV4, 1448),
             NETRXF_csum_blank | NETRXF_data_validated)]:
        posted = requests(20, 7)
        plan = planned(frame, posted, features, csum_flags=flags, gso=gso)
        lengths = rx_slot_lengths(len(frame))
        assert lengths == [s.length for s in plan.slots if not s.is_extra]
        ids = [r.id for r in posted[:plan.nr_requests]]
        assert rx_response_slots(ids, lengths, flags, gso) == b"".join(plan.responses())
        pages = [memoryview(bytearray(4096)) for _ in lengths]
        cut: list[bytes | memoryview] = [frame[:100], memoryview(frame)[100:5000], frame[5000:]]
        scatter(cut, pages)
        assert b"".join(bytes(p[:n]) for p, n in zip(pages, lengths)) == frame
    assert rx_slot_lengths(4096) == [4096] and rx_slot_lengths(4097) == [4096, 1]
    with pytest.raises(ValueError):
        scatter([bytes(5000)], [memoryview(bytearray(4096))])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=5000), max_size=8))
def test_scatter_lays_any_chunks_out_page_after_page(chunks) -> None:
    data = b"".join(chunks)
    lengths = rx_slot_lengths(len(data))
    pages = [memoryview(bytearray(4096)) for _ in lengths]
    scatter(chunks, pages)
    assert b"".join(bytes(p[:n]) for p, n in zip(pages, lengths)) == data


@settings(max_examples=300, deadline=None)
@given(st.integers(14, 0xFFFF), st.sampled_from([None, (XEN_NETIF_GSO_TYPE_TCPV4, 1448),
                                                 (XEN_NETIF_GSO_TYPE_TCPV6, 0xFFFF)]),
       st.sampled_from([0, NETRXF_data_validated, NETRXF_csum_blank | NETRXF_data_validated]),
       st.data())
def test_response_block_is_the_per_slot_encoding(size, gso, flags, data) -> None:
    """The switch's template-built responses are byte for byte those of
    rx_response_slots, for every size (whole pages and not) and GSO."""
    lengths = rx_slot_lengths(size)
    count = len(lengths) + (gso is not None)
    ids = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=count, max_size=count))
    assert rx_response_block(ids, size, flags, gso) == rx_response_slots(ids, lengths, flags, gso)


def test_page_runs_groups_consecutive_pages() -> None:
    assert page_runs([4096]) == [(4096, 1)]
    assert page_runs([0, 8192, 12288, 16384]) == [(0, 1), (8192, 3)]
    assert page_runs([8192, 4096, 12288]) == [(8192, 1), (4096, 1), (12288, 1)]


def test_scatter_fills_runs_of_pages_of_any_length() -> None:
    data = bytes(range(256)) * 40
    runs = [memoryview(bytearray(4096)), memoryview(bytearray(3 * 4096))]
    scatter([data[:100], memoryview(data)[100:], b""], runs)
    assert bytes(runs[0]) + bytes(runs[1][:len(data) - 4096]) == data
