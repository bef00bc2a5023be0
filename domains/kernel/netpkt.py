"""Packet helpers a network driver needs around checksum and segmentation
offload, pure: Linux's skb_checksum_setup, skb_checksum_help and
tcp_gso_segment, on bytes.

io/netif.h carries offload as two flags and an extra slot: a frame whose
L4 checksum is "blank" (only the pseudo-header sum is in the checksum
field, Linux's CHECKSUM_PARTIAL) says so, but not where the checksum is:
the receiver finds it by parsing the headers (:func:`checksum_setup`),
which is possible for TCP and UDP over IPv4 and IPv6 only, and that is
what netif allows.  A GSO frame carries its MSS and whether it is TCP over
IPv4 or IPv6; whoever cannot take it whole cuts it into MTU-sized segments
(:func:`segment_tcp`), each with full checksums.

Every function here takes untrusted bytes: a frame that does not parse is
None or a ValueError, never an IndexError.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

ETH_HLEN = 14
VLAN_HLEN = 4
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
IPPROTO_HOPOPTS = 0
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ROUTING = 43
IPPROTO_FRAGMENT = 44
IPPROTO_DSTOPTS = 60
#: Offset of the checksum field in a TCP header, and in a UDP header.
TCP_CSUM_OFFSET = 16
UDP_CSUM_OFFSET = 6
TCP_FLAG_FIN = 0x01
TCP_FLAG_PSH = 0x08
TCP_FLAG_CWR = 0x80
#: What a header parse needs to look at, at most: Ethernet and two VLAN
#: tags, a 60-byte IPv4 header or IPv6 with a few extension headers, a
#: 60-byte TCP header.  Netback copies this much of a frame privately
#: before looking at it.
MAX_HEADER = 256
#: IPv6 extension headers skipped looking for the L4 header (as Linux's
#: skb_checksum_setup_ipv6, which also gives up on fragments).
_IPV6_EXT = (IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS)
_IPV6_MAX_EXT = 4


class Headers(NamedTuple):
    """Where a frame's headers are.  `l4` is the offset of the transport
    header (Linux's csum_start), `proto` its protocol (IPPROTO_*); `l3`
    the IP header's, `ethertype` ETH_P_IP or ETH_P_IPV6."""

    ethertype: int
    l3: int
    l4: int
    proto: int
    fragment: bool

    @property
    def ipv6(self) -> bool:
        return self.ethertype == ETH_P_IPV6


def parse_headers(frame: bytes | bytearray | memoryview) -> Headers | None:
    """The L3 and L4 offsets of an IPv4 / IPv6 frame (after up to two VLAN
    tags), or None if it is no IP frame or its headers do not fit."""
    n = len(frame)
    if n < ETH_HLEN:
        return None
    l3 = ETH_HLEN
    ethertype = (frame[12] << 8) | frame[13]
    for _ in range(2):
        if ethertype not in (ETH_P_8021Q, ETH_P_8021AD) or n < l3 + VLAN_HLEN:
            break
        ethertype = (frame[l3 + 2] << 8) | frame[l3 + 3]
        l3 += VLAN_HLEN
    if ethertype == ETH_P_IP:
        if n < l3 + 20 or frame[l3] >> 4 != 4:
            return None
        ihl = (frame[l3] & 0x0F) * 4
        if ihl < 20 or n < l3 + ihl:
            return None
        frag = ((frame[l3 + 6] << 8) | frame[l3 + 7]) & 0x3FFF  # MF | offset
        return Headers(ETH_P_IP, l3, l3 + ihl, frame[l3 + 9], bool(frag))
    if ethertype == ETH_P_IPV6:
        if n < l3 + 40 or frame[l3] >> 4 != 6:
            return None
        proto, l4 = frame[l3 + 6], l3 + 40
        for _ in range(_IPV6_MAX_EXT):
            if proto not in _IPV6_EXT:
                break
            if n < l4 + 8:
                return None
            proto, l4 = frame[l4], l4 + (frame[l4 + 1] + 1) * 8
        if proto in _IPV6_EXT or n < l4:
            return None
        return Headers(ETH_P_IPV6, l3, l4, proto, proto == IPPROTO_FRAGMENT)
    return None


def checksum_setup(frame: bytes | bytearray | memoryview
                   ) -> tuple[Headers, int, int] | None:
    """(headers, csum_start, csum_offset) of a frame whose L4 checksum a
    receiver of netif's csum_blank must complete: TCP or UDP over IPv4 or
    IPv6, not a fragment, with its L4 header within `frame`.  None if
    there is no such checksum (Linux refuses such a frame)."""
    hdrs = parse_headers(frame)
    if hdrs is None or hdrs.fragment:
        return None
    if hdrs.proto == IPPROTO_TCP:
        offset, need = TCP_CSUM_OFFSET, 20
    elif hdrs.proto == IPPROTO_UDP:
        offset, need = UDP_CSUM_OFFSET, 8
    else:
        return None
    if len(frame) < hdrs.l4 + need:
        return None
    return hdrs, hdrs.l4, offset


def plain_tcp(frame: bytes | bytearray | memoryview) -> int:
    """Where the TCP header starts in a frame with no VLAN tag and TCP
    right after a 20-byte IPv4 header (not a fragment) or a 40-byte IPv6
    one, when it fits in `frame`: 34 (IPv4) or 54 (IPv6); else 0 (ask
    parse_headers).  The frames nearly all traffic is, told from a few
    bytes; for them parse_headers finds the same."""
    n = len(frame)
    if n >= 54 and frame[12] == 0x08 and frame[13] == 0x00:
        if frame[14] == 0x45 and frame[23] == IPPROTO_TCP \
                and not frame[20] & 0x3F and not frame[21]:
            return 34
    elif n >= 74 and frame[12] == 0x86 and frame[13] == 0xDD:
        if frame[14] >> 4 == 6 and frame[20] == IPPROTO_TCP:
            return 54
    return 0


def plain_tcp_end(frame: bytes | bytearray | memoryview, l4: int) -> int:
    """Offset of the payload of the TCP header at `l4` (from plain_tcp),
    or 0 if that header is malformed or does not fit in `frame`:
    tcp_header_end without the walk."""
    end = l4 + (frame[l4 + 12] >> 4) * 4
    return end if end >= l4 + 20 and len(frame) >= end else 0


def tcp_header_end(frame: bytes | bytearray | memoryview, hdrs: Headers) -> int | None:
    """Offset of a TCP frame's payload (its headers' length), or None if
    the TCP header is malformed or does not fit in `frame`."""
    if hdrs.proto != IPPROTO_TCP or len(frame) < hdrs.l4 + 20:
        return None
    doff = (frame[hdrs.l4 + 12] >> 4) * 4
    if doff < 20 or len(frame) < hdrs.l4 + doff:
        return None
    return hdrs.l4 + doff


def csum_add(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The ones' complement sum of `data` as big-endian 16-bit words (a
    trailing odd byte padded with zero), plus `initial`, folded to 16 bits
    modulo 0xFFFF (2**16 is 1 modulo 0xFFFF: the sum of the words is the
    number's value modulo 0xFFFF, which C adds word by word)."""
    if len(data) & 1:
        data = bytes(data) + b"\0"
    return (int.from_bytes(data, "big") + initial) % 0xFFFF


def csum_fold(total: int) -> int:
    """The checksum field for a sum from :func:`csum_add`: its complement.
    A sum of 0 gives 0xFFFF (the same value in ones' complement, and what
    UDP must send, where 0 means "no checksum")."""
    return ~total & 0xFFFF


def ip_checksum_ok(data: bytes | bytearray | memoryview) -> bool:
    """Whether data that includes its checksum field sums to zero."""
    return csum_add(data) == 0


def complete_checksum(frame: bytearray, csum_start: int, csum_offset: int) -> None:
    """Fill a blank checksum (skb_checksum_help): the field at
    csum_start + csum_offset holds the pseudo-header's sum; the checksum is
    the complement of the sum of everything from csum_start to the end."""
    field = csum_start + csum_offset
    if csum_start < 0 or csum_offset < 0 or field + 2 > len(frame):
        raise ValueError(f"checksum field at {field} outside a frame of {len(frame)} bytes")
    # Never 0 (the sum is below 0xFFFF): UDP's "no checksum" cannot come out.
    value = csum_fold(csum_add(memoryview(frame)[csum_start:]))
    frame[field:field + 2] = value.to_bytes(2, "big")


def pseudo_header_sum(frame: bytes | bytearray | memoryview, hdrs: Headers,
                      l4_len: int) -> int:
    """The pseudo-header's sum for an L4 segment of `l4_len` bytes."""
    l3 = hdrs.l3
    if hdrs.ipv6:
        addrs = frame[l3 + 8:l3 + 40]
        extra = l4_len.to_bytes(4, "big") + bytes([0, 0, 0, hdrs.proto])
    else:
        addrs = frame[l3 + 12:l3 + 20]
        extra = bytes([0, hdrs.proto]) + l4_len.to_bytes(2, "big")
    return csum_add(bytes(addrs) + extra)


def fill_checksum(frame: bytes | bytearray | memoryview) -> bytes | None:
    """`frame` with its TCP / UDP checksum computed from scratch (the
    checksum field's content is ignored), or None if it has none that
    :func:`checksum_setup` finds.  Used when the receiver takes no blank
    checksums."""
    setup = checksum_setup(frame)
    if setup is None:
        return None
    hdrs, start, offset = setup
    out = bytearray(frame)
    out[start + offset:start + offset + 2] = b"\0\0"
    out[start + offset:start + offset + 2] = pseudo_header_sum(
        out, hdrs, len(out) - start).to_bytes(2, "big")
    complete_checksum(out, start, offset)
    return bytes(out)


_IPV4_LEN_ID = struct.Struct(">HH")
_TCP_SEQ = struct.Struct(">I")


def segment_tcp(frame: bytes | bytearray | memoryview, mss: int,
                max_segments: int = 0) -> list[bytes]:
    """Cut a TCP GSO frame into segments of at most `mss` payload bytes, as
    a NIC doing TSO would (Linux's tcp_gso_segment): every segment gets the
    frame's headers, with the IPv4 total length and header checksum (the
    ID counting up from the frame's) or IPv6 payload length, the TCP
    sequence number advanced, FIN and PSH on the last segment only, CWR on
    the first only, and a full TCP checksum.  ValueError if `frame` is no
    TCP frame, is an IP fragment, has no payload, if `mss` < 1, or if it
    would take more than `max_segments` segments (when > 0)."""
    if mss < 1:
        raise ValueError(f"MSS {mss}")
    hdrs = parse_headers(frame)
    if hdrs is None or hdrs.fragment or hdrs.proto != IPPROTO_TCP:
        raise ValueError("not a TCP frame")
    end = tcp_header_end(frame, hdrs)
    if end is None:
        raise ValueError("malformed TCP header")
    data = bytes(frame)
    payload_len = len(data) - end
    if payload_len <= 0:
        raise ValueError("GSO frame without payload")
    count = -(-payload_len // mss)
    if max_segments and count > max_segments:
        raise ValueError(f"{count} segments of MSS {mss}, more than {max_segments}")
    header = bytearray(data[:end])
    l3, l4 = hdrs.l3, hdrs.l4
    seq, = _TCP_SEQ.unpack_from(header, l4 + 4)
    flags = header[l4 + 13]
    ip_id = 0 if hdrs.ipv6 else _IPV4_LEN_ID.unpack_from(header, l3 + 2)[1]
    segments = []
    for index, start in enumerate(range(end, len(data), mss)):
        chunk = data[start:start + mss]
        last = start + mss >= len(data)
        head = bytearray(header)
        _TCP_SEQ.pack_into(head, l4 + 4, (seq + start - end) & 0xFFFFFFFF)
        seg_flags = flags
        if not last:
            seg_flags &= ~(TCP_FLAG_FIN | TCP_FLAG_PSH)
        if index:
            seg_flags &= ~TCP_FLAG_CWR
        head[l4 + 13] = seg_flags
        l4_len = end - l4 + len(chunk)
        if hdrs.ipv6:
            head[l3 + 4:l3 + 6] = (end - l3 - 40 + len(chunk)).to_bytes(2, "big")
        else:
            _IPV4_LEN_ID.pack_into(head, l3 + 2, end - l3 + len(chunk),
                                   (ip_id + index) & 0xFFFF)
            head[l3 + 10:l3 + 12] = b"\0\0"
            head[l3 + 10:l3 + 12] = csum_fold(csum_add(head[l3:l4])).to_bytes(2, "big")
        head[l4 + 16:l4 + 18] = b"\0\0"
        total = csum_add(chunk, csum_add(memoryview(head)[l4:],
                                         pseudo_header_sum(head, hdrs, l4_len)))
        head[l4 + 16:l4 + 18] = csum_fold(total).to_bytes(2, "big")
        segments.append(bytes(head) + chunk)
    return segments
