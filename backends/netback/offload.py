"""Checksum and segmentation offload in netback, pure: what a frontend's
tx offload flags and GSO extra claim (untrusted), and what to do for a
receiver that cannot take them.

On the tx ring a frontend may send a frame with NETTXF_csum_blank (its
L4 checksum is only the pseudo-header's sum), NETTXF_data_validated, and
an XEN_NETIF_EXTRA_TYPE_GSO extra slot (a TCP frame of up to 64 KiB to be
cut into MSS-sized segments).  :func:`tx_offload` checks that claim
against the frame's headers (a private copy: the frontend can rewrite
its pages at any time), as Linux's netback does with
skb_checksum_setup and xenvif_set_skb_gso, and turns it into the frame's
:class:`Offload`: the rx flags it carries through the bridge, and its
GSO type and size.  Refused (the packet is answered
XEN_NETIF_RSP_ERROR) are:

- a GSO type the backend did not offer (feature-gso-tcpv4 / -tcpv6), of
  size 0, or unknown (the tx assembler refuses those already);
- a GSO frame that is not TCP over the IP version of its type, an IP
  fragment, or has no payload past its headers;
- a blank checksum netback cannot locate: not TCP or UDP over IPv4 /
  IPv6, or a fragment; IPv6 without feature-ipv6-csum-offload.

A GSO frame's checksum is partial whatever slot 1 says (Linux's netback
likewise recalculates the partial checksum of a GSO frame whose
frontend forgot NETTXF_csum_blank).

Toward a receiver (a vif's frontend, an uplink), :func:`needs_fallback`
says whether the frame can go as it is, and :func:`software_fallback`
does what the receiver cannot: a GSO frame toward a frontend that did
not negotiate that GSO type is **segmented** here (netpkt.segment_tcp:
MSS-sized segments with full checksums, at most MAX_SEGMENTS of them,
else dropped), a blank checksum toward a frontend with
feature-no-csum-offload (or IPv6 without feature-ipv6-csum-offload) is
**filled in**.  Either way the result carries NETRXF_data_validated.
"""

from __future__ import annotations

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

#: Most segments one GSO frame is cut into in software: a 64 KiB frame at
#: IPv4's minimum MSS (536) takes 123; more means an MSS no real path has,
#: and would let one frame cost the switch thousands of segments.
MAX_SEGMENTS = 256
CSUM_PARTIAL = NETRXF_csum_blank | NETRXF_data_validated


class Drop(NamedTuple):
    """A frame refused (tx) or dropped (toward a receiver), and why: what
    :func:`tx_offload` and :func:`software_fallback` return instead of
    their result (a type of its own, so that callers test for it instead
    of telling a str from a result)."""

    reason: str


class Offload(NamedTuple):
    """A frame's offload state through the bridge: the NETRXF_* checksum
    flags a receiver gets (NETRXF_csum_blank | NETRXF_data_validated: the
    checksum is partial; NETRXF_data_validated alone: it was checked),
    its GSO (XEN_NETIF_GSO_TYPE_*, MSS) or None, and whether it is IPv6
    (which receivers take blank checksums of only with
    feature-ipv6-csum-offload)."""

    flags: int = 0
    gso: tuple[int, int] | None = None
    ipv6: bool = False


NONE = Offload()
_GSO_IPV6 = {XEN_NETIF_GSO_TYPE_TCPV4: False, XEN_NETIF_GSO_TYPE_TCPV6: True}


_CSUM_PARTIAL = (Offload(CSUM_PARTIAL, None, False), Offload(CSUM_PARTIAL, None, True))
_PLAIN_GSO = (XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_GSO_TYPE_TCPV6)


def tx_offload(head: bytes | bytearray | memoryview, size: int, flags: int,
               gso: tuple[int, int] | None, *,
               gso_types: frozenset[int] | set[int] = frozenset(),
               ipv6_csum: bool = False) -> Offload | Drop:
    """The Offload of a tx packet of `size` bytes whose first bytes are
    `head` (a private copy, up to netpkt.MAX_HEADER), whose slot 1 has
    NETTXF_* `flags` and whose GSO extra says `gso` ((type, size) or
    None), given the GSO types and IPv6 blank checksums the backend
    offered; or a Drop saying why the packet is refused."""
    l4 = netpkt.plain_tcp(head)
    end = l4 and netpkt.plain_tcp_end(head, l4)
    if end:
        # The usual frame (netpkt.plain_tcp): what the checks below decide
        # for it, without their walk of its headers.
        ipv6 = l4 == 54
        if gso is None:
            if flags & NETTXF_csum_blank and (ipv6_csum or not ipv6):
                return _CSUM_PARTIAL[ipv6]
        elif gso[0] == _PLAIN_GSO[ipv6] and gso[0] in gso_types and gso[1] and end < size:
            return Offload(CSUM_PARTIAL, gso, ipv6)
    if gso is not None:
        gso_type, gso_size = gso
        if gso_type not in _GSO_IPV6:
            return Drop(f"GSO type {gso_type}")
        if gso_type not in gso_types:
            return Drop(f"GSO type {gso_type} that the backend did not offer")
        if gso_size == 0:
            return Drop("GSO size 0")
        setup = netpkt.checksum_setup(head)
        if setup is None or setup[0].proto != netpkt.IPPROTO_TCP:
            return Drop("GSO frame that is no TCP segment over IP")
        hdrs = setup[0]
        if hdrs.ipv6 != _GSO_IPV6[gso_type]:
            return Drop(f"GSO type {gso_type} on a frame of the other IP version")
        end = netpkt.tcp_header_end(head, hdrs)
        if end is None or end >= size:
            return Drop("GSO frame without TCP payload")
        return Offload(CSUM_PARTIAL, (gso_type, gso_size), hdrs.ipv6)
    if flags & NETTXF_csum_blank:
        setup = netpkt.checksum_setup(head)
        if setup is None:
            return Drop("blank checksum in a frame that is no TCP or UDP over IP")
        if setup[0].ipv6 and not ipv6_csum:
            return Drop("blank IPv6 checksum without feature-ipv6-csum-offload")
        return Offload(CSUM_PARTIAL, None, setup[0].ipv6)
    if flags & NETTXF_data_validated:
        return Offload(NETRXF_data_validated)
    return NONE


class Receiver(NamedTuple):
    """What a receiver takes: blank checksums (IPv4: not
    feature-no-csum-offload; IPv6: feature-ipv6-csum-offload) and GSO
    types (feature-gso-tcpv4 / -tcpv6)."""

    csum: bool = True
    ipv6_csum: bool = False
    gso_tcpv4: bool = False
    gso_tcpv6: bool = False

    def takes_gso(self, gso_type: int) -> bool:
        return ((gso_type == XEN_NETIF_GSO_TYPE_TCPV4 and self.gso_tcpv4)
                or (gso_type == XEN_NETIF_GSO_TYPE_TCPV6 and self.gso_tcpv6))


def needs_fallback(offload: Offload, receiver: Receiver) -> bool:
    """Whether netback must segment the frame or fill in its checksum
    before `receiver` can take it."""
    if offload.gso is not None:
        return not receiver.takes_gso(offload.gso[0])
    if offload.flags & NETRXF_csum_blank:
        return not (receiver.ipv6_csum if offload.ipv6 else receiver.csum)
    return False


def software_fallback(frame: bytes | bytearray | memoryview, offload: Offload,
                      receiver: Receiver) -> list[tuple[bytes, Offload]] | Drop:
    """`frame` made fit for `receiver`: (frame, offload) pairs to deliver
    instead, or a Drop saying why it is dropped."""
    if not needs_fallback(offload, receiver):
        return [(bytes(frame), offload)]
    validated = Offload(NETRXF_data_validated, None, offload.ipv6)
    if offload.gso is not None:
        try:
            segments = netpkt.segment_tcp(frame, offload.gso[1], MAX_SEGMENTS)
        except ValueError as exc:
            return Drop(f"cannot segment a GSO frame: {exc}")
        return [(segment, validated) for segment in segments]
    filled = netpkt.fill_checksum(frame)
    if filled is None:
        return Drop("blank checksum that cannot be filled in")
    return [(filled, validated)]
