"""netback's devices (vifs) and the switch that runs them.

Each vif is a xenbus backend device: features, InitWait, then on the
frontend's Connected: map its tx and rx rings, bind its event channel(s),
plug it into its bridge, Connected. All rings of a driver domain are
serviced by one switch thread, so a frame moves from one vif's tx ring to
another's rx ring without locks, in the order it was sent.

Grants: the frontend reuses the same tx and rx pages, so each gref is mapped
once (tx read-only, rx writable) and kept until the vif disconnects.
"""

from __future__ import annotations

import queue
import struct
import threading
from collections import deque
from itertools import islice
from typing import Any

from backends.netback.bridge import Bridge
from backends.netback.rx import RxDrop, RxFeatures, RxRequest, plan_rx, rx_slots_needed
from backends.netback.tx import TxAssembler, TxError, TxPacket
from domains.kernel.gnttab import GrantStatusError, Mapping
from domains.kernel.xenbus.backend import backend_switch
from domains.kernel.xenbus.client import XsError
from domains.kernel.xenbus.state import (
    BACKEND,
    read_feature,
    read_state,
    switch_state,
    watch_otherend,
    write_features,
)
from hypervisor.public.errno import XenError
from hypervisor.public.io import netif
from hypervisor.public.io.netif import NETIF_RSP_ERROR, XEN_NETIF_MAX_TX_SIZE
from hypervisor.public.io.ring import BackRing, RingError
from hypervisor.public.io.xenbus import XenbusState

S = XenbusState
TX_ENTRY = netif.NETIF_TX_SRING_ENTRY_SIZE
RX_ENTRY = netif.NETIF_RX_SRING_ENTRY_SIZE
RX_BACKLOG = 512  # frames waiting for rx buffers before we drop (as a full NIC queue)
RX_BATCH = 64  # tx packets forwarded before the frames are put on the rx rings
RX_ID = struct.Struct("<HxxI")


class Switch(threading.Thread):
    """The driver domain's bridges and the one thread that moves frames."""

    def __init__(self, log) -> None:
        super().__init__(name="netback-switch", daemon=True)
        self.log = log
        self.work: queue.SimpleQueue = queue.SimpleQueue()
        self.bridges: dict[str, Bridge] = {}
        self.ports: dict[tuple[str, int], "Vif"] = {}
        self.dirty: dict["Vif", None] = {}  # vifs with frames queued by forward()
        self.start()

    def call(self, fn) -> None:
        self.work.put(fn)

    def run(self) -> None:
        while True:
            fn = self.work.get()
            try:
                fn()
                if self.dirty:
                    self.flush()
            except Exception as exc:  # one vif's trouble must not stop the switch
                self.log.error("switch work failed", error=repr(exc))

    def plug(self, vif: "Vif") -> None:
        bridge = self.bridges.setdefault(vif.bridge_name, Bridge(vif.bridge_name))
        bridge.add_port(vif.port_id)
        self.ports[(vif.bridge_name, vif.port_id)] = vif

    def unplug(self, vif: "Vif") -> None:
        bridge = self.bridges.get(vif.bridge_name)
        if bridge is not None and self.ports.pop((vif.bridge_name, vif.port_id), None):
            bridge.remove_port(vif.port_id)

    def forward(self, source: "Vif", frame: bytes) -> None:
        """Queue `frame` on the vifs the bridge sends it out of; flush() puts
        it on their rx rings."""
        bridge = self.bridges.get(source.bridge_name)
        if bridge is None:
            return
        for port in bridge.forward(source.port_id, frame):
            target = self.ports.get((source.bridge_name, port))
            if target is not None:
                target.deliver(frame)

    def flush(self) -> None:
        """Put the frames forward() queued on their vifs' rx rings: one pass
        over each rx ring (one push, at most one notification) per batch of
        frames instead of one per frame."""
        dirty, self.dirty = self.dirty, {}
        for vif in dirty:
            vif.process_rx()


class Vif:
    def __init__(self, kernel: Any, switch: Switch, path: str, fe: int, devid: int) -> None:
        self.kernel = kernel
        self.xs = kernel.xenstore
        self.switch = switch
        self.log = kernel.log.bind(device=f"vif{fe}.{devid}")
        self.path, self.fe, self.devid = path, fe, devid
        self.port_id = fe * 1000 + devid
        self.connected = False
        self.watch = None
        self.ports: list[int] = []
        self.rings: list[tuple[BackRing, list[Mapping], memoryview]] = []
        self.tx_grants: dict[int, Mapping] = {}
        self.rx_grants: dict[int, Mapping] = {}
        self.posted: deque[RxRequest] = deque()
        self.backlog: deque[bytes] = deque()
        self.assembler = TxAssembler()

    def start(self) -> None:
        self.frontend = self.xs.read(f"{self.path}/frontend").decode()
        self.bridge_name = self.xs.read(f"{self.path}/bridge").decode()
        self.mtu = read_feature(self.xs, self.path, "mtu", 1500)
        self.xs.transaction(lambda tx: write_features(self.xs, self.path, {
            "feature-sg": 1, "feature-gso-tcpv4": 1, "feature-gso-tcpv6": 0,
            "feature-rx-copy": 1, "feature-rx-flip": 0,
            "feature-split-event-channels": 1, "multi-queue-max-queues": 1,
        }, tx))
        switch_state(self.xs, self.path, S.InitWait, end=BACKEND)
        self.watch = watch_otherend(self.xs, self.frontend, self.frontend_changed)

    def frontend_changed(self, state: XenbusState) -> None:
        if state == S.Connected and not self.connected:
            try:
                self.connect()
            except (XsError, XenError, GrantStatusError, RingError, ValueError) as exc:
                self.log.error("cannot connect", error=str(exc))
                self._switch(S.Closing)
        elif state in (S.Closing, S.Closed, S.Unknown):
            self.switch.call(self.disconnect)
            self._switch(S.Closing if state == S.Closing else S.Closed)
        elif state == S.Initialising and read_state(self.xs, self.path) in (S.Closing,
                                                                            S.Closed):
            # The frontend starts over (its Closed may have gone unseen: a
            # watch reports the node's value now, not each value it had).
            self.switch.call(self.disconnect)
            self._switch(S.InitWait)

    def _switch(self, state: XenbusState) -> None:
        backend_switch(self.xs, self.path, state)

    def connect(self) -> None:
        xs, fe = self.xs, self.frontend
        if read_feature(xs, fe, "request-rx-copy") != 1:
            raise ValueError("frontend does not request rx-copy (rx-flip is gone)")
        self.features = RxFeatures(sg=read_feature(xs, fe, "feature-sg") == 1,
                                   gso_tcpv4=read_feature(xs, fe, "feature-gso-tcpv4") == 1,
                                   mtu=self.mtu)
        gnttab = self.kernel.gnttab
        for name, size in (("tx-ring-ref", TX_ENTRY), ("rx-ring-ref", RX_ENTRY)):
            mappings = gnttab.map_grant_refs(self.fe, [int(xs.read(f"{fe}/{name}"))])
            view = gnttab.contiguous(mappings)
            rsp = 4 if name == "tx-ring-ref" else RX_ENTRY
            self.rings.append((BackRing(view, size, rsp, entry_size=size), mappings, view))
        if xs.exists(f"{fe}/event-channel-tx"):
            tx = int(xs.read(f"{fe}/event-channel-tx"))
            rx = int(xs.read(f"{fe}/event-channel-rx"))
            self.ports = [self.kernel.events.bind_interdomain(self.fe, tx, self._kick_tx),
                          self.kernel.events.bind_interdomain(self.fe, rx, self._kick_rx)]
        else:
            port = int(xs.read(f"{fe}/event-channel"))
            self.ports = [self.kernel.events.bind_interdomain(self.fe, port, self._kick_both)]
        self.connected = True
        self.switch.call(lambda: self.switch.plug(self))
        self._switch(S.Connected)
        self.log.info("connected", bridge=self.bridge_name, sg=self.features.sg,
                      split_channels=len(self.ports) == 2)
        self._kick_both()

    @property
    def tx_ring(self) -> BackRing:
        return self.rings[0][0]

    @property
    def rx_ring(self) -> BackRing:
        return self.rings[1][0]

    def _kick_tx(self, _port: int = 0) -> None:
        self.switch.call(self.process_tx)

    def _kick_rx(self, _port: int = 0) -> None:
        self.switch.call(self.process_rx)

    def _kick_both(self, _port: int = 0) -> None:
        self._kick_tx()
        self._kick_rx()

    def _notify(self, rx: bool) -> None:
        port = self.ports[-1] if rx else self.ports[0]
        try:
            self.kernel.events.send(port)
        except XenError:
            pass

    def _map(self, cache: dict[int, Mapping], grefs: list[int], readonly: bool) -> None:
        missing = sorted({g for g in grefs if g not in cache})
        if missing:
            for m in self.kernel.gnttab.map_grant_refs(self.fe, missing, readonly):
                cache[m.ref] = m

    # -- on the switch thread ---------------------------------------------------

    def process_tx(self) -> None:
        if not self.connected:
            return
        ring = self.tx_ring
        sent = 0
        try:
            while True:
                while ring.has_unconsumed_requests():
                    result = self.assembler.feed(ring.get_request())
                    if isinstance(result, TxPacket):
                        self._send_packet(result)
                        sent += 1
                        if sent % RX_BATCH == 0:
                            self.switch.flush()  # bound the rx backlogs and latency
                    elif isinstance(result, TxError):
                        self.log.info("bad tx request", reason=result.reason)
                        for raw in result.response_bytes():
                            ring.put_response(raw)
                if ring.push_responses_and_check_notify():
                    self._notify(rx=False)
                if not ring.final_check_for_requests():
                    return
        except RingError as exc:
            self.log.error("tx ring corrupt, closing", error=str(exc))
            self.disconnect()
            self._switch(S.Closing)

    def _send_packet(self, packet: TxPacket) -> None:
        segments = packet.segments()
        try:
            self._map(self.tx_grants, [g for g, _, n in segments if n], readonly=True)
        except GrantStatusError as exc:
            self.log.info("bad tx grant", error=str(exc))
            for raw in packet.response_bytes(NETIF_RSP_ERROR):
                self.tx_ring.put_response(raw)
            return
        frame = b"".join(bytes(self.tx_grants[g].page[off:off + n])
                         for g, off, n in segments if n)
        for raw in packet.response_bytes():
            self.tx_ring.put_response(raw)
        self.switch.forward(self, frame)

    def deliver(self, frame: bytes) -> None:
        """Queue a frame for the rx ring; the switch's flush() puts it there."""
        if not self.connected:
            return
        if len(self.backlog) >= RX_BACKLOG:
            self.backlog.popleft()  # the oldest frame is lost, as on a full queue
        self.backlog.append(frame)
        self.switch.dirty[self] = None

    def process_rx(self) -> None:
        if not self.connected:
            return
        ring = self.rx_ring
        try:
            while ring.has_unconsumed_requests():
                self.posted.append(RxRequest(*RX_ID.unpack(ring.get_request()[:8])))
        except RingError as exc:
            self.log.error("rx ring corrupt, closing", error=str(exc))
            self.disconnect()
            self._switch(S.Closing)
            return
        pushed = False
        # plan_rx looks at no more requests than the largest frame takes.
        most = rx_slots_needed(XEN_NETIF_MAX_TX_SIZE, self.features.page_size, gso=True)
        while self.backlog:
            plan = plan_rx(self.backlog[0], list(islice(self.posted, most)), self.features)
            if plan is None:
                break  # wait for the frontend to post buffers
            self.backlog.popleft()
            if isinstance(plan, RxDrop):
                continue
            for _ in plan.slots:
                self.posted.popleft()
            failed = set()
            try:
                self._map(self.rx_grants, [g for _, g, _, _ in plan.copies()], readonly=False)
            except GrantStatusError:
                failed = {i for i, _, _, _ in plan.copies()}
            for index, gref, offset, data in plan.copies():
                if index not in failed:
                    self.rx_grants[gref].page[offset:offset + len(data)] = data
            for raw in plan.responses(failed):
                ring.put_response(raw)
            pushed = True
        if pushed and ring.push_responses_and_check_notify():
            self._notify(rx=True)

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
        grants = list(self.tx_grants.values()) + list(self.rx_grants.values())
        if grants:
            try:
                gnttab.unmap_all(grants)
            except Exception as exc:
                self.log.info("disconnect", note=repr(exc))
        self.rings, self.ports = [], []
        self.tx_grants, self.rx_grants = {}, {}
        self.posted.clear()
        self.backlog.clear()
        self.assembler = TxAssembler()
        self.log.info("disconnected")

    def remove(self) -> None:
        if self.watch is not None:
            try:
                self.watch.cancel()
            except XsError:
                pass
        done = threading.Event()

        def run() -> None:
            self.disconnect()
            done.set()

        self.switch.call(run)
        done.wait(10)
