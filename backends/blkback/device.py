"""One virtual block device served by blkback: the xenbus handshake of
io/blkif.h, the rings, and the worker that services them.

Backend side of the dance: Initialising -> (features written) InitWait ->
frontend Initialised/Connected -> map rings, bind channels -> Connected.
Frontend Closing/Closed -> drop the rings -> Closing/Closed. Each queue has
its own ring, event channel and worker thread.

Persistent grants (feature-persistent): a frontend that agrees reuses the
same data pages, so each gref is mapped once and kept until disconnect.
"""

from __future__ import annotations

import errno
import os
import stat
import threading

from backends.blkback.io import merge_extents, perform, perform_iov
from backends.blkback.response import response_for
from backends.blkback.validate import (
    DiskInfo,
    Limits,
    Segments,
    check,
    parse_request,
    with_indirect_segments,
)
from domains.kernel.api import DriverKernel
from domains.kernel.fdtable import vbd_key
from domains.kernel.gnttab import GrantStatusError, Mapping
from domains.kernel.threads import OwnedThread
from domains.kernel.xenbus.lifecycle import Backend, BackendHooks
from domains.kernel.xenbus.state import read_feature, write_features
from hypervisor.public.errno import XenError
from hypervisor.public.io import blkif
from hypervisor.public.io.blkif import (
    BLKIF_OP_INDIRECT,
    BLKIF_RSP_ERROR,
    VDISK_READONLY,
)
from hypervisor.public.io.ring import BackRing, RingError

MAX_RING_PAGE_ORDER = 4
MAX_QUEUES = 4
MAX_INDIRECT_SEGMENTS = 256
REQUEST_SIZE = blkif.BLKIF_SRING_ENTRY_SIZE
LIMITS = Limits()
_OFFSET_MASK = (1 << 32) - 1
IOV_CACHE_SIZE = 256  # I/O vectors kept per device (see BlkbackDevice.iov_cache)


class Queue(OwnedThread):
    """One ring: its channel kicks the thread, the thread answers requests.
    The device owns it: disconnect() stops and joins it."""

    def __init__(self, device: BlkbackDevice, index: int, ring: BackRing,
                 mappings: list[Mapping], view: memoryview) -> None:
        super().__init__(f"blkback-{device.fe}-{device.devid}-q{index}")
        self.device = device
        self.ring = ring
        self.mappings = mappings
        self.view = view
        self.port = 0
        self.cond = threading.Condition()
        self.kicked = True  # look once at start: requests may be waiting
        self.stopping = False

    def kick(self, _port: int = 0) -> None:
        with self.cond:
            self.kicked = True
            self.cond.notify()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify()
        if self.is_alive() and self is not threading.current_thread():
            self.join(timeout=10)

    def run(self) -> None:
        while True:
            with self.cond:
                while not self.kicked and not self.stopping:
                    self.cond.wait()
                if self.stopping:
                    return
                self.kicked = False
            try:
                self.service()
            except RingError as exc:
                self.device.protocol_error(f"ring: {exc}")
                return

    def service(self) -> None:
        ring, handle, notify, port = self.ring, self.device.handle, self.device.notify, self.port
        while True:
            while ring.has_unconsumed_requests():
                ring.put_response(handle(ring.get_request()))
                # Each response is published at once, as Linux's blkback
                # does: with several requests in flight the frontend can
                # reuse this one's pages while we serve the next.  The
                # event goes only if the frontend asked for one
                # (rsp_event), so under load few are sent.
                if ring.push_responses_and_check_notify():
                    notify(port)
            if not ring.final_check_for_requests():
                return


class BlkbackDevice:
    def __init__(self, kernel: DriverKernel, path: str, fe: int, devid: int) -> None:
        self.kernel = kernel
        self.xs = kernel.xenstore
        self.log = kernel.log.bind(device=f"vbd-{fe}-{devid}")
        self.path, self.fe, self.devid = path, fe, devid
        self.fd = -1
        self.queues: list[Queue] = []
        self.persistent = False
        self.grants: dict[int, Mapping] = {}  # persistent gref -> mapping
        # Persistent gref -> its page's address in our mappings, window id
        # << 32 | byte offset in that window (windows are at most 16 MiB),
        # and each window's view: pages consecutive in the frontend's window
        # have consecutive addresses, and become one I/O buffer.
        self.addresses: dict[int, int] = {}
        self.window_views: dict[int, memoryview] = {}
        # Segment records -> their I/O vector: the frontend reuses the same
        # pages request after request (its pool hands out the same runs,
        # DMA buffers stay put), and persistent grants stay mapped until
        # disconnect, so a vector once built is valid until then: looking
        # it up (one hash of the records) replaces 256 translations.
        self.iov_cache: dict[bytes, list[memoryview]] = {}
        self.lock = threading.Lock()
        self.life: Backend | None = None
        self.connected = False

    # -- set-up -------------------------------------------------------------------

    def start(self) -> None:
        xs, path = self.xs, self.path
        params = xs.read(f"{path}/params").decode()
        self.frontend = xs.read(f"{path}/frontend").decode()
        readonly = xs.read(f"{path}/mode").decode() != "w"
        discard = read_feature(xs, path, "discard-enable", 1) == 1
        # The image is never ours to open: Dom0 had the hypervisor open it
        # (as the disk's mode says) and hand us the fd before it wrote
        # these nodes, as Xen's hotplug script sets up the backing device.
        try:
            self.fd, meta = self.kernel.fds.take(vbd_key(self.fe, self.devid))
        except TimeoutError:
            raise OSError(errno.ENOENT, f"{params}: no image fd was handed over "
                                        "for this disk") from None
        if not readonly and not meta.get("writable"):
            os.close(self.fd)
            self.fd = -1
            raise OSError(errno.EACCES, f"{params}: handed over read-only, the disk is "
                                        "read-write")
        try:
            self._start(params, readonly, discard)
        except BaseException:
            os.close(self.fd)  # the bus keeps no device that failed to start
            self.fd = -1
            raise

    def _start(self, params: str, readonly: bool, discard: bool) -> None:
        xs, path = self.xs, self.path
        st = os.fstat(self.fd)
        size = st.st_size if stat.S_ISREG(st.st_mode) else os.lseek(self.fd, 0, os.SEEK_END)
        self.disk = DiskInfo(sectors=size // 512, readonly=readonly, discard=discard,
                             flush=True, max_indirect_segments=MAX_INDIRECT_SEGMENTS)

        def publish(tx: int) -> None:
            write_features(xs, path, {
                "feature-flush-cache": 1,
                "feature-discard": int(discard),
                "discard-granularity": 4096,
                "discard-alignment": 0,
                "discard-secure": 0,
                "feature-persistent": 1,
                "feature-max-indirect-segments": MAX_INDIRECT_SEGMENTS,
                "max-ring-page-order": MAX_RING_PAGE_ORDER,
                "multi-queue-max-queues": MAX_QUEUES,
                "sectors": self.disk.sectors,
                "sector-size": 512,
                "physical-sector-size": 512,
                "info": VDISK_READONLY if readonly else 0,
            }, tx)

        xs.transaction(publish)
        self.log.info("waiting for the frontend", params=params, sectors=self.disk.sectors,
                      mode="r" if readonly else "w")
        self.life = Backend(xs, self.kernel.work, self.log, path, BackendHooks(
            connect=self.connect, disconnect=self.disconnect, remove=self._close_image),
            frontend=self.frontend)
        self.life.start()

    def connect(self) -> None:
        """Map the frontend's rings and bind its channels (the lifecycle
        says Connected after, or calls disconnect() if this raises)."""
        xs, fe_path = self.xs, self.frontend
        nr_queues = read_feature(xs, fe_path, "multi-queue-num-queues", 1)
        order = read_feature(xs, fe_path, "ring-page-order", 0)
        if not 1 <= nr_queues <= MAX_QUEUES or order > MAX_RING_PAGE_ORDER:
            raise ValueError(f"{nr_queues} queues of order {order} asked")
        self.persistent = read_feature(xs, fe_path, "feature-persistent", 0) == 1
        for index in range(nr_queues):
            base = fe_path if nr_queues == 1 else f"{fe_path}/queue-{index}"
            names = ["ring-ref"] if order == 0 else [f"ring-ref{i}" for i in range(1 << order)]
            refs = [int(xs.read(f"{base}/{name}")) for name in names]
            port = int(xs.read(f"{base}/event-channel"))
            mappings = self.kernel.gnttab.map_grant_refs(self.fe, refs)
            view = self.kernel.gnttab.contiguous(mappings)
            queue = Queue(self, index, BackRing(view, REQUEST_SIZE, blkif.RESPONSE.size),
                          mappings, view)
            self.queues.append(queue)
            queue.port = self.kernel.events.bind_interdomain(self.fe, port, queue.kick)
            queue.start()
        self.connected = True
        self.log.info("connected", queues=nr_queues, ring_pages=1 << order,
                      persistent=self.persistent)

    # -- requests -----------------------------------------------------------------

    def handle(self, raw: bytes) -> bytes:
        """Answer one untrusted request; never raises for a bad one."""
        request = parse_request(raw)
        problem = check(request, self.disk, LIMITS)
        if problem is not None:
            self.log.info("refused request", reason=problem.reason)
            return response_for(request, problem.status)
        transient: list[Mapping] = []
        try:
            if request.operation == BLKIF_OP_INDIRECT:
                pages = self._pages(request.indirect_grefs, True, transient)
                request = with_indirect_segments(request, pages, LIMITS)
                problem = check(request, self.disk, LIMITS)
                if problem is not None:
                    return response_for(request, problem.status)
            segments = request.segments
            if self.persistent and segments:
                status = perform_iov(request, self._iov(segments), self.fd)
            else:
                pages = self._pages(list(segments.grefs) if segments else [],
                                    request.writes, transient)
                status = perform(request, pages, self.fd)
        except GrantStatusError as exc:
            self.log.info("bad grant in request", error=str(exc))
            status = BLKIF_RSP_ERROR
        finally:
            if transient:
                self.kernel.gnttab.unmap_all(transient)
        return response_for(request, status)

    def _iov(self, segments: Segments) -> list[memoryview]:
        """The I/O vector of a checked request's segments, over persistently
        mapped grants (mapped now if new): contiguous pages merged."""
        key = segments.records
        iov = self.iov_cache.get(key)
        if iov is None:
            iov = self._build_iov(segments)
            if len(self.iov_cache) >= IOV_CACHE_SIZE:
                self.iov_cache.clear()  # crude, but a working set is small
            self.iov_cache[key] = iov
        return iov

    def _build_iov(self, segments: Segments) -> list[memoryview]:
        addresses = self.addresses
        try:  # the usual case once warm: every page is mapped already
            found = list(map(addresses.__getitem__, segments.grefs))
        except KeyError:
            self._pages(segments.grefs, False, [])
            found = list(map(addresses.__getitem__, segments.grefs))
        views = self.window_views
        return [views[address >> 32][(address & _OFFSET_MASK):
                                     (address & _OFFSET_MASK) + length]
                for address, length in merge_extents(found, segments)]

    def _pages(self, grefs, readonly: bool, transient: list[Mapping]) -> list[memoryview]:
        if not grefs:
            return []
        if not self.persistent:
            mapped = self.kernel.gnttab.map_grant_refs(self.fe, list(grefs), readonly)
            transient += mapped
            return [m.page for m in mapped]
        with self.lock:
            grants = self.grants
            try:  # the usual case once warm: every page is mapped already
                return [grants[g].page for g in grefs]
            except KeyError:
                pass
            missing = sorted({g for g in grefs if g not in grants})
            for m in self.kernel.gnttab.map_grant_refs(self.fe, missing):
                grants[m.ref] = m
                if m.window not in self.window_views:
                    self.window_views[m.window] = memoryview(m.page.obj)
                self.addresses[m.ref] = m.window << 32 | m.offset
            return [grants[g].page for g in grefs]

    def notify(self, port: int) -> None:
        try:
            self.kernel.events.send(port)
        except XenError:
            pass  # the frontend is gone; its state watch tears us down

    # -- tear-down ----------------------------------------------------------------

    def protocol_error(self, reason: str) -> None:
        """A queue found the frontend broke the protocol: the lifecycle
        disconnects and closes the device (not on this queue's thread:
        disconnect() joins the queues)."""
        self.log.error("frontend misbehaved, closing", reason=reason)
        if self.life is not None:
            self.life.fail()

    def disconnect(self) -> None:
        """Drop the rings and grants (also those of a connect that failed
        part way: a later queue's refs refused after earlier ones were
        mapped and bound)."""
        if not self.connected and not self.queues:
            return
        self.connected = False
        for queue in self.queues:
            queue.stop()
        gnttab, events = self.kernel.gnttab, self.kernel.events
        for queue in self.queues:
            for undo in (lambda: events.close(queue.port),
                         lambda: queue.ring.close(),
                         lambda: queue.view.release(),
                         lambda: gnttab.unmap_all(queue.mappings)):
                try:
                    undo()
                except Exception as exc:  # the frontend may be gone already
                    self.log.info("disconnect", note=repr(exc))
        self.queues = []
        with self.lock:
            grants, self.grants = list(self.grants.values()), {}
            self.addresses = {}
            self.iov_cache = {}
            views, self.window_views = list(self.window_views.values()), {}
        for view in views:
            view.release()
        if grants:
            try:
                gnttab.unmap_all(grants)
            except Exception as exc:
                self.log.info("disconnect", note=repr(exc))
        self.log.info("disconnected")

    def remove(self) -> None:
        """The device is gone: the lifecycle tears it down (and waits for
        that, unless called from a watch callback)."""
        if self.life is not None:
            self.life.close()
        else:
            self._close_image()

    def _close_image(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            self.log.info("removed, image fd closed")
