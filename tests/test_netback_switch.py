"""netback's vifs and switch, in one process: real io/ring.h rings in plain
memory, netfront's own encoders on the other side, a fake grant table and
event channel.  What crosses the bridge, with which offload flags, and
what happens to a frontend that cannot take a frame as it is."""

import pytest

from backends.netback.device import RX_ENTRY, TX_ENTRY, Switch, Vif
from backends.netback.rx import RxFeatures
from frontends.netfront.rx import RxAssembler, RxFrame, make_rx_request
from frontends.netfront.tx import TxShadow
from hypervisor.public.io.netif import (
    NETIF_RSP_ERROR,
    NETIF_RSP_OKAY,
    XEN_NETIF_GSO_TYPE_TCPV4,
    NETRXF_csum_blank,
    NETRXF_data_validated,
    NETTXF_csum_blank,
    NETTXF_data_validated,
)
from hypervisor.public.io.ring import BackRing, FrontRing, shared_ring_init
from tests import packets as P
from tests.fakekernel import FakeGnttab, FakeKernel, RecordingLog

pytestmark = pytest.mark.timeout(60)

PAGE = 4096
NR_PAGES = 2 + 256 + 256
CSUM = NETTXF_csum_blank | NETTXF_data_validated
MACS = {1: bytes.fromhex("00163e000001"), 2: bytes.fromhex("00163e000002"),
        3: bytes.fromhex("00163e000003")}


class Front:
    """One frontend's side: its pages, rings, tx shadow, rx assembler."""

    def __init__(self, domid: int, *, gso: bool = True, csum: bool = True) -> None:
        self.domid = domid
        self.mem = bytearray(PAGE * NR_PAGES)
        self.pages = [memoryview(self.mem)[i * PAGE:(i + 1) * PAGE] for i in range(NR_PAGES)]
        shared_ring_init(self.pages[0])
        shared_ring_init(self.pages[1])
        self.tx = FrontRing(self.pages[0], TX_ENTRY, 4, entry_size=TX_ENTRY)
        self.rx = FrontRing(self.pages[1], RX_ENTRY, RX_ENTRY, entry_size=RX_ENTRY)
        self.shadow = TxShadow(256)
        self.free = list(range(2, 258))
        self.rx_first = 258
        self.assembler = RxAssembler()
        self.features = RxFeatures(sg=True, gso_tcpv4=gso, gso_tcpv6=gso, csum=csum,
                                   ipv6_csum=csum)
        self.rx_posted = 0

    def post_rx(self, n: int = 256) -> bool:
        """Post `n` buffers (slot i always posts page rx_first + i): whether
        the backend asked to be kicked for them."""
        requests = b"".join(make_rx_request((self.rx_posted + i) % 256,
                                            self.rx_first + (self.rx_posted + i) % 256)
                            for i in range(n))
        self.rx.put_requests(requests)
        self.rx_posted += n
        return self.rx.push_requests_and_check_notify()

    def send(self, frame: bytes, flags: int = 0, gso=None):
        used = -(-len(frame) // PAGE)
        pages = [self.free.pop() for _ in range(used)]
        for i, page in enumerate(pages):
            piece = frame[i * PAGE:(i + 1) * PAGE]
            self.pages[page][:len(piece)] = piece
        segments = [(p, 0, PAGE) for p in pages]
        segments[-1] = (pages[-1], 0, len(frame) - (used - 1) * PAGE)
        packet = self.shadow.add(segments, flags=flags, gso=gso, buffers=pages)
        self.tx.put_requests(b"".join(packet.requests))
        self.tx.push_requests()
        return packet

    def tx_done(self) -> None:
        n = self.tx.has_unconsumed_responses()
        if n:
            for packet in self.shadow.complete_block(self.tx.get_responses(n)):
                self.free += packet.buffers

    def received(self) -> list[RxFrame]:
        frames = []
        while n := self.rx.has_unconsumed_responses():
            start = self.rx.rsp_cons & 255
            entries = self.rx.get_responses(n)
            pages = [self.pages[self.rx_first + ((start + k) & 255)] for k in range(n)]
            for result in self.assembler.feed_block(entries, pages):
                assert isinstance(result, RxFrame), result
                copies = tuple(memoryview(bytes(c)) for c in result.chunks)
                frames.append(RxFrame(copies, result.flags, result.extras, result.nr_slots,
                                      result.size))
        return frames


def plug(switch: Switch, front: Front, log: RecordingLog) -> Vif:
    # The frontend's pages are what the vif maps (gref = page number).
    kernel = FakeKernel(log=log, gnttab=FakeGnttab(front.pages))
    vif = Vif(kernel, switch, "backend/vif/x/0", front.domid, 0)
    vif.bridge_name, vif.mtu = "xenbr0", 1500
    vif.use_features(front.features)
    vif.rings = [(BackRing(front.pages[0], TX_ENTRY, 4, entry_size=TX_ENTRY), [], memoryview(b"")),
                 (BackRing(front.pages[1], RX_ENTRY, RX_ENTRY, entry_size=RX_ENTRY), [],
                  memoryview(b""))]
    vif.ports = [10 + front.domid, 20 + front.domid]
    vif.connected = True
    switch.call(lambda: switch.plug(vif))
    return vif


@pytest.fixture
def net():
    log = RecordingLog()
    switch = Switch(log)
    fronts = {1: Front(1), 2: Front(2), 3: Front(3, gso=False, csum=False)}
    vifs = {d: plug(switch, f, log) for d, f in fronts.items()}
    for front in fronts.values():
        front.post_rx()
    # Every station says hello once (a broadcast), so the bridge knows
    # where it is.
    for d, front in fronts.items():
        front.send(b"\xff" * 6 + MACS[d] + b"\x08\x06" + bytes(46))
        switch.call(vifs[d].process_tx)
        front.tx_done()
    for front in fronts.values():
        front.received()
    return switch, fronts, vifs, log


def addressed(frame: bytes, src: int, dst: int) -> bytes:
    return MACS[dst] + MACS[src] + frame[12:]


def test_gso_frame_crosses_whole_between_gso_vifs(net) -> None:
    switch, fronts, vifs, _ = net
    frame = addressed(P.with_checksum(P.tcp4_frame(60000), partial=True), 1, 2)
    packet = fronts[1].send(frame, CSUM, (XEN_NETIF_GSO_TYPE_TCPV4, 1448))
    switch.call(vifs[1].process_tx)
    fronts[1].tx_done()
    assert packet.done and packet.status == NETIF_RSP_OKAY
    [got] = fronts[2].received()
    assert got.data == frame and got.gso == (XEN_NETIF_GSO_TYPE_TCPV4, 1448)
    assert got.flags & (NETRXF_csum_blank | NETRXF_data_validated) == (
        NETRXF_csum_blank | NETRXF_data_validated)
    assert fronts[3].received() == []  # known unicast: not flooded
    assert 20 + 2 in vifs[2].kernel.events.sent  # guest2 was told (its rx port)


def test_gso_frame_is_segmented_for_a_vif_without_gso(net) -> None:
    switch, fronts, vifs, _ = net
    frame = addressed(P.with_checksum(P.tcp4_frame(30000), partial=True), 1, 3)
    fronts[1].send(frame, CSUM, (XEN_NETIF_GSO_TYPE_TCPV4, 1448))
    switch.call(vifs[1].process_tx)
    got = fronts[3].received()
    assert len(got) == -(-30000 // 1448)
    assert all(f.gso is None and len(f.data) <= 1514 for f in got)
    assert all(f.flags == NETRXF_data_validated for f in got)
    assert all(P.l4_checksum_ok(f.data) and P.ipv4_checksum_ok(f.data) for f in got)
    assert b"".join(f.data[54:] for f in got) == frame[54:]


def test_blank_checksum_is_filled_for_a_vif_without_csum_offload(net) -> None:
    switch, fronts, vifs, _ = net
    frame = addressed(P.with_checksum(P.udp4_frame(1000), proto=17, partial=True), 1, 3)
    fronts[1].send(frame, CSUM)
    switch.call(vifs[1].process_tx)
    [got] = fronts[3].received()
    assert P.l4_checksum_ok(got.data, 17) and got.flags == NETRXF_data_validated
    fronts[1].send(addressed(frame, 1, 2), CSUM)
    switch.call(vifs[1].process_tx)
    [same] = fronts[2].received()  # guest2 takes blank checksums: passed on
    assert same.data == addressed(frame, 1, 2) and same.flags & NETRXF_csum_blank


def test_a_bad_offload_claim_is_answered_error_and_goes_nowhere(net) -> None:
    switch, fronts, vifs, log = net
    udp = addressed(P.udp4_frame(3000), 1, 2)
    packet = fronts[1].send(udp, CSUM, (XEN_NETIF_GSO_TYPE_TCPV4, 1448))
    switch.call(vifs[1].process_tx)
    fronts[1].tx_done()
    assert packet.status == NETIF_RSP_ERROR
    assert fronts[2].received() == []
    assert any(event == "bad tx offload" for event, _ in log.lines)


def test_frames_wait_for_rx_buffers_and_the_frontend_is_asked_to_kick(net) -> None:
    switch, fronts, vifs, _ = net
    front2 = fronts[2]
    # guest2 posted 256 buffers and used 2 (the hellos); a frame takes 16
    # (15 pages and the GSO extra): 15 fit, the 16th waits.
    frame = addressed(P.with_checksum(P.tcp4_frame(60000), partial=True), 1, 2)
    for _ in range(16):
        fronts[1].send(frame, CSUM, (XEN_NETIF_GSO_TYPE_TCPV4, 1448))
        switch.call(vifs[1].process_tx)
        fronts[1].tx_done()
    assert len(front2.received()) == 15
    assert len(vifs[2].backlog) == 1
    # Its buffers back: netback asked (req_event) to be kicked for them.
    assert front2.post_rx(front2.rx.free_requests())
    switch.call(vifs[2].process_rx)
    [late] = front2.received()
    assert late.data == frame and not vifs[2].backlog


def test_a_corrupt_rx_ring_disconnects_its_vif_only(net) -> None:
    switch, fronts, vifs, log = net
    frame = addressed(P.with_checksum(P.tcp4_frame(60000), partial=True), 1, 2)
    for _ in range(15):  # guest2's posted buffers, all used
        fronts[1].send(frame, CSUM, (XEN_NETIF_GSO_TYPE_TCPV4, 1448))
        switch.call(vifs[1].process_tx)
        fronts[1].tx_done()
    header = fronts[2].rx._header
    header[0] = (header[0] + 5000) % 2**32  # req_prod far ahead of what the ring holds
    packet = fronts[1].send(frame, CSUM, (XEN_NETIF_GSO_TYPE_TCPV4, 1448))
    switch.call(vifs[1].process_tx)  # netback reads guest2's ring for buffers
    fronts[1].tx_done()
    assert not vifs[2].connected and vifs[1].connected
    assert packet.status == NETIF_RSP_OKAY  # the sender is not to blame
    assert any(event == "rx ring corrupt, closing" for event, _ in log.lines)


def test_a_chain_cut_by_the_batch_waits_for_the_next_batch(net) -> None:
    """Nine 17-slot GSO frames queued at once are more than one batch
    (TX_BATCH slots): the chain the batch would cut is left in the ring
    and goes, whole, with the next batch; every frame arrives intact and
    none needs the per-slot state machine."""
    switch, fronts, vifs, _ = net
    frames = [addressed(P.with_checksum(P.tcp4_frame(64000 - n), partial=True), 1, 2)
              for n in range(9)]
    packets = [fronts[1].send(f, CSUM, (XEN_NETIF_GSO_TYPE_TCPV4, 1448)) for f in frames]

    def no_state_machine(_entries):
        raise AssertionError("a whole chain went through the state machine")

    vifs[1].assembler.feed_block = no_state_machine
    fronts[2].post_rx(fronts[2].rx.free_requests())
    got: list[RxFrame] = []
    while len(got) < len(frames):
        switch.call(vifs[1].process_tx)
        received = fronts[2].received()
        assert received, "no progress"
        got += received
        fronts[2].post_rx(fronts[2].rx.free_requests())
        switch.call(vifs[2].process_rx)
    fronts[1].tx_done()
    assert [g.data for g in got] == frames
    assert all(p.done and p.status == NETIF_RSP_OKAY for p in packets)


# -- the rx planner as the oracle of what runs ----------------------------------------

from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from backends.netback.device import Frame
from backends.netback.offload import CSUM_PARTIAL, Offload, needs_fallback
from backends.netback.rx import RxDrop, RxPlan, plan_rx
from hypervisor.public.io.netif import XEN_NETIF_GSO_TYPE_TCPV6

PATTERN = bytes(range(251)) * 262  # 65762 bytes, no period of a page


@settings(max_examples=300, deadline=None)
@given(size=st.one_of(st.integers(0, 80), st.integers(1400, 1600), st.integers(4000, 9100),
                      st.integers(60000, 65600)),
       vlan=st.booleans(),
       flags=st.sampled_from([0, NETRXF_data_validated, CSUM_PARTIAL]),
       gso=st.none() | st.tuples(st.sampled_from([XEN_NETIF_GSO_TYPE_TCPV4,
                                                  XEN_NETIF_GSO_TYPE_TCPV6]),
                                 st.integers(1, 0xFFFF)),
       ipv6=st.booleans(),
       features=st.builds(RxFeatures, sg=st.booleans(), gso_tcpv4=st.booleans(),
                          gso_tcpv6=st.booleans(), mtu=st.sampled_from([68, 1500, 9000]),
                          csum=st.booleans(), ipv6_csum=st.booleans()),
       posted=st.integers(0, 20))
def test_what_deliver_puts_on_the_rx_ring_is_what_plan_rx_plans(
        size, vlan, flags, gso, ipv6, features, posted) -> None:
    """Vif.deliver (the switch's rx path: _unfit, _place, the response
    block) against plan_rx, the pure planner: the same drops, the same
    waits for buffers, the same responses in the same slots, the same
    bytes in the same pages.  Frames that need netback's software
    fallback first (segmenting, filling a checksum) are offload.py's."""
    offload = Offload(CSUM_PARTIAL if gso else flags, gso, ipv6)
    assume(not needs_fallback(offload, features.receiver))
    ethertype = b"\x81\x00" if vlan else b"\x08\x00"
    frame = (MACS[1] + MACS[2] + ethertype + PATTERN)[:size]
    log = RecordingLog()
    front = Front(1)
    front.features = features
    vif = plug(Switch(log), front, log)
    if posted:
        front.post_rx(posted)
    vif.switch.call(lambda: vif.deliver(Frame.of(frame, offload)))
    n = front.rx.has_unconsumed_responses()
    responses = front.rx.get_responses(n) if n else b""
    requests = [(i, front.rx_first + i) for i in range(posted)]
    plan = plan_rx(frame, requests, features, csum_flags=offload.flags, gso=gso)
    event(f"plan_rx: {type(plan).__name__}")
    if isinstance(plan, RxDrop):
        assert not responses and not vif.backlog
        assert [kw["reason"] for event, kw in log.lines if event == "rx frame dropped"] \
            == [plan.reason]
    elif plan is None:
        assert not responses and [f.materialize() for f in vif.backlog] == [frame]
    else:
        assert isinstance(plan, RxPlan) and not vif.backlog
        assert responses == b"".join(plan.responses())
        for _, gref, offset, data in plan.copies():
            assert bytes(front.pages[gref][offset:offset + len(data)]) == data
