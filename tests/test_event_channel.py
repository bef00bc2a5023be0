"""Event channels (hypervisor/event_channel.py): Xen's EVTCHNOP semantics."""

import copy

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from hypervisor.event_channel import (
    NR_EVENT_CHANNELS,
    Delivery,
    EventBitmap,
    EventChannels,
)
from hypervisor.public.errno import EBUSY, EINVAL, ENOENT, ENOSPC, ESRCH, XenError
from hypervisor.public.event_channel import (
    EVTCHN_2L_NR_CHANNELS,
    EVTCHNSTAT_closed,
    EVTCHNSTAT_interdomain,
    EVTCHNSTAT_unbound,
    EVTCHNSTAT_virq,
)
from hypervisor.public.xen import NR_VIRQS, VIRQ_CONSOLE, VIRQ_DEBUG, VIRQ_TIMER

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def ev():
    ev = EventChannels()
    for domid in (0, 1, 2):
        ev.add_domain(domid)
    return ev


def errno_of(fn, *args):
    with pytest.raises(XenError) as e:
        fn(*args)
    return e.value.errno


def connect(ev, a, b):
    """a offers a port to b, b binds it: returns (port in a, port in b)."""
    pa = ev.alloc_unbound(a, b)
    pb = ev.bind_interdomain(b, a, pa)
    return pa, pb


# -- ports --------------------------------------------------------------------


def test_nr_event_channels_is_the_2l_abi():
    assert NR_EVENT_CHANNELS == EVTCHN_2L_NR_CHANNELS == 4096


def test_alloc_unbound(ev):
    port = ev.alloc_unbound(1, 0)
    assert port == 1  # port 0 is never handed out
    assert ev.status(1, port) == {"status": EVTCHNSTAT_unbound, "vcpu": 0,
                                  "unbound": {"dom": 0}}


def test_alloc_unbound_unknown_domains(ev):
    assert errno_of(ev.alloc_unbound, 1, 42) == ESRCH
    assert errno_of(ev.alloc_unbound, 42, 1) == ESRCH
    assert ev.tables[1].channels == {}


def test_bind_interdomain_connects_both_ends(ev):
    pa = ev.alloc_unbound(1, 2)
    pb = ev.bind_interdomain(2, 1, pa)
    assert ev.status(1, pa) == {"status": EVTCHNSTAT_interdomain, "vcpu": 0,
                                "interdomain": {"dom": 2, "port": pb}}
    assert ev.status(2, pb) == {"status": EVTCHNSTAT_interdomain, "vcpu": 0,
                                "interdomain": {"dom": 1, "port": pa}}


def test_loopback_channel(ev):
    pa = ev.alloc_unbound(1, 1)
    pb = ev.bind_interdomain(1, 1, pa)
    assert pa != pb
    assert ev.send(1, pa) == Delivery(1, pb)
    assert ev.send(1, pb) == Delivery(1, pa)
    ev.close(1, pa)
    assert ev.status(1, pb)["status"] == EVTCHNSTAT_unbound
    assert ev.status(1, pb)["unbound"] == {"dom": 1}


def test_bind_port_not_unbound_for_you(ev):
    pa = ev.alloc_unbound(1, 2)
    # Domain 0 is not the domain the port was offered to.
    assert errno_of(ev.bind_interdomain, 0, 1, pa) == EINVAL
    # A port that does not exist, or port 0.
    assert errno_of(ev.bind_interdomain, 2, 1, pa + 1) == EINVAL
    assert errno_of(ev.bind_interdomain, 2, 1, 0) == EINVAL
    assert errno_of(ev.bind_interdomain, 2, 1, -1) == EINVAL
    # The failed binds allocated nothing.
    assert ev.tables[0].channels == {}
    assert ev.tables[2].channels == {}
    # Once bound it is no longer unbound: a second bind fails.
    ev.bind_interdomain(2, 1, pa)
    assert errno_of(ev.bind_interdomain, 2, 1, pa) == EINVAL
    # Neither is a VIRQ port.
    vp = ev.bind_virq(1, VIRQ_TIMER, 0, 1)
    assert errno_of(ev.bind_interdomain, 2, 1, vp) == EINVAL
    assert len(ev.tables[2].channels) == 1


def test_bind_interdomain_unknown_domain(ev):
    assert errno_of(ev.bind_interdomain, 1, 42, 1) == ESRCH
    assert errno_of(ev.bind_interdomain, 42, 1, 1) == ESRCH


# -- send ---------------------------------------------------------------------


def test_send_interdomain_delivers_to_peer(ev):
    pa, pb = connect(ev, 1, 2)
    assert ev.send(1, pa) == Delivery(2, pb)
    assert ev.send(2, pb) == Delivery(1, pa)


def test_send_on_unbound_is_dropped(ev):
    pa = ev.alloc_unbound(1, 2)
    assert ev.send(1, pa) is None


@pytest.mark.parametrize("port", [0, 1, 5, NR_EVENT_CHANNELS, -1, 1 << 40])
def test_send_on_unallocated_port(ev, port):
    assert errno_of(ev.send, 1, port) == EINVAL


def test_send_on_closed_port(ev):
    pa, pb = connect(ev, 1, 2)
    ev.close(1, pa)
    assert errno_of(ev.send, 1, pa) == EINVAL
    # The peer's end is unbound now: its sends are dropped.
    assert ev.send(2, pb) is None


def test_send_on_virq_port(ev):
    port = ev.bind_virq(1, VIRQ_TIMER, 0, 1)
    assert errno_of(ev.send, 1, port) == EINVAL


def test_send_unknown_domain(ev):
    assert errno_of(ev.send, 42, 1) == ESRCH


# -- close --------------------------------------------------------------------


def test_close_makes_peer_unbound(ev):
    pa, pb = connect(ev, 1, 2)
    ev.close(1, pa)
    assert ev.status(1, pa) == {"status": EVTCHNSTAT_closed, "vcpu": 0}
    assert ev.status(2, pb) == {"status": EVTCHNSTAT_unbound, "vcpu": 0,
                                "unbound": {"dom": 1}}
    # The closer can connect again to the peer's (now unbound) end.
    pa2 = ev.bind_interdomain(1, 2, pb)
    assert ev.send(2, pb) == Delivery(1, pa2)
    assert ev.status(2, pb)["interdomain"] == {"dom": 1, "port": pa2}


def test_close_unbound(ev):
    pa = ev.alloc_unbound(1, 2)
    ev.close(1, pa)
    assert ev.status(1, pa)["status"] == EVTCHNSTAT_closed
    assert errno_of(ev.bind_interdomain, 2, 1, pa) == EINVAL


def test_close_twice_and_bad_ports(ev):
    pa = ev.alloc_unbound(1, 2)
    ev.close(1, pa)
    assert errno_of(ev.close, 1, pa) == EINVAL
    assert errno_of(ev.close, 1, 0) == EINVAL
    assert errno_of(ev.close, 1, -3) == EINVAL
    assert errno_of(ev.close, 42, 1) == ESRCH


def test_closed_port_is_reused(ev):
    p1 = ev.alloc_unbound(1, 2)
    p2 = ev.alloc_unbound(1, 2)
    ev.close(1, p1)
    assert ev.alloc_unbound(1, 0) == p1
    assert p2 == p1 + 1


# -- status -------------------------------------------------------------------


def test_status_of_free_port_is_closed(ev):
    assert ev.status(1, 7) == {"status": EVTCHNSTAT_closed, "vcpu": 0}
    assert ev.status(1, NR_EVENT_CHANNELS - 1)["status"] == EVTCHNSTAT_closed


@pytest.mark.parametrize("port", [NR_EVENT_CHANNELS, -1, 1 << 40])
def test_status_out_of_range(ev, port):
    assert errno_of(ev.status, 1, port) == EINVAL


def test_status_unknown_domain(ev):
    assert errno_of(ev.status, 42, 1) == ESRCH


# -- VIRQs --------------------------------------------------------------------


def test_bind_virq(ev):
    port = ev.bind_virq(1, VIRQ_DEBUG, 1, 2)
    assert ev.status(1, port) == {"status": EVTCHNSTAT_virq, "vcpu": 1,
                                  "virq": VIRQ_DEBUG}
    assert ev.virq_port(1, VIRQ_DEBUG, 1) == Delivery(1, port)
    assert ev.virq_port(1, VIRQ_DEBUG, 0) is None
    assert ev.virq_port(1, VIRQ_TIMER, 1) is None
    assert ev.virq_port(42, VIRQ_DEBUG, 1) is None


def test_bind_virq_twice_same_vcpu_is_ebusy(ev):
    port = ev.bind_virq(1, VIRQ_TIMER, 0, 2)
    assert errno_of(ev.bind_virq, 1, VIRQ_TIMER, 0, 2) == EBUSY
    # Another vcpu, another domain or another VIRQ is fine.
    other = ev.bind_virq(1, VIRQ_TIMER, 1, 2)
    assert other != port
    ev.bind_virq(2, VIRQ_TIMER, 0, 1)
    ev.bind_virq(1, VIRQ_CONSOLE, 0, 2)
    # After a close the VIRQ can be bound again.
    ev.close(1, port)
    assert ev.virq_port(1, VIRQ_TIMER, 0) is None
    again = ev.bind_virq(1, VIRQ_TIMER, 0, 2)
    assert ev.virq_port(1, VIRQ_TIMER, 0) == Delivery(1, again)


@pytest.mark.parametrize("vcpu", [-1, 2, 3, 1 << 32])
def test_bind_virq_bad_vcpu_is_enoent(ev, vcpu):
    assert errno_of(ev.bind_virq, 1, VIRQ_TIMER, vcpu, 2) == ENOENT
    assert ev.tables[1].channels == {}


@pytest.mark.parametrize("virq", [-1, NR_VIRQS, 1 << 32])
def test_bind_virq_bad_virq_is_einval(ev, virq):
    assert errno_of(ev.bind_virq, 1, virq, 0, 1) == EINVAL
    assert ev.tables[1].channels == {}


def test_bind_virq_unknown_domain(ev):
    assert errno_of(ev.bind_virq, 42, VIRQ_TIMER, 0, 1) == ESRCH


# -- domains ------------------------------------------------------------------


def test_remove_domain_unbinds_all_peers(ev):
    a0, b0 = connect(ev, 1, 0)
    a2, _b2 = connect(ev, 2, 1)
    _a2b, b2b = connect(ev, 1, 2)
    _loop_a, _loop_b = connect(ev, 1, 1)
    ev.bind_virq(1, VIRQ_TIMER, 0, 1)
    waiting = ev.alloc_unbound(0, 1)  # offered to the dying domain
    ev.remove_domain(1)
    assert 1 not in ev.tables
    assert errno_of(ev.send, 1, a0) == ESRCH
    assert ev.virq_port(1, VIRQ_TIMER) is None
    assert ev.status(0, b0) == {"status": EVTCHNSTAT_unbound, "vcpu": 0,
                                "unbound": {"dom": 1}}
    assert ev.status(2, a2) == {"status": EVTCHNSTAT_unbound, "vcpu": 0,
                                "unbound": {"dom": 1}}
    assert ev.status(2, b2b) == {"status": EVTCHNSTAT_unbound, "vcpu": 0,
                                 "unbound": {"dom": 1}}
    assert ev.status(0, waiting)["status"] == EVTCHNSTAT_unbound
    assert ev.send(0, b0) is None
    assert ev.send(2, a2) is None
    # Removing it again, or a domain that never was, is harmless.
    ev.remove_domain(1)
    ev.remove_domain(42)


def test_port_zero_never_allocated(ev):
    ports = [ev.alloc_unbound(1, 2) for _ in range(20)]
    ports += [ev.bind_virq(1, v, 0, 1) for v in range(NR_VIRQS)]
    assert 0 not in ports
    assert 0 not in ev.tables[1].channels
    assert sorted(ports) == list(range(1, len(ports) + 1))


def test_table_full_is_enospc(ev):
    ports = [ev.alloc_unbound(1, 2) for _ in range(NR_EVENT_CHANNELS - 1)]
    assert ports[0] == 1 and ports[-1] == NR_EVENT_CHANNELS - 1
    assert errno_of(ev.alloc_unbound, 1, 2) == ENOSPC
    assert errno_of(ev.bind_virq, 1, VIRQ_TIMER, 0, 1) == ENOSPC
    # A full table refuses a bind without touching the remote port.
    offer = ev.alloc_unbound(2, 1)
    assert errno_of(ev.bind_interdomain, 1, 2, offer) == ENOSPC
    assert ev.status(2, offer) == {"status": EVTCHNSTAT_unbound, "vcpu": 0,
                                   "unbound": {"dom": 1}}
    # Closing one frees exactly that port.
    ev.close(1, 100)
    assert ev.bind_interdomain(1, 2, offer) == 100


# -- EventBitmap ---------------------------------------------------------------


@pytest.fixture
def bitmap():
    return EventBitmap(bytearray(EventBitmap.SIZE))


def test_bitmap_layout():
    assert EventBitmap.PENDING_OFFSET == 4096
    assert EventBitmap.MASK_OFFSET == 4096 + NR_EVENT_CHANNELS
    assert EventBitmap.SIZE == 4096 + 2 * NR_EVENT_CHANNELS


def test_bitmap_set_pending_coalesces(bitmap):
    assert not bitmap.is_pending(5)
    assert bitmap.set_pending(5) is True
    assert bitmap.is_pending(5)
    assert bitmap.set_pending(5) is False  # coalesced: no second upcall
    assert bitmap.is_pending(5)
    bitmap.clear_pending(5)
    assert not bitmap.is_pending(5)
    assert bitmap.set_pending(5) is True  # a fresh edge raises again


def test_bitmap_masked_port_stays_pending(bitmap):
    bitmap.mask(7)
    assert bitmap.set_pending(7) is False
    assert bitmap.is_pending(7)
    assert bitmap.set_pending(7) is False
    assert bitmap.unmask(7) is True  # pending while masked: raise it now
    assert bitmap.is_pending(7)
    assert bitmap.set_pending(7) is False  # still pending: coalesced


def test_bitmap_unmask_without_pending(bitmap):
    bitmap.mask(3)
    assert bitmap.unmask(3) is False
    assert bitmap.set_pending(3) is True


def test_bitmap_ports_are_independent(bitmap):
    bitmap.mask(1)
    assert bitmap.set_pending(2) is True
    assert not bitmap.is_pending(1)
    assert bitmap.set_pending(1) is False
    assert bitmap.set_pending(NR_EVENT_CHANNELS - 1) is True
    assert bitmap.buf[:EventBitmap.PENDING_OFFSET] == bytes(EventBitmap.PENDING_OFFSET)


def test_bitmap_reset(bitmap):
    bitmap.mask(9)
    bitmap.set_pending(9)
    bitmap.reset(9)
    assert not bitmap.is_pending(9)
    assert bitmap.set_pending(9) is True


def test_bitmap_one_byte_per_port(bitmap):
    bitmap.set_pending(10)
    bitmap.mask(11)
    assert bitmap.buf[EventBitmap.PENDING_OFFSET + 10] == 1
    assert bitmap.buf[EventBitmap.MASK_OFFSET + 11] == 1
    assert sum(bitmap.buf) == 2


# -- property: random operations keep the port tables consistent --------------

DOMIDS = st.integers(min_value=0, max_value=4)
PORTS = st.one_of(st.integers(min_value=-2, max_value=12),
                  st.sampled_from([NR_EVENT_CHANNELS - 1, NR_EVENT_CHANNELS,
                                   1 << 40]))


def snapshot(ev):
    return {domid: (copy.deepcopy(t.channels), dict(t.virqs))
            for domid, t in ev.tables.items()}


class EventChannelMachine(RuleBasedStateMachine):
    """Random EVTCHNOP sequences: a refused op changes nothing, and every
    interdomain channel's peer is an interdomain channel pointing back."""

    @initialize()
    def start(self):
        self.ev = EventChannels()
        self.ev.add_domain(0)
        self.ever = {0}

    def attempt(self, fn, *args):
        before = snapshot(self.ev)
        try:
            return fn(*args)
        except XenError as exc:
            assert exc.errno in (EINVAL, ESRCH, EBUSY, ENOENT, ENOSPC)
            assert snapshot(self.ev) == before, "a refused op changed state"
            return None

    def live_ports(self, state):
        return [(d, p) for d, t in self.ev.tables.items()
                for p, c in t.channels.items() if c.state == state]

    @rule(domid=DOMIDS)
    def add_domain(self, domid):
        if domid not in self.ev.tables:
            self.ev.add_domain(domid)
            self.ever.add(domid)

    @rule(domid=DOMIDS)
    def remove_domain(self, domid):
        self.ev.remove_domain(domid)
        assert domid not in self.ev.tables

    @rule(dom=DOMIDS, remote=DOMIDS)
    def alloc_unbound(self, dom, remote):
        port = self.attempt(self.ev.alloc_unbound, dom, remote)
        if port is not None:
            assert self.ev.status(dom, port)["unbound"] == {"dom": remote}

    @rule(dom=DOMIDS, remote=DOMIDS, port=PORTS)
    def bind_interdomain(self, dom, remote, port):
        local = self.attempt(self.ev.bind_interdomain, dom, remote, port)
        if local is not None:
            assert self.ev.send(dom, local) == Delivery(remote, port)
            assert self.ev.send(remote, port) == Delivery(dom, local)

    @precondition(lambda self: self.live_ports(EVTCHNSTAT_unbound))
    @rule(data=st.data())
    def bind_offered(self, data):
        """Bind an existing unbound port, from its intended peer."""
        dom, port = data.draw(st.sampled_from(self.live_ports(EVTCHNSTAT_unbound)))
        peer = self.ev.tables[dom].channels[port].remote_dom
        local = self.attempt(self.ev.bind_interdomain, peer, dom, port)
        if peer in self.ev.tables:
            if local is not None:
                assert self.ev.send(peer, local) == Delivery(dom, port)
        else:
            assert local is None

    @rule(dom=DOMIDS, virq=st.integers(min_value=-1, max_value=NR_VIRQS),
          vcpu=st.integers(min_value=-1, max_value=2))
    def bind_virq(self, dom, virq, vcpu):
        port = self.attempt(self.ev.bind_virq, dom, virq, vcpu, 2)
        if port is not None:
            assert self.ev.virq_port(dom, virq, vcpu) == Delivery(dom, port)

    @rule(dom=DOMIDS, port=PORTS)
    def close(self, dom, port):
        self.attempt(self.ev.close, dom, port)

    @precondition(lambda self: self.live_ports(EVTCHNSTAT_interdomain))
    @rule(data=st.data())
    def close_connected(self, data):
        dom, port = data.draw(
            st.sampled_from(self.live_ports(EVTCHNSTAT_interdomain)))
        chn = self.ev.tables[dom].channels[port]
        peer, peer_port = chn.remote_dom, chn.remote_port
        self.ev.close(dom, port)
        assert self.ev.status(peer, peer_port) == {
            "status": EVTCHNSTAT_unbound, "vcpu": 0, "unbound": {"dom": dom}}

    @rule(dom=DOMIDS, port=PORTS)
    def send(self, dom, port):
        before = snapshot(self.ev)
        delivery = self.attempt(self.ev.send, dom, port)
        assert snapshot(self.ev) == before  # send never changes bindings
        if delivery is not None:
            chn = self.ev.tables[dom].channels[port]
            assert chn.state == EVTCHNSTAT_interdomain
            assert delivery == Delivery(chn.remote_dom, chn.remote_port)

    @rule(dom=DOMIDS, port=PORTS)
    def status(self, dom, port):
        self.attempt(self.ev.status, dom, port)

    @invariant()
    def interdomain_peers_point_back(self):
        for domid, table in self.ev.tables.items():
            for port, chn in table.channels.items():
                if chn.state != EVTCHNSTAT_interdomain:
                    continue
                peer = self.ev.tables.get(chn.remote_dom)
                assert peer is not None, f"d{domid}:{port} peer domain gone"
                pchn = peer.channels.get(chn.remote_port)
                assert pchn is not None, f"d{domid}:{port} peer port gone"
                assert pchn.state == EVTCHNSTAT_interdomain
                assert (pchn.remote_dom, pchn.remote_port) == (domid, port)

    @invariant()
    def tables_are_well_formed(self):
        for domid, table in self.ev.tables.items():
            assert table.domid == domid
            assert 0 not in table.channels
            assert all(0 < p < NR_EVENT_CHANNELS for p in table.channels)
            virq_ports = {(c.virq, c.vcpu): p for p, c in table.channels.items()
                          if c.state == EVTCHNSTAT_virq}
            assert virq_ports == table.virqs
            for chn in table.channels.values():
                assert chn.state in (EVTCHNSTAT_unbound, EVTCHNSTAT_interdomain,
                                     EVTCHNSTAT_virq)
                if chn.state == EVTCHNSTAT_unbound:
                    assert chn.remote_dom in self.ever


EventChannelMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
test_event_channel_state_machine = EventChannelMachine.TestCase
