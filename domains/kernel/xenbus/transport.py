"""Byte pipes to xenstored.

A transport moves the raw ``xsd_sockmsg`` stream; it knows nothing about
frames. Dom0's tools reach xenstored over a Unix socket
(``<run-dir>/xenstored/socket``, like ``/run/xenstored/socket``); every
other domain over its xenstore page and an event channel, as Linux's
xenbus_comms.c does.

Both block without polling: the socket in the kernel, the ring on a
condition variable that :meth:`RingTransport.kick` (the event channel's
handler) signals.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Protocol

from domains.kernel.xenbus.ring import XenstoreRing
from hypervisor.public.io.xs_wire import XENSTORE_RING_SIZE

RECV_CHUNK = 65536


class TransportClosed(ConnectionError):
    """The transport was closed (locally or by xenstored)."""


class Transport(Protocol):
    def send(self, data: bytes) -> None:
        """Write all of ``data``, blocking as needed; TransportClosed if closed."""

    def recv(self) -> bytes:
        """Block for at least one byte; b"" once closed or at EOF."""

    def close(self) -> None:
        """Idempotent; wakes any thread blocked in send() or recv()."""


class UnixTransport:
    """A stream socket to xenstored."""

    def __init__(self, path: str | None = None, *, sock: socket.socket | None = None) -> None:
        if (path is None) == (sock is None):
            raise TypeError("give exactly one of path and sock")
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(path)
            except BaseException:
                sock.close()
                raise
        self.path = path
        self._sock = sock
        self._closed = False
        self._lock = threading.Lock()

    @classmethod
    def from_socket(cls, sock: socket.socket) -> UnixTransport:
        """Wrap an already connected stream socket (e.g. one of a socketpair)."""
        return cls(sock=sock)

    def send(self, data: bytes) -> None:
        if self._closed:
            raise TransportClosed("transport closed")
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise TransportClosed(str(exc)) from exc

    def recv(self) -> bytes:
        if self._closed:
            return b""
        try:
            return self._sock.recv(RECV_CHUNK)
        except OSError:
            return b""

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        # shutdown() wakes a thread blocked in recv(); close() alone would not
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()


class RingTransport:
    """The domain's half of a xenstore page.

    ``notify`` raises the event channel to xenstored; the channel's handler
    must call :meth:`kick` whenever xenstored notifies us (new replies or
    freed request space). Concurrent senders are serialised so their bytes
    never interleave.
    """

    def __init__(self, ring: XenstoreRing, notify: Callable[[], None]) -> None:
        self.ring = ring
        self._notify = notify
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        self._closed = False

    def kick(self) -> None:
        """xenstored moved something: wake blocked senders and receivers."""
        with self._cond:
            self._cond.notify_all()

    def send(self, data: bytes) -> None:
        view = memoryview(data).cast("B")
        with self._send_lock:
            sent = 0
            while sent < len(view):
                with self._cond:
                    # re-check under the lock kick() takes: no lost wake-up
                    while not self._closed and self.ring.request_space() == 0:
                        self._cond.wait()
                    if self._closed:
                        raise TransportClosed("transport closed")
                    n = self.ring.write_request(view[sent:])
                sent += n
                if n:
                    self._notify()

    def recv(self) -> bytes:
        with self._cond:
            while not self._closed and self.ring.response_available() == 0:
                self._cond.wait()
            if self._closed:
                return b""
            data = self.ring.read_response(XENSTORE_RING_SIZE)
        # the consumer index moved: xenstored may be waiting for room
        self._notify()
        return data

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
