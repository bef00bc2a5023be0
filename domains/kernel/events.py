"""Event channels inside a domain: binding ports and the upcall handler.

Upcalls arrive on the domain's upcall channel carrying the port that went
pending. The handler clears the pending byte *before* running the port's
handler, so an event raised while the handler runs is never lost: it makes
the hypervisor send a fresh upcall.
"""

from __future__ import annotations

import struct
import threading
from typing import Callable

import zmq

from domains.kernel.hypercall import Hypercalls
from hypervisor.public.event_channel import (
    EVTCHN_2L_NR_CHANNELS,
    PYXEN_SHINFO_MASK_OFFSET,
    PYXEN_SHINFO_PENDING_OFFSET,
    EVTCHNOP_alloc_unbound,
    EVTCHNOP_bind_interdomain,
    EVTCHNOP_bind_virq,
    EVTCHNOP_close,
    EVTCHNOP_send,
    EVTCHNOP_status,
    EVTCHNOP_unmask,
)
from hypervisor.public.xen import DOMID_SELF, HYPERVISOR_event_channel_op

PORT = struct.Struct("<I")
PENDING_OFFSET = PYXEN_SHINFO_PENDING_OFFSET
MASK_OFFSET = PYXEN_SHINFO_MASK_OFFSET
NR_PORTS = EVTCHN_2L_NR_CHANNELS

Handler = Callable[[int], None]


class EventChannels:
    def __init__(self, hypercall: Hypercalls, ctx: zmq.Context, upcall_endpoint: str,
                 shared_info, log) -> None:
        self.hypercall = hypercall
        self.shared_info = shared_info
        self.log = log
        self.handlers: dict[int, Handler] = {}
        self._pull = ctx.socket(zmq.PULL)
        self._pull.setsockopt(zmq.LINGER, 0)
        self._pull.connect(upcall_endpoint)
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
        return self._op(EVTCHNOP_alloc_unbound, {"dom": dom, "remote_dom": remote_dom})["port"]

    def bind_interdomain(self, remote_dom: int, remote_port: int,
                         handler: Handler | None = None) -> int:
        port = self._op(EVTCHNOP_bind_interdomain,
                        {"remote_dom": remote_dom, "remote_port": remote_port})["local_port"]
        if handler is not None:
            self.handlers[port] = handler
        return port

    def bind_virq(self, virq: int, handler: Handler, vcpu: int = 0) -> int:
        port = self._op(EVTCHNOP_bind_virq, {"virq": virq, "vcpu": vcpu})["port"]
        self.handlers[port] = handler
        return port

    def bind(self, port: int, handler: Handler) -> None:
        """Attach a handler to a port we allocated (e.g. with alloc_unbound)."""
        self.handlers[port] = handler

    def send(self, port: int) -> None:
        self._op(EVTCHNOP_send, {"port": port})

    def close(self, port: int) -> None:
        self.handlers.pop(port, None)
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
        poller.register(self._stop, zmq.POLLIN)
        while True:
            ready = dict(poller.poll())
            if self._stop in ready:
                break
            port, = PORT.unpack(self._pull.recv())
            if not 0 < port < NR_PORTS:
                continue
            self.shared_info[PENDING_OFFSET + port] = 0
            handler = self.handlers.get(port)
            if handler is None:
                continue
            try:
                handler(port)
            except Exception as exc:  # a driver bug must not kill the upcall loop
                self.log.error("event handler failed", port=port, error=repr(exc))
        self._pull.close()
        self._stop.close()

    def stop(self) -> None:
        self._stop_peer.send(b"")
        self.thread.join(timeout=5)
        self._stop_peer.close()
