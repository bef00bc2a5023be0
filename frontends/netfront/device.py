"""netfront's connection to one vif, pumping frames to and from a TAP.

Frontend side of the handshake: wait for the backend's InitWait, set up
the tx and rx rings and their pages in a grant window for the backend,
post every rx buffer, publish, Connected (netfront skips Initialised).

The guest's network stack is Linux's own, in the guest's network
namespace: frames the TAP hands us go out on the tx ring, frames arriving
on the rx ring are written to the TAP.
"""

from __future__ import annotations

import os
import select
import threading
from typing import Any

from domains.kernel.xenbus.client import XsError
from domains.kernel.xenbus.state import (
    FRONTEND,
    read_feature,
    switch_state,
    watch_backend_moves,
    watch_otherend,
)
from frontends.netfront.rx import RxAssembler, RxFrame, make_rx_request
from frontends.netfront.tx import ShadowFull, TxShadow, split_frame
from hypervisor.public.io import netif
from hypervisor.public.io.ring import FrontRing, shared_ring_init
from hypervisor.public.io.xenbus import XenbusState
from hypervisor.public.xen import PAGE_SIZE

S = XenbusState
TX_ENTRY = netif.NETIF_TX_SRING_ENTRY_SIZE
RX_ENTRY = netif.NETIF_RX_SRING_ENTRY_SIZE


class NetfrontError(OSError):
    pass


class NetfrontDevice:
    def __init__(self, kernel: Any, path: str, tap: Any) -> None:
        self.kernel = kernel
        self.xs = kernel.xenstore
        self.path = path
        self.tap = tap
        self.log = kernel.log.bind(device=f"vif{path.rsplit('/', 1)[-1]}")
        self.backend = self.xs.read(f"{path}/backend").decode()
        self.backend_id = int(self.xs.read(f"{path}/backend-id"))
        self.cond = threading.Condition()
        self.backend_state = S.Unknown
        self.lock = threading.Lock()
        self.closed = False
        self.link_up = threading.Event()  # carrier: a backend is connected
        self.generation = 0  # bumped at each reconnect: old rings are gone
        self.reconnecting = threading.Lock()
        # Backend moves seen, and the one being connected to: a connect
        # waiting on a backend that has already been replaced gives up.
        self.moves = self.connecting = 0
        self.window = None
        self.refs_live = False  # self.refs are granted (not yet ended)
        self.watch = watch_otherend(self.xs, self.backend, self._backend_changed)
        # A restarted net driver domain comes back under a new domid: the
        # toolstack points our backend-id at it and we reconnect.
        watch_backend_moves(self.xs, path, f"netfront-{path}",
                            lambda: self.backend_id, self._reconnect)

    def _backend_changed(self, state: XenbusState) -> None:
        with self.cond:
            self.backend_state = state
            self.cond.notify_all()
        if state == S.Unknown and self.link_up.is_set() and not self.closed:
            # The backend vanished (its driver domain died): frames are lost
            # as on an unplugged wire; the interface stays up.
            self.log.warning("backend gone: no carrier until it is back")
            self.link_up.clear()
            with self.cond:
                self.cond.notify_all()  # senders waiting for tx pages give up
        elif state in (S.Closing, S.Closed) and getattr(self, "tx", None) and not self.closed:
            self.log.info("backend closing the vif")
            threading.Thread(target=self.close, daemon=True).start()

    def _reconnect(self) -> None:
        with self.cond:
            self.moves += 1
            self.cond.notify_all()
        with self.reconnecting:
            backend_id = int(self.xs.read(f"{self.path}/backend-id"))
            if backend_id == self.backend_id or self.closed:
                return
            with self.cond:
                self.connecting = self.moves
            self.link_up.clear()
            with self.lock:
                self.generation += 1
            for port in {self.tx_port, self.rx_port}:
                try:
                    self.kernel.events.close(port)
                except Exception:  # the channel died with the old backend
                    pass
            # The same pages serve the new backend: grants ended, window moved.
            # (senders may still hold self.refs: it stays, marked dead)
            refs, self.refs_live = (self.refs if self.refs_live else []), False
            if not self.kernel.gnttab.retarget_window(self.window, refs, backend_id):
                if self.window is not None:
                    self.log.warning("old grant window still mapped, left to it")
                self.window = None
            try:
                self.watch.cancel()
            except XsError:
                pass
            self.backend = self.xs.read(f"{self.path}/backend").decode()
            self.backend_id = backend_id
            with self.cond:
                self.backend_state = S.Unknown
                self.cond.notify_all()
            self.log.info("reconnecting to the new backend", backend=self.backend)
            switch_state(self.xs, self.path, S.Closed, end=FRONTEND)
            switch_state(self.xs, self.path, S.Initialising, end=FRONTEND)
            self.watch = watch_otherend(self.xs, self.backend, self._backend_changed)
            try:
                self.connect()
            except (XsError, NetfrontError, OSError) as exc:
                self.log.error("reconnect failed", error=str(exc))

    def _wait_backend(self, *states: XenbusState, timeout: float = 30.0) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: self.backend_state in states or
                                      self.moves != self.connecting, timeout):
                raise NetfrontError(f"backend {self.backend} stayed in "
                                    f"{self.backend_state.name}")
            if self.moves != self.connecting:
                raise NetfrontError(f"backend {self.backend} was replaced meanwhile")

    def connect(self) -> None:
        self._wait_backend(S.InitWait, S.Connected)
        xs, back = self.xs, self.backend
        if read_feature(xs, back, "feature-rx-copy") != 1:
            raise NetfrontError("backend offers no rx-copy")
        self.sg = read_feature(xs, back, "feature-sg") == 1
        split = read_feature(xs, back, "feature-split-event-channels") == 1
        tx_size = netif.XEN_NETIF_TX_RING_SIZE
        rx_size = netif.XEN_NETIF_RX_RING_SIZE
        self.window = self.kernel.gnttab.window_for(self.backend_id, 2 + tx_size + rx_size,
                                                    self.window)
        gnttab = self.kernel.gnttab
        self.refs = [gnttab.grant_access(self.backend_id, self.window.gfn + i)
                     for i in range(2 + tx_size + rx_size)]
        self.refs_live = True
        # Every page's view, made once: the rings and the tx and rx buffers
        # stay in the same pages for the whole connection.
        self.pages = [self._page(i) for i in range(2 + tx_size + rx_size)]
        tx_view, rx_view = self.pages[0], self.pages[1]
        shared_ring_init(tx_view)
        shared_ring_init(rx_view)
        self.tx = FrontRing(tx_view, TX_ENTRY, 4, entry_size=TX_ENTRY)
        self.rx = FrontRing(rx_view, RX_ENTRY, RX_ENTRY, entry_size=RX_ENTRY)
        self.tx_pages = list(range(2, 2 + tx_size))
        self.rx_first = 2 + tx_size
        self.shadow = TxShadow(self.tx.size)
        self.assembler = RxAssembler(sg=self.sg)
        events = self.kernel.events
        if split:
            self.tx_port = events.alloc_unbound(self.backend_id)
            self.rx_port = events.alloc_unbound(self.backend_id)
            events.bind(self.tx_port, self._tx_done)
            events.bind(self.rx_port, self._rx_ready)
        else:
            self.tx_port = self.rx_port = events.alloc_unbound(self.backend_id)
            events.bind(self.tx_port, self._both)
        # Ring slot idx always posts the same buffer: its request, made once.
        self.rx_requests = [make_rx_request(idx, self.refs[self.rx_first + idx])
                            for idx in range(self.rx.size)]
        for request in self.rx_requests:
            self.rx.put_request(request)
        self.rx.push_requests()

        def publish(tx: int) -> None:
            nodes = {"tx-ring-ref": self.refs[0], "rx-ring-ref": self.refs[1],
                     "request-rx-copy": 1, "feature-rx-notify": 1, "feature-sg": 1,
                     "feature-gso-tcpv4": 0}
            if split:
                nodes.update({"event-channel-tx": self.tx_port,
                              "event-channel-rx": self.rx_port})
            else:
                nodes["event-channel"] = self.tx_port
            for name, value in nodes.items():
                xs.write(f"{self.path}/{name}", str(value), tx)

        xs.transaction(publish)
        switch_state(xs, self.path, S.Connected, end=FRONTEND)
        self._wait_backend(S.Connected)
        self.log.info("connected", sg=self.sg, split_channels=split)
        self.link_up.set()
        if not hasattr(self, "reader"):
            self._stop_r, self._stop_w = os.pipe()
            self.reader = threading.Thread(target=self._tap_reader, name="netfront-tx",
                                           daemon=True)
            self.reader.start()

    def _page(self, index: int) -> memoryview:
        return memoryview(self.window.map)[index * PAGE_SIZE:(index + 1) * PAGE_SIZE]

    # -- tx: TAP -> ring ----------------------------------------------------------

    def _tap_reader(self) -> None:
        # A thread blocked in read() would keep the TAP alive after close():
        # wait on the TAP and on a stop pipe instead.
        while not self.closed:
            readable, _, _ = select.select([self.tap, self._stop_r], [], [])
            if self._stop_r in readable:
                return
            try:
                frame = self.tap.read()
            except OSError:
                return
            if frame:
                self.send(frame)

    def send(self, frame: bytes) -> None:
        if not self.link_up.is_set():
            return  # no carrier: the frame is lost, as on a real wire
        pieces = split_frame(frame) if self.sg else [(0, frame)]
        with self.cond:
            generation = self.generation
            # Pages and ids come back as the backend answers (see _tx_done).
            while len(self.tx_pages) < len(pieces) or self.shadow.free < len(pieces):
                if self.closed or not self.link_up.is_set():
                    return
                self.cond.wait()
            pages = self.tx_pages[:len(pieces)]
            del self.tx_pages[:len(pieces)]
        segments = []
        for page, (offset, data) in zip(pages, pieces):
            self.pages[page][offset:offset + len(data)] = data
            segments.append((self.refs[page], offset, len(data)))
        with self.lock:
            if generation != self.generation:
                return  # the rings were replaced while we copied
            try:
                packet = self.shadow.add(segments, buffers=pages)
            except (ShadowFull, ValueError) as exc:
                self.log.info("tx frame dropped", error=str(exc))
                with self.cond:
                    self.tx_pages += pages
                return
            for raw in packet.requests:
                self.tx.put_request(raw)
            notify = self.tx.push_requests_and_check_notify()
        if notify:
            self.kernel.events.send(self.tx_port)

    def _tx_done(self, _port: int = 0) -> None:
        freed = []
        with self.lock:
            while True:
                while self.tx.has_unconsumed_responses():
                    slot = self.shadow.complete(self.tx.get_response())
                    if slot is not None and slot.packet.done:
                        freed += slot.packet.buffers
                if not self.tx.final_check_for_responses():
                    break
        if freed:
            with self.cond:
                self.tx_pages += freed
                self.cond.notify_all()

    # -- rx: ring -> TAP ----------------------------------------------------------

    def _rx_ready(self, _port: int = 0) -> None:
        mask = self.rx.size - 1
        with self.lock:
            while True:
                while self.rx.has_unconsumed_responses():
                    idx = self.rx.rsp_cons & mask
                    raw = self.rx.get_response()
                    result = self.assembler.feed(raw, self.pages[self.rx_first + idx])
                    # Re-post the buffer that slot used, at the same ring position.
                    self.rx.put_request(self.rx_requests[idx])
                    if isinstance(result, RxFrame):
                        try:
                            self.tap.write(result.data)
                        except OSError as exc:
                            self.log.info("tap write failed", error=str(exc))
                if not self.rx.final_check_for_responses():
                    break
            notify = self.rx.push_requests_and_check_notify()
        if notify:
            self.kernel.events.send(self.rx_port)

    def _both(self, port: int) -> None:
        self._tx_done(port)
        self._rx_ready(port)

    def close(self) -> None:
        """Closing, wait for the backend to let go, Closed; the TAP goes away."""
        if self.closed:
            return
        self.closed = True
        with self.cond:
            self.cond.notify_all()
        try:
            switch_state(self.xs, self.path, S.Closing, end=FRONTEND)
            try:
                self._wait_backend(S.Closing, S.Closed, S.Unknown, timeout=5)
            except NetfrontError:
                pass
            self._close_tap()  # the interface is gone before we say Closed
            switch_state(self.xs, self.path, S.Closed, end=FRONTEND)
            self.watch.cancel()
        except XsError:
            pass
        finally:
            self._close_tap()

    def _close_tap(self) -> None:
        if self.tap.closed:
            return
        if hasattr(self, "reader"):
            os.write(self._stop_w, b"!")
            self.reader.join(timeout=5)
            os.close(self._stop_r)
            os.close(self._stop_w)
        self.tap.close()
