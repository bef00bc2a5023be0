"""Doorbells (domains/kernel/doorbell.py, hypervisor/doorbell.py): a connected
port rung straight from one kernel to another over the end the hypervisor
handed each at bind time; a ring is taken only on a port bound to the
domain that rang it, and every ring that cannot be delivered sends the
caller to the hypercall."""

import select
import socket
import threading
from collections.abc import Callable

import pytest

from domains.kernel.doorbell import PORT, Doorbells, Drops, accepts, take
from domains.kernel.events import MASK_OFFSET, PENDING_OFFSET
from hypervisor.public.xen import VIRQ_DEBUG
from tests.inproc import System

pytestmark = pytest.mark.timeout(30)


def hold_until(hold: threading.Event, release: threading.Event) -> Callable[[int], None]:
    """An event handler that says it runs, then waits to be released."""
    def handler(port: int) -> None:
        hold.set()
        release.wait(5)
    return handler


# -- the receiver's check (pure) ------------------------------------------------


def test_a_ring_is_accepted_only_on_a_port_bound_to_its_sender() -> None:
    # Port 5 is bound to d2's port 9, port 6 to d3's port 1; nothing else
    # (a VIRQ, an unbound or closed port) is in the table.
    peers = {5: (2, 9), 6: (3, 1)}
    assert accepts(peers, 2, 5)
    assert accepts(peers, 3, 6)
    assert not accepts(peers, 3, 5)  # bound, but to someone else
    assert not accepts(peers, 2, 6)
    assert not accepts(peers, 2, 7)  # a VIRQ port, say: never from a domain
    assert not accepts(peers, 2, 0)
    assert not accepts({}, 2, 5)


# -- reading and ringing an end ----------------------------------------------------


@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def test_rings_arrive_once_each_in_the_order_first_rung(pair) -> None:
    a, b = pair
    bells = Doorbells()
    bells.install(3, a)
    for port in (7, 5, 7, 9, 5):
        assert bells.ring(3, port)
    assert take(b, 64) == [7, 5, 9]
    assert take(b, 64) == []


def test_take_reads_at_most_its_limit(pair) -> None:
    a, b = pair
    for port in range(1, 11):
        a.send(PORT.pack(port))
    assert take(b, 4) == [1, 2, 3, 4]
    assert take(b, 64) == list(range(5, 11))


def test_what_is_not_whole_ports_garbles_only_that_peer_s_own_rings(pair) -> None:
    a, b = pair
    a.send(b"\x01\x02")  # half a port: nothing rung
    assert take(b, 64) == []
    a.send(PORT.pack(8))  # out of step now: whatever it reads as, one port
    rung = take(b, 64)
    assert rung is not None and len(rung) == 1


def test_many_rings_before_the_receiver_looks_are_one_read_and_one_port(pair) -> None:
    """As a pending bit: N rings of a port while the receiver is busy are
    one event, read in one system call, and none of them made the sender
    fall back to the hypercall."""
    a, b = pair
    bells = Doorbells()
    bells.install(3, a)
    assert all(bells.ring(3, 7) for _ in range(200))  # (~270 fit in its buffer)
    assert bells.ring(3, 9)
    reads = []

    class Counting:
        def recv_into(self, buf, size):
            n = b.recv_into(buf, size)
            reads.append(n)
            return n

    assert take(Counting(), 4096) == [7, 9]  # type: ignore[arg-type]  # a socket's recv_into
    assert reads == [201 * PORT.size]
    assert take(b, 64) == []


def test_a_closed_peer_is_told_apart_from_nothing_rung(pair) -> None:
    a, b = pair
    assert take(b, 64) == []
    a.close()
    assert take(b, 64) is None


def test_no_end_to_that_domain_fails() -> None:
    assert not Doorbells().ring(4, 1)


def test_a_full_queue_fails_instead_of_blocking(pair) -> None:
    a, b = pair
    bells = Doorbells()
    bells.install(3, a)
    sent = 0
    while bells.ring(3, 1 + sent % 100):
        sent += 1
        assert sent < 1_000_000, "the doorbell's queue never filled"
    assert sent > 0
    assert take(b, 1_000_000) == list(range(1, 1 + min(sent, 100)))
    assert bells.ring(3, 1)  # drained: rings again


def test_a_peer_gone_fails_and_its_end_is_handed_back_once(pair) -> None:
    a, b = pair
    dead = []
    bells = Doorbells(dead=lambda domid, sock: dead.append((domid, sock)))
    bells.install(3, a)
    b.close()
    assert not bells.ring(3, 1)
    assert not bells.ring(3, 2)
    assert dead == [(3, a)] and bells.ends == {}


def test_a_newer_end_is_not_removed_for_an_older_ones_death(pair) -> None:
    a, _b = pair
    bells = Doorbells()
    bells.install(3, a)
    new, _new_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        assert bells.install(3, new) is a
        assert bells.remove(3, a) is None  # not the current one
        assert bells.ends == {3: new}
    finally:
        new.close()
        _new_peer.close()


def test_a_closed_sender_rings_nothing(pair) -> None:
    a, _ = pair
    bells = Doorbells()
    bells.install(3, a)
    assert bells.close() == [a]
    assert not bells.ring(3, 1)


def test_drops_are_counted_and_logged_at_most_once_per_interval() -> None:
    lines = []

    class Log:
        def warning(self, *args, **kw):
            lines.append(kw)

    now = [100.0]
    drops = Drops(Log(), interval=1.0, clock=lambda: now[0])
    for port in range(50):
        drops(7, port)
    now[0] += 1.5
    drops(7, 99)
    assert drops.total == 51
    assert [line["dropped"] for line in lines] == [1, 50]
    assert lines[-1]["dropped_total"] == 51 and lines[-1]["sender"] == 7


# -- two kernels and the hypervisor, in one process ---------------------------------


@pytest.fixture
def system(tmp_path):
    system = System(tmp_path)
    yield system
    system.close()


class Seen:
    """Ports a kernel's handlers ran for, with a wait for them."""

    def __init__(self) -> None:
        self.ports: list[int] = []
        self.cond = threading.Condition()

    def __call__(self, port: int) -> None:
        with self.cond:
            self.ports.append(port)
            self.cond.notify_all()

    def wait(self, count: int) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.ports) >= count, 5)


def connect(owner, binder, owner_seen=None, binder_seen=None) -> tuple[int, int]:
    """owner offers a port to binder, binder binds it: (owner's, binder's)."""
    port = owner.events.alloc_unbound(binder.domid)
    if owner_seen is not None:
        owner.events.bind(port, owner_seen)
    local = binder.events.bind_interdomain(owner.domid, port, binder_seen)
    return port, local


def test_both_ends_ring_each_other_without_a_hypercall(system) -> None:
    one, two = system.add("one"), system.add("two")
    seen_one, seen_two = Seen(), Seen()
    p1, p2 = connect(one, two, seen_one, seen_two)
    two.events.send(p2)  # the binder rings at once...
    assert seen_one.wait(1)
    one.events.send(p1)  # ...and so does the owner
    assert seen_two.wait(1)
    assert one.sends == two.sends == 0
    assert list(one.events.doorbells.ends) == [two.domid]
    assert list(two.events.doorbells.ends) == [one.domid]
    # A second channel between them rides the same pair of ends.
    seen_more = Seen()
    q1, q2 = connect(one, two, seen_more)
    ends = dict(one.events.doorbells.ends)
    two.events.send(q2)
    assert seen_more.wait(1) and seen_more.ports == [q1]
    assert one.events.doorbells.ends == ends and one.sends == two.sends == 0


def test_no_doorbell_has_a_path(system, tmp_path) -> None:
    one, two = system.add("one"), system.add("two")
    connect(one, two)
    one.memchan.pump()  # what its upcall loop does when the end arrives
    end = one.events.doorbells.ends[two.domid]
    assert end.getsockname() == "" and end.getpeername() == ""  # unnamed
    assert not list(tmp_path.rglob("*.bell"))


def test_rings_on_ports_not_bound_to_the_sender_are_dropped(system) -> None:
    victim, peer, other = system.add("victim"), system.add("peer"), system.add("other")
    seen = Seen()
    mine, theirs = connect(victim, peer, seen)
    others, _ = connect(victim, other, seen)  # bound, but to another domain
    virq = victim.events.bind_virq(VIRQ_DEBUG, seen)
    unbound = victim.events.alloc_unbound(peer.domid)
    victim.events.bind(unbound, seen)
    # The peer forges rings on its end for every port but its own, then
    # rings its own: the end is read in order, so when that one is seen
    # every forged one was judged.
    forged = [p for p in range(4200) if p != mine]
    end = peer.events.doorbells.ends[victim.domid]
    for port in forged:
        while not peer.events.doorbells.ring(victim.domid, port):
            select.select([], [end], [], 5)  # its queue is full: let it read
    peer.events.send(theirs)
    assert seen.wait(1)
    assert seen.ports == [mine]
    assert victim.events.drops.total == len(forged)
    assert victim.log.lines and "dropped" in victim.log.lines[0][0][0]
    del others, virq


def test_a_ring_before_the_binding_was_read_is_not_lost(system) -> None:
    """The binder may ring before the owner's upcall loop has read the
    binding off its memory channel: the owner reads the channel before it
    refuses a ring."""
    owner, binder = system.add("owner"), system.add("binder")
    connect(owner, binder)  # the pair of ends exists from now on
    hold, release = threading.Event(), threading.Event()
    blocker = owner.events.alloc_unbound(binder.domid)
    owner.events.bind(blocker, hold_until(hold, release))
    blocker_b = binder.events.bind_interdomain(owner.domid, blocker)
    binder.events.send(blocker_b)
    assert hold.wait(5)  # the owner's upcall loop is inside that handler
    try:
        seen = Seen()
        port = owner.events.alloc_unbound(binder.domid)
        owner.events.bind(port, seen)
        local = binder.events.bind_interdomain(owner.domid, port)
        binder.events.send(local)
        assert owner.events.peers.get(port) is None  # not read yet
        # What the loop does next, done here while it is held:
        owner.events._rings_from(binder.domid, owner.events.doorbells.ends[binder.domid])
        assert seen.ports == [port] and owner.events.drops.total == 0
    finally:
        release.set()


def test_a_ring_on_a_masked_port_stays_pending_until_unmasked(system) -> None:
    one, two = system.add("one"), system.add("two")
    ran, seen = Seen(), Seen()
    p1, p2 = connect(one, two, ran)
    _q1, q2 = connect(one, two, seen)
    one.events.mask(p1)
    two.events.send(p2)
    two.events.send(q2)  # rung after it on the same end: handled after it
    assert seen.wait(1)
    assert ran.ports == [] and one.events.shared_info[PENDING_OFFSET + p1] == 1
    assert one.events.shared_info[MASK_OFFSET + p1] == 1
    one.events.unmask(p1)  # the hypervisor raises what came while masked
    assert ran.wait(1)


def test_a_closed_channel_takes_no_more_rings_from_its_old_peer(system) -> None:
    one, two = system.add("one"), system.add("two")
    seen, barrier = Seen(), Seen()
    p1, p2 = connect(one, two, seen)
    _b1, b2 = connect(one, two, barrier)
    two.events.close(p2)  # the hypervisor tells one: p1 is unbound again
    assert two.events.doorbells.ring(one.domid, p1)  # a forged ring on it
    two.events.send(b2)
    assert barrier.wait(1)
    assert seen.ports == [] and one.events.drops.total == 1
    assert p1 not in one.events.peers


def test_a_domain_gone_closes_the_end_to_it(system) -> None:
    one, two = system.add("one"), system.add("two")
    seen = Seen()
    p1, _ = connect(one, two)
    one.memchan.pump()
    end = one.events.doorbells.ends[two.domid]
    system.destroy(two)
    # The hypervisor's "unbell" is read by one's upcall loop, which closes
    # the end; a send is then the hypercall's (on a port now unbound).
    one.memchan.pump()
    assert two.domid not in one.events.doorbells.ends
    one.events.send(p1)
    assert one.sends == 1
    three = system.add("three")
    _p3, local = connect(one, three, seen)
    three.events.send(local)
    assert seen.wait(1) and three.sends == 0
    _wait_closed(one, end)


def _wait_closed(guest, end) -> None:
    """The upcall loop closes a retired end at the end of its turn: have it
    take one more turn."""
    seen = Seen()
    port = guest.events.bind_virq(VIRQ_DEBUG, seen)
    with guest.system.lock:
        guest.system.machine.send_virq(guest.domid, VIRQ_DEBUG)
    assert seen.wait(1)
    assert end.fileno() == -1
    del port


def test_a_full_memory_channel_means_no_doorbell_not_a_lost_event(system) -> None:
    owner, binder = system.add("owner"), system.add("binder")
    # The owner stops reading its channel and it fills up.
    owner.events.stop()
    hv_end = system.machine.domains[owner.domid].memchan
    filler = 0
    while True:
        try:
            hv_end.sock.send(b"\x80")  # an empty msgpack map: dropped when read
            filler += 1
        except BlockingIOError:
            break
    assert filler > 0
    seen = Seen()
    port = owner.events.alloc_unbound(binder.domid)
    local = binder.events.bind_interdomain(owner.domid, port, seen)
    assert local in binder.events.slow  # the owner was not told: no doorbell
    binder.events.send(local)
    assert binder.sends == 1  # the hypercall: the event is marked pending
    assert system.machine.domains[owner.domid].bitmap.is_pending(port)


def test_rings_waiting_on_a_replaced_end_are_still_delivered(system) -> None:
    owner, binder = system.add("owner"), system.add("binder")
    seen = Seen()
    p_owner, p_binder = connect(owner, binder, seen)
    hold, release = threading.Event(), threading.Event()
    blocker = owner.events.alloc_unbound(binder.domid)
    owner.events.bind(blocker, hold_until(hold, release))
    blocker_b = binder.events.bind_interdomain(owner.domid, blocker)
    binder.events.send(blocker_b)
    assert hold.wait(5)  # the owner's loop is held: rings wait on its end
    old = owner.events.doorbells.ends[binder.domid]
    try:
        binder.events.send(p_binder)  # queued on the old end
        # The hypervisor believes the binder lost its end: the next bind
        # hands both a new pair, and the owner will retire the old one.
        system.machine.doorbells.held[binder.domid].discard(owner.domid)
        q_owner = owner.events.alloc_unbound(binder.domid)
        owner.events.bind(q_owner, seen)
        q_binder = binder.events.bind_interdomain(owner.domid, q_owner)
        assert binder.events.doorbells.ends[owner.domid] is not None
    finally:
        release.set()
    binder.events.send(q_binder)  # on the new pair
    assert seen.wait(2)
    assert sorted(seen.ports) == sorted([p_owner, q_owner])
    assert owner.events.doorbells.ends[binder.domid] is not old
    assert binder.sends == 0 and owner.events.drops.total == 0
    _wait_closed(owner, old)


# -- a peer binding and closing in a loop (hypervisor side, pure) -----------------


def test_bind_close_cycles_cannot_fill_the_owner_s_memory_channel(sleeper, tmp_path):
    """A peer may bind a port allocated for it, close, and bind it again
    (Xen's semantics). Each bind and close is a message in the owner's memory
    channel, where its grant windows come too: the peer's binds are refused
    (EBUSY, to the peer) once it has a few unread there, and the owner still
    gets its windows."""
    from hypervisor import doorbell as broker
    from hypervisor.dispatch import Call, dispatch
    from hypervisor.public.errno import EBUSY
    from hypervisor.public.event_channel import (
        EVTCHNOP_alloc_unbound,
        EVTCHNOP_bind_interdomain,
        EVTCHNOP_close,
    )
    from hypervisor.public.xen import HYPERVISOR_event_channel_op
    from tests.hvfakes import FakeMachine, drain

    def op(dom, cmd, args):
        return dispatch(Call(m, dom, 0, None), HYPERVISOR_event_channel_op, cmd, args)

    m = FakeMachine(sleeper, tmp_path)
    try:
        m.add("Domain-0", domid=0, privileged=True)
        victim, attacker = m.add("victim"), m.add("attacker")
        victim_end, attacker_end = m.peer_ends[1], m.peer_ends[2]
        rc, result = op(victim, EVTCHNOP_alloc_unbound, {"remote_dom": attacker.domid})
        port = result["port"]
        refused = 0
        for _ in range(1000):  # the victim does not get to read meanwhile
            rc, result = op(attacker, EVTCHNOP_bind_interdomain,
                            {"remote_dom": victim.domid, "remote_port": port})
            if rc == -EBUSY:
                refused += 1
                continue
            assert rc == 0, result
            assert op(attacker, EVTCHNOP_close, {"port": result["local_port"]})[0] == 0
            drain(attacker_end)  # the attacker reads its own
        m.open_window(victim, 0, 1)  # the victim's channel has room still
        assert refused == 1000 - broker.NOTICES_PER_PEER // 2
        # Once the victim has read its channel, the peer may bind again.
        drain(victim_end)
        rc, result = op(attacker, EVTCHNOP_bind_interdomain,
                        {"remote_dom": victim.domid, "remote_port": port})
        assert rc == 0, result
    finally:
        m.close()
