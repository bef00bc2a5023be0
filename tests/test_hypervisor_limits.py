"""The hypervisor's loop and tables under load from one domain: bounded
messages, requests served round-robin, O(1) port allocation, a timer heap
bounded by the live timers (pure: fakes, no processes)."""

import os
import sys
from collections import deque

import msgpack
import pytest
import zmq

from hypervisor.event_channel import NR_EVENT_CHANNELS, EventChannels
from hypervisor.loop import (
    MAX_HYPERCALL_BYTES,
    REQUESTS_PER_TURN,
    UNPACK_LIMITS,
    handle_requests,
)
from hypervisor.ops.grant_table_op import COPY_OP, MAP_OP, UNMAP_OP, batch
from hypervisor.public.errno import ENOSPC, ESRCH, XenError
from hypervisor.public.event_channel import EVTCHNOP_send
from hypervisor.public.grant_table import (
    PYXEN_GNTTAB_MAX_BATCH,
    GNTTABOP_copy,
    GNTTABOP_map_grant_ref,
    GNTTABOP_unmap_grant_ref,
)
from hypervisor.public.xen import DOMID_SELF, HYPERVISOR_event_channel_op
from hypervisor.timers import SLACK, Timers
from tests.hvfakes import FakeMachine, drain

pytestmark = pytest.mark.timeout(120)

U64 = 2**64 - 1


def test_the_largest_legitimate_hypercall_fits_the_message_bound():
    side = {"ref": 2**32 - 1, "gmfn": U64, "domid": DOMID_SELF, "offset": 0xFFFF}
    copy = {"source": side, "dest": side, "len": 0xFFFF, "flags": 0xFFFF}
    maps = {"ref": 2**32 - 1, "dom": DOMID_SELF, "flags": 2**32 - 1, "host_addr": U64}
    unmaps = {"handle": 2**32 - 1, "host_addr": U64, "dev_bus_addr": U64}
    for cmd, op, schema in ((GNTTABOP_copy, copy, COPY_OP), (GNTTABOP_map_grant_ref, maps, MAP_OP),
                            (GNTTABOP_unmap_grant_ref, unmaps, UNMAP_OP)):
        ops = [op] * PYXEN_GNTTAB_MAX_BATCH
        batch(schema).check(ops)  # every field at its widest, and valid
        payload = msgpack.packb([20, cmd, ops, 127])
        assert len(payload) <= MAX_HYPERCALL_BYTES
        assert msgpack.unpackb(payload, **UNPACK_LIMITS)[2] == ops


class FakeRouter:
    def __init__(self, domid: int, n: int) -> None:
        self.queue = deque([b"peer", b"", msgpack.packb(
            [HYPERVISOR_event_channel_op, EVTCHNOP_send, {"port": 99}, 0])]
            for _ in range(n))
        self.domid = domid

    def recv_multipart(self, flags=0, copy=True):
        if not self.queue:
            raise zmq.Again()
        return self.queue.popleft()


class FakeLoopTransport:
    def __init__(self, routers):
        self.routers = {r.domid: r for r in routers}
        self.by_socket = {r: r.domid for r in routers}
        self.answered: list[int] = []

    def reply(self, token, rc, result):
        self.answered.append(token[0])

    def admitted(self, domid, frame):
        return True


def test_a_flooding_domain_is_served_a_bounded_turn_like_the_others(sleeper, tmp_path):
    m = FakeMachine(sleeper, tmp_path)
    try:
        m.add("Domain-0", domid=0, privileged=True)
        m.add("flooder")
        m.add("quiet")
        flood, quiet = FakeRouter(1, 1000), FakeRouter(2, 1)
        transport = FakeLoopTransport([flood, quiet])
        # One poll round: each ready channel gets its turn.
        handle_requests(m, transport, flood)
        handle_requests(m, transport, quiet)
        assert transport.answered == [1] * REQUESTS_PER_TURN + [2]
        assert len(flood.queue) == 1000 - REQUESTS_PER_TURN  # the rest: next rounds
    finally:
        m.close()


def lines_run(fn) -> int:
    """How many lines of the hypervisor's Python `fn` runs: work done, not
    time taken (pytest's own lines, and a finalizer the collector happens to
    run meanwhile, are not the hypervisor's work)."""
    count = 0

    def tracer(frame, event, arg):
        nonlocal count
        if event == "line" and f"{os.sep}hypervisor{os.sep}" in frame.f_code.co_filename:
            count += 1
        return tracer

    sys.settrace(tracer)
    try:
        fn()
    finally:
        sys.settrace(None)
    return count


def test_a_full_port_table_refuses_in_constant_work():
    ev = EventChannels()
    ev.add_domain(0)
    ev.add_domain(1)
    for _ in range(NR_EVENT_CHANNELS - 1):
        ev.alloc_unbound(1, 0)

    def refused():
        with pytest.raises(XenError) as exc:
            ev.alloc_unbound(1, 0)
        assert exc.value.errno == ENOSPC

    assert lines_run(refused) < 100  # a scan of 4095 ports would be thousands
    ev.close(1, 4000)
    ev.close(1, 7)
    assert lines_run(lambda: ev.alloc_unbound(1, 0)) < 100
    assert ev.alloc_unbound(1, 0) == 4000  # lowest free first: 7 went just above


def test_rearming_a_timer_keeps_the_heap_bounded():
    timers = Timers()
    for i in range(200_000):
        timers.set(("virq", 1, 0), 10**12 + i)  # set_timer_op in a loop
    assert len(timers.heap) <= 2 * len(timers.live) + SLACK + 1
    assert timers.next_deadline() == 10**12 + 199_999
    for vcpu in range(100):
        timers.set(("virq", 2, vcpu), 5 + vcpu)
        timers.set(("virq", 2, vcpu), 0 + vcpu)  # re-armed earlier
    timers.cancel(("virq", 1, 0))
    assert len(timers.heap) <= 2 * len(timers.live) + SLACK + 1
    assert timers.pop_due(49) == [("virq", 2, v) for v in range(50)]
    assert timers.next_deadline() == 50


def test_timers_fire_once_at_their_last_deadline():
    timers = Timers()
    timers.set("a", 10)
    timers.set("a", 30)
    timers.set("b", 20)
    timers.cancel_where(["b"])
    assert timers.pop_due(25) == []
    assert timers.pop_due(30) == ["a"]
    assert timers.pop_due(10**9) == [] and timers.next_deadline() is None


def test_a_domain_s_timers_go_with_it(sleeper, tmp_path):
    m = FakeMachine(sleeper, tmp_path)
    try:
        m.add("Domain-0", domid=0, privileged=True)
        guest = m.add("guest", vcpus=2)
        for i in range(10_000):
            m.set_timer(guest, i % 2, 10**15 + i)
        m.watchdog(guest, 0, 30)
        assert len(m.timers.heap) <= 2 * 3 + SLACK + 1
        m.destroy(guest)
        assert m.timers.live == {} and m.fire_timers(10**16) is None
    finally:
        m.close()


def test_a_domain_destroyed_while_booting_answers_its_creator(sleeper, tmp_path):
    m = FakeMachine(sleeper, tmp_path)
    try:
        m.add("Domain-0", domid=0, privileged=True)
        booting = m.add("guest", ready=False)
        booting.pending_create = "creator"
        m.destroy(booting)
        assert [(t, rc) for t, rc, _ in m.transport.replies] == [("creator", -ESRCH)]
        m.fire_timers(10**16)  # its boot deadline went with it: no second answer
        assert len(m.transport.replies) == 1
    finally:
        m.close()


def test_a_window_fd_reaches_its_domain_over_the_memory_channel(sleeper, tmp_path):
    m = FakeMachine(sleeper, tmp_path)
    try:
        m.add("Domain-0", domid=0, privileged=True)
        guest = m.add("guest")
        region = m.open_window(guest, 0, 4)
        assert region.window_id in guest.windows and guest.window_pages == 4
        assert drain(m.peer_ends[-1]) == 1  # the guest's end holds the window's fd
    finally:
        m.close()


def test_an_errno_answer_names_its_errno_once(sleeper, tmp_path):
    """The rc carries the errno; the text is the reason alone, or the
    caller's XenError would read "EFAULT: EFAULT: ..."."""
    from hypervisor.dispatch import Call, dispatch
    from hypervisor.public.event_channel import EVTCHNOP_status

    m = FakeMachine(sleeper, tmp_path)
    try:
        m.add("Domain-0", domid=0, privileged=True)
        guest = m.add("guest")
        for args in (None, {"port": 1 << 40}, {"port": 0}):
            rc, text = dispatch(Call(m, guest, 0, None), HYPERVISOR_event_channel_op,
                                EVTCHNOP_status, args)
            error = str(XenError.from_rc(rc, text))
            assert rc < 0 and error.count(XenError.from_rc(rc).name) == 1, error
    finally:
        m.close()
