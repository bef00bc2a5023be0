"""backends.netback.offload: a frontend's offload claims are checked
against its frame; receivers that cannot take them get segments or
filled-in checksums."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.netback.offload import (
    CSUM_PARTIAL,
    MAX_SEGMENTS,
    NONE,
    Drop,
    Offload,
    Receiver,
    needs_fallback,
    software_fallback,
    tx_offload,
)
from hypervisor.public.io.netif import (
    XEN_NETIF_GSO_TYPE_TCPV4,
    XEN_NETIF_GSO_TYPE_TCPV6,
    NETRXF_data_validated,
    NETTXF_csum_blank,
    NETTXF_data_validated,
)
from tests import packets as P

pytestmark = pytest.mark.timeout(60)

BOTH = frozenset({XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_GSO_TYPE_TCPV6})
TCP4 = P.with_checksum(P.tcp4_frame(60000), partial=True)
TCP6 = P.with_checksum(P.tcp6_frame(30000), partial=True)
UDP4 = P.with_checksum(P.udp4_frame(1000), proto=17, partial=True)
UDP6 = P.with_checksum(P.eth(0x86DD, P.ipv6(17, P.udp(b"x" * 100))), proto=17, partial=True)
GSO4 = (XEN_NETIF_GSO_TYPE_TCPV4, 1448)
GSO6 = (XEN_NETIF_GSO_TYPE_TCPV6, 1428)


def check(frame, flags=0, gso=None, gso_types=BOTH, ipv6_csum=True):
    return tx_offload(frame[:256], len(frame), flags, gso, gso_types=gso_types,
                      ipv6_csum=ipv6_csum)


def test_good_claims() -> None:
    assert check(TCP4, NETTXF_csum_blank | NETTXF_data_validated, GSO4) == Offload(
        CSUM_PARTIAL, GSO4, False)
    assert check(TCP6, 0, GSO6) == Offload(CSUM_PARTIAL, GSO6, True)  # csum implied
    assert check(UDP4, NETTXF_csum_blank) == Offload(CSUM_PARTIAL, None, False)
    assert check(UDP6, NETTXF_csum_blank) == Offload(CSUM_PARTIAL, None, True)
    assert check(UDP4, NETTXF_data_validated) == Offload(NETRXF_data_validated)
    assert check(P.eth(0x0806, bytes(28))) == NONE


@pytest.mark.parametrize("frame, flags, gso, kw, why", [
    (TCP4, 0, GSO4, {"gso_types": frozenset()}, "did not offer"),
    (TCP6, 0, GSO6, {"gso_types": frozenset({XEN_NETIF_GSO_TYPE_TCPV4})}, "did not offer"),
    (TCP4, 0, (XEN_NETIF_GSO_TYPE_TCPV4, 0), {}, "size 0"),
    (TCP4, 0, (3, 1448), {}, "GSO type 3"),
    (TCP4, 0, GSO6, {}, "other IP version"),
    (TCP6, 0, GSO4, {}, "other IP version"),
    (UDP4, 0, GSO4, {}, "no TCP"),
    (P.eth(0x0806, bytes(28)), 0, GSO4, {}, "no TCP"),
    (P.with_checksum(P.tcp4_frame(0)), 0, GSO4, {}, "without TCP payload"),
    (P.eth(0x0800, P.ipv4(6, P.tcp(b"x" * 3000), frag=0x2000)), 0, GSO4, {}, "no TCP"),
    (P.eth(0x0800, P.ipv4(1, bytes(64))), NETTXF_csum_blank, None, {}, "no TCP or UDP"),
    (P.eth(0x0800, P.ipv4(17, P.udp(b"x"), frag=0x2001)), NETTXF_csum_blank, None, {},
     "no TCP or UDP"),
    (UDP6, NETTXF_csum_blank, None, {"ipv6_csum": False}, "ipv6-csum-offload"),
], ids=lambda v: None if isinstance(v, (bytes, dict, tuple)) else str(v))
def test_bad_claims_are_refused(frame, flags, gso, kw, why) -> None:
    result = check(frame, flags, gso, **kw)
    assert isinstance(result, Drop) and why in result.reason


def test_only_the_private_header_copy_is_looked_at() -> None:
    # The checks read `head`, never beyond: a frame whose headers fit in it
    # is judged by them, whatever the (shared) rest holds.
    head = TCP4[:54]  # Ethernet, IPv4, TCP: no payload in the copy
    assert tx_offload(head, 60054, 0, GSO4, gso_types=BOTH) == Offload(CSUM_PARTIAL, GSO4)
    assert isinstance(tx_offload(head, 54, 0, GSO4, gso_types=BOTH), Drop)  # none at all


# -- toward receivers -------------------------------------------------------------

FULL = Receiver(csum=True, ipv6_csum=True, gso_tcpv4=True, gso_tcpv6=True)
PLAIN = Receiver(csum=False, ipv6_csum=False)


def test_what_needs_a_fallback() -> None:
    gso4 = Offload(CSUM_PARTIAL, GSO4)
    assert not needs_fallback(gso4, FULL)
    assert needs_fallback(gso4, Receiver(gso_tcpv6=True))
    assert needs_fallback(Offload(CSUM_PARTIAL, None, True), Receiver(csum=True))
    assert not needs_fallback(Offload(CSUM_PARTIAL, None, False), Receiver(csum=True))
    assert needs_fallback(Offload(CSUM_PARTIAL), PLAIN)
    assert not needs_fallback(Offload(NETRXF_data_validated), PLAIN)
    assert not needs_fallback(NONE, PLAIN)


def delivered(frame: bytes, offload: Offload, receiver: Receiver) -> list[tuple[bytes, Offload]]:
    """software_fallback, of a frame it must deliver."""
    out = software_fallback(frame, offload, receiver)
    assert isinstance(out, list), out
    return out


def dropped(frame: bytes, offload: Offload, receiver: Receiver) -> Drop:
    """software_fallback, of a frame it must drop."""
    out = software_fallback(frame, offload, receiver)
    assert isinstance(out, Drop), out
    return out


def test_gso_toward_a_receiver_without_it_is_segmented() -> None:
    out = delivered(TCP4, Offload(CSUM_PARTIAL, GSO4), PLAIN)
    assert len(out) == -(-60000 // 1448)
    for segment, offload in out:
        assert offload == Offload(NETRXF_data_validated)
        assert len(segment) <= 1514
        assert P.l4_checksum_ok(segment) and P.ipv4_checksum_ok(segment)
    assert b"".join(s[54:] for s, _ in out) == TCP4[54:]
    out6 = delivered(TCP6, Offload(CSUM_PARTIAL, GSO6, True), Receiver(gso_tcpv4=True))
    assert all(len(s) <= 1514 and P.l4_checksum_ok(s) for s, _ in out6)
    assert out6[0][1] == Offload(NETRXF_data_validated, None, True)


def test_blank_checksums_toward_a_receiver_without_them_are_filled() -> None:
    [(filled, offload)] = delivered(UDP4, Offload(CSUM_PARTIAL), PLAIN)
    assert P.l4_checksum_ok(filled, 17) and offload.flags == NETRXF_data_validated
    [(same, _)] = delivered(UDP4, Offload(CSUM_PARTIAL), FULL)
    assert same == UDP4  # nothing to do


def test_fallbacks_that_fail_drop_the_frame() -> None:
    tiny = Offload(CSUM_PARTIAL, (XEN_NETIF_GSO_TYPE_TCPV4, 60000 // (MAX_SEGMENTS + 1)))
    assert "more than" in dropped(TCP4, tiny, PLAIN).reason
    assert isinstance(software_fallback(b"junk" * 20, Offload(CSUM_PARTIAL), PLAIN), Drop)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 0xFFFF), st.integers(0, 3),
       st.one_of(st.none(), st.tuples(st.integers(0, 255), st.integers(0, 0xFFFF))),
       st.booleans())
def test_any_claim_on_any_frame_is_checked_without_raising(head, size, flags, gso, v6) -> None:
    result = tx_offload(head, size, flags, gso, gso_types=BOTH, ipv6_csum=v6)
    assert isinstance(result, (Offload, Drop))
    if isinstance(result, Offload) and result.gso is not None:
        assert result.gso == gso and gso[0] in BOTH and gso[1] > 0
        assert result.flags == CSUM_PARTIAL
        out = software_fallback(head, result, PLAIN)
        assert isinstance(out, (list, Drop))


def _mutated(base: bytes, at: int | None, value: int, length: int) -> bytes:
    frame = bytearray(base[:256])
    if at is not None:
        frame[at] = value
    return bytes(frame[:length])


@settings(max_examples=1500, deadline=None)
@given(st.builds(_mutated, st.sampled_from([TCP4, TCP6, UDP4]),
                 st.one_of(st.none(), st.integers(0, 90)), st.integers(0, 255),
                 st.integers(0, 256)),
       st.sampled_from([40, 54, 60, 74, 95, 60000]), st.integers(0, 3),
       st.sampled_from([None, GSO4, GSO6, (XEN_NETIF_GSO_TYPE_TCPV4, 0), (9, 1448)]),
       st.sets(st.sampled_from(sorted(BOTH))), st.booleans())
def test_the_plain_tcp_shortcut_decides_as_the_general_path(head, size, flags, gso,
                                                            gso_types, v6) -> None:
    from unittest import mock

    from domains.kernel import netpkt

    args = (head, size, flags, gso)
    kw = {"gso_types": frozenset(gso_types), "ipv6_csum": v6}
    with mock.patch.object(netpkt, "plain_tcp", lambda head: 0):
        general = tx_offload(*args, **kw)
    assert tx_offload(*args, **kw) == general


def test_the_plain_tcp_shortcut_takes_the_usual_frames() -> None:
    from domains.kernel.netpkt import plain_tcp, plain_tcp_end

    assert plain_tcp(TCP4[:256]) == 34 and plain_tcp_end(TCP4[:256], 34) == 54
    assert plain_tcp(TCP6[:256]) == 54 and plain_tcp_end(TCP6[:256], 54) == 74
    assert plain_tcp(UDP4[:256]) == 0
    assert plain_tcp(P.eth(0x0800, P.ipv4(6, P.tcp(b"x" * 40), frag=0x2000))) == 0
    assert plain_tcp_end(TCP4[:53], 34) == 0  # the TCP header does not fit
