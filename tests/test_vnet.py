"""domains.kernel.vnet: virtio_net_hdr <-> netif's offload flags and
GSO extra, both ways, and round trips through netback's checks."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.netback import offload as back
from domains.kernel import vnet
from domains.kernel.vnet import (
    NO_OFFLOAD,
    VIRTIO_NET_HDR_F_DATA_VALID,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
    VIRTIO_NET_HDR_GSO_UDP,
    VNET_HDR,
    VnetHdr,
    parse_vnet_hdr,
    rx_vnet_header,
    tx_offload,
)
from hypervisor.public.io.netif import (
    XEN_NETIF_GSO_TYPE_TCPV4,
    XEN_NETIF_GSO_TYPE_TCPV6,
    NETRXF_csum_blank,
    NETRXF_data_validated,
    NETTXF_csum_blank,
    NETTXF_data_validated,
)
from tests import packets as P

pytestmark = pytest.mark.timeout(60)

BOTH = frozenset({XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_GSO_TYPE_TCPV6})
TCP4 = P.with_checksum(P.tcp4_frame(60000), partial=True)
TCP6 = P.with_checksum(P.tcp6_frame(60000), partial=True)
UDP4 = P.with_checksum(P.udp4_frame(1000), proto=17, partial=True)
CSUM = NETTXF_csum_blank | NETTXF_data_validated


def hdr(flags=0, gso_type=0, hdr_len=0, gso_size=0, start=0, offset=0) -> VnetHdr:
    return VnetHdr(flags, gso_type, hdr_len, gso_size, start, offset)


def test_header_layout() -> None:
    assert VNET_HDR.size == 10 == len(NO_OFFLOAD)
    raw = VNET_HDR.pack(1, 4, 74, 1428, 54, 16)
    assert parse_vnet_hdr(raw + b"frame") == hdr(1, 4, 74, 1428, 54, 16)
    with pytest.raises(ValueError):
        parse_vnet_hdr(raw[:9])


# -- tx: what the guest's kernel hands netfront -----------------------------------

def test_tx_gso_frames_go_with_the_extra() -> None:
    h = hdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, 54, 1448, 34, 16)
    assert tx_offload(h, TCP4[:256], len(TCP4), gso_types=BOTH) == vnet.TxOffload(
        CSUM, (XEN_NETIF_GSO_TYPE_TCPV4, 1448))
    h6 = hdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV6, 74, 1428, 54, 16)
    assert tx_offload(h6, TCP6[:256], len(TCP6), gso_types=BOTH).gso == (
        XEN_NETIF_GSO_TYPE_TCPV6, 1428)


def test_tx_gso_the_backend_cannot_take_is_segmented_here() -> None:
    h6 = hdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV6, 74, 1428, 54, 16)
    only4 = frozenset({XEN_NETIF_GSO_TYPE_TCPV4})
    assert tx_offload(h6, TCP6, len(TCP6), gso_types=only4).segment == 1428
    ecn = hdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN,
              66, 1448, 34, 16)
    assert tx_offload(ecn, TCP4, len(TCP4), gso_types=BOTH).segment == 1448
    # The header says TCPv6, the frame is IPv4: netif cannot carry that.
    lie = hdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV6, 66, 1448, 34, 16)
    assert tx_offload(lie, TCP4, len(TCP4), gso_types=BOTH).segment == 1448


@pytest.mark.parametrize("h, frame", [
    (hdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_UDP, 42, 1400, 34, 6), UDP4),
    (hdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, 66, 0, 34, 16), TCP4),
    (hdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, 42, 1400, 34, 6), UDP4),
    (hdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 3000, 16), P.tcp4_frame(10)),
], ids=["udp-gso", "mss-0", "tcp-gso-on-udp", "csum-past-the-end"])
def test_tx_what_cannot_go_is_dropped(h, frame) -> None:
    assert tx_offload(h, frame, len(frame), gso_types=BOTH).drop


def test_tx_checksum_flags() -> None:
    v4 = hdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 34, 16)
    assert tx_offload(v4, TCP4, len(TCP4)) == vnet.TxOffload(CSUM)
    udp = hdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 34, 6)
    assert tx_offload(udp, UDP4, len(UDP4)) == vnet.TxOffload(CSUM)
    # IPv6 blank checksums only if the backend takes them; else filled here.
    v6 = hdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 54, 16)
    assert tx_offload(v6, TCP6, len(TCP6), ipv6_csum=True) == vnet.TxOffload(CSUM)
    assert tx_offload(v6, TCP6, len(TCP6)).fill_csum
    # A checksum where netif's receiver would not look for it: filled here.
    odd = hdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 40, 4)
    assert tx_offload(odd, TCP4, len(TCP4)) == vnet.TxOffload(
        NETTXF_data_validated, fill_csum=True)
    assert tx_offload(hdr(VIRTIO_NET_HDR_F_DATA_VALID), TCP4, len(TCP4)) == vnet.TxOffload(
        NETTXF_data_validated)
    assert tx_offload(hdr(), TCP4, len(TCP4)) == vnet.TxOffload()


# -- rx: what netfront writes to the receiving TAP --------------------------------

def rx_header(flags: int, gso: tuple[int, int] | None, head: bytes) -> bytes:
    """rx_vnet_header, of a frame the TAP takes."""
    raw = rx_vnet_header(flags, gso, head)
    assert raw is not None
    return raw


def test_rx_gso_header() -> None:
    raw = rx_header(NETRXF_csum_blank | NETRXF_data_validated,
                         (XEN_NETIF_GSO_TYPE_TCPV4, 1448), TCP4[:256])
    assert parse_vnet_hdr(raw) == hdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4,
                                      54, 1448, 34, 16)
    raw6 = rx_header(0, (XEN_NETIF_GSO_TYPE_TCPV6, 1428), TCP6[:256])
    assert parse_vnet_hdr(raw6) == hdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV6,
                                       74, 1428, 54, 16)


def test_rx_checksum_headers() -> None:
    blank = NETRXF_csum_blank | NETRXF_data_validated
    assert parse_vnet_hdr(rx_header(blank, None, UDP4)) == hdr(
        VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 34, 6)
    assert parse_vnet_hdr(rx_header(NETRXF_data_validated, None, TCP4)).flags == \
        VIRTIO_NET_HDR_F_DATA_VALID
    assert rx_vnet_header(0, None, TCP4) == NO_OFFLOAD


@pytest.mark.parametrize("flags, gso, frame", [
    (NETRXF_csum_blank, None, P.eth(0x0800, P.ipv4(1, bytes(8)))),     # ICMP
    (0, (XEN_NETIF_GSO_TYPE_TCPV4, 1448), UDP4),                        # GSO on UDP
    (0, (XEN_NETIF_GSO_TYPE_TCPV6, 1448), TCP4),                        # wrong version
    (0, (XEN_NETIF_GSO_TYPE_TCPV4, 0), TCP4),                           # MSS 0
    (0, (7, 1448), TCP4),                                                # unknown type
    (NETRXF_csum_blank, None, b"short"),
], ids=["icmp", "gso-udp", "wrong-version", "mss-0", "unknown-type", "short"])
def test_rx_offload_that_cannot_be_described_drops_the_frame(flags, gso, frame) -> None:
    assert rx_vnet_header(flags, gso, frame) is None


# -- both ways, through netback ----------------------------------------------------

@pytest.mark.parametrize("frame, h", [
    (TCP4, hdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, 54, 1448, 34, 16)),
    (TCP6, hdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV6, 74, 1428, 54, 16)),
    (UDP4, hdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 34, 6)),
    (P.tcp4_frame(100), hdr(VIRTIO_NET_HDR_F_DATA_VALID)),
], ids=["gso4", "gso6", "udp-csum", "validated"])
def test_the_receiving_tap_gets_the_sending_taps_header(frame, h) -> None:
    sent = tx_offload(h, frame, len(frame), gso_types=BOTH, ipv6_csum=True)
    offload = back.tx_offload(frame[:256], len(frame), sent.flags, sent.gso,
                              gso_types=BOTH, ipv6_csum=True)
    assert isinstance(offload, back.Offload)
    received = parse_vnet_hdr(rx_header(offload.flags, offload.gso, frame))
    assert received == h


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=10, max_size=10), st.binary(max_size=300), st.booleans())
def test_any_header_and_frame_never_raise(raw, frame, v6) -> None:
    h = parse_vnet_hdr(raw)
    decision = tx_offload(h, frame, len(frame), gso_types=BOTH, ipv6_csum=v6)
    assert sum(map(bool, (decision.drop, decision.fill_csum, decision.segment))) <= 1
    rx_vnet_header(h.flags, (h.gso_type, h.gso_size) if h.gso_type else None, frame)
