"""Building real Ethernet/IP/TCP/UDP frames for tests, and checking their
checksums with a reference implementation that shares no code with
domains.kernel.netpkt (RFC 1071, word by word)."""

from __future__ import annotations

import struct

DST = bytes.fromhex("00163e000002")
SRC = bytes.fromhex("00163e000001")
IP4_SRC, IP4_DST = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
IP6_SRC = bytes.fromhex("fd000000000000000000000000000001")
IP6_DST = bytes.fromhex("fd000000000000000000000000000002")


def rfc1071(data: bytes) -> int:
    """The Internet checksum of `data`: the complement of the ones'
    complement sum of its 16-bit words."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for (word,) in struct.iter_unpack(">H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ones_sum(data: bytes) -> int:
    """The ones' complement sum itself (not complemented)."""
    return ~rfc1071(data) & 0xFFFF


def eth(ethertype: int, payload: bytes, vlans: tuple[int, ...] = ()) -> bytes:
    tags = b"".join(struct.pack(">HH", 0x8100, v) for v in vlans)
    return DST + SRC + tags + struct.pack(">H", ethertype) + payload


def tcp(payload: bytes, seq: int = 1000, flags: int = 0x18, options: bytes = b"",
        sport: int = 40000, dport: int = 5201) -> bytes:
    """A TCP header (checksum 0) and its payload."""
    options += b"\0" * (-len(options) % 4)
    doff = (20 + len(options)) // 4
    return struct.pack(">HHIIBBHHH", sport, dport, seq, 7, doff << 4, flags, 65535, 0,
                       0) + options + payload


def udp(payload: bytes, sport: int = 40000, dport: int = 53) -> bytes:
    return struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload


def ipv4(proto: int, l4: bytes, ident: int = 0x1234, frag: int = 0x4000,
         options: bytes = b"") -> bytes:
    options += b"\0" * (-len(options) % 4)
    ihl = (20 + len(options)) // 4
    header = struct.pack(">BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(l4), ident, frag, 64,
                         proto, 0, IP4_SRC, IP4_DST) + options
    header = header[:10] + struct.pack(">H", rfc1071(header)) + header[12:]
    return header + l4


def ipv6(proto: int, l4: bytes, ext: bytes = b"") -> bytes:
    """`ext`: extension headers, the first's next-header field already
    naming what follows it; `proto` is the first header's type."""
    return struct.pack(">IHBB16s16s", 6 << 28, len(ext) + len(l4), proto, 64, IP6_SRC,
                       IP6_DST) + ext + l4


def l4_offset(frame: bytes) -> tuple[int, int, bool]:
    """(offset of the IP header, of the L4 header, IPv6?) of the frames
    built here (no extension headers, VLAN tags allowed)."""
    l3 = 14
    while frame[l3 - 2:l3] == b"\x81\x00":
        l3 += 4
    if frame[l3] >> 4 == 4:
        return l3, l3 + (frame[l3] & 0xF) * 4, False
    return l3, l3 + 40, True


def pseudo(frame: bytes, proto: int, length: int) -> bytes:
    l3, _, v6 = l4_offset(frame)
    if v6:
        return frame[l3 + 8:l3 + 40] + struct.pack(">IxxxB", length, proto)
    return frame[l3 + 12:l3 + 20] + struct.pack(">xBH", proto, length)


def with_checksum(frame: bytes, proto: int = 6, partial: bool = False) -> bytes:
    """`frame` with its TCP / UDP checksum filled in, or (`partial`) with
    only the pseudo-header's sum in it, as Linux leaves a CHECKSUM_PARTIAL
    frame."""
    _, l4, _ = l4_offset(frame)
    field = l4 + (16 if proto == 6 else 6)
    blank = frame[:field] + b"\0\0" + frame[field + 2:]
    ph = pseudo(frame, proto, len(frame) - l4)
    value = ones_sum(ph) if partial else rfc1071(ph + blank[l4:])
    if not partial and proto == 17 and value == 0:
        value = 0xFFFF
    return blank[:field] + struct.pack(">H", value) + blank[field + 2:]


def l4_checksum_ok(frame: bytes, proto: int = 6) -> bool:
    _, l4, _ = l4_offset(frame)
    return rfc1071(pseudo(frame, proto, len(frame) - l4) + frame[l4:]) == 0


def ipv4_checksum_ok(frame: bytes) -> bool:
    l3, l4, _ = l4_offset(frame)
    return rfc1071(frame[l3:l4]) == 0


def tcp4_frame(payload_len: int, **kw) -> bytes:
    payload = bytes((i * 7 + 3) % 256 for i in range(payload_len))
    return with_checksum(eth(0x0800, ipv4(6, tcp(payload, **kw))))


def tcp6_frame(payload_len: int, **kw) -> bytes:
    payload = bytes((i * 5 + 1) % 256 for i in range(payload_len))
    return with_checksum(eth(0x86DD, ipv6(6, tcp(payload, **kw))))


def udp4_frame(payload_len: int) -> bytes:
    return with_checksum(eth(0x0800, ipv4(17, udp(bytes(range(256)) * (payload_len // 256)
                                                 + bytes(payload_len % 256)))), proto=17)


# -- netback's tx assembler, slot by slot (what tests compare with) ------------


def feed_all(assembler, entries) -> list:
    """Feed every tx ring entry to a netback TxAssembler, one at a time:
    the packets and errors that came out."""
    return [r for r in map(assembler.feed, entries) if r is not None]


def response_bytes(result, status: int | None = None) -> list[bytes]:
    """A TxPacket's (answered `status`) or TxError's responses, each a
    4-byte netif_tx_response."""
    from hypervisor.public.io.netif import make_tx_response
    pairs = result.responses() if status is None else result.responses(status)
    return [make_tx_response(id, st) for id, st in pairs]
