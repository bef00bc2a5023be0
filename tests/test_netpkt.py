"""domains.kernel.netpkt: header parsing, checksums and TCP segmentation,
checked against an independent RFC 1071 implementation (tests/packets.py)."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domains.kernel import netpkt
from tests import packets as P

pytestmark = pytest.mark.timeout(60)


# -- headers ------------------------------------------------------------------

def headers(frame: bytes) -> netpkt.Headers:
    """parse_headers, of a frame that must parse."""
    hdrs = netpkt.parse_headers(frame)
    assert hdrs is not None
    return hdrs


def setup(frame: bytes | bytearray) -> tuple[netpkt.Headers, int, int]:
    """checksum_setup, of a frame that has a checksum to set up."""
    found = netpkt.checksum_setup(frame)
    assert found is not None
    return found


def test_parse_headers_of_each_kind() -> None:
    h = netpkt.parse_headers(P.tcp4_frame(10))
    assert h == netpkt.Headers(0x0800, 14, 34, 6, False) and not h.ipv6
    opts = P.eth(0x0800, P.ipv4(6, P.tcp(b"x"), options=b"\x01" * 8))
    assert headers(opts).l4 == 14 + 28
    tagged = P.eth(0x0800, P.ipv4(17, P.udp(b"x")), vlans=(5, 6))
    assert headers(tagged)[:4] == (0x0800, 22, 42, 17)
    h6 = netpkt.parse_headers(P.tcp6_frame(10))
    assert h6 == netpkt.Headers(0x86DD, 14, 54, 6, False) and h6.ipv6
    # A hop-by-hop options header (8 bytes) before TCP is skipped.
    hop = bytes([6, 0]) + bytes(6)
    assert headers(P.eth(0x86DD, P.ipv6(0, P.tcp(b"x"), hop))).l4 == 62
    frag = P.eth(0x0800, P.ipv4(6, P.tcp(b"x"), frag=0x2000))  # MF
    assert headers(frag).fragment
    frag6 = P.eth(0x86DD, P.ipv6(44, bytes([6, 0, 0, 1]) + bytes(4) + P.tcp(b"x")))
    assert headers(frag6).fragment


@pytest.mark.parametrize("frame", [
    b"", bytes(13), P.eth(0x0806, bytes(28)),                  # short, ARP
    P.eth(0x0800, bytes(19)),                                  # IPv4 cut short
    P.eth(0x0800, bytes([0x44]) + bytes(19)),                  # IHL 4
    P.eth(0x0800, bytes([0x4F]) + bytes(30)),                  # IHL past the end
    P.eth(0x0800, bytes([0x65]) + bytes(19)),                  # version 6 in IPv4
    P.eth(0x86DD, bytes([0x60]) + bytes(38)),                  # IPv6 cut short
    P.eth(0x86DD, P.ipv6(0, bytes([0, 200]) + bytes(6))),      # ext header past the end
    P.eth(0x86DD, P.ipv6(0, (bytes([0, 0]) + bytes(6)) * 5)),  # too many ext headers
    bytes(12) + b"\x81\x00",                                    # a VLAN tag and nothing
], ids=["empty", "13", "arp", "ipv4-short", "ihl-4", "ihl-long", "v6-in-v4", "ipv6-short",
        "ext-long", "ext-many", "vlan-only"])
def test_parse_headers_refuses_what_does_not_parse(frame) -> None:
    assert netpkt.parse_headers(frame) is None


def test_checksum_setup() -> None:
    assert setup(P.tcp4_frame(100))[1:] == (34, 16)
    assert setup(P.udp4_frame(100))[1:] == (34, 6)
    assert setup(P.tcp6_frame(100))[1:] == (54, 16)
    icmp = P.eth(0x0800, P.ipv4(1, bytes(8)))
    assert netpkt.checksum_setup(icmp) is None
    assert netpkt.checksum_setup(P.eth(0x0800, P.ipv4(6, P.tcp(b"")[:19]))) is None
    assert netpkt.checksum_setup(P.eth(0x0800, P.ipv4(6, P.tcp(b"x"), frag=1))) is None


def test_tcp_header_end() -> None:
    frame = P.eth(0x0800, P.ipv4(6, P.tcp(b"data", options=bytes(12))))
    hdrs = headers(frame)
    assert netpkt.tcp_header_end(frame, hdrs) == 34 + 32
    bad = bytearray(frame)
    bad[34 + 12] = 0x40  # data offset 4 words
    assert netpkt.tcp_header_end(bytes(bad), hdrs) is None
    assert netpkt.tcp_header_end(frame[:60], hdrs) is None


# -- checksums ----------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_csum_matches_rfc1071(data) -> None:
    ours, reference = netpkt.csum_fold(netpkt.csum_add(data)), P.rfc1071(data)
    # 0 and 0xFFFF are the same number in ones' complement.
    assert ours == reference or {ours, reference} == {0, 0xFFFF}
    # Summing a checksummed buffer gives zero, in either representation.
    if len(data) % 2 == 0:
        assert netpkt.ip_checksum_ok(data + struct.pack(">H", P.rfc1071(data)))


@pytest.mark.parametrize("frame, proto", [
    (P.tcp4_frame(0), 6), (P.tcp4_frame(1), 6), (P.tcp4_frame(1447), 6),
    (P.tcp6_frame(20000), 6), (P.udp4_frame(300), 17), (P.udp4_frame(1), 17),
], ids=["tcp4-0", "tcp4-1", "tcp4-1447", "tcp6", "udp4-300", "udp4-1"])
def test_complete_and_fill_checksum(frame, proto) -> None:
    assert P.l4_checksum_ok(frame, proto)
    partial = bytearray(P.with_checksum(frame, proto, partial=True))
    start, offset = setup(partial)[1:]
    netpkt.complete_checksum(partial, start, offset)
    assert P.l4_checksum_ok(bytes(partial), proto)
    garbage = bytearray(frame)
    garbage[start + offset:start + offset + 2] = b"\xde\xad"
    filled = netpkt.fill_checksum(bytes(garbage))
    assert filled is not None
    assert P.l4_checksum_ok(filled, proto) and len(filled) == len(frame)
    with pytest.raises(ValueError):
        netpkt.complete_checksum(bytearray(20), 10, 16)


def test_fill_checksum_needs_tcp_or_udp() -> None:
    assert netpkt.fill_checksum(P.eth(0x0800, P.ipv4(1, bytes(8)))) is None
    assert netpkt.fill_checksum(bytes(10)) is None


# -- segmentation ---------------------------------------------------------------

def check_segments(frame: bytes, segments: list[bytes], mss: int) -> None:
    l3, l4, v6 = P.l4_offset(frame)
    end = l4 + (frame[l4 + 12] >> 4) * 4
    payload = b"".join(s[end:] for s in segments)
    assert payload == frame[end:]
    seq, = struct.unpack_from(">I", frame, l4 + 4)
    flags = frame[l4 + 13]
    offset = 0
    for index, seg in enumerate(segments):
        last = index == len(segments) - 1
        assert len(seg) - end == (len(frame) - end - offset if last else mss)
        assert seg[:l3] == frame[:l3]
        assert struct.unpack_from(">I", seg, l4 + 4)[0] == (seq + offset) & 0xFFFFFFFF
        expect = flags
        if not last:
            expect &= ~0x09  # FIN, PSH
        if index:
            expect &= ~0x80  # CWR
        assert seg[l4 + 13] == expect
        assert P.l4_checksum_ok(seg)
        if v6:
            assert struct.unpack_from(">H", seg, l3 + 4)[0] == len(seg) - l3 - 40
        else:
            assert P.ipv4_checksum_ok(seg)
            total, ident = struct.unpack_from(">HH", seg, l3 + 2)
            assert total == len(seg) - l3
            assert ident == (struct.unpack_from(">H", frame, l3 + 4)[0] + index) & 0xFFFF
        offset += len(seg) - end


@pytest.mark.parametrize("frame, mss", [
    (P.tcp4_frame(65000, flags=0x99), 1448),   # FIN | PSH | CWR | ACK
    (P.tcp4_frame(3000, options=bytes(12)), 1448),
    (P.tcp4_frame(1448), 1448),                 # exactly one segment
    (P.tcp4_frame(1449), 1448),
    (P.tcp6_frame(30000, seq=0xFFFFF000), 1428),  # the sequence number wraps
    (P.tcp4_frame(5, flags=0x11), 1),
], ids=["64k-fin-psh-cwr", "options", "one", "two", "v6-seq-wrap", "mss-1"])
def test_segment_tcp(frame, mss) -> None:
    segments = netpkt.segment_tcp(frame, mss)
    _, l4, _ = P.l4_offset(frame)
    payload = len(frame) - l4 - (frame[l4 + 12] >> 4) * 4
    assert len(segments) == -(-payload // mss)
    check_segments(frame, segments, mss)


def test_segment_tcp_refuses() -> None:
    with pytest.raises(ValueError):
        netpkt.segment_tcp(P.udp4_frame(3000), 1000)
    with pytest.raises(ValueError):
        netpkt.segment_tcp(P.tcp4_frame(0), 1000)        # no payload
    with pytest.raises(ValueError):
        netpkt.segment_tcp(P.tcp4_frame(100), 0)
    with pytest.raises(ValueError):
        netpkt.segment_tcp(P.tcp4_frame(1000), 10, max_segments=50)
    with pytest.raises(ValueError):
        netpkt.segment_tcp(P.eth(0x0800, P.ipv4(6, P.tcp(b"x" * 100), frag=0x2000)), 10)
    assert len(netpkt.segment_tcp(P.tcp4_frame(1000), 10, max_segments=100)) == 100


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(0, 70))
def test_untrusted_bytes_never_raise_anything_but_valueerror(data, mss) -> None:
    for frame in (data, P.tcp4_frame(0)[:34] + data, P.tcp6_frame(0)[:54] + data):
        netpkt.parse_headers(frame)
        netpkt.checksum_setup(frame)
        netpkt.fill_checksum(frame)
        try:
            netpkt.segment_tcp(frame, mss, max_segments=300)
        except ValueError:
            pass
