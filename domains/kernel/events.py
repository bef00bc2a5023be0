"""Event channels inside a domain: binding ports, sending, the upcall handler.

Upcalls arrive carrying the port that went pending. The handler clears the
pending byte *before* running the port's handler, so an event raised while
the handler runs is never lost: it makes a fresh upcall.

Sending has two paths. The hypervisor's (EVTCHNOP_send) always works. Once
a port is connected, the kernel learns its peer (domid, port) from
EVTCHNOP_status and rings the peer's doorbell directly: a ZeroMQ socket
every domain binds at the endpoint the hypervisor named for it. That halves
the hops of a notification, as a doorbell page would. The hypervisor still
decides who is connected to whom (binding and closing go through it); a
receiving kernel accepts a doorbell only for a port it has bound, and a
doorbell that cannot be delivered falls back to the hypercall.
"""

from __future__ import annotations

import struct
import threading
from typing import Callable

import zmq

from domains.kernel.hypercall import Hypercalls
from hypervisor.public.errno import EINVAL, XenError
from hypervisor.public.event_channel import (
    EVTCHN_2L_NR_CHANNELS,
    EVTCHNOP_alloc_unbound,
    EVTCHNOP_bind_interdomain,
    EVTCHNOP_bind_virq,
    EVTCHNOP_close,
    EVTCHNOP_send,
    EVTCHNOP_status,
    EVTCHNOP_unmask,
    EVTCHNSTAT_interdomain,
    PYXEN_SHINFO_MASK_OFFSET,
    PYXEN_SHINFO_PENDING_OFFSET,
)
from hypervisor.public.xen import DOMID_SELF, HYPERVISOR_event_channel_op

PORT = struct.Struct("<I")
PENDING_OFFSET = PYXEN_SHINFO_PENDING_OFFSET
MASK_OFFSET = PYXEN_SHINFO_MASK_OFFSET
NR_PORTS = EVTCHN_2L_NR_CHANNELS

Handler = Callable[[int], None]
#: Doorbells taken off the socket before their handlers run: bounds how
#: long a burst can hold the hypervisor's upcalls back.
NR_COALESCE = 64


class Doorbells:
    """Sockets to peers' doorbells, one per peer domain, shared by threads."""

    def __init__(self, ctx: zmq.Context, template: str) -> None:
        self.ctx = ctx
        self.template = template
        self.peers: dict[int, tuple[threading.Lock, zmq.Socket]] = {}
        self.lock = threading.Lock()

    def ring(self, domid: int, port: int) -> bool:
        """Ring `port` of domain `domid`; False when it cannot be delivered now."""
        with self.lock:
            entry = self.peers.get(domid)
            if entry is None:
                sock = self.ctx.socket(zmq.PUSH)
                sock.setsockopt(zmq.LINGER, 0)
                # Queue only on a live connection: a dead peer fails at once.
                sock.setsockopt(zmq.IMMEDIATE, 1)
                sock.connect(self.template.format(domid=domid))
                entry = self.peers[domid] = (threading.Lock(), sock)
        lock, sock = entry
        with lock:
            try:
                sock.send(PORT.pack(port), zmq.NOBLOCK)
                return True
            except zmq.Again:
                return False

    def close(self) -> None:
        with self.lock:
            for lock, sock in self.peers.values():
                with lock:
                    sock.close()
            self.peers.clear()


class EventChannels:
    def __init__(self, hypercall: Hypercalls, ctx: zmq.Context, endpoints: dict,
                 shared_info, log) -> None:
        self.hypercall = hypercall
        self.shared_info = shared_info
        self.log = log
        self.handlers: dict[int, Handler] = {}
        self.ports: set[int] = set()  # our own ports, whatever their state
        self.peers: dict[int, tuple[int, int]] = {}  # port -> peer (domid, port)
        self._pull = ctx.socket(zmq.PULL)
        self._pull.setsockopt(zmq.LINGER, 0)
        self._pull.connect(endpoints["upcall"])
        self._doorbell = ctx.socket(zmq.PULL)
        self._doorbell.setsockopt(zmq.LINGER, 0)
        self._doorbell.bind(endpoints["doorbell"])
        self.doorbells = Doorbells(ctx, endpoints["doorbell_template"])
        self._stop = ctx.socket(zmq.PAIR)
        self._stop.bind(f"inproc://upcall-stop-{id(self)}")
        self._stop_peer = ctx.socket(zmq.PAIR)
        self._stop_peer.connect(f"inproc://upcall-stop-{id(self)}")
        self.thread = threading.Thread(target=self._upcall_loop, name="upcall",
                                       daemon=True)
        self.thread.start()

    # -- EVTCHNOP_* -----------------------------------------------------------

    def _op(self, cmd: int, args: dict) -> dict:
        return self.hypercall(HYPERVISOR_event_channel_op, cmd, args)

    def alloc_unbound(self, remote_dom: int, dom: int = DOMID_SELF) -> int:
        port = self._op(EVTCHNOP_alloc_unbound, {"dom": dom, "remote_dom": remote_dom})["port"]
        if dom == DOMID_SELF:
            self.ports.add(port)
        return port

    def bind_interdomain(self, remote_dom: int, remote_port: int,
                         handler: Handler | None = None) -> int:
        port = self._op(EVTCHNOP_bind_interdomain,
                        {"remote_dom": remote_dom, "remote_port": remote_port})["local_port"]
        self.ports.add(port)
        self.peers[port] = (remote_dom, remote_port)
        if handler is not None:
            self.handlers[port] = handler
        return port

    def bind_virq(self, virq: int, handler: Handler, vcpu: int = 0) -> int:
        port = self._op(EVTCHNOP_bind_virq, {"virq": virq, "vcpu": vcpu})["port"]
        self.ports.add(port)
        self.handlers[port] = handler
        return port

    def bind(self, port: int, handler: Handler) -> None:
        """Attach a handler to a port we allocated (e.g. with alloc_unbound)."""
        self.handlers[port] = handler

    def send(self, port: int) -> None:
        if port not in self.ports:
            raise XenError(EINVAL, f"port {port} is not in use")
        peer = self.peers.get(port)
        if peer is not None and self.doorbells.ring(*peer):
            return
        self.peers.pop(port, None)
        self._op(EVTCHNOP_send, {"port": port})
        self._learn_peer(port)

    def _learn_peer(self, port: int) -> None:
        status = self._op(EVTCHNOP_status, {"dom": DOMID_SELF, "port": port})
        if status["status"] == EVTCHNSTAT_interdomain:
            remote = status["interdomain"]
            self.peers[port] = (remote["dom"], remote["port"])

    def close(self, port: int) -> None:
        self.handlers.pop(port, None)
        self.peers.pop(port, None)
        self.ports.discard(port)
        self._op(EVTCHNOP_close, {"port": port})

    def status(self, port: int, dom: int = DOMID_SELF) -> dict:
        return self._op(EVTCHNOP_status, {"dom": dom, "port": port})

    def mask(self, port: int) -> None:
        self.shared_info[MASK_OFFSET + port] = 1

    def unmask(self, port: int) -> None:
        self.shared_info[MASK_OFFSET + port] = 0
        if self.shared_info[PENDING_OFFSET + port]:
            # Raised while masked: have the hypervisor deliver it now.
            self._op(EVTCHNOP_unmask, {"port": port})

    # -- upcalls ----------------------------------------------------------------

    def _upcall_loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._pull, zmq.POLLIN)
        poller.register(self._doorbell, zmq.POLLIN)
        poller.register(self._stop, zmq.POLLIN)
        while True:
            ready = dict(poller.poll())
            if self._stop in ready:
                break
            if self._pull in ready:
                self._dispatch(self._pull.recv(), from_hypervisor=True)
            if self._doorbell in ready:
                # Take every doorbell that is waiting, and run each port's
                # handler once: like a pending bit, rings that came while
                # we were busy coalesce into one event.
                rung = {self._doorbell.recv(): None}
                while len(rung) < NR_COALESCE:
                    try:
                        rung[self._doorbell.recv(zmq.NOBLOCK)] = None
                    except zmq.Again:
                        break
                for message in rung:
                    self._dispatch(message, from_hypervisor=False)
        for sock in (self._pull, self._doorbell, self._stop):
            sock.close()

    def _dispatch(self, message: bytes, from_hypervisor: bool) -> None:
        if len(message) != PORT.size:
            return
        port, = PORT.unpack(message)
        handler = self.handlers.get(port)
        if not 0 < port < NR_PORTS or handler is None:
            return
        if not from_hypervisor and self.shared_info[MASK_OFFSET + port]:
            # The hypervisor marks pending for its own deliveries; a doorbell
            # on a masked port is remembered here, and unmask raises it.
            self.shared_info[PENDING_OFFSET + port] = 1
            return
        self.shared_info[PENDING_OFFSET + port] = 0
        try:
            handler(port)
        except Exception as exc:  # a driver bug must not kill the upcall loop
            self.log.error("event handler failed", port=port, error=repr(exc))

    def stop(self) -> None:
        self._stop_peer.send(b"")
        self.thread.join(timeout=5)
        self._stop_peer.close()
        self.doorbells.close()
