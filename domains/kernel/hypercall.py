"""The hypercall instruction (HVC): a request/reply on the domain's channel.

A hypercall takes a REQ socket (a connection to the hypervisor) from a pool
for as long as it is in flight: a thread that ends leaves no connection
behind, and there are never more connections than hypercalls in flight.
The hypervisor caps a domain's connections (start_info's
"hypercall_channels", from its vCPUs: hypervisor/connections.py) and shuts
those past the cap, so the pool never opens more: a hypercall that finds
them all in flight waits for one. The hypervisor knows the caller by the
channel, so nothing here says who we are.
"""

from __future__ import annotations

import threading
from typing import Any

import msgpack
import zmq

from hypervisor.public.errno import XenError


class Hypercalls:
    def __init__(self, ctx: zmq.Context, endpoint: str, limit: int | None = None) -> None:
        self.ctx = ctx
        self.endpoint = endpoint
        self.limit = limit  # connections at most (None: as many as wanted)
        self._idle: list[zmq.Socket] = []
        self._sockets: list[zmq.Socket] = []
        # Also the memory barrier that lets a socket move between threads.
        self._free = threading.Condition()
        self._closed = False

    def _take(self) -> zmq.Socket:
        with self._free:
            while True:
                if self._closed:
                    raise zmq.ContextTerminated()
                if self._idle:
                    return self._idle.pop()
                if self.limit is None or len(self._sockets) < self.limit:
                    break
                self._free.wait()
            sock = self.ctx.socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self.endpoint)
            self._sockets.append(sock)
            return sock

    def _give_back(self, sock: zmq.Socket, usable: bool) -> None:
        with self._free:
            if usable and not self._closed:
                self._idle.append(sock)
            else:
                # A REQ socket whose reply never came cannot send again.
                self._sockets.remove(sock)
                sock.close()
            self._free.notify()

    def __call__(self, nr: int, cmd: int = 0, args: Any = None, vcpu: int = 0) -> Any:
        """Issue one hypercall; a negative rc raises XenError with Xen's errno."""
        sock = self._take()
        usable = False
        try:
            sock.send(msgpack.packb([nr, cmd, args, vcpu]))
            reply = sock.recv()
            usable = True
        finally:
            self._give_back(sock, usable)
        rc, result = msgpack.unpackb(reply)
        if rc < 0:
            raise XenError.from_rc(rc, result if isinstance(result, str) else "")
        return result

    def close(self) -> None:
        with self._free:
            self._closed = True
            for sock in self._idle:
                sock.close()
                self._sockets.remove(sock)
            self._idle.clear()
            self._free.notify_all()
