"""Doorbells: a connected port's notification, straight from kernel to kernel.

Xen raises an event channel with a hypercall, and the hypervisor injects the
interrupt. pyxen keeps that path (EVTCHNOP_send, and every upcall the
hypervisor delivers, over ZeroMQ), but once a port is connected the sending
kernel may ring the peer directly, as a doorbell page would: the
hypervisor still decides who is bound to whom, and the receiving kernel
accepts a ring only for a port it has bound.

A doorbell is a Unix datagram socket each domain binds at the path the
hypervisor assigned, carrying one port number per datagram. Not a ZeroMQ
socket: a ZeroMQ message crosses two I/O threads (one per side) before it
reaches the other domain's upcall loop, two more thread wakeups per event
and ~35 us one way on a busy 2-core host, where a datagram is one system
call that wakes the receiver's poll directly. Under network load a domain
rings thousands of times a second, so this is most of what pyxen's data
path pays per notification (README, "Tests and benchmarks").
"""

from __future__ import annotations

import os
import socket
import struct
import threading

PORT = struct.Struct("<I")


class DoorbellError(OSError):
    """The doorbell's path cannot be bound (too long for a Unix socket, or
    taken)."""


class Doorbell:
    """The receiving end: one socket, polled by the upcall loop."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        try:
            _unlink_stale(path)
            self.sock.bind(path)
        except OSError as exc:
            self.sock.close()
            raise DoorbellError(exc.errno, f"cannot bind the doorbell at {path}: "
                                           f"{exc.strerror}") from None

    def fileno(self) -> int:
        return self.sock.fileno()

    def take(self, limit: int) -> list[int]:
        """The ports rung since the last call, each once, in the order first
        rung, at most `limit` datagrams read: like pending bits, rings of a
        port that came while the domain was busy coalesce."""
        recv = self.sock.recv
        rung: dict[bytes, None] = {}
        for _ in range(limit):
            try:
                rung[recv(PORT.size + 1)] = None
            except BlockingIOError:
                break
        return [PORT.unpack(m)[0] for m in rung if len(m) == PORT.size]

    def close(self) -> None:
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def _unlink_stale(path: str) -> None:
    """A socket left by a dead process of the same domain id would make
    bind() fail; nothing else may sit there."""
    try:
        if os.stat(path).st_mode & 0o170000 == 0o140000:  # S_IFSOCK
            os.unlink(path)
    except FileNotFoundError:
        pass


class Doorbells:
    """The sending end: a socket connected to each peer's doorbell, shared
    by the domain's threads (a datagram send is atomic)."""

    def __init__(self, template: str) -> None:
        self.template = template
        self.peers: dict[int, socket.socket] = {}
        self.lock = threading.Lock()
        self.closed = False

    def _connect(self, domid: int) -> socket.socket | None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            sock.connect(self.template.format(domid=domid))
        except OSError:
            sock.close()
            return None
        with self.lock:
            old = self.peers.get(domid)
            if old is not None or self.closed:  # another thread was first
                sock.close()
                return old
            self.peers[domid] = sock
        return sock

    def ring(self, domid: int, port: int) -> bool:
        """Ring `port` of domain `domid`; False when it cannot be delivered
        now (no such doorbell, its owner gone, or its queue full): the
        caller then takes the hypervisor's path."""
        message = PORT.pack(port)
        for _attempt in range(2):
            sock = self.peers.get(domid) or self._connect(domid)
            if sock is None:
                return False
            try:
                sock.send(message)
                return True
            except BlockingIOError:
                return False  # the peer is that far behind: the slow path
            except OSError:
                # Its owner is gone (a domain that died or restarted): a
                # doorbell bound at the same path since is a new socket.
                with self.lock:
                    if self.peers.get(domid) is sock:
                        del self.peers[domid]
                sock.close()
        return False

    def close(self) -> None:
        with self.lock:
            self.closed = True
            for sock in self.peers.values():
                sock.close()
            self.peers.clear()
