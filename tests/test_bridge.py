"""The learning bridge: learning, flooding, ageing (injected time), ports."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.netback.bridge import (
    Bridge,
    is_link_local,
    is_multicast,
    is_valid_source,
    mac_str,
    parse_mac,
)

pytestmark = pytest.mark.timeout(60)

A = parse_mac("00:16:3e:00:00:0a")
B = parse_mac("00:16:3e:00:00:0b")
C = parse_mac("00:16:3e:00:00:0c")
BROADCAST = b"\xff" * 6
MULTICAST = parse_mac("01:00:5e:00:00:fb")
STP = parse_mac("01:80:c2:00:00:00")


def frame(dst: bytes, src: bytes, payload: bytes = bytes(46)) -> bytes:
    return dst + src + b"\x08\x00" + payload


def bridge(*ports, **kw) -> Bridge:
    br = Bridge("xenbr0", **kw)
    for port in ports:
        br.add_port(port)
    return br


def test_mac_helpers() -> None:
    assert mac_str(A) == "00:16:3e:00:00:0a"
    assert is_multicast(BROADCAST) and is_multicast(MULTICAST) and not is_multicast(A)
    assert not is_valid_source(bytes(6)) and not is_valid_source(MULTICAST)
    assert is_link_local(STP) and is_link_local(parse_mac("01:80:c2:00:00:0e"))
    assert not is_link_local(parse_mac("01:80:c2:00:00:10"))
    for bad in ("00:16:3e:00:00", "0:16:3e:00:00:0a", "zz:16:3e:00:00:0a"):
        with pytest.raises(ValueError):
            parse_mac(bad)


def test_unknown_unicast_floods_then_learnt_goes_to_one_port() -> None:
    br = bridge("vif1", "vif2", "vif3")
    assert br.forward("vif1", frame(B, A), now=0) == ["vif2", "vif3"]
    assert br.lookup(A, now=0) == "vif1"
    # B answers A: A is known, so only vif1 gets it; B is learnt on vif2.
    assert br.forward("vif2", frame(A, B), now=1) == ["vif1"]
    assert br.forward("vif1", frame(B, A), now=2) == ["vif2"]
    assert br.fdb(now=2) == {A: "vif1", B: "vif2"}


def test_broadcast_and_multicast_flood_to_all_other_ports() -> None:
    br = bridge("vif1", "vif2", "uplink")
    br.forward("vif2", frame(BROADCAST, B), now=0)
    assert br.forward("vif1", frame(BROADCAST, A), now=0) == ["vif2", "uplink"]
    assert br.forward("uplink", frame(MULTICAST, C), now=0) == ["vif1", "vif2"]


def test_frame_to_a_station_on_the_ingress_port_goes_nowhere() -> None:
    br = bridge("vif1", "vif2")
    br.forward("vif1", frame(BROADCAST, A), now=0)
    assert br.forward("vif1", frame(A, C), now=0) == []


def test_invalid_sources_are_dropped_unlearnt() -> None:
    br = bridge("vif1", "vif2")
    assert br.forward("vif1", frame(B, MULTICAST), now=0) == []
    assert br.forward("vif1", frame(B, BROADCAST), now=0) == []
    assert br.forward("vif1", frame(B, bytes(6)), now=0) == []
    assert br.fdb(now=0) == {}


def test_runt_and_link_local_frames_are_not_forwarded() -> None:
    br = bridge("vif1", "vif2")
    assert br.forward("vif1", A + B, now=0) == []
    assert br.forward("vif1", frame(STP, A), now=0) == []
    assert br.lookup(A, now=0) == "vif1"  # the source is still learnt


def test_station_moves_to_another_port() -> None:
    br = bridge("vif1", "vif2", "vif3")
    br.forward("vif1", frame(BROADCAST, A), now=0)
    br.forward("vif3", frame(BROADCAST, A), now=1)
    assert br.forward("vif2", frame(A, B), now=2) == ["vif3"]


def test_entries_age_out() -> None:
    br = bridge("vif1", "vif2", "vif3", ageing_time=300)
    br.forward("vif1", frame(BROADCAST, A), now=1000)
    assert br.forward("vif2", frame(A, B), now=1300) == ["vif1"]       # 300 s: fresh
    assert br.forward("vif2", frame(A, B), now=1300.5) == ["vif1", "vif3"]  # aged out
    assert br.lookup(A, now=1300.5) is None
    assert br.expire(now=1300.5) == 1 and A not in br.fdb(now=0)


def test_traffic_refreshes_an_entry() -> None:
    br = bridge("vif1", "vif2", ageing_time=10)
    for t in range(0, 100, 5):
        br.forward("vif1", frame(BROADCAST, A), now=t)
    assert br.lookup(A, now=104) == "vif1"
    assert br.lookup(A, now=106) is None


def test_default_clock_is_used_without_now() -> None:
    clock = [50.0]
    br = bridge("vif1", "vif2", ageing_time=5, clock=lambda: clock[0])
    br.forward("vif1", frame(BROADCAST, A))
    assert br.lookup(A) == "vif1"
    clock[0] = 56
    assert br.lookup(A) is None


def test_port_removal_forgets_its_stations() -> None:
    br = bridge("vif1", "vif2", "vif3")
    br.forward("vif1", frame(BROADCAST, A), now=0)
    br.forward("vif2", frame(BROADCAST, B), now=0)
    br.remove_port("vif1")
    assert br.ports == ["vif2", "vif3"]
    assert br.fdb(now=0) == {B: "vif2"}
    assert br.forward("vif2", frame(A, B), now=0) == ["vif3"]  # A unknown: flood
    br.add_port("vif1")  # a new vif1: learns afresh
    assert br.forward("vif3", frame(A, C), now=0) == ["vif2", "vif1"]


def test_port_errors() -> None:
    br = bridge("vif1")
    with pytest.raises(ValueError):
        br.add_port("vif1")
    with pytest.raises(KeyError):
        br.remove_port("vif9")
    with pytest.raises(KeyError):
        br.forward("vif9", frame(A, B), now=0)
    with pytest.raises(ValueError):
        Bridge("br", ageing_time=0)


def test_table_is_bounded() -> None:
    br = bridge("vif1", "vif2", max_entries=3, ageing_time=10)
    macs = [bytes([0, 0x16, 0x3E, 0, 1, n]) for n in range(5)]
    for mac in macs:
        br.forward("vif1", frame(BROADCAST, mac), now=0)
    assert len(br.fdb(now=0)) == 3 and macs[4] not in br.fdb(now=0)
    # Once entries expire, new stations are learnt again.
    br.forward("vif2", frame(BROADCAST, macs[4]), now=20)
    assert br.fdb(now=20) == {macs[4]: "vif2"}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.binary(min_size=0, max_size=20),
                          st.floats(0, 1000)), max_size=50))
def test_forward_never_returns_the_ingress_port(events) -> None:
    ports = ["p0", "p1", "p2", "p3"]
    br = bridge(*ports)
    for port, data, now in events:
        out = br.forward(ports[port], data, now=now)
        assert ports[port] not in out
        assert len(set(out)) == len(out) and set(out) <= set(ports)
