"""io/ring.h: the shared producer-consumer request/response ring.

Every split driver (blkif, netif, ...) talks over one of these: the frontend
puts requests on the ring, the backend takes them off and puts responses in
the same slots. ``DEFINE_RING_TYPES(name, req_t, rsp_t)`` lays the shared
memory out as::

    union name_sring_entry {
        req_t req;
        rsp_t rsp;
    };

    struct name_sring {                       /* offset */
        RING_IDX req_prod, req_event;         /*  0,  4 */
        RING_IDX rsp_prod, rsp_event;         /*  8, 12 */
        union {
            struct { uint8_t smartpoll_active; } netif;
            struct { uint8_t msg; } tapif_user;
            uint8_t pvt_pad[4];
        } pvt;                                /* 16     */
        uint8_t __pad[44];                    /* 20     */
        union name_sring_entry ring[1]; /* variable-length */  /* 64 */
    };

``RING_IDX`` is ``unsigned int``. The entry size is the union's:
``max(sizeof req, sizeof rsp)`` rounded up to the union's alignment (pass
``entry_size`` when that rounding adds bytes). The ring holds
``__RING_SIZE`` entries: the largest power of two not above
``(buffer size - 64) / entry size``, over the whole buffer, so a ring of
``ring-page-order`` n is simply a buffer of 2**n pages. One 4 KiB page of
blkif (112-byte requests) holds 32 entries.

Indexes are free-running uint32: they are never reset, wrap at 2**32, and
``idx & (size - 1)`` picks the slot. Both ends keep private indexes
(``req_prod_pvt``/``rsp_cons`` in the front, ``req_cons``/``rsp_prod_pvt``
in the back) and publish progress through the shared ``req_prod`` and
``rsp_prod``. The consumer asks to be notified by setting ``req_event``/
``rsp_event`` to the index whose production should raise an event: a
producer that moves its index from ``old`` to ``new`` notifies iff
``new - event < new - old`` (mod 2**32), i.e. iff ``event`` lies in
``(old, new]``. ring.h does no flow control: a frontend never has more
than ``size`` requests outstanding, and each request gets one response.

The header indexes are read and written through a native uint32 view of the
buffer, as C reads them (one aligned 4-byte access each). Nothing shared is
cached on the Python side: only the private indexes ring.h keeps. Each of
ring.h's barriers is a call to ``_xen_mb``/``_xen_wmb``/``_xen_rmb`` (a
lock round trip: CPython has no fence), and the reads of an entry follow a
read barrier after its producer index was seen to cover it.

Module API (ring.h's macro in brackets):

``RING_IDX``
    ctypes.c_uint32, the index type.
``SRING_HEADER_SIZE``
    64, the offset of ``ring[0]`` in the shared ring.
``ring_size(buf_size, entry_size) -> int``
    [__RING_SIZE] how many entries fit in ``buf_size`` bytes: the largest
    power of two not above ``(buf_size - 64) // entry_size``, or 0.
``shared_ring_init(buf) -> None``
    [SHARED_RING_INIT] make ``buf`` an empty ring: ``req_prod = rsp_prod =
    0``, ``req_event = rsp_event = 1``, the 48 bytes of ``pvt`` and
    ``__pad`` zeroed. The entries are left alone. Only the frontend does
    this, before it attaches.

``FrontRing(buf, req_size, rsp_size, entry_size=None, *, index=None)``
    [FRONT_RING_ATTACH] the front end of the ring in ``buf`` (any writable
    buffer: bytearray, a memoryview of an mmap, ...). ``req_prod_pvt`` and
    ``rsp_cons`` start at ``index``, by default the shared ``req_prod``
    (0 right after ``shared_ring_init``: FRONT_RING_INIT). ``entry_size``
    defaults to ``max(req_size, rsp_size)``. ValueError if no entry fits.
    Attributes: ``size`` (RING_SIZE), ``req_size``, ``rsp_size``,
    ``entry_size``, and the private ``req_prod_pvt`` and ``rsp_cons``
    (assignments wrap at 2**32).
``FrontRing.free_requests() -> int``
    [RING_FREE_REQUESTS] ``size - (req_prod_pvt - rsp_cons)``.
``FrontRing.full() -> bool``
    [RING_FULL] no free request slot.
``FrontRing.request_slot(idx) -> memoryview``
    [RING_GET_REQUEST] the ``req_size`` bytes of slot ``idx & (size-1)``,
    in shared memory, to build a request in place (then advance
    ``req_prod_pvt`` yourself).
``FrontRing.put_request(data) -> int``
    copy ``data`` (at most ``req_size`` bytes, zero-padded to it) into the
    slot of ``req_prod_pvt``, advance ``req_prod_pvt``, and return the index
    used. Nothing is published until a push. RingFull if the ring is full.
``FrontRing.push_requests() -> None``
    [RING_PUSH_REQUESTS] publish ``req_prod = req_prod_pvt``.
``FrontRing.push_requests_and_check_notify() -> bool``
    [RING_PUSH_REQUESTS_AND_CHECK_NOTIFY] publish, and say whether the
    backend asked (``req_event``) to be notified of these requests: if
    True, kick the event channel.
``FrontRing.has_unconsumed_responses() -> int``
    [RING_HAS_UNCONSUMED_RESPONSES] ``rsp_prod - rsp_cons``. RingError if
    the backend claims more responses than there are requests outstanding
    (a superset of RING_RESPONSE_PROD_OVERFLOW).
``FrontRing.get_response() -> bytes``
    [RING_COPY_RESPONSE] a private copy of the ``rsp_size`` bytes at
    ``rsp_cons``; advances ``rsp_cons``. RingError if there is none.
``FrontRing.put_requests(entries) -> None``
    [RING_GET_REQUEST + copy, for a batch] ``entries`` is ``n`` whole
    slots (``n * entry_size`` bytes, each request zero-padded to the
    entry): written at ``req_prod_pvt`` in one or two copies (the ring may
    wrap), which advances by ``n``. RingFull if fewer than ``n`` slots are
    free.
``FrontRing.get_responses(n) -> bytes``
    [RING_COPY_RESPONSE, for a batch] a private copy of the next ``n``
    slots (``n * entry_size`` bytes: each response at the start of its
    slot); advances ``rsp_cons``. RingError if fewer than ``n`` are there.
``FrontRing.final_check_for_responses(ahead=1) -> bool``
    [RING_FINAL_CHECK_FOR_RESPONSES] before going idle: True if responses
    are pending; otherwise set ``rsp_event = rsp_cons + 1`` (notify me on
    the next response) and check once more, closing the race with a
    backend that pushed meanwhile.  ``ahead`` > 1 asks for the event only
    at the ahead-th next response (at most the number of requests
    outstanding, so one always comes): one event per batch of responses
    when many requests are in flight (the event index may be any index,
    ring.h's macro just picks the next one).

``BackRing(buf, req_size, rsp_size, entry_size=None, *, index=None)``
    [BACK_RING_ATTACH] the back end: ``rsp_prod_pvt`` and ``req_cons``
    start at ``index``, by default the shared ``rsp_prod`` (as netback
    attaches: requests the frontend pushed already are still unconsumed).
    Attributes: ``size``, ``req_size``, ``rsp_size``, ``entry_size``, the
    private ``req_cons`` and ``rsp_prod_pvt``.
``BackRing.has_unconsumed_requests() -> int``
    [RING_HAS_UNCONSUMED_REQUESTS] requests pushed and not yet consumed,
    never more than ``size``. RingError if the frontend's ``req_prod``
    claims more than ``size`` requests beyond ``rsp_prod_pvt``
    (RING_REQUEST_PROD_OVERFLOW) or moved back behind ``req_cons``: a
    careful backend treats either as a broken frontend.
``BackRing.get_request() -> bytes``
    [RING_COPY_REQUEST] a private copy of the ``req_size`` bytes at
    ``req_cons`` (the frontend may rewrite shared memory under us: parse
    only the copy); advances ``req_cons``. RingError if there is none.
``BackRing.get_requests(n) -> bytes``
    [RING_COPY_REQUEST, for a batch] a private copy of the next ``n``
    slots (``n * entry_size`` bytes); advances ``req_cons``. RingError if
    fewer than ``n`` are unconsumed.
``BackRing.put_responses(entries) -> None``
    ``entries``, ``n`` whole slots, written at ``rsp_prod_pvt``, which
    advances by ``n``. RingError if fewer than ``n`` consumed requests are
    unanswered.
``BackRing.request_overflow() -> bool``
    [RING_REQUEST_CONS_OVERFLOW] ``req_cons - rsp_prod_pvt >= size``: every
    slot holds a consumed but unanswered request; respond before taking
    more.
``BackRing.response_slot(idx) -> memoryview``
    [RING_GET_RESPONSE] the ``rsp_size`` bytes of slot ``idx & (size-1)``.
``BackRing.put_response(data) -> int``
    copy ``data`` (zero-padded to ``rsp_size``) into the slot of
    ``rsp_prod_pvt``, advance it, return the index used. RingError if every
    consumed request has its response already (the slot would overwrite an
    unconsumed request).
``BackRing.push_responses() -> None``
    [RING_PUSH_RESPONSES] publish ``rsp_prod = rsp_prod_pvt``.
``BackRing.push_responses_and_check_notify() -> bool``
    [RING_PUSH_RESPONSES_AND_CHECK_NOTIFY] publish; True if the frontend
    asked (``rsp_event``) to be notified.
``BackRing.final_check_for_requests() -> bool``
    [RING_FINAL_CHECK_FOR_REQUESTS] before going idle: True if requests are
    pending; otherwise set ``req_event = req_cons + 1`` and check again.

``FrontRing.close()``, ``BackRing.close()`` (or ``with``) release the view
of ``buf`` so that an mmap can be closed (release the memoryviews
``request_slot``/``response_slot`` returned too).
``Buffer``
    the annotation for ``buf``: bytearray | memoryview | mmap.mmap.

``RingError``
    a protocol violation by the other end, or a misuse of the ring.
``RingFull(RingError)``
    ``put_request`` on a full ring.

The usual loops, as in C (``notify`` kicks the ring's event channel)::

    # frontend: send, then on each event collect
    ring.put_request(req)
    if ring.push_requests_and_check_notify():
        notify()
    while True:
        while ring.has_unconsumed_responses():
            done(ring.get_response())
        if not ring.final_check_for_responses():
            break  # idle until the next event

    # backend: on each event
    while True:
        while ring.has_unconsumed_requests():
            ring.put_response(handle(ring.get_request()))
        if ring.push_responses_and_check_notify():
            notify()
        if not ring.final_check_for_requests():
            break  # idle until the next event
"""

import ctypes
import mmap
import threading
from typing import Self

RING_IDX = ctypes.c_uint32
SRING_HEADER_SIZE = 64

#: Indexes into the header's uint32 view: struct name_sring's first fields.
_req_prod, _req_event, _rsp_prod, _rsp_event = range(4)
_idx_mask = (1 << 32) - 1
_header_bytes = 4 * ctypes.sizeof(RING_IDX)
# The header is read through a native "I" view: that must be a RING_IDX.
assert memoryview(bytes(_header_bytes)).cast("I").itemsize == ctypes.sizeof(RING_IDX)

#: What a ring lives in: any writable buffer.
Buffer = bytearray | memoryview | mmap.mmap

# CPython has no fence. A lock's release followed by an acquire is one: on
# Linux a Lock is a POSIX semaphore, and glibc's sem_post/sem_trywait are
# locked read-modify-writes on x86 (full barriers), a store-release and a
# load-acquire on ARMv8 (which stay in order: RCsc). So acquire+release
# twice orders every access before the call before every access after it.
_fence = threading.Lock()
_fence_acquire, _fence_release = _fence.acquire, _fence.release


def _xen_mb() -> None:
    """Full memory barrier (ring.h's xen_mb).  The bound methods, not a
    `with`: this runs several times per frame on the network data path."""
    _fence_acquire()
    _fence_release()
    _fence_acquire()
    _fence_release()


_xen_wmb = _xen_mb
_xen_rmb = _xen_mb


class RingError(Exception):
    """The other end broke the ring protocol, or the ring was misused."""


class RingFull(RingError):
    """No free request slot."""


def ring_size(buf_size: int, entry_size: int) -> int:
    """__RING_SIZE: the largest power of two not above
    ``(buf_size - 64) // entry_size`` (0 if no entry fits)."""
    if entry_size <= 0:
        raise ValueError(f"entry size {entry_size} must be positive")
    n = (buf_size - SRING_HEADER_SIZE) // entry_size
    return 1 << (n.bit_length() - 1) if n > 0 else 0


def _byte_view(buf: Buffer) -> memoryview:
    view = memoryview(buf)
    if view.readonly or not view.c_contiguous:
        raise TypeError("a ring needs a writable, contiguous buffer")
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view[:]


def shared_ring_init(buf: Buffer) -> None:
    """SHARED_RING_INIT: an empty ring, both event indexes at 1."""
    with _byte_view(buf) as view:
        if view.nbytes < SRING_HEADER_SIZE:
            raise ValueError(f"{view.nbytes} bytes hold no ring header")
        with view[:_header_bytes].cast("I") as header:
            header[_req_prod] = header[_rsp_prod] = 0
            header[_req_event] = header[_rsp_event] = 1
        view[_header_bytes:SRING_HEADER_SIZE] = bytes(
            SRING_HEADER_SIZE - _header_bytes)


class _Index:
    """A private free-running index: assignments wrap at 2**32. The value
    lives in "_" + name, which the hot paths below read and write directly
    (wrapping by hand), without a Python-level call."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.attr = "_" + name

    def __get__(self, ring: object, owner: type | None = None) -> int:
        return getattr(ring, self.attr)

    def __set__(self, ring: object, value: int) -> None:
        setattr(ring, self.attr, value & _idx_mask)


class _Ring:
    """What both ends share: the buffer, its header view and the slots."""

    def __init__(self, buf: Buffer, req_size: int, rsp_size: int,
                 entry_size: int | None) -> None:
        if entry_size is None:
            entry_size = max(req_size, rsp_size)
        if min(req_size, rsp_size) <= 0 or entry_size < max(req_size, rsp_size):
            raise ValueError(f"bad sizes: request {req_size}, response "
                             f"{rsp_size}, entry {entry_size}")
        self._view = _byte_view(buf)
        self.size = ring_size(self._view.nbytes, entry_size)
        if self.size == 0:
            nbytes = self._view.nbytes
            self._view.release()
            raise ValueError(f"a {nbytes}-byte buffer holds no "
                             f"{entry_size}-byte entry")
        self.req_size, self.rsp_size, self.entry_size = req_size, rsp_size, entry_size
        # Native uint32s, one aligned 4-byte access each, as C sees them.
        self._header = self._view[:_header_bytes].cast("I")

    def _slot(self, idx: int, length: int) -> memoryview:
        start = SRING_HEADER_SIZE + (idx & (self.size - 1)) * self.entry_size
        return self._view[start:start + length]

    def _copy_out(self, idx: int, n: int) -> bytes:
        """The bytes of `n` slots from index `idx`, as one private copy."""
        entry, size = self.entry_size, self.size
        first = idx & (size - 1)
        start = SRING_HEADER_SIZE + first * entry
        if first + n <= size:
            return bytes(self._view[start:start + n * entry])
        head = size - first
        return (bytes(self._view[start:SRING_HEADER_SIZE + size * entry])
                + bytes(self._view[SRING_HEADER_SIZE:SRING_HEADER_SIZE
                                   + (n - head) * entry]))

    def _copy_in(self, idx: int, entries: bytes | bytearray | memoryview) -> int:
        """Write whole slots from index `idx`; how many."""
        entry, size = self.entry_size, self.size
        n, rest = divmod(len(entries), entry)
        if rest or n > size:
            raise ValueError(f"{len(entries)} bytes are not whole {entry}-byte "
                             f"slots of a {size}-slot ring")
        first = idx & (size - 1)
        start = SRING_HEADER_SIZE + first * entry
        head = min(n, size - first) * entry
        self._view[start:start + head] = entries[:head]
        if head < len(entries):
            self._view[SRING_HEADER_SIZE:SRING_HEADER_SIZE + len(entries) - head] = \
                entries[head:]
        return n

    @staticmethod
    def _fill(slot: memoryview, data: bytes, what: str) -> None:
        if len(data) > len(slot):
            raise ValueError(f"{what} of {len(data)} bytes exceeds "
                             f"{len(slot)}")
        slot[:len(data)] = data
        slot[len(data):] = bytes(len(slot) - len(data))

    @staticmethod
    def _event_in(event: int, old: int, new: int) -> bool:
        """Did the producer index, moving from old to new, reach the event
        index? ``(RING_IDX)(new - event) < (RING_IDX)(new - old)``."""
        return (new - event) & _idx_mask < (new - old) & _idx_mask

    def close(self) -> None:
        """Release the view of the buffer (an mmap can be closed after)."""
        self._header.release()
        self._view.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FrontRing(_Ring):
    """The frontend's half: puts requests, takes responses."""

    req_prod_pvt = _Index()
    rsp_cons = _Index()

    def __init__(self, buf: Buffer, req_size: int, rsp_size: int,
                 entry_size: int | None = None, *, index: int | None = None
                 ) -> None:
        super().__init__(buf, req_size, rsp_size, entry_size)
        if index is None:
            index = self._header[_req_prod]
        self.req_prod_pvt = self.rsp_cons = index

    def __repr__(self) -> str:
        return (f"<FrontRing size={self.size} req_prod_pvt={self.req_prod_pvt}"
                f" rsp_cons={self.rsp_cons}>")

    # The hot methods below read and write the private indexes' slots
    # (_req_prod_pvt, _rsp_cons ...) directly, wrapping by hand: the _Index
    # descriptor costs a Python call per access, dozens per request.

    def free_requests(self) -> int:
        return self.size - ((self._req_prod_pvt - self._rsp_cons) & _idx_mask)

    def full(self) -> bool:
        return self.free_requests() == 0

    def request_slot(self, idx: int) -> memoryview:
        return self._slot(idx, self.req_size)

    def put_request(self, data: bytes) -> int:
        idx = self._req_prod_pvt
        if (idx - self._rsp_cons) & _idx_mask >= self.size:
            raise RingFull(f"all {self.size} request slots are outstanding")
        self._fill(self._slot(idx, self.req_size), data, "request")
        self._req_prod_pvt = (idx + 1) & _idx_mask
        return idx

    def put_requests(self, entries: bytes | bytearray | memoryview) -> None:
        """Whole request slots, in order (private until pushed); RingFull,
        nothing put, if fewer slots are free.  A data path's: a few
        attribute reads, no call per index."""
        prod = self._req_prod_pvt
        n = len(entries) // self.entry_size
        if n > self.size - ((prod - self._rsp_cons) & _idx_mask):
            raise RingFull(f"{n} requests, {self.free_requests()} slots free")
        self._req_prod_pvt = (prod + self._copy_in(prod, entries)) & _idx_mask

    def free_requests_upto(self, idx: int) -> int:
        """Request slots free before the response index `idx` (at most
        rsp_cons): what a frontend may put again when it reposts the slot
        of each response it is done with, but not of those from `idx` on
        (a frame whose buffers it still reads)."""
        return (idx - (self._req_prod_pvt - self.size)) & _idx_mask

    def push_requests(self) -> None:
        _xen_wmb()  # back sees requests /before/ updated producer index
        self._header[_req_prod] = self.req_prod_pvt

    def push_requests_and_check_notify(self) -> bool:
        header = self._header
        old, new = header[_req_prod], self._req_prod_pvt
        _xen_wmb()  # back sees requests /before/ updated producer index
        header[_req_prod] = new
        _xen_mb()  # back sees new requests /before/ we check req_event
        return self._event_in(header[_req_event], old, new)

    def has_unconsumed_responses(self) -> int:
        cons = self._rsp_cons
        pending = (self._header[_rsp_prod] - cons) & _idx_mask
        outstanding = (self._req_prod_pvt - cons) & _idx_mask
        if pending > outstanding:
            raise RingError(f"backend claims {pending} responses, only "
                            f"{outstanding} requests are outstanding")
        return pending

    def get_response(self) -> bytes:
        if not self.has_unconsumed_responses():
            raise RingError("no unconsumed response")
        _xen_rmb()  # read the response only /after/ seeing rsp_prod cover it
        cons = self._rsp_cons
        data = bytes(self._slot(cons, self.rsp_size))
        self._rsp_cons = (cons + 1) & _idx_mask
        return data

    def get_responses(self, n: int) -> bytes:
        if n < 0 or self.has_unconsumed_responses() < n:
            raise RingError(f"{n} responses asked for, fewer are unconsumed")
        _xen_rmb()  # read the responses only /after/ seeing rsp_prod cover them
        cons = self._rsp_cons
        data = self._copy_out(cons, n)
        self._rsp_cons = (cons + n) & _idx_mask
        return data

    def take_responses(self, n: int) -> bytes:
        """:meth:`get_responses` of `n` responses that
        :meth:`has_unconsumed_responses` has just counted (so not checked
        again): the data path's, one copy of whole slots."""
        _xen_rmb()  # read the responses only /after/ seeing rsp_prod cover them
        cons = self._rsp_cons
        data = self._copy_out(cons, n)
        self._rsp_cons = (cons + n) & _idx_mask
        return data

    def final_check_for_responses(self, ahead: int = 1) -> bool:
        if self.has_unconsumed_responses():
            return True
        # ahead > 1: be notified only at the ahead-th next response, never
        # later than the last one outstanding (or the wakeup would be lost).
        cons = self._rsp_cons
        outstanding = (self._req_prod_pvt - cons) & _idx_mask
        ahead = max(1, min(ahead, outstanding))
        self._header[_rsp_event] = (cons + ahead) & _idx_mask
        _xen_mb()  # back sees rsp_event /before/ we check rsp_prod again
        return bool(self.has_unconsumed_responses())


class BackRing(_Ring):
    """The backend's half: takes requests, puts responses."""

    rsp_prod_pvt = _Index()
    req_cons = _Index()

    def __init__(self, buf: Buffer, req_size: int, rsp_size: int,
                 entry_size: int | None = None, *, index: int | None = None
                 ) -> None:
        super().__init__(buf, req_size, rsp_size, entry_size)
        if index is None:
            index = self._header[_rsp_prod]
        self.rsp_prod_pvt = self.req_cons = index

    def __repr__(self) -> str:
        return (f"<BackRing size={self.size} req_cons={self.req_cons}"
                f" rsp_prod_pvt={self.rsp_prod_pvt}>")

    def has_unconsumed_requests(self) -> int:
        req_prod = self._header[_req_prod]
        prod = self._rsp_prod_pvt
        claimed = (req_prod - prod) & _idx_mask
        consumed = (self._req_cons - prod) & _idx_mask
        if claimed > self.size:  # RING_REQUEST_PROD_OVERFLOW
            raise RingError(f"frontend's req_prod {req_prod} is {claimed} "
                            f"requests beyond rsp_prod_pvt "
                            f"{self.rsp_prod_pvt}; the ring holds {self.size}")
        if claimed < consumed:
            raise RingError(f"frontend's req_prod {req_prod} went back "
                            f"behind req_cons {self.req_cons}")
        # == min(req_prod - req_cons, size - (req_cons - rsp_prod_pvt)),
        # XEN_RING_NR_UNCONSUMED_REQUESTS, once claimed <= size.
        return claimed - consumed

    def get_request(self) -> bytes:
        if not self.has_unconsumed_requests():
            raise RingError("no unconsumed request")
        _xen_rmb()  # read the request only /after/ seeing req_prod cover it
        cons = self._req_cons
        data = bytes(self._slot(cons, self.req_size))
        self._req_cons = (cons + 1) & _idx_mask
        return data

    def get_requests(self, n: int) -> bytes:
        data = self.peek_requests(n)
        self._req_cons = (self._req_cons + n) & _idx_mask
        return data

    def peek_requests(self, n: int) -> bytes:
        """A copy of the next `n` unconsumed requests, left unconsumed
        (consume_requests takes them): a backend that finds the last
        request of a batch starts something it cannot finish in it leaves
        that for the next batch."""
        if n < 0 or self.has_unconsumed_requests() < n:
            raise RingError(f"{n} requests asked for, fewer are unconsumed")
        _xen_rmb()  # read the requests only /after/ seeing req_prod cover them
        return self._copy_out(self._req_cons, n)

    def consume_requests(self, n: int) -> None:
        if n < 0 or self.has_unconsumed_requests() < n:
            raise RingError(f"{n} requests to consume, fewer are unconsumed")
        self._req_cons = (self._req_cons + n) & _idx_mask

    def put_responses(self, entries: bytes | bytearray | memoryview) -> None:
        n = len(entries) // self.entry_size
        prod = self._rsp_prod_pvt
        if n > (self._req_cons - prod) & _idx_mask:
            raise RingError(f"{n} responses for fewer unanswered requests: the "
                            "slots still hold unconsumed requests")
        self._rsp_prod_pvt = (prod + self._copy_in(prod, entries)) & _idx_mask

    def request_overflow(self) -> bool:
        return (self.req_cons - self.rsp_prod_pvt) & _idx_mask >= self.size

    def response_slot(self, idx: int) -> memoryview:
        return self._slot(idx, self.rsp_size)

    def put_response(self, data: bytes) -> int:
        idx = self._rsp_prod_pvt
        if idx == self._req_cons:
            raise RingError("every consumed request has its response: this "
                            "slot still holds an unconsumed request")
        self._fill(self._slot(idx, self.rsp_size), data, "response")
        self._rsp_prod_pvt = (idx + 1) & _idx_mask
        return idx

    def push_responses(self) -> None:
        _xen_wmb()  # front sees resps /before/ updated producer index
        self._header[_rsp_prod] = self.rsp_prod_pvt

    def push_responses_and_check_notify(self) -> bool:
        header = self._header
        old, new = header[_rsp_prod], self._rsp_prod_pvt
        _xen_wmb()  # front sees resps /before/ updated producer index
        header[_rsp_prod] = new
        _xen_mb()  # front sees new resps /before/ we check rsp_event
        return self._event_in(header[_rsp_event], old, new)

    def final_check_for_requests(self) -> bool:
        if self.has_unconsumed_requests():
            return True
        self._header[_req_event] = (self._req_cons + 1) & _idx_mask
        _xen_mb()  # front sees req_event /before/ we check req_prod again
        return bool(self.has_unconsumed_requests())
