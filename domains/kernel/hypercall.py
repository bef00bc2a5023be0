"""The hypercall instruction (HVC): a request/reply on the domain's channel.

Each vCPU thread has its own REQ socket; the hypervisor knows the caller by
the channel, so nothing here says who we are.
"""

from __future__ import annotations

import threading
from typing import Any

import msgpack
import zmq

from hypervisor.public.errno import XenError


class Hypercalls:
    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        self.ctx = ctx
        self.endpoint = endpoint
        self._local = threading.local()
        self._sockets: list[zmq.Socket] = []
        self._lock = threading.Lock()

    def _socket(self) -> zmq.Socket:
        sock = getattr(self._local, "sock", None)
        if sock is None:
            sock = self.ctx.socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self.endpoint)
            self._local.sock = sock
            with self._lock:
                self._sockets.append(sock)
        return sock

    def __call__(self, nr: int, cmd: int = 0, args: Any = None, vcpu: int = 0) -> Any:
        """Issue one hypercall; a negative rc raises XenError with Xen's errno."""
        sock = self._socket()
        sock.send(msgpack.packb([nr, cmd, args, vcpu]))
        rc, result = msgpack.unpackb(sock.recv())
        if rc < 0:
            raise XenError.from_rc(rc, result if isinstance(result, str) else "")
        return result

    def close(self) -> None:
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()
