"""blkfront's connection to one virtual block device.

Frontend side of io/blkif.h's dance: wait for the backend's InitWait, read
its features, set up rings and grants, publish them, Initialised, wait for
the backend's Connected, Connected.

Memory: every page the backend may touch lives in one grant window opened
for the backend's domain only: the rings, one indirect-segment page per
ring slot, and a pool of data pages granted once (persistent grants).
Data is copied between the caller's buffers and pool pages, as through a
restricted DMA pool: nothing else of the guest is ever shared.
"""

from __future__ import annotations

import ctypes
import struct
import threading
from dataclasses import dataclass, field
from typing import Any

from domains.kernel.xenbus.client import XsError
from domains.kernel.xenbus.state import (
    FRONTEND,
    read_feature,
    switch_state,
    watch_backend_moves,
    watch_otherend,
    write_features,
)
from frontends.blkfront.shadow import Shadow
from hypervisor.public.io import blkif
from hypervisor.public.io.blkif import (
    BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST,
    BLKIF_MAX_SEGMENTS_PER_REQUEST,
    BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE,
    BLKIF_OP_INDIRECT,
    BLKIF_OP_READ,
    BLKIF_OP_WRITE,
    BLKIF_RSP_OKAY,
    SEGS_PER_INDIRECT_FRAME,
    VDISK_READONLY,
)
from hypervisor.public.io.ring import FrontRing, ring_size, shared_ring_init
from hypervisor.public.io.xenbus import XenbusState
from hypervisor.public.xen import PAGE_SIZE

S = XenbusState
SECTOR = 512
SECTORS_PER_PAGE = PAGE_SIZE // SECTOR
RING_PAGE_ORDER = 2  # four pages: 128 requests in flight per queue
POOL_PAGES = 1024  # 4 MiB of data pages shared with the backend
RESPONSE_SIZE = 16
PROTOCOL = "arm-abi"  # XEN_IO_PROTO_ABI_ARM


# The status of a request cut short because the backend went away: it is
# issued again, unchanged, once the replacement backend is connected.
REISSUE = -1000
RECONNECT_TIMEOUT = 120.0


class BlockIOError(OSError):
    """The backend answered a request with an error status."""


class DeviceGone(OSError):
    """The device was detached or its backend closed it."""


@dataclass
class Pending:
    """What a request in flight needs when its response arrives."""

    pages: list[int]
    indirect: list[int]
    done: threading.Event = field(default_factory=threading.Event)
    status: int = BLKIF_RSP_OKAY


class Pool:
    """Pool pages by index, handed out under a condition."""

    def __init__(self, indexes: list[int]) -> None:
        self.free = list(indexes)
        self.cond = threading.Condition()

    def take(self, count: int) -> list[int]:
        with self.cond:
            while len(self.free) < count:
                self.cond.wait()
            taken, self.free = self.free[:count], self.free[count:]
            return taken

    def give(self, indexes: list[int]) -> None:
        with self.cond:
            self.free.extend(indexes)
            self.cond.notify_all()


class Queue:
    def __init__(self, device: "BlkfrontDevice", index: int, first_page: int,
                 nr_pages: int) -> None:
        self.device = device
        self.index = index
        window = device.window
        self.view = memoryview(window.map)[first_page * PAGE_SIZE:
                                          (first_page + nr_pages) * PAGE_SIZE]
        shared_ring_init(self.view)
        self.ring = FrontRing(self.view, blkif.BLKIF_SRING_ENTRY_SIZE, RESPONSE_SIZE)
        self.refs = [device.grant(first_page + i) for i in range(nr_pages)]
        # This connection's pages: a reconnect gets new ones, not these.
        self.page_refs, self.window_map = device.refs, device.map
        self.shadow = Shadow(self.ring.size)
        self.pending: dict[int, Pending] = {}
        self.lock = threading.Lock()
        self.slots = threading.Semaphore(self.ring.size)
        self.dead = False
        self.port = device.kernel.events.alloc_unbound(device.backend_id)
        device.kernel.events.bind(self.port, self.responses)

    def submit(self, op: int, sector: int, pages: list[int], nr_sectors: int,
               indirect: list[int]) -> Pending:
        device = self.device
        segments = _segments([self.page_refs[p] for p in pages], nr_sectors)
        pending = Pending(pages, indirect)
        self.slots.acquire()
        with self.lock:
            if self.dead:  # the backend went away under us: try again later
                pending.status = REISSUE
                pending.done.set()
                return pending
            if op in (BLKIF_OP_READ, BLKIF_OP_WRITE) and len(segments) > \
                    BLKIF_MAX_SEGMENTS_PER_REQUEST:
                _fill_indirect_pages(self.window_map, indirect, segments)
                entry = self.shadow.add(BLKIF_OP_INDIRECT, sector, segments=segments,
                                        indirect_op=op,
                                        indirect_grefs=[self.page_refs[p] for p in indirect])
            elif op == BLKIF_OP_DISCARD:
                entry = self.shadow.add(op, sector, nr_sectors=nr_sectors)
            else:
                entry = self.shadow.add(op, sector, segments=segments)
            self.pending[entry.id] = pending
            self.ring.put_request(entry.request)
            notify = self.ring.push_requests_and_check_notify()
        if notify:
            device.kernel.events.send(self.port)
        return pending

    def abandon(self) -> None:
        """The backend is gone: every request without a response is reissued."""
        with self.lock:
            self.dead = True
            cut, self.pending = list(self.pending.values()), {}
        for pending in cut:
            pending.status = REISSUE
            pending.done.set()
        for _ in range(self.ring.size):
            self.slots.release()  # wake submitters waiting for a slot
        try:
            self.device.kernel.events.close(self.port)
        except Exception:  # the channel died with the backend's domain
            pass

    def responses(self, _port: int = 0) -> None:
        """The backend answered: complete every response on the ring."""
        done = []
        with self.lock:
            if self.dead:
                return
            while True:
                while self.ring.has_unconsumed_responses():
                    entry = self.shadow.complete(self.ring.get_response())
                    pending = self.pending.pop(entry.id)
                    pending.status = entry.status
                    done.append(pending)
                if not self.ring.final_check_for_responses():
                    break
        for pending in done:
            self.slots.release()
            pending.done.set()


def _segments(grefs: list[int], nr_sectors: int) -> list[tuple[int, int, int]]:
    """(gref, first_sect, last_sect) covering nr_sectors from page starts:
    whole pages, the last one holding what is left (callers pass one page
    per SECTORS_PER_PAGE sectors, rounded up)."""
    if not grefs:
        return []
    full = SECTORS_PER_PAGE - 1
    segments = [(gref, 0, full) for gref in grefs]
    last = nr_sectors - (len(grefs) - 1) * SECTORS_PER_PAGE
    if last != SECTORS_PER_PAGE:
        segments[-1] = (grefs[-1], 0, min(SECTORS_PER_PAGE, last) - 1)
    return segments


# blkif_request_segment: gref (uint32), first_sect, last_sect (uint8), two
# bytes of padding; SEGS_PER_INDIRECT_FRAME of them fill an indirect page.
_SEGMENT_FORMAT = "IBBxx"
assert struct.calcsize("<" + _SEGMENT_FORMAT) == ctypes.sizeof(blkif.blkif_request_segment)
_INDIRECT_FORMATS: dict[int, struct.Struct] = {}


def _fill_indirect_pages(window: memoryview, indirect: list[int],
                         segments: list[tuple[int, int, int]]) -> None:
    """Write the indirect pages listing `segments` (what
    requests.indirect_pages builds, packed in one struct call per page) into
    window pages `indirect`, zero-padded."""
    pages = -(-len(segments) // SEGS_PER_INDIRECT_FRAME)
    if not 1 <= len(segments) or pages > min(len(indirect),
                                             BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST):
        raise ValueError(f"{len(segments)} indirect segments, {len(indirect)} pages")
    for index in range(pages):
        chunk = segments[index * SEGS_PER_INDIRECT_FRAME:
                         (index + 1) * SEGS_PER_INDIRECT_FRAME]
        fmt = _INDIRECT_FORMATS.get(len(chunk))
        if fmt is None:
            fmt = _INDIRECT_FORMATS[len(chunk)] = struct.Struct(
                "<" + _SEGMENT_FORMAT * len(chunk))
        flat = [field for spec in chunk for field in spec]
        start = indirect[index] * PAGE_SIZE
        fmt.pack_into(window, start, *flat)  # struct checks every field's range
        window[start + fmt.size:start + PAGE_SIZE] = bytes(PAGE_SIZE - fmt.size)


class BlkfrontDevice:
    def __init__(self, kernel: Any, path: str) -> None:
        self.kernel = kernel
        self.xs = kernel.xenstore
        self.path = path
        self.log = kernel.log.bind(device=path.rsplit("/", 1)[-1])
        self.backend = self.xs.read(f"{path}/backend").decode()
        self.backend_id = int(self.xs.read(f"{path}/backend-id"))
        self.vdev = int(self.xs.read(f"{path}/virtual-device"))
        self.state_cond = threading.Condition()
        self.backend_state = S.Unknown
        self.queues: list[Queue] = []
        self.closed = False
        self.connected = threading.Event()
        self.reconnecting = threading.Lock()
        self.watch = watch_otherend(self.xs, self.backend, self._backend_changed)
        # A restarted driver domain comes back under a new domid: the
        # toolstack points our `backend-id` at it and we reconnect.
        watch_backend_moves(self.xs, path, f"blkfront-{path}",
                            lambda: self.backend_id, self._reconnect)

    def _backend_changed(self, state: XenbusState) -> None:
        with self.state_cond:
            self.backend_state = state
            self.state_cond.notify_all()
        if state == S.Unknown and self.connected.is_set() and not self.closed:
            self.log.warning("backend gone: holding I/O until it is back")
            self.connected.clear()
            for queue in self.queues:
                queue.abandon()
        elif state in (S.Closing, S.Closed) and self.queues and not self.closed:
            self.log.info("backend closing the device")
            self.closed = True
            threading.Thread(target=self._close_handshake, daemon=True).start()

    def _reconnect(self) -> None:
        with self.reconnecting:
            backend_id = int(self.xs.read(f"{self.path}/backend-id"))
            if backend_id == self.backend_id or self.closed:
                return
            self.connected.clear()
            for queue in self.queues:
                if not queue.dead:
                    queue.abandon()
            try:
                self.watch.cancel()
            except XsError:
                pass
            if not self.kernel.gnttab.close_window(self.window, list(self.refs.values())):
                self.log.warning("old grant window still mapped, kept")
            self.backend = self.xs.read(f"{self.path}/backend").decode()
            self.backend_id = backend_id
            self.queues = []
            with self.state_cond:
                self.backend_state = S.Unknown
            self.log.info("reconnecting to the new backend", backend=self.backend)
            switch_state(self.xs, self.path, S.Closed, end=FRONTEND)
            switch_state(self.xs, self.path, S.Initialising, end=FRONTEND)
            self.watch = watch_otherend(self.xs, self.backend, self._backend_changed)
            try:
                self.connect()
            except (XsError, DeviceGone, OSError) as exc:
                self.log.error("reconnect failed", error=str(exc))

    def _wait_backend(self, *states: XenbusState, timeout: float = 30.0) -> XenbusState:
        with self.state_cond:
            if not self.state_cond.wait_for(lambda: self.backend_state in states, timeout):
                raise DeviceGone(f"backend {self.backend} stayed in "
                                 f"{self.backend_state.name}")
            return self.backend_state

    # -- connect --------------------------------------------------------------------

    def connect(self) -> None:
        self._wait_backend(S.InitWait, S.Connected)
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
        indirect_pages = slots if indirect else 0
        frames = nr_queues * (ring_pages + indirect_pages) + POOL_PAGES
        self.window = self.kernel.gnttab.open_window(self.backend_id, frames)
        self.map = memoryview(self.window.map)  # the whole window, bytes
        self.refs: dict[int, int] = {}
        for q in range(nr_queues):
            self.queues.append(Queue(self, q, q * ring_pages, ring_pages))
        first_indirect = nr_queues * ring_pages
        pool_start = first_indirect + nr_queues * indirect_pages
        for page in range(first_indirect, pool_start + POOL_PAGES):
            self.grant(page)
        self.indirect = Pool(list(range(first_indirect, pool_start)))
        self.pool = Pool(list(range(pool_start, pool_start + POOL_PAGES)))
        self._publish(order)
        switch_state(xs, self.path, S.Initialised, end=FRONTEND)
        self._wait_backend(S.Connected)
        switch_state(xs, self.path, S.Connected, end=FRONTEND)
        self.connected.set()
        self.log.info("connected", sectors=self.sectors, queues=nr_queues,
                      ring_pages=ring_pages, max_segments=self.max_segments,
                      readonly=self.readonly)

    def grant(self, page: int) -> int:
        ref = self.kernel.gnttab.grant_access(self.backend_id, self.window.gfn + page)
        self.refs[page] = ref
        return ref

    def page(self, index: int) -> memoryview:
        return self.map[index * PAGE_SIZE:(index + 1) * PAGE_SIZE]

    def _publish(self, order: int) -> None:
        def write(tx: int) -> None:
            many = len(self.queues) > 1
            for queue in self.queues:
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
                features["multi-queue-num-queues"] = len(self.queues)
            write_features(self.xs, self.path, features, tx)

        self.xs.transaction(write)

    # -- I/O --------------------------------------------------------------------------

    def io(self, op: int, sector: int, nr_sectors: int, data: bytes | None = None,
           out: bytearray | None = None) -> None:
        """One request of at most max_segments pages (callers split)."""
        while True:
            if self.closed:
                raise DeviceGone(f"{self.path} was removed (detached, or its backend "
                                 "is gone for good)")
            if not self.connected.wait(RECONNECT_TIMEOUT):
                raise DeviceGone(f"{self.path}: the backend did not come back")
            if self._io_once(op, sector, nr_sectors, data, out):
                return

    def _io_once(self, op: int, sector: int, nr_sectors: int, data, out) -> bool:
        """Issue the request once; False when it must be reissued."""
        nr_pages = -(-nr_sectors // SECTORS_PER_PAGE) if op in (BLKIF_OP_READ,
                                                                 BLKIF_OP_WRITE) else 0
        pool, indirect_pool, queues, window = self.pool, self.indirect, self.queues, self.map
        pages = pool.take(nr_pages) if nr_pages else []
        indirect = indirect_pool.take(1) if nr_pages > BLKIF_MAX_SEGMENTS_PER_REQUEST else []
        try:
            if data is not None:
                view = memoryview(data).cast("B")
                for first, done, n in _runs(pages, len(view)):
                    window[first:first + n] = view[done:done + n]
            queue = queues[threading.get_ident() % len(queues)]
            pending = queue.submit(op, sector, pages, nr_sectors, indirect)
            pending.done.wait()
            if pending.status == REISSUE:
                return False
            if pending.status != BLKIF_RSP_OKAY:
                raise BlockIOError(f"{_OPS.get(op, op)} of {nr_sectors} sectors at "
                                   f"{sector}: backend status {pending.status}")
            if out is not None:
                for first, done, n in _runs(pages, nr_sectors * SECTOR):
                    out[done:done + n] = window[first:first + n]
        finally:
            if pages:
                pool.give(pages)
            if indirect:
                indirect_pool.give(indirect)
        return True

    # -- close --------------------------------------------------------------------------

    def _close_handshake(self) -> None:
        try:
            switch_state(self.xs, self.path, S.Closing, end=FRONTEND)
            self._wait_backend(S.Closing, S.Closed, S.Unknown)
            switch_state(self.xs, self.path, S.Closed, end=FRONTEND)
        except (XsError, DeviceGone) as exc:
            self.log.info("close", note=str(exc))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.connected.set()  # wake I/O waiting for a backend: it fails now
            for queue in self.queues:
                if not queue.dead:
                    queue.abandon()
            # Not on the caller's thread: it is often the XenStore watch
            # thread, which must stay free to deliver the backend's state.
            threading.Thread(target=self._close_handshake, daemon=True).start()
        try:
            self.watch.cancel()
        except XsError:
            pass


def _runs(pages: list[int], length: int):
    """Copy plan for `length` bytes laid out page after page in window pages
    `pages`: (window byte offset, byte offset in the data, bytes) per run of
    consecutive pages, so that one slice assignment copies each run."""
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
