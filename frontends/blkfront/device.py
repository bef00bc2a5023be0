"""blkfront's connection to one virtual block device.

Frontend side of io/blkif.h's dance: wait for the backend's InitWait, read
its features, set up rings and grants, publish them, Initialised, wait for
the backend's Connected, Connected.

Memory: every page the backend may touch lives in one grant window opened
for the backend's domain only (a Connection's): the rings, one
indirect-segment page per ring slot, a pool of bounce pages and an area for
callers' DMA buffers, all granted once (persistent grants). Data is copied
between a caller's ordinary buffers and bounce pages, as through a
restricted DMA pool; a DmaBuffer is window pages itself, used in place.
Nothing else of the guest is ever shared.

I/O: submit() puts a request on a ring and returns an IORequest at once, so
a caller keeps many in flight (a queue depth); the upcall thread completes
them as responses arrive, in any order. Each ring's shadow (shadow.py)
knows what is in flight: when the backend goes away, every request without
a response is kept, in issue order, and issued again as soon as the next
backend is connected, before anything new; the caller only sees a pause.
"""

from __future__ import annotations

import threading
from typing import Any, Self

from domains.kernel.api import DriverKernel
from domains.kernel.xenbus.lifecycle import Frontend, FrontendHooks
from domains.kernel.xenbus.state import read_feature, write_features
from frontends.blkfront.pool import Pool, PoolClosed
from frontends.blkfront.requests import PageSegments, fill_indirect_pages
from frontends.blkfront.shadow import Shadow
from hypervisor.public.errno import XenError
from hypervisor.public.io import blkif
from hypervisor.public.io.blkif import (
    BLKIF_MAX_SEGMENTS_PER_REQUEST,
    BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE,
    BLKIF_OP_INDIRECT,
    BLKIF_OP_READ,
    BLKIF_OP_WRITE,
    BLKIF_RSP_OKAY,
    VDISK_READONLY,
)
from hypervisor.public.io.ring import FrontRing, ring_size, shared_ring_init
from hypervisor.public.xen import PAGE_SIZE

SECTOR = 512
SECTORS_PER_PAGE = PAGE_SIZE // SECTOR
RING_PAGE_ORDER = 2  # four pages: 128 requests in flight per queue
POOL_PAGES = 1024  # 4 MiB of bounce pages shared with the backend
DMA_PAGES = 2048   # 8 MiB for callers' DMA buffers (BlkfrontDevice.buffer)
PROTOCOL = "arm-abi"  # XEN_IO_PROTO_ABI_ARM
RECONNECT_TIMEOUT = 120.0
LAYOUT_CACHE_SIZE = 512  # request layouts kept per connection (Connection.layout)


class BlockIOError(OSError):
    """The backend answered a request with an error status."""


class DeviceGone(OSError):
    """The device was detached or its backend closed it."""


class DmaBuffer:
    """Bytes in the device's grant window, for I/O without a copy.

    Requests normally go through bounce pages: the data is copied between
    the caller's buffer and pool pages, the only pages the backend sees.  A
    DmaBuffer *is* granted pages (persistently granted at connect, like the
    pool), so a read lands in it and a write leaves from it directly, as
    the caller's own pages do in Linux's blkfront without persistent
    grants, or as O_DIRECT / io_uring registered buffers.  The backend can
    read and write these pages whenever it likes: keep nothing but disk
    data in them.  `view` is the writable memory; do not touch it while a
    request on it is in flight.  After a reconnect the pages belong to the
    old connection: I/O with the buffer still works, through bounce pages.
    """

    def __init__(self, conn: Connection, pages: list[int], nbytes: int,
                 owner: DmaBuffer | None = None) -> None:
        if pages[-1] - pages[0] != len(pages) - 1 or len(pages) * PAGE_SIZE < nbytes:
            raise ValueError("a DMA buffer is one run of pages holding its bytes")
        self.conn = conn
        self.pages = pages
        first = pages[0] * PAGE_SIZE
        self.view = conn.map[first:first + nbytes]
        self.owner = owner
        self.released = False

    def __len__(self) -> int:
        return len(self.view)

    def part(self, start: int, length: int) -> DmaBuffer:
        """Bytes start..start+length-1 (start a multiple of the page size),
        sharing this buffer's pages; not closed on its own."""
        if start % PAGE_SIZE or not 0 <= start <= start + length <= len(self):
            raise ValueError(f"part {start}+{length} of a {len(self)}-byte DMA buffer")
        first = start // PAGE_SIZE
        pages = self.pages[first:first + max(1, -(-length // PAGE_SIZE))]
        return DmaBuffer(self.conn, pages, length, owner=self.owner or self)

    def close(self) -> None:
        """Give the pages back (only the buffer buffer() returned owns them)."""
        if self.owner is None and not self.released:
            self.released = True
            self.view.release()
            self.conn.dma.give(self.pages)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class IORequest:
    """One blkif request as the caller sees it: issued by
    BlkfrontDevice.submit(), `finished` once answered (wait()).  It
    survives reconnects: if the backend goes away before answering, the
    request is issued again, unchanged, to the next backend.  It finishes
    once, with its `error` (None: success) set first."""

    __slots__ = ("_waiter", "bounced", "conn", "data", "error", "finished", "indirect",
                 "nr_sectors", "op", "out", "pages", "sector", "status")

    def __init__(self, op: int, sector: int, nr_sectors: int, data: Any = None,
                 out: Any = None) -> None:
        self.op, self.sector, self.nr_sectors = op, sector, nr_sectors
        self.data = data    # what a write sends: bytes-like, or a DmaBuffer
        self.out = out      # where a read lands: writable bytes-like, or a DmaBuffer
        self.pages: list[int] = []     # window pages of the current issue
        self.indirect = -1             # its ring's indirect page, if any
        self.bounced = False           # pages are pool pages (else a DmaBuffer's)
        self.conn: Connection | None = None
        self.status = BLKIF_RSP_OKAY
        self.error: OSError | None = None
        # A lock held until the request is finished: the lightest way for
        # the submitter to sleep until the upcall thread completes it (an
        # Event is a Condition, several times the Python work per request).
        self.finished = False
        self._waiter = threading.Lock()
        self._waiter.acquire()

    def finish(self) -> None:
        """Done (status / error set before): wake the waiters."""
        self.finished = True
        self._waiter.release()

    def wait(self, timeout: float | None = None) -> None:
        """Until the backend answered; BlockIOError / DeviceGone if it failed."""
        if not self.finished:
            if not self._waiter.acquire(timeout=-1 if timeout is None else timeout):
                raise TimeoutError(f"{_OPS.get(self.op, self.op)} at {self.sector} "
                                   "still in flight")
            self._waiter.release()  # for any other waiter
        if self.error is not None:
            raise self.error

    def fail(self, error: OSError) -> None:
        self.error = error
        self.finish()


class Queue:
    """One ring: requests in flight by id (the shadow), their callers'
    IORequests, the ring's own indirect pages (one per slot, so a request
    that got a slot always finds one), and the event channel the backend
    answers on."""

    def __init__(self, conn: Connection, index: int, first_page: int,
                 nr_pages: int, indirect_pages: range) -> None:
        self.conn = conn
        self.index = index
        self.kernel = conn.device.kernel
        self.view = conn.map[first_page * PAGE_SIZE:(first_page + nr_pages) * PAGE_SIZE]
        shared_ring_init(self.view)
        self.ring = FrontRing(self.view, blkif.BLKIF_SRING_ENTRY_SIZE, blkif.RESPONSE.size)
        self.refs = [conn.grant(first_page + i) for i in range(nr_pages)]
        self.shadow = Shadow(self.ring.size)
        self.pending: dict[int, IORequest] = {}
        self.indirect_free = list(indirect_pages)
        # One lock for the ring, the shadow and the free lists; submitters
        # sleep on it only when every slot is in flight.
        self.lock = threading.Lock()
        self.slot_freed = threading.Condition(self.lock)
        self.waiting = 0
        self.dead = False
        self.port = self.kernel.events.alloc_unbound(conn.device.backend_id)
        self.kernel.events.bind(self.port, self.responses)

    def submit(self, req: IORequest, segments: PageSegments | None,
               indirect: bytes | None) -> bool:
        """Put `req` on the ring (with its indirect page's contents, if it
        needs one); False (nothing issued) if the backend is gone."""
        with self.lock:
            while True:
                if self.dead:
                    return False
                if not self.shadow.full:
                    break
                self.waiting += 1
                self.slot_freed.wait()
                self.waiting -= 1
            op = req.op
            if indirect is not None:
                page = self.indirect_free.pop()
                start = page * PAGE_SIZE
                self.conn.map[start:start + PAGE_SIZE] = indirect
                try:
                    entry = self.shadow.add(BLKIF_OP_INDIRECT, req.sector, segments=segments,
                                            indirect_op=op,
                                            indirect_grefs=(self.conn.refs[page],))
                except ValueError:
                    self.indirect_free.append(page)
                    raise
                req.indirect = page
            elif op == BLKIF_OP_DISCARD:
                entry = self.shadow.add(op, req.sector, nr_sectors=req.nr_sectors)
            else:
                entry = self.shadow.add(op, req.sector, segments=segments or ())
            self.pending[entry.id] = req
            self.ring.put_request(entry.request)
            notify = self.ring.push_requests_and_check_notify()
        if notify:  # only if the backend asked (req_event): few under load
            try:
                self.kernel.events.send(self.port)
            except XenError:
                # abandon() ran meanwhile (the backend went away) and closed
                # the port: the request was cut with the others, to go out
                # again on the next connection.
                if not self.dead:
                    raise
        return True

    def abandon(self) -> list[IORequest]:
        """The backend is gone: every request without a response, in issue
        order (the shadow's), to issue again on the next connection."""
        with self.lock:
            if self.dead:
                return []
            self.dead = True
            cut = [self.pending.pop(entry.id) for entry in self.shadow.reset()]
            for req in cut:
                req.indirect = -1  # this ring's page: the next issue takes another
            self.slot_freed.notify_all()  # submitters waiting for a slot: retry
        try:
            self.kernel.events.close(self.port)
        except Exception:  # the channel died with the backend's domain
            pass
        return cut

    def responses(self, _port: int = 0) -> None:
        """The backend answered: complete every response on the ring."""
        done = []
        with self.lock:
            if self.dead:
                return
            ring, shadow, pending, free = self.ring, self.shadow, self.pending, self.indirect_free
            while True:
                while ring.has_unconsumed_responses():
                    entry = shadow.complete(ring.get_response())
                    req = pending.pop(entry.id)
                    if req.indirect >= 0:
                        free.append(req.indirect)
                        req.indirect = -1
                    done.append((req, entry.status))
                # With many requests in flight, one event per half of them:
                # the backend keeps busy on the other half meanwhile, and
                # both sides pay for one notification per batch, not per
                # request (interrupt coalescing).  One in flight: the next.
                outstanding = len(pending)
                if not ring.final_check_for_responses(ahead=outstanding // 2):
                    break
            if self.waiting:
                self.slot_freed.notify(len(done))
        complete = self.conn.complete
        for req, status in done:
            complete(req, status)


class Connection:
    """Everything of one connection to a backend: the grant window (rings,
    indirect pages, bounce pool, DMA area), its grants and its queues.  A
    reconnect builds a new one; requests still holding the old one's pages
    are issued again with the new one's."""

    def __init__(self, device: BlkfrontDevice, nr_queues: int, ring_pages: int,
                 indirect_pages: int) -> None:
        self.device = device
        self.kernel = device.kernel
        frames = nr_queues * (ring_pages + indirect_pages) + POOL_PAGES + DMA_PAGES
        self.window = self.kernel.gnttab.open_window(device.backend_id, frames)
        self.map = memoryview(self.window.map)  # the whole window, bytes
        self.refs: list[int] = [-1] * frames   # window page -> its grant ref
        self.queues: list[Queue] = []
        first_indirect = nr_queues * ring_pages
        pool_start = first_indirect + nr_queues * indirect_pages
        dma_start = pool_start + POOL_PAGES
        for page in range(first_indirect, frames):
            self.grant(page)
        for q in range(nr_queues):
            own = first_indirect + q * indirect_pages
            self.queues.append(Queue(self, q, q * ring_pages, ring_pages,
                                     range(own, own + indirect_pages)))
        self.pool = Pool(pool_start, POOL_PAGES)
        self.dma = Pool(dma_start, DMA_PAGES)
        self.layouts: dict[tuple[int, int, int], tuple[PageSegments, bytes | None]] = {}

    def grant(self, page: int) -> int:
        ref = self.kernel.gnttab.grant_access(self.device.backend_id,
                                              self.window.gfn + page)
        self.refs[page] = ref
        return ref

    def granted(self) -> list[int]:
        return [ref for ref in self.refs if ref >= 0]

    def close(self) -> list[IORequest]:
        """The backend is gone: the requests it did not answer, and every
        waiter on this connection's pages woken (PoolClosed)."""
        cut: list[IORequest] = []
        for queue in self.queues:
            cut += queue.abandon()
        for pool in (self.pool, self.dma):
            pool.close()
        return cut

    def prepare(self, req: IORequest) -> tuple[PageSegments | None, bytes | None]:
        """Pages for `req` in this connection (the caller's DMA buffer's, or
        bounce pages holding a copy of the data to write), its segments and
        the contents of its indirect page if it needs one: what
        Queue.submit puts on the ring.  PoolClosed if the connection goes
        meanwhile."""
        op = req.op
        if op not in (BLKIF_OP_READ, BLKIF_OP_WRITE):
            return None, None
        nr_pages = -(-req.nr_sectors // SECTORS_PER_PAGE)
        buf = req.data if op == BLKIF_OP_WRITE else req.out
        if isinstance(buf, DmaBuffer) and buf.conn is self and len(buf.pages) >= nr_pages:
            pages = buf.pages
            req.pages = pages if len(pages) == nr_pages else pages[:nr_pages]
            req.bounced = False
        else:
            req.pages, req.bounced = self.pool.take(nr_pages), True
            if op == BLKIF_OP_WRITE:
                data = buf.view if isinstance(buf, DmaBuffer) else buf
                self.copy_in(req.pages, data, req.nr_sectors * SECTOR)
        req.conn = self
        return self.layout(req.pages, req.nr_sectors)

    def layout(self, pages: list[int], nr_sectors: int) -> tuple[PageSegments, bytes | None]:
        """The segments of `nr_sectors` in window `pages`, and the contents of
        their indirect page if they need one.  Requests keep landing on the
        same runs of pages (the pool hands out the same runs again, DMA
        buffers stay put), and a run's grants do not change while connected:
        a run's layout is built once and reused."""
        key = (pages[0], len(pages), nr_sectors) \
            if pages[-1] - pages[0] == len(pages) - 1 else None
        found = self.layouts.get(key) if key is not None else None
        if found is not None:
            return found
        segments = PageSegments(list(map(self.refs.__getitem__, pages)), nr_sectors)
        indirect = None
        if len(pages) > BLKIF_MAX_SEGMENTS_PER_REQUEST:
            page = bytearray(PAGE_SIZE)
            fill_indirect_pages(memoryview(page), [0], segments)
            indirect = bytes(page)
        if key is not None:
            if len(self.layouts) >= LAYOUT_CACHE_SIZE:
                self.layouts.clear()
            self.layouts[key] = (segments, indirect)
        return segments, indirect

    def copy_in(self, pages: list[int], data: Any, length: int) -> None:
        window = self.map
        with memoryview(data) as view, view.cast("B") as src:
            for first, done, n in _runs(pages, length):
                window[first:first + n] = src[done:done + n]

    def copy_out(self, pages: list[int], out: Any, length: int) -> None:
        window = self.map
        with memoryview(out) as view, view.cast("B") as dst:
            for first, done, n in _runs(pages, length):
                dst[done:done + n] = window[first:first + n]

    def release(self, req: IORequest) -> None:
        """Give back the data pages `req` held in this connection (its
        indirect page is its ring's, given back by the ring)."""
        if req.bounced and req.pages:
            self.pool.give(req.pages)
        req.pages, req.bounced, req.conn = [], False, None

    def complete(self, req: IORequest, status: int) -> None:
        """The backend answered `req` (on the upcall thread).  Always
        finishes it: its caller must never wait for ever."""
        try:
            if status == BLKIF_RSP_OKAY and req.op == BLKIF_OP_READ and req.bounced:
                out = req.out.view if isinstance(req.out, DmaBuffer) else req.out
                self.copy_out(req.pages, out, req.nr_sectors * SECTOR)
        except (TypeError, ValueError, BufferError) as exc:  # the caller's buffer
            req.error = BlockIOError(f"read at {req.sector}: cannot store the data "
                                     f"in the caller's buffer: {exc}")
        finally:
            self.release(req)
        if status != BLKIF_RSP_OKAY:
            req.status = status
            req.error = BlockIOError(f"{_OPS.get(req.op, req.op)} of {req.nr_sectors} "
                                     f"sectors at {req.sector}: backend status {status}")
        req.finish()


class BlkfrontDevice:
    def __init__(self, kernel: DriverKernel, path: str) -> None:
        self.kernel = kernel
        self.xs = kernel.xenstore
        self.path = path
        self.log = kernel.log.bind(device=path.rsplit("/", 1)[-1])
        self.vdev = int(self.xs.read(f"{path}/virtual-device"))
        self.conn: Connection | None = None
        self.closed = False
        self.connected = threading.Event()
        # Requests cut short by a backend that went away, in issue order:
        # issued again as soon as the next backend is connected.
        self.reissue: list[IORequest] = []
        self.reissue_lock = threading.Lock()
        self.life = Frontend(self.xs, kernel.work, self.log, path, FrontendHooks(
            connect=self._setup, resume=self._resume, lost=self._lost,
            disconnect=self._disconnect, gone=self._gone), error=DeviceGone)
        self.life.start()

    @property
    def backend(self) -> str:
        return self.life.backend

    @property
    def backend_id(self) -> int:
        return self.life.backend_id

    @property
    def queues(self) -> list[Queue]:
        return self.conn.queues if self.conn is not None else []

    # -- the lifecycle's hooks ------------------------------------------------------

    def _lost(self) -> None:
        """The backend vanished or the device moved: hold I/O, keeping what
        was not answered for the next backend."""
        if self.connected.is_set() and not self.closed:
            self.log.warning("backend gone: holding I/O until it is back")
        self.connected.clear()
        self._abandon()

    def _disconnect(self, gone: bool) -> None:
        if self.conn is None:
            return
        # Its window goes back (the next backend gets a new one; a device
        # detached gives it back for good: a vdev attached and detached in a
        # loop used up the domain's window cap); what still holds its pages
        # (old DMA buffers) keeps them valid.
        if not self.kernel.gnttab.close_window(self.conn.window, self.conn.granted()):
            self.log.warning("old grant window still mapped, kept")
        self.conn = None  # until the next connect makes one

    def _gone(self) -> None:
        """The device goes for good: every request waiting fails."""
        self.closed = True
        self.connected.set()  # wake I/O waiting for a backend: it fails now
        self._fail_all()

    def _abandon(self) -> None:
        """The backend is gone: keep what it did not answer for the next one."""
        conn = self.conn
        if conn is None:
            return
        cut = conn.close()
        if cut:
            with self.reissue_lock:
                self.reissue.extend(cut)
        if self.closed:
            self._fail_all()

    def _fail_all(self) -> None:
        """The device is gone for good: every request not answered fails."""
        conn = self.conn
        cut = conn.close() if conn is not None else []
        with self.reissue_lock:
            cut, self.reissue = self.reissue + cut, []
        gone = DeviceGone(f"{self.path} was removed (detached, or its backend is "
                          "gone for good)")
        for req in cut:
            req.fail(gone)

    # -- connect --------------------------------------------------------------------

    def connect(self) -> None:
        """The whole handshake (the lifecycle's); DeviceGone if the backend
        does not come."""
        self.life.connect()

    def _setup(self) -> None:
        """The backend waits for us: read its features, make the rings and
        their grant window, publish them."""
        xs, back = self.xs, self.backend
        self.sectors = read_feature(xs, back, "sectors")
        self.sector_size = read_feature(xs, back, "sector-size", 512)
        self.readonly = bool(read_feature(xs, back, "info") & VDISK_READONLY)
        self.flush_supported = bool(read_feature(xs, back, "feature-flush-cache"))
        self.discard_supported = bool(read_feature(xs, back, "feature-discard"))
        indirect = read_feature(xs, back, "feature-max-indirect-segments")
        self.max_segments = max(BLKIF_MAX_SEGMENTS_PER_REQUEST, min(indirect, 256))
        order = min(read_feature(xs, back, "max-ring-page-order"), RING_PAGE_ORDER)
        nr_queues = max(1, min(read_feature(xs, back, "multi-queue-max-queues", 1),
                               self.kernel.start_info["max_vcpus"], 4))
        ring_pages = 1 << order
        slots = ring_size(ring_pages * PAGE_SIZE, blkif.BLKIF_SRING_ENTRY_SIZE)
        self.conn = conn = Connection(self, nr_queues, ring_pages, slots if indirect else 0)
        self._publish(conn, order)

    def _resume(self) -> None:
        """The backend is Connected: what the previous backend left
        unanswered goes first, before any caller waiting for the connection
        issues something new."""
        conn = self.conn
        assert conn is not None
        with self.reissue_lock:
            todo, self.reissue = self.reissue, []
        if todo:
            self.log.info("reissuing requests the old backend did not answer",
                          count=len(todo))
        for req in todo:
            self._issue(conn, req, requeue=True)
        self.connected.set()
        self.log.info("connected", sectors=self.sectors, queues=len(conn.queues),
                      ring_pages=len(conn.queues[0].refs), max_segments=self.max_segments,
                      readonly=self.readonly)

    def _publish(self, conn: Connection, order: int) -> None:
        def write(tx: int) -> None:
            many = len(conn.queues) > 1
            for queue in conn.queues:
                base = f"{self.path}/queue-{queue.index}" if many else self.path
                nodes = {"event-channel": queue.port}
                if order == 0:
                    nodes["ring-ref"] = queue.refs[0]
                else:
                    nodes.update({f"ring-ref{i}": r for i, r in enumerate(queue.refs)})
                write_features(self.xs, base, nodes, tx)
            features = {"protocol": PROTOCOL, "feature-persistent": 1}
            if order:
                features["ring-page-order"] = order
            if many:
                features["multi-queue-num-queues"] = len(conn.queues)
            write_features(self.xs, self.path, features, tx)

        self.xs.transaction(write)

    # -- I/O --------------------------------------------------------------------------

    def buffer(self, nbytes: int) -> DmaBuffer:
        """A DMA buffer of `nbytes` (see DmaBuffer) in the current
        connection's window; MemoryError if its DMA area is used up."""
        if nbytes <= 0:
            raise ValueError(f"a DMA buffer of {nbytes} bytes")
        if nbytes > DMA_PAGES * PAGE_SIZE:
            raise MemoryError(f"{self.path}: a DMA buffer holds at most "
                              f"{DMA_PAGES * PAGE_SIZE} bytes")
        while True:
            conn = self._connection()
            try:
                # One run: the buffer is one view of consecutive pages.
                pages = conn.dma.try_take(-(-nbytes // PAGE_SIZE), contiguous=True)
                break
            except PoolClosed:
                continue  # the backend went away meanwhile: the next connection's
        if pages is None:
            raise MemoryError(f"{self.path}: no {nbytes} bytes left in the DMA area "
                              f"({DMA_PAGES * PAGE_SIZE} bytes)")
        return DmaBuffer(conn, pages, nbytes)

    def submit(self, op: int, sector: int, nr_sectors: int, data: Any = None,
               out: Any = None) -> IORequest:
        """Issue one request of at most max_segments pages (callers split)
        and return without waiting for its response: several can be in
        flight at once (up to the ring size per queue), as a real block
        layer keeps them.  `data` (writes) and `out` (reads) are bytes-like
        or DmaBuffers, and must stay untouched until the request is done.
        Blocks while the backend is away (the request is issued to the next
        one); DeviceGone if the device goes for good."""
        req = IORequest(op, sector, nr_sectors, data, out)
        while True:
            conn = self._connection()
            if self._issue(conn, req, requeue=False):
                return req

    def io(self, op: int, sector: int, nr_sectors: int, data: Any = None,
           out: Any = None) -> None:
        """One request, waited for (see submit)."""
        self.submit(op, sector, nr_sectors, data, out).wait()

    def _connection(self) -> Connection:
        """The current connection, waiting while the backend is away."""
        conn = self.conn
        if conn is not None and self.connected.is_set() and not self.closed:
            return conn  # the usual case, without Event.wait's lock
        while True:
            if self.closed:
                raise DeviceGone(f"{self.path} was removed (detached, or its backend "
                                 "is gone for good)")
            if not self.connected.wait(RECONNECT_TIMEOUT):
                raise DeviceGone(f"{self.path}: the backend did not come back")
            conn = self.conn
            if self.closed:
                continue  # raises above
            if conn is not None:
                return conn
            # Lost it between the wait and now (connected is cleared before
            # the connection is dropped): wait for the next one.

    def _issue(self, conn: Connection, req: IORequest, requeue: bool) -> bool:
        """Put `req` on one of `conn`'s rings.  If `conn` is gone meanwhile:
        False (the caller tries the next connection), or with `requeue` the
        request joins those to reissue and True."""
        try:
            segments, indirect = conn.prepare(req)
        except PoolClosed:
            issued = False
        else:
            queue = conn.queues[threading.get_ident() % len(conn.queues)]
            try:
                issued = queue.submit(req, segments, indirect)
            except BaseException:
                conn.release(req)  # a request the ring refused: give its pages back
                raise
            if not issued:
                conn.release(req)
        if issued or not requeue:
            return issued
        with self.reissue_lock:
            self.reissue.append(req)
        if self.closed:
            self._fail_all()
        return True

    # -- close --------------------------------------------------------------------------

    def close(self, wait: bool = True) -> None:
        """Fail what is in flight, then Closing, wait for the backend to let
        go, Closed (with `wait`, done when this returns, except on a watch
        callback)."""
        self.life.close(wait)


def _runs(pages: list[int], length: int):
    """Copy plan for `length` bytes laid out page after page in window pages
    `pages`: (window byte offset, byte offset in the data, bytes) per run of
    consecutive pages, so that one slice assignment copies each run."""
    if not pages or length <= 0:
        return
    first = pages[0]
    if pages[-1] - first == len(pages) - 1:  # pages come sorted from the pool
        yield first * PAGE_SIZE, 0, min(len(pages) * PAGE_SIZE, length)
        return
    done = 0
    i = 0
    while i < len(pages) and done < length:
        j = i + 1
        while j < len(pages) and pages[j] == pages[j - 1] + 1:
            j += 1
        n = min((j - i) * PAGE_SIZE, length - done)
        yield pages[i] * PAGE_SIZE, done, n
        done += n
        i = j


_OPS = {BLKIF_OP_READ: "read", BLKIF_OP_WRITE: "write",
        BLKIF_OP_FLUSH_DISKCACHE: "flush", BLKIF_OP_DISCARD: "discard"}
