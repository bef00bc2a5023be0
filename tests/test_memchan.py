"""The memory channel (hypervisor/memchan.py, domains/kernel/memchan.py):
tagged messages with fds, hypervisor -> domain, demultiplexed by whichever
thread reads; the hypervisor never waits on it, and a domain that does not
read it (or closed it) gets an errno, nobody else anything."""

import os
import socket
import threading

import msgpack
import pytest

from domains.kernel.memchan import MemChannel
from hypervisor.doorbell import DoorbellBroker
from hypervisor.memchan import MemChannel as HvMemChannel
from hypervisor.public.errno import EBUSY, ENOTCONN, XenError
from hypervisor.public.grant_table import (
    GNTMAP_host_map,
    GNTST_eagain,
    GNTST_general_error,
    GNTTABOP_map_grant_ref,
)
from hypervisor.public.xen import (
    VIRQ_DEBUG,
    HYPERVISOR_grant_table_op,
    HYPERVISOR_pyxen_op,
    PYXEN_op_grant_window,
)
from tests.inproc import Log, System

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def channel():
    hv_end, dom_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    hv, dom = HvMemChannel(hv_end), MemChannel(dom_end, Log())
    yield hv, dom
    hv.close()
    dom.close()


def fill(hv: HvMemChannel) -> int:
    """Queue messages nobody reads until the channel is full."""
    sent = 0
    while True:
        try:
            hv.send({"tag": "filler"})
        except XenError as exc:
            assert exc.errno == EBUSY
            return sent
        sent += 1
        assert sent < 1_000_000, "the channel never filled"


def test_messages_go_to_the_sink_of_their_tag_with_their_fds(channel) -> None:
    hv, dom = channel
    got: list[tuple[str, int, int]] = []

    def on_b(meta: dict, fds: list[int]) -> None:
        got.append(("b", meta["n"], len(fds)))
        for fd in fds:
            os.close(fd)

    dom.on("a", lambda meta, fds: got.append(("a", meta["n"], len(fds))))
    dom.on("b", on_b)
    r, w = os.pipe()
    try:
        hv.send({"tag": "a", "n": 1})
        hv.send({"tag": "b", "n": 2}, [r, w])
        hv.send({"tag": "a", "n": 3})
    finally:
        os.close(r)
        os.close(w)
    assert dom.pump()
    assert got == [("a", 1, 0), ("b", 2, 2), ("a", 3, 0)]
    assert dom.pump() and len(got) == 3  # nothing more: no wait


def test_a_message_nobody_takes_has_its_fds_closed(channel) -> None:
    hv, dom = channel
    r, w = os.pipe()
    try:
        hv.send({"tag": "nobody"}, [w])
    finally:
        os.close(w)
    assert dom.pump()
    assert os.read(r, 1) == b""  # every copy of the write end is closed
    os.close(r)
    assert dom.log.lines and "dropped" in dom.log.lines[0][0][0]


def test_the_hypervisor_gone_ends_the_channel(channel) -> None:
    hv, dom = channel
    hv.send({"tag": "late"})
    hv.close()
    assert not dom.pump()
    assert dom.closed and not dom.pump()


def test_a_full_channel_is_ebusy_and_a_closed_one_enotconn(channel) -> None:
    hv, dom = channel
    assert fill(hv) > 0
    dom.sock.close()
    with pytest.raises(XenError) as exc:
        hv.send({"tag": "x"})
    assert exc.value.errno == ENOTCONN


def test_one_reader_hands_the_others_messages_on(channel) -> None:
    """Two threads each need their own message: whichever reads, both get
    theirs, and neither waits for the other's."""
    hv, dom = channel
    stash: dict[str, int] = {}
    dom.on("m", lambda meta, fds: stash.__setitem__(meta["who"], meta["n"]))
    hv.send({"tag": "m", "who": "first", "n": 1})
    hv.send({"tag": "m", "who": "second", "n": 2})
    results = {}

    def need(who: str) -> None:
        if who not in stash:
            dom.pump()
        results[who] = stash.get(who)

    threads = [threading.Thread(target=need, args=(w,)) for w in ("second", "first")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert results == {"first": 1, "second": 2}


# -- the hypervisor's side: windows -------------------------------------------------


@pytest.fixture
def system(tmp_path):
    system = System(tmp_path)
    yield system
    system.close()


def open_window(guest, peer: int, nr_frames: int = 1):
    result = guest.hypercall(HYPERVISOR_pyxen_op, PYXEN_op_grant_window,
                             {"peer": peer, "nr_frames": nr_frames})
    return guest.windows.get(result["window"])


def test_a_window_opened_by_the_upcall_thread_in_a_handler(system) -> None:
    """The upcall loop reads the channel too: a handler that opens a
    window on that same thread must not wait for itself."""
    one, two = system.add("one"), system.add("two")
    got, done = [], threading.Event()

    def handler(port: int) -> None:
        got.append(open_window(one, two.domid, 2))
        done.set()

    port = one.events.bind_virq(VIRQ_DEBUG, handler)
    with system.lock:
        system.machine.send_virq(one.domid, VIRQ_DEBUG)
    assert done.wait(5)
    assert got[0].nr_frames == 2 and len(got[0].map) == 2 * 4096
    assert one.events.thread.is_alive()
    del port


def test_windows_opened_from_many_threads_while_the_loop_reads(system) -> None:
    one, two = system.add("one"), system.add("two")
    windows, errors = [], []

    def worker() -> None:
        try:
            for _ in range(20):
                windows.append(open_window(one, two.domid))
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors
    assert len({w.window_id for w in windows}) == 80


def test_a_domain_not_reading_its_channel_gets_ebusy_and_the_window_back(system) -> None:
    one, two = system.add("one"), system.add("two")
    one.events.stop()  # nothing reads its channel any more
    dom = system.machine.domains[one.domid]
    fill(dom.memchan)
    free = system.machine.memory.free_pages
    with pytest.raises(XenError) as exc:
        one.hypercall(HYPERVISOR_pyxen_op, PYXEN_op_grant_window,
                      {"peer": two.domid, "nr_frames": 4})
    assert exc.value.errno == EBUSY
    assert dom.windows == {} and system.machine.memory.free_pages == free
    # The other domain is served as ever.
    assert open_window(two, one.domid).nr_frames == 1


def test_a_domain_that_closed_its_channel_gets_enotconn(system) -> None:
    one, two = system.add("one"), system.add("two")
    one.events.stop()
    one.memchan.close()
    with pytest.raises(XenError) as exc:
        one.hypercall(HYPERVISOR_pyxen_op, PYXEN_op_grant_window,
                      {"peer": two.domid, "nr_frames": 1})
    assert exc.value.errno == ENOTCONN
    assert system.machine.domains[one.domid].windows == {}


@pytest.mark.parametrize("how,status", [("full", GNTST_eagain),
                                        ("closed", GNTST_general_error)])
def test_a_map_whose_window_cannot_be_handed_over_is_undone(system, how, status) -> None:
    granter, mapper = system.add("granter"), system.add("mapper")
    window = open_window(granter, mapper.domid, 2)
    ref = granter.gnttab.grant_access(mapper.domid, window.gfn)
    mapper.events.stop()
    hv = system.machine.domains[mapper.domid].memchan
    if how == "full":
        fill(hv)
    else:
        mapper.memchan.close()
    results = mapper.hypercall(HYPERVISOR_grant_table_op, GNTTABOP_map_grant_ref,
                               [{"ref": ref, "dom": granter.domid, "flags": GNTMAP_host_map}])
    assert results[0]["status"] == status
    assert system.machine.domains[mapper.domid].gnttab.maptrack == {}
    granter.gnttab.end_access(ref)  # not pinned: the map left nothing behind
    window_id = window.window_id
    assert window_id not in system.machine.domains[mapper.domid].known_windows
    del window


def test_a_map_passes_the_window_once(system) -> None:
    granter, mapper = system.add("granter"), system.add("mapper")
    window = open_window(granter, mapper.domid, 2)
    refs = [granter.gnttab.grant_access(mapper.domid, window.gfn + i) for i in range(2)]
    window.map[0:5] = b"hello"
    maps = mapper.gnttab.map_grant_refs(granter.domid, refs)
    assert bytes(maps[0].page[0:5]) == b"hello"
    assert maps[0].window == maps[1].window == window.window_id
    assert mapper.windows._arrived == {}  # one fd, taken
    mapper.gnttab.unmap_all(maps)


# -- the hypervisor's side: doorbell ends ------------------------------------------------


class FakeChannel(HvMemChannel):
    """A domain's memory channel that records what is sent (or fails with
    `fail`): no socket under it."""

    def __init__(self, fail: int | None = None) -> None:
        self.sent: list[tuple[dict, int]] = []
        self.fail = fail

    def send(self, meta: dict, fds=()) -> None:
        if self.fail is not None:
            raise XenError(self.fail, "no")
        self.sent.append((msgpack.unpackb(msgpack.packb(meta)), len(fds)))


def test_one_pair_of_ends_per_pair_of_domains() -> None:
    chans: dict[int, FakeChannel] = {1: FakeChannel(), 2: FakeChannel()}
    broker = DoorbellBroker(chans.get)
    assert broker.bound(2, 5, 1, 3)
    # The binder first, without leave to ring; then the owner, with it.
    assert chans[2].sent == [({"tag": "bind", "port": 5, "peer": 1, "remote_port": 3,
                               "ring": False}, 1)]
    assert chans[1].sent == [({"tag": "bind", "port": 3, "peer": 2, "remote_port": 5,
                               "ring": True}, 1)]
    assert broker.bound(1, 6, 2, 7)  # a second channel, either way round
    assert [n for _, n in chans[1].sent + chans[2].sent] == [1, 0, 1, 0]
    broker.unbound(1, 3, closer=2)
    assert chans[1].sent[-1] == ({"tag": "unbind", "port": 3, "peer": 2}, 0)
    broker.forget(2)
    assert chans[1].sent[-1] == ({"tag": "unbell", "peer": 2}, 0)
    assert broker.held == {1: set()}


def test_an_owner_not_told_means_no_doorbell_and_new_ends_next_time() -> None:
    chans = {1: FakeChannel(fail=EBUSY), 2: FakeChannel()}
    broker = DoorbellBroker(chans.get)
    assert not broker.bound(2, 5, 1, 3)
    assert broker.held == {}
    chans[1].fail = None
    assert broker.bound(2, 6, 1, 4)
    assert chans[2].sent[-1][1] == 1 and chans[1].sent[-1][1] == 1  # new ends


def test_a_binder_not_told_gives_the_owner_no_leave_to_ring() -> None:
    chans: dict[int, FakeChannel] = {1: FakeChannel(), 2: FakeChannel(fail=ENOTCONN)}
    broker = DoorbellBroker(chans.get)
    assert not broker.bound(2, 5, 1, 3)
    assert chans[1].sent == [({"tag": "bind", "port": 3, "peer": 2, "remote_port": 5,
                               "ring": False}, 0)]  # no end: its partner went nowhere
    assert broker.held == {}


def test_loopback_and_gone_domains_get_no_ends() -> None:
    chans: dict[int, FakeChannel] = {1: FakeChannel()}
    broker = DoorbellBroker(chans.get)
    assert not broker.bound(1, 2, 1, 1)
    assert not broker.bound(1, 2, 9, 1)  # d9 has no channel: gone
    assert broker.held == {}
