"""netfront's connection to one vif, pumping frames to and from a TAP.

Frontend side of the handshake: wait for the backend's InitWait, set up
the tx and rx rings and their pages in a grant window for the backend,
post every rx buffer, publish, Connected (netfront skips Initialised).

The guest's network stack is Linux's own, in the guest's network
namespace: frames the TAP hands us go out on the tx ring, frames arriving
on the rx ring are written to the TAP.

Offload: the TAP is opened with IFF_VNET_HDR, and told (TUNSETOFFLOAD) to
leave checksums and, when the backend takes GSO (feature-gso-tcpv4 /
-tcpv6), TCP segmentation to us, so the kernel hands out TCP frames of up
to 64 KiB with a blank checksum; vnet.py maps its virtio_net_hdr to
netif's NETTXF_csum_blank / NETTXF_data_validated and GSO extra slot, and
a received frame's NETRXF_* flags and GSO extra back to a header for the
TAP.  netfront in turn says feature-gso-tcpv4/-tcpv6 and
feature-ipv6-csum-offload (and not feature-no-csum-offload).  A guest
booted with ``netfront.offload=0`` on its command line does none of it:
no virtio_net_hdr, feature-no-csum-offload, no GSO (the backend then
segments and checksums for it).

Copies: the TAP reads a frame straight into granted tx pages (readv over
the pages, the virtio_net_hdr into a buffer of its own) and a received
frame is written to the TAP straight from the rx pages (writev): the data
crosses netfront in no Python copy.  The tx ring's responses are
collected when the sender needs pages or ring slots, not on an event:
netfront asks for a tx event (ring.h's rsp_event) only when it is short.

One thread, that never waits (as NAPI): the TAP is polled by the kernel's
upcall loop, and its handler moves frames to the tx ring on the upcall
thread, where the rx and tx events' handlers run too.  With a thread of
its own for the TAP, each frame written to the TAP (whose reply, an ACK
or more data, the guest's kernel queues at once on the TAP) woke the
other thread: thousands of thread wakeups a second under load.  Before
each read the handler makes sure a whole frame can go out at once; when
it cannot, it stops watching the TAP (level-triggered, it would spin),
asks for a tx event, and the tx event's handler takes it up again.

Free tx pages are kept in the order they come back (first in, first
out), and a read goes into the next ones: frames are sent, answered and
freed in ring order, so a frame's pages are nearly always consecutive
pages of the grant window, which the backend copies in one slice.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from typing import Any

from domains.kernel import netpkt, vnet
from domains.kernel.api import DriverKernel
from domains.kernel.xenbus.lifecycle import Frontend, FrontendHooks
from domains.kernel.xenbus.state import read_feature
from frontends.netfront.rx import RxAssembler, RxFrame, make_rx_request
from frontends.netfront.tx import NetfrontProtocolError, TxPageEncoder, TxShadow
from hypervisor.public.io import netif
from hypervisor.public.io.netif import (
    XEN_NETIF_GSO_TYPE_TCPV4,
    XEN_NETIF_GSO_TYPE_TCPV6,
    XEN_NETIF_MAX_TX_SIZE,
    XEN_NETIF_NR_SLOTS_MIN,
    NETRXF_csum_blank,
)
from hypervisor.public.io.ring import FrontRing, RingError, shared_ring_init
from hypervisor.public.pyxen.tap import MAX_FRAME, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, VNET_HDR_LEN
from hypervisor.public.xen import PAGE_SIZE

TX_ENTRY = netif.NETIF_TX_SRING_ENTRY_SIZE
RX_ENTRY = netif.NETIF_RX_SRING_ENTRY_SIZE
#: Pages a read from the TAP is given: enough for any frame it may hand
#: out (at most XEN_NETIF_MAX_TX_SIZE, which 16 pages hold).  A buffer of
#: our own follows them, so that a larger frame shows up as one and is
#: dropped rather than truncated.
READ_PAGES = -(-XEN_NETIF_MAX_TX_SIZE // PAGE_SIZE)
assert READ_PAGES <= XEN_NETIF_NR_SLOTS_MIN
#: rx slots taken before their buffers are posted again.
RX_BATCH = 64
#: Frames netfront fixed up itself (segmented, checksummed) waiting for tx
#: room: a 64 KiB GSO frame segments into ~45.
PENDING_MAX = 128
#: _make_room: no room for a frame now; a tx event will take it up.
STALLED = -1
#: Frames read from the TAP in one go are published (the tx ring's
#: req_prod moved, the backend notified if it asked) when the TAP is empty,
#: when the ring is full, or every this many frames: fewer pushes and
#: notifications, and the backend takes a burst per wakeup.  (Measured with
#: bench net: 16 > 8 > 4 > 1, a few % each; large frames fill the ring
#: first.)
PUSH_EVERY = 16


class NetfrontError(OSError):
    pass


#: Seconds a closing vif waits for its backend to let go.
CLOSE_TIMEOUT = 5.0


class NetfrontDevice:
    # Until connect() sets them (tests drive parts of a device without it):
    # the rx buffers by ring slot, and the same pages as one view.
    rx_pages: list[memoryview] | None = None
    rx_area: memoryview | None = None
    staged_generation = -1  # no pages staged yet
    tx_encoder: TxPageEncoder | None = None
    window_view: memoryview | None = None  # the grant window, set by connect()
    page_numbers: list[int] = []
    #: Where the TAP puts what is beyond the largest frame (to drop it);
    #: never read, so every device may share it.
    spill = memoryview(bytearray(64))
    #: The TAP is not watched until tx room comes back (a tx event).
    tx_stalled = False
    #: Frames put on the tx ring and not pushed yet (tx_lock).
    tx_unpushed = 0

    def __init__(self, kernel: DriverKernel, path: str, tap: Any) -> None:
        self.kernel = kernel
        self.xs = kernel.xenstore
        self.path = path
        self.tap = tap
        self.log = kernel.log.bind(device=f"vif{path.rsplit('/', 1)[-1]}")
        # The tx side (ring, shadow, free pages) and the rx side (ring,
        # assembler) have a lock each: both run on the upcall thread, but
        # a reconnect (taking both) or a close runs on another.
        self.tx_lock = threading.Lock()
        self.rx_lock = threading.Lock()
        # The pages the next read goes into, taken from the free ones ahead
        # of time; they belong to one connection (generation).
        self.staged: list[int] = []
        self.pending: deque[tuple[bytes, int]] = deque()  # (frame, flags)
        self.tap_watched = False
        self.closed = False
        self.link_up = threading.Event()  # carrier: a backend is connected
        self.generation = 0  # bumped at each reconnect: old rings are gone
        self.window = None
        self.offload = bool(getattr(tap, "vnet_hdr", False))
        self.tap_fd = tap.fileno()  # closed only once the upcall loop lets go of it
        self.hdr = memoryview(bytearray(VNET_HDR_LEN))  # the TAP handler's own
        self.life = Frontend(self.xs, kernel.work, self.log, path, FrontendHooks(
            connect=self._setup, resume=self._resume, lost=self._lost,
            disconnect=self._disconnect, gone=self._gone),
            error=NetfrontError, skip_initialised=True, close_timeout=CLOSE_TIMEOUT)
        self.life.start()

    @property
    def backend(self) -> str:
        return self.life.backend

    @property
    def backend_id(self) -> int:
        return self.life.backend_id

    # -- the lifecycle's hooks ------------------------------------------------------

    def _lost(self) -> None:
        """The backend vanished (its driver domain died) or the device
        moved: frames are lost as on an unplugged wire; the interface
        stays up."""
        if self.link_up.is_set() and not self.closed:
            self.log.warning("backend gone: no carrier until it is back")
        self._lose_connection()

    def _disconnect(self, gone: bool) -> None:
        if gone:
            self._close_tap()  # the interface is gone before we say Closed
        else:
            for port in {getattr(self, "tx_port", None),
                         getattr(self, "rx_port", None)} - {None}:
                try:
                    self.kernel.events.close(port)
                except Exception:  # the channel died with the old backend
                    pass
        # Given back now, or (still mapped by a backend that has not let go
        # yet) as soon as it has: a vif detached for good gives it back too.
        # Given back once (a connect that gave up left none of its own).
        window, self.window = self.window, None
        if window is not None and not self.kernel.gnttab.close_window(window, self.refs):
            self.log.warning("old grant window still mapped, kept")

    def _gone(self) -> None:
        with self.tx_lock:
            self.closed = True

    def _resume(self) -> None:
        self.log.info("connected", sg=self.sg, split_channels=self.split,
                      offload=self.offload, gso=sorted(self.gso_types))
        self.link_up.set()
        self._watch_tap()

    def _lose_connection(self) -> None:
        """No carrier, and the rings and pages in use are the old
        connection's from now on: the TAP handler stages nothing without
        carrier, and lets its staged pages go at the generation change."""
        self.link_up.clear()
        with self.tx_lock, self.rx_lock:
            self.generation += 1

    def connect(self) -> None:
        """The whole handshake (the lifecycle's); NetfrontError if the
        backend does not come."""
        self.life.connect()

    def _setup(self) -> None:
        """The backend waits for us: read its features, make the rings and
        their pages in a grant window, post every rx buffer, publish."""
        xs, back = self.xs, self.backend
        if read_feature(xs, back, "feature-rx-copy") != 1:
            raise NetfrontError("backend offers no rx-copy")
        sg = read_feature(xs, back, "feature-sg") == 1
        split = read_feature(xs, back, "feature-split-event-channels") == 1
        # What we may send: GSO types the backend takes (GSO frames span
        # pages: sg too), IPv6 blank checksums if it takes them.
        gso_types = set()
        if self.offload and sg:
            for gso_type, name in ((XEN_NETIF_GSO_TYPE_TCPV4, "feature-gso-tcpv4"),
                                   (XEN_NETIF_GSO_TYPE_TCPV6, "feature-gso-tcpv6")):
                if read_feature(xs, back, name) == 1:
                    gso_types.add(gso_type)
        ipv6_csum = read_feature(xs, back, "feature-ipv6-csum-offload") == 1
        if self.offload:
            self.tap.set_offload(
                TUN_F_CSUM | (TUN_F_TSO4 if XEN_NETIF_GSO_TYPE_TCPV4 in gso_types else 0)
                | (TUN_F_TSO6 if XEN_NETIF_GSO_TYPE_TCPV6 in gso_types else 0))
        tx_size = netif.XEN_NETIF_TX_RING_SIZE
        rx_size = netif.XEN_NETIF_RX_RING_SIZE
        window = self.kernel.gnttab.open_window(self.backend_id, 2 + tx_size + rx_size)
        gnttab = self.kernel.gnttab
        refs = [gnttab.grant_access(self.backend_id, window.gfn + i)
                for i in range(2 + tx_size + rx_size)]
        # Every page's view, made once: the rings and the tx and rx buffers
        # stay in the same pages for the whole connection.
        pages = [memoryview(window.map)[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]
                 for i in range(2 + tx_size + rx_size)]
        shared_ring_init(pages[0])
        shared_ring_init(pages[1])
        tx = FrontRing(pages[0], TX_ENTRY, 4, entry_size=TX_ENTRY)
        rx = FrontRing(pages[1], RX_ENTRY, RX_ENTRY, entry_size=RX_ENTRY)
        rx_first = 2 + tx_size
        # Ring slot idx always posts the same buffer: its request, made
        # once, and twice over so that any run of slots is one slice.
        rx_requests = b"".join(make_rx_request(idx, refs[rx_first + idx])
                               for idx in range(rx.size))
        rx.put_requests(rx_requests)
        rx.push_requests()
        with self.tx_lock, self.rx_lock:
            self.window, self.refs, self.pages = window, refs, pages
            self.tx, self.rx = tx, rx
            self.tx_pages = list(range(2, 2 + tx_size))
            self.rx_first = rx_first
            self.rx_pages = pages[rx_first:rx_first + rx.size]
            self.rx_area = memoryview(window.map)[rx_first * PAGE_SIZE:
                                                  (rx_first + rx.size) * PAGE_SIZE]
            self.window_view = memoryview(window.map)
            self.page_numbers = list(range(len(pages)))
            self.rx_requests = rx_requests * 2
            self.shadow = TxShadow(tx.size)
            self.tx_unpushed = 0
            self.tx_encoder = TxPageEncoder(refs)
            self.assembler = RxAssembler(sg=sg)
            self.gso_types = frozenset(gso_types)
            self.ipv6_csum = ipv6_csum
        events = self.kernel.events
        if split:
            self.tx_port = events.alloc_unbound(self.backend_id)
            self.rx_port = events.alloc_unbound(self.backend_id)
            events.bind(self.tx_port, self._tx_done)
            events.bind(self.rx_port, self._rx_ready)
        else:
            self.tx_port = self.rx_port = events.alloc_unbound(self.backend_id)
            events.bind(self.tx_port, self._both)
        offload = int(self.offload)

        def publish(tx: int) -> None:
            nodes = {"tx-ring-ref": refs[0], "rx-ring-ref": refs[1],
                     "request-rx-copy": 1, "feature-rx-notify": 1, "feature-sg": 1,
                     "feature-gso-tcpv4": offload, "feature-gso-tcpv6": offload,
                     "feature-ipv6-csum-offload": offload,
                     "feature-no-csum-offload": 1 - offload}
            if split:
                nodes.update({"event-channel-tx": self.tx_port,
                              "event-channel-rx": self.rx_port})
            else:
                nodes["event-channel"] = self.tx_port
            for name, value in nodes.items():
                xs.write(f"{self.path}/{name}", str(value), tx)

        xs.transaction(publish)
        self.sg, self.split = sg, split

    def _watch_tap(self) -> None:
        # Again at a reconnect: the TAP may have been left unwatched, short
        # of room on the old rings.
        if not self.tap_watched:
            try:
                self.tap.set_blocking(False)
            except (OSError, ValueError):
                return  # closed meanwhile
        with self.tx_lock:
            if self.closed:
                return
            self.tx_stalled = False
            self.tap_watched = True
        self.kernel.events.watch_fd(self.tap_fd, self._tap_ready)

    # -- tx: TAP -> ring ----------------------------------------------------------

    def _tap_ready(self, _fd: int = 0) -> None:
        """The TAP is readable (on the upcall thread): move its frames to
        the tx ring until it is empty or the ring has no room."""
        try:
            while self._send_one():
                pass
        except OSError as exc:
            if not self.closed:
                self.log.error("tap read failed", error=str(exc))
                self.tx_stalled = False  # for good: not taken up again
                self.kernel.events.unwatch_fd(self.tap_fd)

    def _reap(self) -> None:
        """Collect the tx responses (under tx_lock): free the pages and ids
        of the frames the backend is done with."""
        tx = self.tx
        n = tx.has_unconsumed_responses()
        if n:
            # A slot's id is its page's number (TxPageEncoder): the pages
            # answered are free again, in the order they went.
            self.tx_pages += self.shadow.complete_ids(tx.take_responses(n))

    def _room(self, nr_pages: int, nslots: int, staged: int) -> bool:
        """Under tx_lock: whether a frame of `nr_pages` pages and `nslots`
        ring slots can go out now (collecting responses if need be)."""
        for reaped in (False, True):
            if (len(self.tx_pages) + staged >= nr_pages and self.shadow.free >= nr_pages
                    and self.tx.free_requests() >= nslots):
                return True
            if not reaped:
                self._reap()
        return False

    def _make_room(self) -> int | None:
        """Before a read from the TAP: send the frames pending, and stage
        pages for the read, if a whole frame can then go out without
        waiting.  The connection's generation; None without carrier (or
        closing); STALLED if there is no room: the TAP is no longer
        watched, and a tx event is asked for."""
        with self.tx_lock:
            if self.closed or not self.link_up.is_set():
                return None
            generation = self.generation
            if self.staged_generation != generation:
                self.staged = []  # the old connection's pages are gone
                self.pending.clear()
                self.staged_generation = generation
            try:
                while True:
                    while self.pending:
                        data, flags = self.pending[0]
                        nr_pages = -(-len(data) // PAGE_SIZE)
                        if not self._room(nr_pages, nr_pages, 0):
                            break
                        self.pending.popleft()
                        pages = self.tx_pages[:nr_pages]
                        del self.tx_pages[:nr_pages]
                        for i, page in enumerate(pages):
                            piece = data[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]
                            self.pages[page][:len(piece)] = piece
                        self._post_locked(pages, len(data), flags, None)
                    # A full frame: READ_PAGES slots, and a GSO extra.
                    if not self.pending and self._room(READ_PAGES, READ_PAGES + 1,
                                                       len(self.staged)):
                        self._restage()
                        if self.tx_stalled:
                            self.tx_stalled = False
                            self.kernel.events.watch_fd(self.tap_fd, self._tap_ready)
                        return generation
                    # No room: stop reading (the TAP's poll is level-
                    # triggered) until the tx event says responses came,
                    # after publishing what is on the ring (or none would).
                    if self._push_locked():
                        self.kernel.events.send(self.tx_port)
                    self.tx_stalled = True
                    self.kernel.events.unwatch_fd(self.tap_fd)
                    if not self.tx.final_check_for_responses():
                        return STALLED
                    # Some came meanwhile: look again.
            except (RingError, NetfrontProtocolError) as exc:
                self.log.error("tx ring broken by the backend", error=str(exc))
                self.link_up.clear()
                return None

    def _restage(self) -> None:
        """Under tx_lock: top the staged pages up from the free ones, if
        there are enough (the oldest first: the next pages of the window)."""
        staged, free = self.staged, self.tx_pages
        need = READ_PAGES - len(staged)
        if need and len(free) >= need:
            staged += free[:need]
            del free[:need]

    def _send_one(self) -> bool:
        """Move the next frame from the TAP to the tx ring, never waiting;
        False once the TAP has none, or the ring has no room (or we stop)."""
        generation = self._make_room()
        if generation is None:
            if self.closed:
                # Nothing reads it any more: stop polling it (level-
                # triggered, it would wake the loop until _close_tap).
                self.kernel.events.unwatch_fd(self.tap_fd)
                return False
            try:  # no carrier: the frame is lost, as on an unplugged wire
                os.read(self.tap_fd, MAX_FRAME)
            except BlockingIOError:
                return False
            return True
        if generation == STALLED:
            return False
        staged = self.staged
        pages = self.pages
        offload = self.offload
        iov = [self.hdr] if offload else []
        run = staged[0]
        if self.window_view is not None and staged == self.page_numbers[run:run + READ_PAGES]:
            # Consecutive pages (the usual): one buffer for the kernel.
            iov.append(self.window_view[run * PAGE_SIZE:(run + READ_PAGES) * PAGE_SIZE])
        else:
            iov += map(pages.__getitem__, staged)
        iov.append(self.spill)
        try:
            n = os.readv(self.tap_fd, iov)
        except BlockingIOError:
            self._push()  # the TAP is empty: publish the batch
            return False
        size = n - VNET_HDR_LEN if offload else n
        if not 0 < size <= XEN_NETIF_MAX_TX_SIZE:
            if size > 0:
                self.log.info("tx frame dropped", size=size, reason="too large")
            return True
        used = -(-size // PAGE_SIZE)
        frame_pages = staged[:used]
        del staged[:used]
        flags, gso = 0, None
        if offload:
            first = pages[frame_pages[0]]
            head = first[:size] if size < netpkt.MAX_HEADER else first[:netpkt.MAX_HEADER]
            fast = vnet.tx_offload_fast(self.hdr, head, gso_types=self.gso_types,
                                        ipv6_csum=self.ipv6_csum)
            if fast is None:
                hdr = vnet.parse_vnet_hdr(self.hdr)
                decision = vnet.tx_offload(hdr, head, size, gso_types=self.gso_types,
                                           ipv6_csum=self.ipv6_csum)
                if decision.drop or decision.fill_csum or decision.segment:
                    # The rare paths: the frame in bytes, fixed up, sent again.
                    frame = b"".join(pages[p][:min(PAGE_SIZE, size - i * PAGE_SIZE)]
                                     for i, p in enumerate(frame_pages))
                    self._release(frame_pages, generation)
                    self._send_fixed(frame, hdr, decision)
                    return True
                fast = decision.flags, decision.gso
            flags, gso = fast
        self._post(frame_pages, size, flags, gso, generation)
        return True

    def _release(self, pages: list[int], generation: int) -> None:
        with self.tx_lock:
            if generation == self.generation:
                self.tx_pages += pages

    def _send_fixed(self, frame: bytes, hdr: vnet.VnetHdr, decision: vnet.TxOffload) -> None:
        if decision.drop:
            self.log.info("tx frame dropped", reason=decision.drop)
            return
        if decision.segment:
            try:
                frames = netpkt.segment_tcp(frame, decision.segment)
            except ValueError as exc:
                self.log.info("tx frame dropped", reason=str(exc))
                return
        else:
            filled = bytearray(frame)
            netpkt.complete_checksum(filled, hdr.csum_start, hdr.csum_offset)
            frames = [bytes(filled)]
        # Sent by the next _make_room, first, as room allows: never waiting.
        pending = self.pending
        for data in frames:
            if len(pending) >= PENDING_MAX:
                pending.popleft()
                self.log.info("tx frame dropped", reason="too many frames pending")
            pending.append((data, decision.flags))

    def _post(self, pages: list[int], size: int, flags: int,
              gso: tuple[int, int] | None, generation: int) -> None:
        """Put a frame held in `pages` (from offset 0, page after page) on
        the tx ring: _make_room saw ids and ring slots for it (the GSO
        extra takes a slot too).  Then stage the next read's pages, under
        the same lock."""
        with self.tx_lock:
            if generation != self.generation or not self.link_up.is_set():
                return  # the rings were replaced, or no carrier: the frame is lost
            notify = self._post_locked(pages, size, flags, gso)
            if self.staged_generation == generation:
                self._restage()
        if notify:
            self.kernel.events.send(self.tx_port)

    def _post_locked(self, pages: list[int], size: int, flags: int,
                     gso: tuple[int, int] | None) -> bool:
        """_post's work, under tx_lock: the frame goes on the ring, published
        with the next PUSH_EVERY (or by _push); whether to notify the
        backend."""
        tx, shadow = self.tx, self.shadow
        if shadow.free < len(pages) or tx.free_requests() < len(pages) + (gso is not None):
            # Cannot happen (_make_room saw room): never wait, never overflow.
            self.log.info("tx frame dropped", reason="no room on the tx ring")
            self.tx_pages += pages
            return False
        encoder = self.tx_encoder
        if encoder is None or encoder.grefs is not self.refs:
            encoder = self.tx_encoder = TxPageEncoder(self.refs)
        try:
            entries = encoder.entries(pages, size, flags=flags, gso=gso)
            shadow.add_ids(pages, gso is not None)
        except ValueError as exc:
            self.log.info("tx frame dropped", error=str(exc))
            self.tx_pages += pages
            return False
        tx.put_requests(entries)
        self.tx_unpushed += 1
        if self.tx_unpushed >= PUSH_EVERY:
            return self._push_locked()
        return False

    def _push_locked(self) -> bool:
        """Under tx_lock: publish the frames put on the tx ring; whether to
        notify the backend."""
        if not self.tx_unpushed:
            return False
        self.tx_unpushed = 0
        return self.tx.push_requests_and_check_notify()

    def _push(self) -> None:
        with self.tx_lock:
            notify = self._push_locked()
        if notify:
            self.kernel.events.send(self.tx_port)

    def _tx_done(self, _port: int = 0) -> None:
        # Asked for (rsp_event) only when the TAP handler stalled for room.
        if self.tx_stalled and not self.closed:
            self._tap_ready()

    # -- rx: ring -> TAP ----------------------------------------------------------

    def _rx_ready(self, _port: int = 0) -> None:
        with self.rx_lock:
            rx = self.rx
            mask = rx.size - 1
            assembler = self.assembler
            rx_pages, area = self.rx_pages, self.rx_area
            if rx_pages is None:
                rx_pages = self.pages[self.rx_first:self.rx_first + rx.size]
            to_tap = self._to_tap
            try:
                while True:
                    n = rx.has_unconsumed_responses()
                    if not n:
                        if not rx.final_check_for_responses():
                            break
                        continue
                    # A few frames at a time: their buffers go back to the
                    # backend sooner.
                    n = min(n, RX_BATCH)
                    start = rx.rsp_cons & mask
                    entries = rx.take_responses(n)
                    for result in assembler.feed_ring(entries, rx_pages, start, area):
                        if type(result) is RxFrame:
                            to_tap(result)
                    # Post again the buffers of the frames written out, at
                    # the same ring positions (slot i always posts page i),
                    # but not those of a frame still under way: the backend
                    # could fill them before we read them.
                    count = rx.free_requests_upto(
                        (rx.rsp_cons - assembler.partial_slots) & 0xFFFFFFFF)
                    if count:
                        at = rx.req_prod_pvt & mask
                        rx.put_requests(self.rx_requests[at * RX_ENTRY:(at + count) * RX_ENTRY])
                        if rx.push_requests_and_check_notify():
                            self.kernel.events.send(self.rx_port)
            except RingError as exc:
                self.log.error("rx ring broken by the backend", error=str(exc))

    def _to_tap(self, frame: RxFrame) -> None:
        if self.offload:
            first = frame.chunks[0] if frame.chunks else b""
            head = (first[:netpkt.MAX_HEADER] if len(first) >= netpkt.MAX_HEADER
                    or len(frame.chunks) <= 1 else frame.head(netpkt.MAX_HEADER))
            hdr = vnet.rx_vnet_header(frame.flags, frame.gso, head)
            if hdr is None:
                self.log.info("rx frame dropped", reason="offload flags on a frame "
                                                         "whose checksum cannot be found")
                return
            chunks = [hdr, *frame.chunks]
        elif frame.gso is not None:
            self.log.info("rx frame dropped", reason="GSO frame, not negotiated")
            return
        elif frame.flags & NETRXF_csum_blank:
            filled = netpkt.fill_checksum(frame.data)
            if filled is None:
                self.log.info("rx frame dropped", reason="blank checksum not found")
                return
            chunks = [filled]
        else:
            chunks = list(frame.chunks)
        try:
            self.tap.writev(chunks)
        except OSError as exc:
            self.log.info("tap write failed", error=str(exc))

    def _both(self, port: int) -> None:
        self._tx_done(port)
        self._rx_ready(port)

    def close(self, wait: bool = True) -> None:
        """Closing, wait for the backend to let go, the TAP goes away,
        Closed (with `wait`, done when this returns, except on a watch
        callback)."""
        self.life.close(wait)

    def _close_tap(self) -> None:
        if self.tap.closed:
            return
        if self.tap_watched:
            # Returns once the upcall loop lets go of the fd: no handler
            # reads it any more, and it may be closed.
            self.kernel.events.unwatch_fd(self.tap_fd)
        self.tap.close()
