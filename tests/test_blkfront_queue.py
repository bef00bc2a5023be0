"""blkfront's request machinery without a machine: the page pool, request
layouts and indirect pages, and a connection whose ring is answered by
hand (out of order, or not at all when the "backend dies"), with fake
grant and event channel clients."""

import itertools
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.blkback.response import make_response
from backends.blkback.validate import Segment, parse_request, with_indirect_segments
from frontends.blkfront import requests
from frontends.blkfront.device import (
    BlkfrontDevice,
    BlockIOError,
    Connection,
    DeviceGone,
    DmaBuffer,
    IORequest,
)
from frontends.blkfront.pool import Extents, Pool, PoolClosed
from frontends.blkfront.requests import PageSegments, fill_indirect_pages
from hypervisor.public.errno import EINVAL, XenError
from hypervisor.public.io.blkif import (
    BLKIF_OP_FLUSH_DISKCACHE,
    BLKIF_OP_INDIRECT,
    BLKIF_OP_READ,
    BLKIF_OP_WRITE,
    BLKIF_RSP_ERROR,
    BLKIF_RSP_OKAY,
)
from hypervisor.public.io.ring import BackRing
from tests.fakekernel import FakeEvents, FakeKernel

pytestmark = pytest.mark.timeout(60)

PAGE = 4096


# -- the pool ---------------------------------------------------------------------

def test_extents_hand_out_contiguous_runs_and_coalesce() -> None:
    pool = Extents(100, 16)
    a, b = pool.take(4), pool.take(8)
    assert a == [100, 101, 102, 103] and b == list(range(104, 112))
    assert pool.take(5) is None and pool.free == 4   # fewer free: nothing taken
    pool.give(a)
    assert pool.runs() == [(100, 4), (112, 4)]
    c = pool.take(6)                                  # fragmented: both runs
    assert c == [100, 101, 102, 103, 112, 113]
    pool.give(b)
    pool.give(c)
    assert pool.runs() == [(100, 16)] and pool.free == 16
    d = pool.take(6)
    assert d is not None
    pool.take(4)
    pool.give(d[:3])
    assert pool.take(7, contiguous=True) is None and pool.free == 9  # runs of 3 and 6
    assert pool.take(7) == [100, 101, 102, 110, 111, 112, 113]
    pool.give([100, 101, 102, 110, 111, 112, 113])
    assert pool.take(6, contiguous=True) == list(range(110, 116))


def test_extents_refuse_double_frees_and_strangers() -> None:
    pool = Extents(0, 8)
    pages = pool.take(3)
    assert pages is not None
    pool.give(pages)
    with pytest.raises(ValueError):
        pool.give(pages)                  # already free
    with pytest.raises(ValueError):
        pool.give([8])                    # not this pool's
    with pytest.raises(ValueError):
        pool.give([1, 1])                 # twice in one give
    with pytest.raises(ValueError):
        pool.take(9)
    assert pool.free == 8 and pool.runs() == [(0, 8)]


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), st.integers(1, 20)), max_size=60))
def test_extents_never_lose_or_duplicate_pages(ops) -> None:
    pool = Extents(10, 64)
    held: list[list[int]] = []
    for take, n in ops:
        if take:
            pages = pool.take(n)
            if pages is not None:
                held.append(pages)
        elif held:
            pool.give(held.pop(n % len(held)))
        taken = [p for pages in held for p in pages]
        assert len(taken) == len(set(taken)) and all(10 <= p < 74 for p in taken)
        assert pool.free == 64 - len(taken)
        runs = pool.runs()
        assert all(s + n < t for (s, n), (t, _) in itertools.pairwise(runs))  # coalesced


def test_pool_take_waits_for_pages_and_wakes_on_close() -> None:
    pool = Pool(0, 4)
    held = pool.take(4)
    got = []
    taker = threading.Thread(target=lambda: got.append(pool.take(2)))
    taker.start()
    pool.give(held[:2])
    taker.join(10)
    assert got == [[0, 1]]
    waiting = []

    def wait_closed():
        try:
            pool.take(3)
        except PoolClosed:
            waiting.append("closed")

    taker = threading.Thread(target=wait_closed)
    taker.start()
    pool.close()
    taker.join(10)
    assert waiting == ["closed"]


# -- layouts and indirect pages -------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(grefs=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=600),
       short=st.integers(0, 7))
def test_page_segments_and_bulk_indirect_pages_match_the_builders(grefs, short) -> None:
    nr_sectors = len(grefs) * 8 - short
    segments = PageSegments(grefs, nr_sectors)
    expected = [(g, 0, 7) for g in grefs[:-1]] + [(grefs[-1], 0, 7 - short)]
    assert list(segments) == expected and tuple(segments) == segments
    assert segments[-1] == expected[-1] and len(segments) == len(grefs)
    assert requests.segment_sectors(segments) == nr_sectors
    pages = requests.indirect_pages(expected)
    buf = bytearray(b"\xff" * PAGE * (len(pages) + 1))
    fill_indirect_pages(memoryview(buf), [PAGE * (i + 1) for i in range(len(pages))],
                        segments)
    assert bytes(buf[PAGE:]) == b"".join(pages)
    assert bytes(buf[:PAGE]) == b"\xff" * PAGE  # nothing else written


def test_page_segments_refuse_impossible_layouts() -> None:
    with pytest.raises(ValueError):
        PageSegments([1, 2], 8)       # 8 sectors fit one page
    with pytest.raises(ValueError):
        PageSegments([], 0)
    with pytest.raises(ValueError):
        fill_indirect_pages(memoryview(bytearray(PAGE)), [0], PageSegments([2**32], 8))


# -- a connection, answered by hand ---------------------------------------------------

class FakeDevice(BlkfrontDevice):
    """Only what a Connection uses of its device: the kernel, and the
    backend's domid (a property of a real device, fixed here)."""

    backend_id = 1

    def __init__(self) -> None:
        self.kernel = FakeKernel()


class HandBackend:
    """The backend's half of the connection's ring, played by the test: it
    reads requests (and their data pages, through the window) and answers
    them in whatever order it is told."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.queue = conn.queues[0]
        self.ring = BackRing(self.queue.view, 112, 16)
        self.frames = {ref: frame - 0x1000 for ref, frame in
                       conn.device.kernel.gnttab.granted.items()}

    def page(self, gref: int) -> memoryview:
        frame = self.frames[gref]
        return self.conn.map[frame * PAGE:(frame + 1) * PAGE]

    def take(self) -> list:
        reqs = []
        while self.ring.has_unconsumed_requests():
            req = parse_request(self.ring.get_request())
            if req.operation == BLKIF_OP_INDIRECT:
                req = with_indirect_segments(req, [self.page(g) for g in req.indirect_grefs])
            reqs.append(req)
        return reqs

    def answer(self, req, status: int = BLKIF_RSP_OKAY) -> None:
        self.ring.put_response(make_response(req.id, req.io_operation, status))
        if self.ring.push_responses_and_check_notify():
            self.queue.responses()


def dma_pages(conn: Connection, n: int) -> list[int]:
    pages = conn.dma.try_take(n)
    assert pages is not None
    return pages


def connection() -> tuple[Connection, HandBackend]:
    conn = Connection(FakeDevice(), 1, 1, 32)
    return conn, HandBackend(conn)


def issue(conn: Connection, op: int, sector: int, nr: int, data=None, out=None) -> IORequest:
    req = IORequest(op, sector, nr, data, out)
    segments, indirect = conn.prepare(req)
    assert conn.queues[0].submit(req, segments, indirect)
    return req


def test_many_in_flight_answered_out_of_order() -> None:
    conn, back = connection()
    outs = [bytearray(PAGE * 2) for _ in range(4)]
    reqs = [issue(conn, BLKIF_OP_READ, 16 * i, 16, out=outs[i]) for i in range(4)]
    got = back.take()
    assert [r.sector_number for r in got] == [0, 16, 32, 48]
    for i, r in enumerate(got):  # the backend "reads" i+1 everywhere
        for seg in r.segments:
            back.page(seg.gref)[:] = bytes([i + 1]) * PAGE
    for r in (got[2], got[0], got[3]):
        back.answer(r)
    assert [q.finished for q in reqs] == [True, False, True, True]
    back.answer(got[1], BLKIF_RSP_ERROR)
    reqs[0].wait(); reqs[2].wait(); reqs[3].wait()
    with pytest.raises(BlockIOError):
        reqs[1].wait()
    assert outs[0] == b"\x01" * 2 * PAGE and outs[3] == b"\x04" * 2 * PAGE
    assert conn.pool.extents.free == conn.pool.size  # bounce pages all back


def test_dma_buffers_are_used_in_place() -> None:
    conn, back = connection()
    buf = DmaBuffer(conn, dma_pages(conn, 64), 64 * PAGE)
    buf.view[:] = b"w" * len(buf)
    write = issue(conn, BLKIF_OP_WRITE, 0, 64 * 8, data=buf)
    (req,) = back.take()
    assert req.operation == BLKIF_OP_INDIRECT and len(req.segments) == 64
    frames = [back.frames[s.gref] for s in req.segments]
    assert frames == buf.pages  # the buffer's own pages, no bounce copy
    back.answer(req)
    write.wait()
    part = buf.part(4 * PAGE, 3 * PAGE)
    read = issue(conn, BLKIF_OP_READ, 8, 24, out=part)
    (req,) = back.take()
    assert [back.frames[s.gref] for s in req.segments] == buf.pages[4:7]
    back.page(req.segments[0].gref)[:] = b"r" * PAGE
    back.answer(req)
    read.wait()
    assert bytes(part.view[:PAGE]) == b"r" * PAGE
    free = conn.dma.extents.free
    buf.close()
    assert conn.dma.extents.free == free + 64
    with pytest.raises(ValueError):  # a buffer is one view: one run of pages
        DmaBuffer(conn, [conn.dma.extents.first, conn.dma.extents.first + 2], 2 * PAGE)


def test_a_dead_backend_leaves_every_unanswered_request_to_reissue_in_order() -> None:
    conn, back = connection()
    data = [bytes([i]) * PAGE for i in range(5)]
    reqs = [issue(conn, BLKIF_OP_WRITE, 8 * i, 8, data=data[i]) for i in range(5)]
    flush = issue(conn, BLKIF_OP_FLUSH_DISKCACHE, 0, 0)
    got = back.take()
    back.answer(got[1])
    back.answer(got[3])
    back.queue.responses()  # consumed (a response left unread would be reissued)
    cut = conn.close()  # the backend's domain died
    assert cut == [reqs[0], reqs[2], reqs[4], flush]  # issue order, answered ones not
    assert not any(r.finished for r in cut) and reqs[1].finished and reqs[3].finished
    with pytest.raises(PoolClosed):
        conn.prepare(IORequest(BLKIF_OP_READ, 0, 8, out=bytearray(PAGE)))
    assert not conn.queues[0].submit(IORequest(BLKIF_OP_FLUSH_DISKCACHE, 0, 0), None, None)
    # The next connection issues them again, data copied from the callers'
    # buffers into its own pages.
    conn2, back2 = connection()
    for req in cut:
        segments, indirect = conn2.prepare(req)
        assert conn2.queues[0].submit(req, segments, indirect)
    again = back2.take()
    assert [(r.io_operation, r.sector_number) for r in again] == \
        [(BLKIF_OP_WRITE, 0), (BLKIF_OP_WRITE, 16), (BLKIF_OP_WRITE, 32),
         (BLKIF_OP_FLUSH_DISKCACHE, 0)]
    for r, i in zip(again[:3], (0, 2, 4)):
        assert bytes(back2.page(r.segments[0].gref)) == data[i]
    for r in again:
        back2.answer(r)
    for req in cut:
        req.wait()


def test_a_device_gone_for_good_fails_what_is_in_flight() -> None:
    conn, _ = connection()
    device = BlkfrontDevice.__new__(BlkfrontDevice)  # only the failing part
    device.conn, device.path = conn, "device/vbd/51712"
    device.reissue, device.reissue_lock = [], threading.Lock()
    req = issue(conn, BLKIF_OP_READ, 0, 8, out=bytearray(PAGE))
    device.reissue.append(IORequest(BLKIF_OP_WRITE, 8, 8, data=bytes(PAGE)))
    waiting = device.reissue[0]
    device._fail_all()
    for r in (req, waiting):
        with pytest.raises(DeviceGone):
            r.wait()


def test_response_events_are_coalesced_with_many_in_flight() -> None:
    conn, back = connection()
    reqs = [issue(conn, BLKIF_OP_READ, 8 * i, 8, out=bytearray(PAGE)) for i in range(8)]
    got = back.take()
    events = []
    for r in got:
        back.ring.put_response(make_response(r.id, r.io_operation, 0))
        if back.ring.push_responses_and_check_notify():
            events.append(r.sector_number)
            back.queue.responses()
    assert all(r.finished for r in reqs)
    assert len(events) < len(reqs)  # fewer events than responses
    assert events[0] == 0  # the first arm was the ring's initial rsp_event


def test_request_layouts_are_cached_per_page_run() -> None:
    conn, _ = connection()
    first = conn.layout(list(range(200, 264)), 64 * 8)
    assert conn.layout(list(range(200, 264)), 64 * 8)[0] is first[0]  # built once
    segments, indirect = first
    assert indirect is not None
    assert [g for g, _, _ in segments] == [conn.refs[p] for p in range(200, 264)]
    assert indirect[:8] != bytes(8)
    short, none = conn.layout([300, 301], 9)
    assert none is None and list(short) == [(conn.refs[300], 0, 7), (conn.refs[301], 0, 0)]
    read = with_indirect_segments(
        parse_request(requests.indirect(1, BLKIF_OP_READ, 0, 64, [9])), [indirect])
    assert read.segments is not None
    assert list(read.segments) == [Segment(g, f, l) for g, f, l in segments]


def test_a_dma_buffer_of_an_old_connection_goes_through_bounce_pages() -> None:
    old, _ = connection()
    buf = DmaBuffer(old, dma_pages(old, 2), 2 * PAGE)
    buf.view[:] = b"o" * len(buf)
    conn, back = connection()  # the reconnect: a new window
    write = issue(conn, BLKIF_OP_WRITE, 0, 16, data=buf)
    (req,) = back.take()
    frames = [back.frames[s.gref] for s in req.segments]
    assert all(conn.pool.extents.first <= f for f in frames)  # bounce pages
    assert b"".join(bytes(back.page(s.gref)) for s in req.segments) == bytes(buf.view)
    back.answer(req)
    write.wait()
    read = issue(conn, BLKIF_OP_READ, 0, 16, out=buf)
    (req,) = back.take()
    for seg in req.segments:
        back.page(seg.gref)[:] = b"n" * PAGE
    back.answer(req)
    read.wait()
    assert bytes(buf.view) == b"n" * len(buf)  # copied into the old buffer


def test_a_read_into_an_unwritable_buffer_fails_and_never_hangs() -> None:
    conn, back = connection()
    read = issue(conn, BLKIF_OP_READ, 0, 8, out=bytes(PAGE))  # bypassing the API
    (req,) = back.take()
    back.answer(req)
    with pytest.raises(BlockIOError):
        read.wait(10)
    assert conn.pool.extents.free == conn.pool.size


def test_a_request_the_ring_refuses_gives_its_pages_back() -> None:
    conn, _ = connection()
    device = BlkfrontDevice.__new__(BlkfrontDevice)
    device.reissue, device.reissue_lock, device.closed = [], threading.Lock(), False
    req = IORequest(BLKIF_OP_WRITE, 2**64, 8, data=bytes(PAGE))  # sector beyond 64 bits
    with pytest.raises(ValueError):
        device._issue(conn, req, requeue=False)
    assert conn.pool.extents.free == conn.pool.size
    assert len(conn.queues[0].shadow) == 0


def test_a_backend_dying_between_issue_and_notify_leaves_the_request_to_reissue() -> None:
    """The submitter put its request on the ring; before it notifies, the
    backend is found dead (another thread abandons the ring and closes its
    port), so the notification fails: that is no error for the caller, the
    request is among those cut, to go out on the next connection. Seen in
    tests/test_driver_restart.py as a guest crashing with EINVAL."""
    conn, _ = connection()
    queue = conn.queues[0]
    cut = []

    class ClosedMeanwhile(FakeEvents):
        def send(self, port: int) -> None:
            cut.extend(queue.abandon())  # the reconnect, on another thread
            raise XenError(EINVAL, f"port {port} is not in use")

    conn.device.kernel.events = queue.kernel.events = ClosedMeanwhile()
    req = issue(conn, BLKIF_OP_WRITE, 0, 8, data=bytes(PAGE))
    assert cut == [req] and not req.finished
    # A port that fails while the ring is alive is still an error.
    conn2, _ = connection()
    conn2.queues[0].kernel.events.send = lambda port: (_ for _ in ()).throw(
        XenError(EINVAL, "port 5 is not in use"))
    with pytest.raises(XenError):
        issue(conn2, BLKIF_OP_WRITE, 0, 8, data=bytes(PAGE))
