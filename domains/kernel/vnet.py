"""virtio_net_hdr (what a TAP opened with IFF_VNET_HDR puts before each
frame) <-> io/netif.h's offload flags and GSO extra, pure.

The guest's kernel hands netfront a frame with Linux's <linux/virtio_net.h>
header: whether its L4 checksum is still to be filled in
(VIRTIO_NET_HDR_F_NEEDS_CSUM, with csum_start / csum_offset), or was
checked already (VIRTIO_NET_HDR_F_DATA_VALID), and, for a TSO frame of up
to 64 KiB, its GSO type and size (MSS).  netif carries the same on the tx
ring as NETTXF_csum_blank (Linux's netfront sets NETTXF_data_validated
with it) / NETTXF_data_validated and an XEN_NETIF_EXTRA_TYPE_GSO extra
slot (:func:`tx_offload`); on the rx ring as NETRXF_csum_blank /
NETRXF_data_validated and a GSO extra, which :func:`rx_vnet_header` turns
back into a header for the receiving TAP.

netif has no csum_start: the receiver finds the checksum by parsing the
headers (TCP or UDP over IPv4 / IPv6).  So a frame the kernel left partial
somewhere else (its own csum_start disagrees), or an IPv6 one toward a
backend without feature-ipv6-csum-offload, has its checksum filled in here
before it goes out; a GSO kind netif cannot carry (UDP, ECN, a type the
backend did not offer) is cut into segments here.  The TAP is told
(TUNSETOFFLOAD) to produce only what the backend takes, so these are the
rare paths.

Netback's uplink to a host TAP (backends/netback/uplink.py) uses the same
mapping the other way round: the host's kernel is its "guest".

The layout is the legacy (virtio 0.9) one tun uses by default: 10 bytes,
native byte order.

netfront calls these once per frame: :func:`tx_offload_fast` and the
start of :func:`rx_vnet_header` recognise the usual frame (TCP over IPv4
without options or over IPv6 without extension headers, no VLAN) by a few
byte compares, and leave everything else to the general code, which
decides alike.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from domains.kernel import netpkt
from hypervisor.public.io.netif import (
    XEN_NETIF_GSO_TYPE_TCPV4,
    XEN_NETIF_GSO_TYPE_TCPV6,
    NETRXF_csum_blank,
    NETRXF_data_validated,
    NETTXF_csum_blank,
    NETTXF_data_validated,
)

# <linux/virtio_net.h>
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_F_DATA_VALID = 2
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_UDP = 3
VIRTIO_NET_HDR_GSO_TCPV6 = 4
VIRTIO_NET_HDR_GSO_UDP_L4 = 5
VIRTIO_NET_HDR_GSO_ECN = 0x80

#: struct virtio_net_hdr: flags, gso_type, hdr_len, gso_size, csum_start,
#: csum_offset.
VNET_HDR = struct.Struct("=BBHHHH")
VNET_HDR_LEN = VNET_HDR.size  # 10
#: The header of a frame with nothing to say (no offload).
NO_OFFLOAD = bytes(VNET_HDR_LEN)

_TO_NETIF_GSO = {VIRTIO_NET_HDR_GSO_TCPV4: XEN_NETIF_GSO_TYPE_TCPV4,
                 VIRTIO_NET_HDR_GSO_TCPV6: XEN_NETIF_GSO_TYPE_TCPV6}
_TO_VNET_GSO = {v: k for k, v in _TO_NETIF_GSO.items()}


class VnetHdr(NamedTuple):
    flags: int
    gso_type: int
    hdr_len: int
    gso_size: int
    csum_start: int
    csum_offset: int


def parse_vnet_hdr(raw: bytes | bytearray | memoryview) -> VnetHdr:
    """Decode the 10-byte header (ValueError if shorter)."""
    if len(raw) < VNET_HDR_LEN:
        raise ValueError(f"a virtio_net_hdr is {VNET_HDR_LEN} bytes, not {len(raw)}")
    return VnetHdr(*VNET_HDR.unpack_from(raw))


class TxOffload(NamedTuple):
    """What to do with a frame the TAP gave: send it with NETTXF_* `flags`
    and the GSO extra `gso` ((XEN_NETIF_GSO_TYPE_*, MSS) or None), after
    filling in its checksum if `fill_csum`, or cut it into `segment` MSS
    segments (> 0) first and send those with `flags` each.  `drop` names
    why a frame cannot go at all."""

    flags: int = 0
    gso: tuple[int, int] | None = None
    fill_csum: bool = False
    segment: int = 0
    drop: str = ""


def tx_offload(hdr: VnetHdr, head: bytes | bytearray | memoryview, size: int, *,
               gso_types: frozenset[int] | set[int] = frozenset(),
               ipv6_csum: bool = False) -> TxOffload:
    """How a frame of `size` bytes whose headers are `head` (its start,
    up to netpkt.MAX_HEADER bytes) and whose virtio_net_hdr is `hdr` goes
    on the tx ring, given the GSO types the backend takes (`gso_types`:
    XEN_NETIF_GSO_TYPE_*) and whether it takes IPv6 blank checksums."""
    gso_kind = hdr.gso_type & ~VIRTIO_NET_HDR_GSO_ECN
    if gso_kind != VIRTIO_NET_HDR_GSO_NONE:
        setup = netpkt.checksum_setup(head)
        if (gso_kind in _TO_NETIF_GSO and not hdr.gso_type & VIRTIO_NET_HDR_GSO_ECN
                and _TO_NETIF_GSO[gso_kind] in gso_types and hdr.gso_size > 0
                and setup is not None and setup[0].proto == netpkt.IPPROTO_TCP
                and setup[0].ipv6 == (gso_kind == VIRTIO_NET_HDR_GSO_TCPV6)):
            # A GSO frame's checksum is always partial: each segment's is
            # computed when it is cut.
            return TxOffload(NETTXF_csum_blank | NETTXF_data_validated,
                             (_TO_NETIF_GSO[gso_kind], hdr.gso_size))
        if gso_kind in (VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6) \
                and hdr.gso_size > 0 and setup is not None \
                and setup[0].proto == netpkt.IPPROTO_TCP:
            return TxOffload(NETTXF_data_validated, segment=hdr.gso_size)
        return TxOffload(drop=f"GSO type {hdr.gso_type:#x} (size {hdr.gso_size}) "
                              f"that neither netif nor netfront can carry")
    if hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
        setup = netpkt.checksum_setup(head)
        if (setup is not None and setup[1] == hdr.csum_start
                and setup[2] == hdr.csum_offset and (ipv6_csum or not setup[0].ipv6)):
            return TxOffload(NETTXF_csum_blank | NETTXF_data_validated)
        if hdr.csum_start + hdr.csum_offset + 2 > size:
            return TxOffload(drop=f"checksum at {hdr.csum_start}+{hdr.csum_offset} "
                                  f"outside a frame of {size} bytes")
        return TxOffload(NETTXF_data_validated, fill_csum=True)
    if hdr.flags & VIRTIO_NET_HDR_F_DATA_VALID:
        return TxOffload(NETTXF_data_validated)
    return TxOffload()


_TX_BLANK = NETTXF_csum_blank | NETTXF_data_validated
_TX_GSO = {VIRTIO_NET_HDR_GSO_TCPV4: (34, XEN_NETIF_GSO_TYPE_TCPV4),
           VIRTIO_NET_HDR_GSO_TCPV6: (54, XEN_NETIF_GSO_TYPE_TCPV6)}


def tx_offload_fast(hdr: bytes | bytearray | memoryview,
                    head: bytes | bytearray | memoryview, *,
                    gso_types: frozenset[int] | set[int] = frozenset(),
                    ipv6_csum: bool = False) -> tuple[int, tuple[int, int] | None] | None:
    """(flags, gso) of :func:`tx_offload` for the raw 10-byte header `hdr`
    and the frame's start `head`, when the frame goes as it is; None when
    this cannot tell at a glance (call tx_offload)."""
    flags, gso_type, _, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(hdr)
    if gso_type:
        kind = _TX_GSO.get(gso_type)
        if kind is None or gso_size == 0 or kind[1] not in gso_types \
                or netpkt.plain_tcp(head) != kind[0]:
            return None
        return _TX_BLANK, (kind[1], gso_size)
    if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
        l4 = netpkt.plain_tcp(head)
        if (l4 == 0 or csum_start != l4 or csum_offset != netpkt.TCP_CSUM_OFFSET
                or (l4 == 54 and not ipv6_csum)):
            return None
        return _TX_BLANK, None
    if flags & VIRTIO_NET_HDR_F_DATA_VALID:
        return NETTXF_data_validated, None
    return 0, None


_RX_BLANK = {34: VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 34, netpkt.TCP_CSUM_OFFSET),
             54: VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 54, netpkt.TCP_CSUM_OFFSET)}
_RX_VALID = VNET_HDR.pack(VIRTIO_NET_HDR_F_DATA_VALID, 0, 0, 0, 0, 0)
_RX_GSO = {XEN_NETIF_GSO_TYPE_TCPV4: (34, VIRTIO_NET_HDR_GSO_TCPV4),
           XEN_NETIF_GSO_TYPE_TCPV6: (54, VIRTIO_NET_HDR_GSO_TCPV6)}


def rx_vnet_header(flags: int, gso: tuple[int, int] | None,
                   head: bytes | bytearray | memoryview) -> bytes | None:
    """The virtio_net_hdr for a frame received with NETRXF_* `flags` and
    GSO extra `gso` ((XEN_NETIF_GSO_TYPE_*, MSS) or None), whose headers
    are `head`; None if the frame must be dropped (a blank checksum or GSO
    whose headers do not say where the checksum is, as Linux's netfront
    refuses it)."""
    if gso is not None:
        kind = _RX_GSO.get(gso[0])
        if kind is not None and gso[1] and netpkt.plain_tcp(head) == kind[0]:
            end = netpkt.plain_tcp_end(head, kind[0])
            if end:
                return VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, kind[1], end, gso[1],
                                     kind[0], netpkt.TCP_CSUM_OFFSET)
    elif flags & NETRXF_csum_blank:
        l4 = netpkt.plain_tcp(head)
        if l4:
            return _RX_BLANK[l4]
    elif flags & NETRXF_data_validated:
        return _RX_VALID
    else:
        return NO_OFFLOAD
    return _rx_vnet_header(flags, gso, head)


def _rx_vnet_header(flags: int, gso: tuple[int, int] | None,
                    head: bytes | bytearray | memoryview) -> bytes | None:
    """:func:`rx_vnet_header` for any frame."""
    if gso is not None:
        setup = netpkt.checksum_setup(head)
        if setup is None or gso[0] not in _TO_VNET_GSO or gso[1] == 0:
            return None
        hdrs, start, offset = setup
        end = netpkt.tcp_header_end(head, hdrs)
        if end is None or hdrs.ipv6 != (gso[0] == XEN_NETIF_GSO_TYPE_TCPV6):
            return None
        return VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, _TO_VNET_GSO[gso[0]], end,
                             gso[1], start, offset)
    if flags & NETRXF_csum_blank:
        setup = netpkt.checksum_setup(head)
        if setup is None:
            return None
        return VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, setup[1], setup[2])
    if flags & NETRXF_data_validated:
        return VNET_HDR.pack(VIRTIO_NET_HDR_F_DATA_VALID, 0, 0, 0, 0, 0)
    return NO_OFFLOAD
