"""netback's devices (vifs) and the switch that runs them.

Each vif is a xenbus backend device: features, InitWait, then on the
frontend's Connected: map its tx and rx rings, bind its event channel(s),
plug it into its bridge, Connected. All rings of a driver domain are
serviced by one switch thread, so a frame moves from one vif's tx ring to
another's rx ring without locks, in the order it was sent.

The data path, per frame: the tx requests are copied off the ring in one
batch and assembled (tx.py); the first bytes of the frame (up to
netpkt.MAX_HEADER) are copied privately and everything netback decides
(the bridge's forwarding, the offload checks of offload.py) looks only at
that copy, since the frontend may rewrite its pages meanwhile; the frame
then goes straight from the sender's granted tx pages into the
receiver's granted rx pages (one slice copy per page), the private header
first.  Only a frame that has to wait for rx buffers, or that the
receiver cannot take as it is (GSO toward a frontend without it: cut into
segments; a blank checksum toward one with feature-no-csum-offload:
filled in), is copied into bytes of netback's own.  Responses go onto
the rings in batches, and each ring is pushed (and its frontend notified,
when ring.h's event index asks) once per batch.

Grants: the frontend reuses the same tx and rx pages, so each gref is mapped
once (tx read-only, rx writable) and kept until the vif disconnects.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from operator import add
from typing import Any

from backends.netback.bridge import Bridge
from backends.netback.offload import Drop, Offload, needs_fallback, software_fallback, tx_offload
from backends.netback.rx import (
    RxFeatures,
    max_frame,
    page_runs,
    rx_response_block,
    rx_response_slots,
    scatter,
)
from backends.netback.tx import (
    TxAssembler,
    TxBlock,
    TxError,
    TxPacket,
    answer_extra,
    answer_status,
    tx_response_block,
)
from domains.kernel import netpkt
from domains.kernel.api import DriverKernel
from domains.kernel.gnttab import GrantStatusError, Mapping
from domains.kernel.xenbus.lifecycle import Backend, BackendHooks
from domains.kernel.xenbus.state import read_feature, write_features
from hypervisor.public.errno import XenError
from hypervisor.public.io import netif
from hypervisor.public.io.netif import (
    NETIF_RSP_ERROR,
    NETIF_RSP_OKAY,
    XEN_NETIF_GSO_TYPE_TCPV4,
    XEN_NETIF_GSO_TYPE_TCPV6,
    XEN_NETIF_MAX_TX_SIZE,
)
from hypervisor.public.io.ring import BackRing, RingError
from hypervisor.public.io.xenbus import XenbusState
from hypervisor.public.xen import PAGE_SIZE

S = XenbusState
#: netfront skips Initialised: netback connects on its Connected only.
CONNECT_ON = frozenset({S.Connected})
TX_ENTRY = netif.NETIF_TX_SRING_ENTRY_SIZE
RX_ENTRY = netif.NETIF_RX_SRING_ENTRY_SIZE
#: Frames (and bytes) waiting for a frontend's rx buffers before the
#: oldest is dropped, as from a full NIC queue.
RX_BACKLOG = 512
RX_BACKLOG_BYTES = 8 << 20
#: tx slots taken off a ring before the frames are pushed to their rx
#: rings (and the tx responses to the sender): bounds latency and backlog.
#: A few 64 KiB frames: bench net measured 64 > 128 > 32, the receiver and
#: the sender getting their answers sooner.
TX_BATCH = 64
#: A granted page's place, as the switch keeps it: the index of the
#: peer's window (in Vif.windows) above this bit, the page's offset in the
#: window below; pages next to each other in one window are next to each
#: other here, so a frame in consecutive pages is copied in one slice.
WINDOW_SHIFT = 40
OFFSET_MASK = (1 << WINDOW_SHIFT) - 1
#: Posted rx requests consumed before their lists are trimmed.
RX_TRIM = 1024
#: The GSO types and checksum offloads this netback takes from frontends.
GSO_TYPES = frozenset({XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_GSO_TYPE_TCPV6})
#: At most one log line per kind of trouble per vif in this many seconds:
#: a misbehaving frontend must not flood the driver domain's log.
LOG_INTERVAL = 5.0


class Frame:
    """A frame crossing the switch: `head`, a private copy of its first
    bytes (all the bridge and the checks looked at), then `rest`, buffers
    that may be views of the sender's pages (valid only during the
    forward: a receiver that keeps the frame copies it), its `size` and
    its offload state."""

    __slots__ = ("head", "offload", "rest", "size")

    def __init__(self, head: bytes, rest: list, size: int,
                 offload: Offload = Offload()) -> None:
        self.head, self.rest, self.size, self.offload = head, rest, size, offload

    @classmethod
    def of(cls, data: bytes, offload: Offload = Offload()) -> Frame:
        """A frame that owns its bytes."""
        return cls(data, [], len(data), offload)

    def chunks(self) -> list:
        return [self.head, *self.rest] if self.rest else [self.head]

    def materialize(self) -> bytes:
        return self.head if not self.rest else b"".join(self.chunks())

    def detached(self) -> Frame:
        """The same frame in bytes of its own."""
        return self if not self.rest else Frame.of(self.materialize(), self.offload)


def split_head(views: list[memoryview], size: int) -> tuple[bytes, list[memoryview]]:
    """The first min(size, MAX_HEADER) bytes of the data in `views`, copied,
    and views of the rest."""
    want = min(size, netpkt.MAX_HEADER)
    first = views[0]
    if len(first) >= want:
        rest = views[1:]
        if len(first) > want:
            rest.insert(0, first[want:])
        return bytes(first[:want]), rest
    parts, taken, rest = [], 0, []
    for view in views:
        if taken < want:
            piece = view[:want - taken]
            parts.append(bytes(piece))
            taken += len(piece)
            if len(view) > len(piece):
                rest.append(view[len(piece):])
        else:
            rest.append(view)
    return b"".join(parts), rest


class Switch:
    """The driver domain's bridges, and the lock under which frames move.

    There is no thread of its own: whoever has work for the switch (the
    upcall thread with a vif's event, as an interrupt handler would, or a
    XenStore watch connecting a vif) does it under the lock, which keeps
    every ring serviced by one thread at a time and frames in order.
    Running the rings on the upcall thread spares a thread hand-off per
    event."""

    def __init__(self, log) -> None:
        self.log = log
        self.lock = threading.Lock()
        self.bridges: dict[str, Bridge] = {}
        self.ports: dict[tuple[str, int], Any] = {}
        self.dirty: dict[Any, None] = {}  # ports with frames to push

    def call(self, fn) -> None:
        """Run `fn` on the switch, then push what it delivered."""
        with self.lock:
            try:
                fn()
                if self.dirty:
                    self.flush()
            except Exception as exc:  # one vif's trouble must not stop the switch
                self.log.error("switch work failed", error=repr(exc))

    def plug(self, port) -> None:
        bridge = self.bridges.setdefault(port.bridge_name, Bridge(port.bridge_name))
        bridge.add_port(port.port_id)
        self.ports[(port.bridge_name, port.port_id)] = port
        port.bridge = bridge

    def unplug(self, port) -> None:
        bridge = self.bridges.get(port.bridge_name)
        if bridge is not None and self.ports.pop((port.bridge_name, port.port_id), None):
            bridge.remove_port(port.port_id)
        self.dirty.pop(port, None)

    def forward(self, source, frame: Frame) -> None:
        """Hand `frame` to every port the bridge sends it out of; they copy
        it (into their rings or a backlog) before this returns, and
        flush() pushes it."""
        bridge = self.bridges.get(source.bridge_name)
        if bridge is None:
            return
        for port in bridge.forward(source.port_id, frame.head):
            target = self.ports.get((source.bridge_name, port))
            if target is not None:
                target.deliver(frame)

    def flush(self) -> None:
        """Push what deliver() put on the ports' rings: one push (and at most
        one notification) per batch of frames instead of one per frame."""
        dirty, self.dirty = self.dirty, {}
        for port in dirty:
            port.push()


class RateLimitedLog:
    """One line per kind of trouble per LOG_INTERVAL, with a count of the
    ones not logged."""

    def __init__(self, log) -> None:
        self.log = log
        self.last: dict[str, tuple[float, int]] = {}

    def __call__(self, event: str, **kw) -> None:
        now = time.monotonic()
        when, skipped = self.last.get(event, (0.0, 0))
        if now - when < LOG_INTERVAL:
            self.last[event] = (when, skipped + 1)
            return
        self.last[event] = (now, 0)
        if skipped:
            kw["not_logged_since"] = skipped
        self.log.info(event, **kw)


class Vif:
    life: Backend | None = None  # set by start()

    def __init__(self, kernel: DriverKernel, switch: Switch, path: str, fe: int, devid: int) -> None:
        self.kernel = kernel
        self.xs = kernel.xenstore
        self.switch = switch
        self.log = kernel.log.bind(device=f"vif{fe}.{devid}")
        self.trouble = RateLimitedLog(self.log)
        self.path, self.fe, self.devid = path, fe, devid
        self.port_id = fe * 1000 + devid
        self.connected = False
        self.ports: list[int] = []
        self.rings: list[tuple[BackRing, list[Mapping], memoryview]] = []
        self.tx_grants: dict[int, Mapping] = {}
        self.rx_grants: dict[int, Mapping] = {}
        # Where each mapped gref is (WINDOW_SHIFT), and the windows' views:
        # read-only for tx, writable for rx.
        self.tx_at: dict[int, int] = {}
        self.rx_at: dict[int, int] = {}
        self.windows: list[memoryview] = []
        self._window_index: dict[tuple[int, bool], int] = {}
        # The rx requests posted and not used yet: ids and grefs from
        # `posted_next` on.
        self.posted_ids: list[int] = []
        self.posted_grefs: list[int] = []
        self.posted_next = 0
        self.rx_out = bytearray()  # rx responses not on the ring yet
        self.backlog: deque[Frame] = deque()
        self.backlog_bytes = 0
        self.assembler = TxAssembler()
        self._fallback: dict[tuple, bool] = {}
        self.fits = self.fits_gso = 0

    def start(self) -> None:
        self.frontend = self.xs.read(f"{self.path}/frontend").decode()
        self.bridge_name = self.xs.read(f"{self.path}/bridge").decode()
        self.mtu = read_feature(self.xs, self.path, "mtu", 1500)
        self.xs.transaction(lambda tx: write_features(self.xs, self.path, {
            "feature-sg": 1, "feature-gso-tcpv4": 1, "feature-gso-tcpv6": 1,
            "feature-ipv6-csum-offload": 1,
            "feature-rx-copy": 1, "feature-rx-flip": 0,
            "feature-split-event-channels": 1, "multi-queue-max-queues": 1,
        }, tx))
        self.life = Backend(self.xs, self.kernel.work, self.log, self.path, BackendHooks(
            connect=self.connect, disconnect=self._disconnect, resume=self._kick_both),
            connect_on=CONNECT_ON, frontend=self.frontend)
        self.life.start()

    def connect(self) -> None:
        """Map the frontend's rings, bind its channels, plug the vif into
        its bridge (the lifecycle says Connected after, or calls
        _disconnect() if this raises)."""
        xs, fe = self.xs, self.frontend
        if read_feature(xs, fe, "request-rx-copy") != 1:
            raise ValueError("frontend does not request rx-copy (rx-flip is gone)")

        def flag(name: str, default: int = 0) -> bool:
            return read_feature(xs, fe, name, default) == 1

        self.use_features(RxFeatures(sg=flag("feature-sg"), gso_tcpv4=flag("feature-gso-tcpv4"),
                                     gso_tcpv6=flag("feature-gso-tcpv6"), mtu=self.mtu,
                                     csum=not flag("feature-no-csum-offload"),
                                     ipv6_csum=flag("feature-ipv6-csum-offload")))
        gnttab = self.kernel.gnttab
        for name, size in (("tx-ring-ref", TX_ENTRY), ("rx-ring-ref", RX_ENTRY)):
            mappings = gnttab.map_grant_refs(self.fe, [int(xs.read(f"{fe}/{name}"))])
            view = gnttab.contiguous(mappings)
            rsp = netif.TX_RESPONSE.size if name == "tx-ring-ref" else netif.RX_RESPONSE.size
            self.rings.append((BackRing(view, size, rsp, entry_size=size), mappings, view))
        if xs.exists(f"{fe}/event-channel-tx"):
            tx = int(xs.read(f"{fe}/event-channel-tx"))
            rx = int(xs.read(f"{fe}/event-channel-rx"))
            self.ports = [self.kernel.events.bind_interdomain(self.fe, tx, self._kick_tx),
                          self.kernel.events.bind_interdomain(self.fe, rx, self._kick_rx)]
        else:
            port = int(xs.read(f"{fe}/event-channel"))
            self.ports = [self.kernel.events.bind_interdomain(self.fe, port, self._kick_both)]
        # On its bridge before it is connected: a tx kick from now on finds
        # self.bridge set.
        self.switch.call(lambda: self.switch.plug(self))
        self.connected = True
        f = self.features
        self.log.info("connected", bridge=self.bridge_name, sg=f.sg,
                      gso_tcpv4=f.gso_tcpv4, gso_tcpv6=f.gso_tcpv6, csum=f.csum,
                      split_channels=len(self.ports) == 2)

    def use_features(self, features: RxFeatures) -> None:
        """What the frontend negotiated for the frames it receives."""
        self.features = features
        self.receiver = features.receiver
        self._fallback = {}  # offload kind -> needs_fallback()
        # Frames of ETH_HLEN..fits bytes pass every check of _unfit (GSO
        # frames: ETH_HLEN..fits_gso, the MTU being their segments').
        self.fits_gso = XEN_NETIF_MAX_TX_SIZE if features.sg else PAGE_SIZE
        self.fits = min(features.mtu + netpkt.ETH_HLEN, self.fits_gso)

    @property
    def tx_ring(self) -> BackRing:
        return self.rings[0][0]

    @property
    def rx_ring(self) -> BackRing:
        return self.rings[1][0]

    # Kicks arrive on the upcall thread, which services the ring itself.

    def _kick_tx(self, _port: int = 0) -> None:
        self.switch.call(self.process_tx)

    def _kick_rx(self, _port: int = 0) -> None:
        self.switch.call(self.process_rx)

    def _kick_both(self, _port: int = 0) -> None:
        self.switch.call(self.process_tx)
        self.switch.call(self.process_rx)

    def _notify(self, rx: bool) -> None:
        port = self.ports[-1] if rx else self.ports[0]
        try:
            self.kernel.events.send(port)
        except XenError:
            pass

    def _map(self, grefs: list[int], readonly: bool) -> None:
        """Map the grefs not mapped yet (the frontend reuses its pages: each
        is mapped once and kept until the vif disconnects)."""
        cache, at = (self.tx_grants, self.tx_at) if readonly else (self.rx_grants, self.rx_at)
        missing = sorted({g for g in grefs if g not in cache})
        if not missing:
            return
        for m in self.kernel.gnttab.map_grant_refs(self.fe, missing, readonly):
            cache[m.ref] = m
            at[m.ref] = self._window_of(m, readonly) << WINDOW_SHIFT | m.offset

    def _window_of(self, mapping: Mapping, readonly: bool) -> int:
        """The index in self.windows of a view over the whole window
        `mapping` lies in (its page's buffer)."""
        buffer = mapping.page.obj
        key = (id(buffer), readonly)
        index = self._window_index.get(key)
        if index is None:
            view = memoryview(buffer).cast("B")
            index = self._window_index[key] = len(self.windows)
            self.windows.append(view.toreadonly() if readonly else view)
        return index

    def _places(self, grefs: list[int], readonly: bool) -> list[int]:
        """Where the pages of `grefs` are (mapping those not mapped yet)."""
        at = self.tx_at if readonly else self.rx_at
        try:
            return list(map(at.__getitem__, grefs))
        except KeyError:
            self._map(grefs, readonly)
            return list(map(at.__getitem__, grefs))

    def _view(self, place: int, size: int) -> memoryview:
        start = place & OFFSET_MASK
        return self.windows[place >> WINDOW_SHIFT][start:start + size]

    def _broken(self, what: str, exc: Exception) -> None:
        self.log.error(f"{what} ring corrupt, closing", error=str(exc))
        self.disconnect()  # at once, on the switch: no frame touches the rings again
        if self.life is not None:
            self.life.fail()  # Closing, on the device's work

    # -- tx: the frontend's frames, on the switch thread --------------------------

    def process_tx(self) -> None:
        if not self.connected:
            return
        ring = self.tx_ring
        try:
            while True:
                while (n := ring.has_unconsumed_requests()):
                    entries = ring.peek_requests(min(n, TX_BATCH))
                    responses, used = self._tx_block(entries, capped=n > TX_BATCH)
                    ring.consume_requests(used)
                    ring.put_responses(responses)
                    if ring.push_responses_and_check_notify():
                        self._notify(rx=False)
                    self.switch.flush()  # the frames out to their receivers
                    if not self.connected:
                        return  # a receiver's trouble can disconnect us
                if not ring.final_check_for_requests():
                    return
        except RingError as exc:
            self._broken("tx", exc)

    def _tx_block(self, entries: bytes, capped: bool = False) -> tuple[bytes, int]:
        """Forward the packets of a block of tx entries: the responses, as
        ring slots, for the slots answered, and how many slots were used.
        Whole chains that pass every check go the fast way (TxBlock); the
        first that does not, and everything after it, go through the
        assembler's state machine, which keeps a chain cut by the end of
        the block for the next one.  But when the block was `capped` (more
        requests wait in the ring), a chain it cuts is left in the ring
        for the next block, to go the fast way."""
        if self.assembler.in_progress:
            return self._tx_slow(entries), len(entries) // TX_ENTRY
        block = TxBlock(entries)
        out = tx_response_block(block)
        limits = self.assembler.limits
        index, count = 0, block.count
        while index < count:
            chain = block.chain(index, limits)
            if chain is None:
                if capped and index and not block.ends_within(index):
                    return out[:6 * index].tobytes(), index
                return (out[:6 * index].tobytes() + self._tx_slow(entries[index * TX_ENTRY:]),
                        count)
            if chain[3] is not None:
                answer_extra(out, index + 1)
            status = self._send(*block.segments(index, chain), block.size[index],
                                block.flags[index], chain[3])
            if status:
                answer_status(out, index, chain, status)
            index = chain[0]
        return out.tobytes(), count

    def _tx_slow(self, entries: bytes) -> bytes:
        responses = []
        for result in self.assembler.feed_block(entries):
            if type(result) is TxPacket:
                responses.append(self._send_packet(result))
            else:
                assert isinstance(result, TxError)
                self.trouble("bad tx request", reason=result.reason)
                responses.append(result.response_slots())
        return b"".join(responses)

    def _send_packet(self, packet: TxPacket) -> bytes:
        """Forward one packet the state machine assembled; its responses,
        as ring slots."""
        if packet.mcast is not None:
            return packet.response_slots()  # a filter update: every frame passes
        gso = packet.gso
        grefs, offsets, lengths = map(list, zip(*packet.segments()))
        status = self._send(grefs, offsets, lengths, packet.size, packet.flags,
                            None if gso is None else (gso.gso_type, gso.gso_size))
        return packet.response_slots(status or NETIF_RSP_OKAY)

    def _send(self, grefs: list[int], offsets: list[int], lengths: list[int],
              size: int, flags: int, gso: tuple[int, int] | None) -> int:
        """Forward the packet held in (gref, offset, length) pieces (each
        checked to lie within its page); 0, or the status to answer it."""
        if 0 in lengths:  # empty slots: nothing to map or copy
            kept = [k for k, n in enumerate(lengths) if n]
            grefs = [grefs[k] for k in kept]
            offsets = [offsets[k] for k in kept]
            lengths = [lengths[k] for k in kept]
        try:
            starts = list(map(add, self._places(grefs, True), offsets))
        except GrantStatusError as exc:
            self.trouble("bad tx grant", error=str(exc))
            return NETIF_RSP_ERROR
        ends = list(map(add, starts, lengths))
        if ends[:-1] == starts[1:]:  # one run of memory: the common case
            view = self._view(starts[0], size)
            cut = min(size, netpkt.MAX_HEADER)
            head, rest = bytes(view[:cut]), ([view[cut:]] if size > cut else [])
        else:
            head, rest = split_head([self._view(start, length) for start, length
                                     in zip(starts, lengths) if length], size)
        offload = tx_offload(head, size, flags, gso, gso_types=GSO_TYPES, ipv6_csum=True)
        if type(offload) is Drop:
            self.trouble("bad tx offload", reason=offload.reason)
            return NETIF_RSP_ERROR
        frame = Frame(head, rest, size, offload)
        ports = self.switch.ports
        bridge_name = self.bridge_name
        for port in self.bridge.forward(self.port_id, head):
            target = ports.get((bridge_name, port))
            if target is not None:
                target.deliver(frame)
        return 0

    # -- rx: frames for the frontend, on the switch thread ------------------------

    def deliver(self, frame: Frame) -> None:
        """Put a frame on the rx ring (push() publishes it), or in the
        backlog until the frontend posts buffers; made fit for the
        frontend first if it cannot take its offload."""
        if not self.connected:
            return
        offload = frame.offload
        kind = (offload.flags, offload.gso is not None and offload.gso[0], offload.ipv6)
        fallback = self._fallback.get(kind)
        if fallback is None:
            fallback = self._fallback[kind] = needs_fallback(offload, self.receiver)
        if fallback:
            result = software_fallback(frame.materialize(), frame.offload, self.receiver)
            if type(result) is Drop:
                self.trouble("rx frame dropped", reason=result.reason)
                return
            for data, offload in result:
                self.deliver(Frame.of(data, offload))
            return
        size = frame.size
        fits = self.fits if offload.gso is None else self.fits_gso
        reason = "" if netpkt.ETH_HLEN <= size <= fits else self._unfit(frame)
        if reason:
            self.trouble("rx frame dropped", reason=reason)
            return
        try:
            if not self.backlog and self._place(frame):
                return
        except RingError as exc:  # this frontend's ring, not the sender's
            self._broken("rx", exc)
            return
        frame = frame.detached()
        self.backlog.append(frame)
        self.backlog_bytes += frame.size
        while len(self.backlog) > RX_BACKLOG or self.backlog_bytes > RX_BACKLOG_BYTES:
            # The oldest frame is lost, as from a full queue.
            self.backlog_bytes -= self.backlog.popleft().size
        self.switch.dirty[self] = None

    def _unfit(self, frame: Frame) -> str:
        size, f = frame.size, self.features
        if size < netpkt.ETH_HLEN:
            return f"runt frame of {size} bytes"
        if size > XEN_NETIF_MAX_TX_SIZE:
            return f"frame of {size} bytes, more than {XEN_NETIF_MAX_TX_SIZE}"
        if (size > f.mtu + netpkt.ETH_HLEN and frame.offload.gso is None
                and size > max_frame(frame.head, f.mtu)):
            return f"frame of {size} bytes exceeds MTU {f.mtu}"
        if size > PAGE_SIZE and not f.sg:
            return f"frame of {size} bytes needs feature-sg"
        return ""

    def _pull_requests(self) -> None:
        ring = self.rx_ring
        n = ring.has_unconsumed_requests()
        if n:
            entries = memoryview(ring.get_requests(n))
            if self.posted_next >= RX_TRIM:
                del self.posted_ids[:self.posted_next], self.posted_grefs[:self.posted_next]
                self.posted_next = 0
            self.posted_ids += netif.RX_REQUEST_ID.read(entries)
            self.posted_grefs += netif.RX_REQUEST_GREF.read(entries)

    def _place(self, frame: Frame) -> bool:
        """Copy a frame into posted rx buffers and queue its responses;
        False (nothing done) if too few buffers are posted."""
        size = frame.size
        gso = frame.offload.gso
        data = -(-size // PAGE_SIZE)
        need = data + (gso is not None)
        first = self.posted_next
        if len(self.posted_ids) - first < need:
            self._pull_requests()
            first = self.posted_next
            if len(self.posted_ids) - first < need:
                return False
        self.posted_next = first + need
        ids = self.posted_ids[first:first + need]
        grefs = self.posted_grefs[first:first + need]
        if gso is not None:
            del grefs[1]  # the extra's request: no buffer used
        try:
            starts = self._places(grefs, False)
        except GrantStatusError as exc:
            self.trouble("bad rx grant", error=str(exc))
            self.rx_out += rx_response_slots(ids, [NETIF_RSP_ERROR] * data,
                                             frame.offload.flags, gso)
        else:
            base = starts[0]
            if starts == list(range(base, base + data * PAGE_SIZE, PAGE_SIZE)):
                targets = [self._view(base, size)]  # one run of pages
            elif data > 2 and starts[1:] == list(range(starts[1], starts[1] + (data - 1)
                                                       * PAGE_SIZE, PAGE_SIZE)):
                # The frontend posted consecutive pages, and the GSO extra
                # took the second request's.
                targets = [self._view(base, PAGE_SIZE),
                           self._view(starts[1], size - PAGE_SIZE)]
            else:
                targets = [self._view(first, pages * PAGE_SIZE)
                           for first, pages in page_runs(starts)]
            scatter(frame.chunks(), targets)
            self.rx_out += rx_response_block(ids, size, frame.offload.flags, gso)
        self.switch.dirty[self] = None
        return True

    def process_rx(self) -> None:
        """The frontend posted buffers: place what waits for them."""
        if not self.connected:
            return
        try:
            self._drain()
        except RingError as exc:
            self._broken("rx", exc)
            return
        self.push()

    def _drain(self) -> None:
        backlog = self.backlog
        while backlog:
            while backlog and self._place(backlog[0]):
                self.backlog_bytes -= backlog.popleft().size
            if not backlog:
                return
            # Out of buffers: have the frontend kick us when it posts more
            # (feature-rx-notify), and look once more after asking.
            if not self.rx_ring.final_check_for_requests():
                return

    def push(self) -> None:
        """Publish the queued rx responses, notifying if the frontend asked."""
        if not self.connected:
            return
        ring = self.rx_ring
        try:
            if self.backlog:
                self._drain()
            if self.rx_out:
                ring.put_responses(self.rx_out)
                self.rx_out = bytearray()
                if ring.push_responses_and_check_notify():
                    self._notify(rx=True)
        except RingError as exc:
            self._broken("rx", exc)

    def _disconnect(self) -> None:
        """The lifecycle's disconnect: a connected vif is unplugged and
        let go of (on the switch); what a connect that failed part way
        holds (rings mapped, channels bound, not plugged yet) is released."""
        if self.connected:
            self.switch.call(self.disconnect)
            return
        for port in self.ports:
            try:
                self.kernel.events.close(port)
            except XenError:
                pass
        self.ports = []
        for ring, mappings, view in self.rings:
            ring.close()
            view.release()
            try:
                self.kernel.gnttab.unmap_all(mappings)
            except Exception as exc:  # the frontend may be gone already
                self.log.info("disconnect", note=repr(exc))
        self.rings = []

    def disconnect(self) -> None:
        if not self.connected:
            return
        self.connected = False
        self.switch.unplug(self)
        events, gnttab = self.kernel.events, self.kernel.gnttab
        for port in self.ports:
            try:
                events.close(port)
            except XenError:
                pass
        for ring, mappings, view in self.rings:
            ring.close()
            view.release()
            try:
                gnttab.unmap_all(mappings)
            except Exception as exc:
                self.log.info("disconnect", note=repr(exc))
        for view in self.windows:
            view.release()  # before the unmaps: the last one lets go of the window
        self.windows, self._window_index = [], {}
        self.tx_at, self.rx_at = {}, {}
        grants = list(self.tx_grants.values()) + list(self.rx_grants.values())
        if grants:
            try:
                gnttab.unmap_all(grants)
            except Exception as exc:
                self.log.info("disconnect", note=repr(exc))
        self.rings, self.ports = [], []
        self.tx_grants, self.rx_grants = {}, {}
        self.posted_ids, self.posted_grefs, self.posted_next = [], [], 0
        self.rx_out = bytearray()
        self.backlog.clear()
        self.backlog_bytes = 0
        self.assembler = TxAssembler()
        self.log.info("disconnected")

    def remove(self) -> None:
        """The device is gone: the lifecycle tears it down (and waits for
        that, unless called from a watch callback)."""
        if self.life is not None:
            self.life.close()
        else:
            self.switch.call(self.disconnect)
