"""hypervisor.public.io.ring: io/ring.h's shared request/response ring.

Pure-Python checks: the size formula, the header ring.h's macros write,
free-running indexes across 2**32, the notification hold-off, a full ring,
a misbehaving peer, and (hypothesis) random interleavings of both ends.
test_ring_c.py checks the same against the C macros.
"""

import mmap
import struct

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from hypervisor.public.io import ring
from hypervisor.public.io.ring import (
    BackRing,
    FrontRing,
    RingError,
    RingFull,
    ring_size,
    shared_ring_init,
)

pytestmark = pytest.mark.timeout(60)

PAGE = 4096
BLK_REQ, BLK_RSP = 112, 16  # sizeof(blkif_request), sizeof(blkif_response)
M32 = 2**32


def header(buf) -> tuple[int, int, int, int]:
    """(req_prod, req_event, rsp_prod, rsp_event) as stored."""
    return struct.unpack_from("<4I", buf, 0)


def set_header(buf, req_prod, req_event, rsp_prod, rsp_event) -> None:
    struct.pack_into("<4I", buf, 0, req_prod % M32, req_event % M32,
                     rsp_prod % M32, rsp_event % M32)


def new_ring(pages=1, req=BLK_REQ, rsp=BLK_RSP, start=0, entry=None):
    """A fresh shared ring whose indexes all start at `start`, both ends
    attached (as a frontend that re-attaches at `start` would leave it)."""
    buf = bytearray(pages * PAGE)
    shared_ring_init(buf)
    set_header(buf, start, start + 1, start, start + 1)
    return buf, FrontRing(buf, req, rsp, entry), BackRing(buf, req, rsp, entry)


def req_bytes(seq: int, size: int = BLK_REQ) -> bytes:
    return (seq.to_bytes(8, "little") * (size // 8 + 1))[:size]


def rsp_bytes(seq: int, size: int = BLK_RSP) -> bytes:
    return ((seq ^ 0x5A5A5A5A5A5A5A5A).to_bytes(8, "little") * (size // 8 + 1))[:size]


# --- layout --------------------------------------------------------------

@pytest.mark.parametrize("buf_size, entry, entries", [
    (PAGE, 112, 32),            # blkif, one page: 4032 // 112 = 36 -> 32
    (2 * PAGE, 112, 64),        # ring-page-order 1: 72 -> 64
    (4 * PAGE, 112, 128),       # order 2: 145 -> 128
    (8 * PAGE, 112, 256),       # order 3: 292 -> 256
    (PAGE, 12, 256),            # netif tx (12-byte request): 336 -> 256
    (PAGE, 8, 256),             # netif rx: 504 -> 256
    (PAGE, 64, 32),             # 63 -> 32
    (PAGE, 63, 64),             # exactly 64
    (64 + 16 * 48, 48, 16),     # exactly a power of two
    (64 + 16 * 48 - 1, 48, 8),
    (PAGE, 4032, 1),
    (PAGE, 4033, 0),            # no entry fits
    (32, 8, 0),                 # not even a header
])
def test_ring_size(buf_size: int, entry: int, entries: int) -> None:
    assert ring_size(buf_size, entry) == entries


def test_ring_size_is_the_largest_power_of_two_that_fits() -> None:
    for entry in (1, 7, 8, 48, 112, 300):
        for buf_size in range(64, 3 * PAGE, 97):
            n = ring_size(buf_size, entry)
            assert n == 0 or (n & (n - 1) == 0 and 64 + n * entry <= buf_size)
            assert 64 + 2 * max(n, 0.5) * entry > buf_size
    with pytest.raises(ValueError):
        ring_size(PAGE, 0)


def test_abi_constants() -> None:
    assert ring.SRING_HEADER_SIZE == 64
    assert ring.RING_IDX is __import__("ctypes").c_uint32


def test_shared_ring_init_writes_header_and_pad_only() -> None:
    buf = bytearray(b"\xff" * PAGE)
    shared_ring_init(buf)
    assert header(buf) == (0, 1, 0, 1)
    assert buf[16:64] == bytes(48)          # pvt union and __pad zeroed
    assert buf[64:] == b"\xff" * (PAGE - 64)  # entries untouched


def test_attach_geometry_and_slot_offsets() -> None:
    buf, front, back = new_ring(req=BLK_REQ, rsp=BLK_RSP)
    assert (front.size, front.entry_size, back.size) == (32, 112, 32)
    assert (front.req_prod_pvt, front.rsp_cons) == (0, 0)
    assert (back.req_cons, back.rsp_prod_pvt) == (0, 0)
    for idx in (0, 1, 31, 32, 33, M32 - 1):
        slot = front.request_slot(idx)
        assert len(slot) == BLK_REQ
        assert len(back.response_slot(idx)) == BLK_RSP
        slot[:] = b"\xab" * BLK_REQ
        start = 64 + (idx % 32) * 112
        assert buf[start:start + 112] == b"\xab" * 112
        slot[:] = bytes(BLK_REQ)


def test_entry_size_override_pads_the_union() -> None:
    # union { uint8_t b[5]; uint32_t v; } is 8 bytes, not max(5, 4).
    buf, front, back = new_ring(req=5, rsp=4, entry=8)
    assert (front.size, front.entry_size) == (256, 8)  # 4032 // 8 = 504
    front.put_request(b"abcde")
    front.put_request(b"fghij")
    front.push_requests()
    assert buf[64:69] == b"abcde" and buf[72:77] == b"fghij"
    assert back.get_request() == b"abcde"


def test_bad_geometry() -> None:
    with pytest.raises(ValueError):
        FrontRing(bytearray(100), 112, 16)      # no entry fits
    with pytest.raises(ValueError):
        FrontRing(bytearray(PAGE), 112, 16, entry_size=100)
    with pytest.raises(TypeError):
        FrontRing(bytes(PAGE), 112, 16)  # type: ignore[arg-type]  # read-only, on purpose


def test_works_over_an_mmap_and_releases_it() -> None:
    shm = mmap.mmap(-1, 2 * PAGE)
    shared_ring_init(shm)
    with FrontRing(shm, 48, 16) as front, BackRing(memoryview(shm), 48, 16) as back:
        assert front.size == 128  # (8192 - 64) // 48 = 169 -> 128
        front.put_request(b"x" * 48)
        assert front.push_requests_and_check_notify()
        assert back.get_request() == b"x" * 48
        assert header(shm)[0] == 1
    shm.close()  # BufferError if a ring still held a view


def test_multi_page_ring_uses_every_page() -> None:
    buf, front, back = new_ring(pages=4)
    assert front.size == 128
    for seq in range(128):
        front.put_request(req_bytes(seq))
    assert front.full()
    front.push_requests()
    last = 64 + 127 * 112
    assert buf[last:last + 112] == req_bytes(127) and last + 112 > 3 * PAGE
    assert [back.get_request() for _ in range(128)] == [
        req_bytes(s) for s in range(128)]


# --- requests and responses ----------------------------------------------

def test_round_trip() -> None:
    buf, front, back = new_ring()
    assert front.put_request(req_bytes(1)) == 0
    assert front.put_request(req_bytes(2)) == 1
    assert back.has_unconsumed_requests() == 0  # nothing published yet
    assert header(buf)[0] == 0
    assert front.push_requests_and_check_notify()
    assert header(buf)[0] == 2
    assert back.has_unconsumed_requests() == 2
    assert back.get_request() == req_bytes(1)
    assert back.put_response(rsp_bytes(1)) == 0
    assert back.get_request() == req_bytes(2)
    assert back.put_response(rsp_bytes(2)) == 1
    assert front.has_unconsumed_responses() == 0
    assert back.push_responses_and_check_notify()
    assert header(buf)[2] == 2
    assert front.has_unconsumed_responses() == 2
    assert [front.get_response(), front.get_response()] == [rsp_bytes(1), rsp_bytes(2)]
    assert front.free_requests() == 32
    # The response overwrote the first bytes of its request's slot.
    assert buf[64:64 + 16] == rsp_bytes(1) and buf[80:176] == req_bytes(1)[16:]


def test_put_pads_short_data_and_rejects_long() -> None:
    buf, front, back = new_ring()
    front.request_slot(0)[:] = b"\xee" * BLK_REQ
    front.put_request(b"short")
    assert buf[64:64 + 112] == b"short" + bytes(107)
    with pytest.raises(ValueError):
        front.put_request(bytes(113))
    front.push_requests()
    back.get_request()
    with pytest.raises(ValueError):
        back.put_response(bytes(17))
    back.put_response(b"ok")
    assert buf[64:80] == b"ok" + bytes(14)


def test_build_request_in_place() -> None:
    _buf, front, back = new_ring()
    slot = front.request_slot(front.req_prod_pvt)
    struct.pack_into("<BBHxxxxQQ", slot, 0, 0, 1, 0x51, 77, 8)
    front.req_prod_pvt += 1
    front.push_requests()
    assert struct.unpack_from("<BBHxxxxQQ", back.get_request()) == (0, 1, 0x51, 77, 8)


def test_get_request_is_a_private_copy() -> None:
    _buf, front, back = new_ring()
    front.put_request(req_bytes(5))
    front.push_requests()
    copy = back.get_request()
    front.request_slot(0)[:8] = b"EVILEVIL"  # the frontend rewrites the slot
    assert copy == req_bytes(5)


def test_private_indexes_wrap_on_assignment() -> None:
    _, front, back = new_ring()
    front.req_prod_pvt = M32 + 3
    back.req_cons = -1
    assert (front.req_prod_pvt, back.req_cons) == (3, M32 - 1)


def test_attach_picks_up_a_ring_in_use() -> None:
    buf, front, _ = new_ring(start=100)
    for seq in range(3):
        front.put_request(req_bytes(seq))
    front.push_requests()
    # A backend attaching now (BACK_RING_ATTACH at rsp_prod) still sees
    # the three requests; a front attaching picks up at req_prod.
    back = BackRing(buf, BLK_REQ, BLK_RSP)
    assert (back.req_cons, back.rsp_prod_pvt) == (100, 100)
    assert back.has_unconsumed_requests() == 3
    again = FrontRing(buf, BLK_REQ, BLK_RSP)
    assert (again.req_prod_pvt, again.rsp_cons) == (103, 103)
    explicit = FrontRing(buf, BLK_REQ, BLK_RSP, index=7)
    assert (explicit.req_prod_pvt, explicit.rsp_cons) == (7, 7)


# --- free-running indexes ------------------------------------------------

def test_wrap_around_2_32() -> None:
    start = M32 - 3
    buf, front, back = new_ring(start=start)
    assert (front.req_prod_pvt, back.req_cons) == (start, start)
    indexes = [front.put_request(req_bytes(s)) for s in range(6)]
    assert indexes == [M32 - 3, M32 - 2, M32 - 1, 0, 1, 2]
    assert front.free_requests() == 26 and front.req_prod_pvt == 3
    # Slots are the indexes masked with size - 1: 29, 30, 31, 0, 1, 2.
    for seq, slot in enumerate([29, 30, 31, 0, 1, 2]):
        assert buf[64 + slot * 112:64 + slot * 112 + 112] == req_bytes(seq)
    assert front.push_requests_and_check_notify()  # req_event = start + 1
    assert header(buf)[0] == 3
    assert back.has_unconsumed_requests() == 6
    for seq in range(6):
        assert back.get_request() == req_bytes(seq)
        back.put_response(rsp_bytes(seq))
    assert back.req_cons == 3 and not back.final_check_for_requests()
    assert header(buf)[1] == 4
    assert back.push_responses_and_check_notify()
    assert front.has_unconsumed_responses() == 6
    assert [front.get_response() for _ in range(6)] == [rsp_bytes(s) for s in range(6)]
    assert front.rsp_cons == 3 and front.free_requests() == 32
    assert not front.final_check_for_responses()
    assert header(buf) == (3, 4, 3, 4)


def pad(data: bytes, size: int = BLK_REQ) -> bytes:
    return data + bytes(size - len(data))


def test_batches_match_single_slot_calls_across_the_slot_wrap() -> None:
    # After 29 slots, 3 before the end of the ring and of 2**32: a batch of
    # 6 wraps both the slots and the indexes.
    _buf, front, back = new_ring(start=M32 - 32)
    for _ in range(29):  # move to slot 29 the slow way
        front.put_request(req_bytes(99))
    front.push_requests()
    for _ in range(29):
        back.get_request()
        back.put_response(rsp_bytes(99))
    back.push_responses()
    got = front.get_responses(29)
    # Each response at the start of its slot, the request's tail after it.
    assert got == b"".join(rsp_bytes(99) + req_bytes(99)[16:] for _ in range(29))
    front.put_requests(b"".join(req_bytes(s) for s in range(6)))
    assert front.free_requests() == 26
    front.push_requests()
    assert back.get_requests(6) == b"".join(req_bytes(s) for s in range(6))
    back.put_responses(b"".join(pad(rsp_bytes(s)) for s in range(6)))
    back.push_responses()
    got = front.get_responses(6)
    assert [got[i * 112:i * 112 + 16] for i in range(6)] == [rsp_bytes(s) for s in range(6)]
    assert front.free_requests() == 32 and back.req_cons == front.req_prod_pvt


def test_batches_refuse_what_single_calls_refuse() -> None:
    _buf, front, back = new_ring()
    with pytest.raises(RingFull):
        front.put_requests(bytes(33 * BLK_REQ))
    with pytest.raises(ValueError):
        front.put_requests(bytes(BLK_REQ + 1))
    front.put_requests(bytes(2 * BLK_REQ))
    front.push_requests()
    with pytest.raises(RingError):
        back.get_requests(3)
    back.get_requests(1)
    with pytest.raises(RingError):
        back.put_responses(bytes(2 * BLK_REQ))  # only one request consumed
    back.put_responses(bytes(BLK_REQ))
    back.push_responses()
    with pytest.raises(RingError):
        front.get_responses(2)
    assert front.get_responses(0) == b"" and back.get_requests(0) == b""


def test_notify_across_the_wrap() -> None:
    # Old producer 2**32 - 1, new 1, event at 0: 0 is in (old, new].
    buf, front, _back = new_ring(start=M32 - 1)
    set_header(buf, M32 - 1, 0, M32 - 1, 0)
    front.put_request(b"a")
    front.put_request(b"b")
    assert front.push_requests_and_check_notify()
    # Event at 2**32 - 1 (already passed): no notification.
    set_header(buf, 1, M32 - 1, M32 - 1, 0)
    front.put_request(b"c")
    assert not front.push_requests_and_check_notify()


# --- notification hold-off -----------------------------------------------

def test_push_notifies_only_when_the_event_asks() -> None:
    buf, front, back = new_ring()
    front.put_request(b"1")
    assert front.push_requests_and_check_notify()       # req_event 1 in (0, 1]
    front.put_request(b"2")
    assert not front.push_requests_and_check_notify()   # back is awake
    assert not front.push_requests_and_check_notify()   # nothing new
    assert back.get_request() == b"1" + bytes(111)
    assert back.get_request()[:1] == b"2"
    assert not back.final_check_for_requests()          # arms req_event = 3
    assert header(buf)[1] == 3
    front.put_request(b"3")
    front.put_request(b"4")
    assert front.push_requests_and_check_notify()       # 3 in (2, 4]
    front.put_request(b"5")
    assert not front.push_requests_and_check_notify()


def test_batching_with_a_custom_event() -> None:
    # A backend wanting one event per four requests sets req_event itself
    # (ring.h: "a customised version of the FINAL_CHECK macro").
    buf, front, _back = new_ring()
    struct.pack_into("<I", buf, 4, 4)
    notes = []
    for n in range(1, 9):
        front.put_request(bytes([n]))
        notes.append(front.push_requests_and_check_notify())
    assert notes == [False, False, False, True, False, False, False, False]


def test_response_notify_and_final_check() -> None:
    buf, front, back = new_ring()
    for seq in range(3):
        front.put_request(req_bytes(seq))
    front.push_requests()
    for _ in range(3):
        back.get_request()
    back.put_response(rsp_bytes(0))
    assert back.push_responses_and_check_notify()       # rsp_event 1
    back.put_response(rsp_bytes(1))
    assert not back.push_responses_and_check_notify()   # front not idle
    assert front.final_check_for_responses()            # pending: event untouched
    assert header(buf)[3] == 1
    front.get_response()
    front.get_response()
    assert not front.final_check_for_responses()        # arms rsp_event = 3
    assert header(buf)[3] == 3
    back.put_response(rsp_bytes(2))
    assert back.push_responses_and_check_notify()


def test_final_check_sees_work_pushed_after_arming() -> None:
    # The race the second check closes: the producer pushed after the
    # consumer's first look and before its event write took effect. Here
    # the first look is simulated by pushing without a notification.
    buf, front, back = new_ring()
    struct.pack_into("<I", buf, 4, 100)  # back's event far away: no notify
    front.put_request(b"x")
    assert not front.push_requests_and_check_notify()
    assert back.final_check_for_requests()
    assert header(buf)[1] == 100        # work pending: event not re-armed
    back.get_request()
    assert not back.final_check_for_requests()
    assert header(buf)[1] == 2


# --- flow control and misbehaving peers ----------------------------------

def test_full_ring() -> None:
    _buf, front, back = new_ring(req=2000, rsp=8)       # 4032 // 2000 -> 2
    assert front.size == 2
    front.put_request(b"a")
    front.put_request(b"b")
    assert front.full() and front.free_requests() == 0
    with pytest.raises(RingFull):
        front.put_request(b"c")
    assert front.req_prod_pvt == 2
    front.push_requests()
    back.get_request()
    back.get_request()
    assert back.request_overflow()         # both slots await a response
    back.put_response(b"A")
    assert not back.request_overflow()
    back.push_responses()
    assert front.full()                    # until the response is consumed
    front.get_response()
    assert front.free_requests() == 1
    front.put_request(b"c")
    assert front.full()


def test_one_entry_ring() -> None:
    _, front, back = new_ring(req=4000, rsp=8)
    assert front.size == 1
    for seq in range(5):
        front.put_request(req_bytes(seq, 4000))
        assert front.full()
        front.push_requests()
        assert back.get_request() == req_bytes(seq, 4000)
        back.put_response(rsp_bytes(seq, 8))
        back.push_responses()
        assert front.get_response() == rsp_bytes(seq, 8)


def test_bogus_request_producer() -> None:
    buf, _front, back = new_ring(start=M32 - 10)
    struct.pack_into("<I", buf, 0, (M32 - 10 + 33) % M32)   # 33 > size 32
    with pytest.raises(RingError, match="beyond"):
        back.has_unconsumed_requests()
    with pytest.raises(RingError):
        back.final_check_for_requests()
    struct.pack_into("<I", buf, 0, (M32 - 10 + 32) % M32)   # exactly size: ok
    assert back.has_unconsumed_requests() == 32
    for _ in range(5):
        back.get_request()
    struct.pack_into("<I", buf, 0, M32 - 10 + 3)             # behind req_cons
    with pytest.raises(RingError, match="behind"):
        back.has_unconsumed_requests()
    # Requests consumed but not answered count against the ring.
    struct.pack_into("<I", buf, 0, (M32 - 10 + 33) % M32)
    with pytest.raises(RingError):
        back.get_request()
    back.put_response(b"r")
    back.push_responses()
    assert back.has_unconsumed_requests() == 28


def test_bogus_response_producer() -> None:
    buf, front, _back = new_ring()
    front.put_request(b"a")
    front.put_request(b"b")
    front.push_requests()
    struct.pack_into("<I", buf, 8, 3)      # 3 responses to 2 requests
    with pytest.raises(RingError, match="outstanding"):
        front.has_unconsumed_responses()
    struct.pack_into("<I", buf, 8, M32 - 1)  # moved backwards
    with pytest.raises(RingError):
        front.final_check_for_responses()
    struct.pack_into("<I", buf, 8, 2)
    assert front.has_unconsumed_responses() == 2


def test_nothing_to_get_or_answer() -> None:
    _, front, back = new_ring()
    with pytest.raises(RingError):
        back.get_request()
    with pytest.raises(RingError):
        front.get_response()
    with pytest.raises(RingError):
        back.put_response(b"unasked")
    front.put_request(b"q")
    front.push_requests()
    back.get_request()
    back.put_response(b"r")
    with pytest.raises(RingError):
        back.put_response(b"again")


# --- random interleavings ------------------------------------------------

GEOMETRIES = [
    # pages, req_size, rsp_size, entry_size -> ring size
    (1, BLK_REQ, BLK_RSP, None),   # 32
    (1, 2000, 8, None),            # 2
    (1, 4000, 16, None),           # 1
    (2, 300, 12, 304),             # 16
    (1, 500, 8, None),             # 8
]


class RingMachine(RuleBasedStateMachine):
    """Both ends driven in any order. The model: requests are numbered
    in put order; the back must take them in that order, each once, and
    the front must get their responses in the same order. A consumer that
    went idle (final check found nothing) must be notified by the next
    push that gives it work; a push notifies only if the consumer's event
    index, as the model tracks it, lies in the pushed range."""

    @initialize(geometry=st.sampled_from(GEOMETRIES),
                start=st.one_of(st.sampled_from([0, M32 - 1, M32 - 5, 2**31]),
                                st.integers(0, M32 - 1)))
    def setup(self, geometry, start) -> None:
        pages, self.req_size, self.rsp_size, entry = geometry
        self.buf, self.front, self.back = new_ring(
            pages, self.req_size, self.rsp_size, start, entry)
        self.start = start
        self.put = self.pushed = self.taken = 0     # request counts
        self.answered = self.rsp_pushed = self.got = 0  # response counts
        self.req_event = self.rsp_event = 1         # relative to start
        self.back_idle = self.front_idle = True     # waiting for an event

    def idx(self, count: int) -> int:
        return (self.start + count) % M32

    @rule(n=st.integers(1, 40))
    def put_requests(self, n) -> None:
        for _ in range(n):
            if self.put - self.got == self.front.size:
                assert self.front.full()
                with pytest.raises(RingFull):
                    self.front.put_request(b"")
                return
            assert self.front.put_request(
                req_bytes(self.put, self.req_size)) == self.idx(self.put)
            self.put += 1

    @rule()
    def push_requests(self) -> None:
        old, new = self.pushed, self.put
        notify = self.front.push_requests_and_check_notify()
        assert notify == (old < self.req_event <= new)
        if self.back_idle and new > old:
            assert notify, "lost wakeup: idle backend not notified"
        self.pushed = new
        if notify:
            self.back_idle = False

    @rule(n=st.integers(1, 40))
    def take_requests(self, n) -> None:
        for _ in range(n):
            avail = self.back.has_unconsumed_requests()
            assert avail == self.pushed - self.taken
            if not avail:
                return
            assert self.back.get_request() == req_bytes(self.taken, self.req_size)
            self.taken += 1
            self.back_idle = False

    @rule()
    def back_final_check(self) -> None:
        work = self.back.final_check_for_requests()
        assert work == (self.pushed > self.taken)
        if not work:
            self.req_event = self.taken + 1
            self.back_idle = True

    @rule(n=st.integers(1, 40))
    def put_responses(self, n) -> None:
        for _ in range(n):
            if self.answered == self.taken:
                with pytest.raises(RingError):
                    self.back.put_response(b"")
                return
            assert self.back.put_response(
                rsp_bytes(self.answered, self.rsp_size)) == self.idx(self.answered)
            self.answered += 1

    @rule()
    def push_responses(self) -> None:
        old, new = self.rsp_pushed, self.answered
        notify = self.back.push_responses_and_check_notify()
        assert notify == (old < self.rsp_event <= new)
        if self.front_idle and new > old:
            assert notify, "lost wakeup: idle frontend not notified"
        self.rsp_pushed = new
        if notify:
            self.front_idle = False

    @rule(n=st.integers(1, 40))
    def get_responses(self, n) -> None:
        for _ in range(n):
            avail = self.front.has_unconsumed_responses()
            assert avail == self.rsp_pushed - self.got
            if not avail:
                return
            assert self.front.get_response() == rsp_bytes(self.got, self.rsp_size)
            self.got += 1
            self.front_idle = False

    @rule()
    def front_final_check(self) -> None:
        work = self.front.final_check_for_responses()
        assert work == (self.rsp_pushed > self.got)
        if not work:
            self.rsp_event = self.got + 1
            self.front_idle = True

    @invariant()
    def indexes_agree(self) -> None:
        if not hasattr(self, "front"):
            return
        assert header(self.buf) == (
            self.idx(self.pushed), self.idx(self.req_event),
            self.idx(self.rsp_pushed), self.idx(self.rsp_event))
        assert self.front.req_prod_pvt == self.idx(self.put)
        assert self.front.rsp_cons == self.idx(self.got)
        assert self.back.req_cons == self.idx(self.taken)
        assert self.back.rsp_prod_pvt == self.idx(self.answered)
        assert self.front.free_requests() == self.front.size - (self.put - self.got)
        assert self.back.request_overflow() == (
            self.taken - self.answered >= self.back.size)
        assert self.got <= self.rsp_pushed <= self.answered <= self.taken
        assert self.taken <= self.pushed <= self.put <= self.got + self.front.size


TestRingInterleavings = RingMachine.TestCase
TestRingInterleavings.settings = settings(
    max_examples=150, stateful_step_count=60, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])


def test_final_check_for_responses_ahead_coalesces_events() -> None:
    """A frontend with several requests in flight may ask for the event only
    at a later response; never beyond the last one outstanding."""
    buf, front, back = new_ring()
    for seq in range(6):
        front.put_request(req_bytes(seq))
    front.push_requests()
    assert not front.final_check_for_responses(ahead=3)  # rsp_event = 0 + 3
    assert header(buf)[3] == 3
    for seq in range(6):
        back.get_request()
    for seq in range(2):
        back.put_response(rsp_bytes(seq))
        assert not back.push_responses_and_check_notify()  # 1st, 2nd: no event
    back.put_response(rsp_bytes(2))
    assert back.push_responses_and_check_notify()          # the 3rd: event
    for _ in range(3):
        front.get_response()
    assert not front.final_check_for_responses(ahead=100)  # clamped to 3 outstanding
    assert header(buf)[3] == 6
    assert not front.final_check_for_responses(ahead=0)    # at least the next one
    assert header(buf)[3] == 4
    for seq in range(3, 6):
        back.put_response(rsp_bytes(seq))
    assert back.push_responses_and_check_notify()
    for _ in range(3):
        front.get_response()
    assert not front.final_check_for_responses(ahead=5)    # none outstanding: next
    assert header(buf)[3] == 7


def test_front_fast_path_takes_counted_responses_and_reposts_what_is_done() -> None:
    """The data path's methods (netfront's): take_responses for what
    has_unconsumed_responses counted, free_requests_upto for reposting the
    slots of the responses it is done with, put_requests refusing more than
    is free; the indexes stay the ring's own."""
    buf = bytearray(ring.SRING_HEADER_SIZE + 8 * 8)
    ring.shared_ring_init(buf)
    front, back = FrontRing(buf, 8, 8), BackRing(buf, 8, 8)
    front.put_requests(b"".join(struct.pack("<Q", i) for i in range(8)))
    with pytest.raises(RingFull):
        front.put_requests(bytes(8))
    front.push_requests()
    back.put_responses(back.get_requests(8)[:5 * 8])
    back.push_responses()
    n = front.has_unconsumed_responses()
    assert n == 5
    assert front.take_responses(n) == b"".join(struct.pack("<Q", i) for i in range(5))
    assert front.rsp_cons == 5 and front.free_requests() == 5
    # Done with the first three only (the last two still being read).
    assert front.free_requests_upto(front.rsp_cons - 2) == 3
    front.put_requests(bytes(3 * 8))
    assert front.free_requests_upto(front.rsp_cons - 2) == 0
    assert front.req_prod_pvt == 11
