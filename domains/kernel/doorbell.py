"""Doorbells: a connected port's notification, straight from kernel to kernel.

Xen raises an event channel with a hypercall, and the hypervisor injects the
interrupt. pyxen keeps that path (EVTCHNOP_send, and every upcall the
hypervisor delivers, over ZeroMQ), but once a port is connected the sending
kernel may ring the peer directly, as a doorbell page would.

A doorbell is a capability, not a name: when two domains first bind a
channel between them, the hypervisor makes a Unix datagram socket pair and
hands each its end over the memory channel, tagged with the other's domid
(hypervisor/doorbell.py). An end reaches exactly one domain, and whatever
arrives on it comes from that domain. A datagram carries the receiver's
port; the receiver accepts it only when that port is bound interdomain to
the domain at the other end (`accepts`), so a peer can raise exactly the
ports bound to it: never a VIRQ, never a channel to someone else.

Not a ZeroMQ socket: a ZeroMQ message crosses two I/O threads (one per
side) before it reaches the other domain's upcall loop, two more thread
wakeups per event and ~35 us one way on a busy 2-core host, where a
datagram is one system call that wakes the receiver's poll directly. Under
network load a domain rings thousands of times a second, so this is most of
what pyxen's data path pays per notification (README, "Tests and
benchmarks").
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Callable

from hypervisor.public.event_channel import PYXEN_EVTCHN_PORT

PORT = PYXEN_EVTCHN_PORT


def accepts(peers: dict[int, tuple[int, int]], sender: int, port: int) -> bool:
    """May `sender` ring our `port`? Only when that port is bound
    interdomain to it: `peers` maps our interdomain ports to their
    (domid, port), and nothing else (unbound, VIRQ, closed) is in it."""
    peer = peers.get(port)
    return peer is not None and peer[0] == sender


def take(sock: socket.socket, limit: int) -> list[int]:
    """The ports rung on `sock` since the last call, each once, in the order
    first rung, at most `limit` datagrams read: like pending bits, rings
    of a port that came while the domain was busy coalesce. A datagram
    that is not one port is ignored."""
    recv = sock.recv
    rung: dict[bytes, None] = {}
    for _ in range(limit):
        try:
            rung[recv(PORT.size + 1)] = None
        except (BlockingIOError, InterruptedError):
            break
        except OSError:
            break  # closed under us (retired): nothing more to read
    return [PORT.unpack(m)[0] for m in rung if len(m) == PORT.size]


class Doorbells:
    """The domain's doorbell ends, one per peer domain: the sending side,
    shared by the domain's threads (a datagram send is atomic). The upcall
    loop polls the same sockets for the peer's rings, and only it closes
    them: `dead` is called with an end whose peer is gone, for the loop to
    retire it."""

    def __init__(self, dead: Callable[[int, socket.socket], None] | None = None) -> None:
        self.ends: dict[int, socket.socket] = {}
        self.dead = dead
        self.lock = threading.Lock()
        self.closed = False

    def install(self, domid: int, sock: socket.socket) -> socket.socket | None:
        """The end to `domid`; returns the end it replaces, if any."""
        sock.setblocking(False)
        with self.lock:
            if self.closed:
                return sock  # nothing rings any more: the caller retires it
            old = self.ends.get(domid)
            self.ends[domid] = sock
        return old

    def remove(self, domid: int, sock: socket.socket | None = None) -> socket.socket | None:
        """Stop ringing `domid` (through `sock`, if given: not a newer end)."""
        with self.lock:
            current = self.ends.get(domid)
            if current is None or (sock is not None and current is not sock):
                return None
            del self.ends[domid]
        return current

    def ring(self, domid: int, port: int) -> bool:
        """Ring `port` of domain `domid`; False when it cannot be delivered
        now (no end to it, its owner gone, or its queue full): the caller
        then takes the hypervisor's path."""
        sock = self.ends.get(domid)
        if sock is None:
            return False
        try:
            sock.send(PORT.pack(port))
            return True
        except BlockingIOError:
            return False  # the peer is that far behind: the slow path
        except OSError:
            # Its end is closed or shut (the domain died, or replaced the
            # pair): this one is dead for good.
            if self.remove(domid, sock) is not None and self.dead is not None:
                self.dead(domid, sock)
            return False

    def close(self) -> list[socket.socket]:
        """Ring nothing any more; returns the ends, for their poller to close."""
        with self.lock:
            self.closed = True
            ends = list(self.ends.values())
            self.ends.clear()
        return ends


class Drops:
    """Rings refused (a port not bound to the domain that rang it): counted,
    and logged at most once per `interval` seconds, with the count since
    the last line: a peer flooding forged rings costs a log line a second."""

    def __init__(self, log, interval: float = 1.0, clock=time.monotonic) -> None:
        self.log = log
        self.interval = interval
        self.clock = clock
        self.total = 0
        self._unlogged = 0
        self._next = 0.0

    def __call__(self, sender: int, port: int) -> None:
        self.total += 1
        self._unlogged += 1
        now = self.clock()
        if now >= self._next:
            self._next = now + self.interval
            self.log.warning("doorbell rings dropped: port not bound to their sender",
                             sender=sender, port=port, dropped=self._unlogged,
                             dropped_total=self.total)
            self._unlogged = 0
