"""Doorbells: a connected port's notification, straight from kernel to kernel.

Xen raises an event channel with a hypercall, and the hypervisor injects the
interrupt. pyxen keeps that path (EVTCHNOP_send, and every upcall the
hypervisor delivers, over ZeroMQ), but once a port is connected the sending
kernel may ring the peer directly, as a doorbell page would.

A doorbell is a capability, not a name: when two domains first bind a
channel between them, the hypervisor makes a Unix stream socket pair and
hands each its end over the memory channel, tagged with the other's domid
(hypervisor/doorbell.py). An end reaches exactly one domain, and whatever
arrives on it comes from that domain. A ring is the receiver's port, 4
bytes; the receiver accepts it only when that port is bound interdomain to
the domain at the other end (`accepts`), so a peer can raise exactly the
ports bound to it: never a VIRQ, never a channel to someone else.

A stream, not datagrams, so that rings coalesce as Xen's pending bits do:
whatever a peer rang since the receiver last looked is read in one system
call and each port run once, however many times it was rung. With
datagrams every ring was a system call of the receiver's (and at most
net.unix.max_dgram_qlen of them queued, 10 by default, before the sender
fell back to the hypercall): a peer ringing in a loop cost its receiver as
much CPU as itself. A peer that writes other than whole ports garbles only
its own rings (they fail `accepts`, or raise a port bound to it anyway).

Not a ZeroMQ socket: a ZeroMQ message crosses two I/O threads (one per
side) before it reaches the other domain's upcall loop, two more thread
wakeups per event and ~35 us one way on a busy 2-core host, where a
ring is one system call that wakes the receiver's poll directly. Under
network load a domain rings thousands of times a second, so this is most of
what pyxen's data path pays per notification (README, "Tests and
benchmarks").
"""

from __future__ import annotations

import socket
import struct
import sys
import threading
import time
from collections.abc import Callable

from hypervisor.public.event_channel import PYXEN_EVTCHN_PORT

PORT = PYXEN_EVTCHN_PORT
LITTLE_ENDIAN = sys.byteorder == "little" and struct.calcsize("I") == PORT.size


def accepts(peers: dict[int, tuple[int, int]], sender: int, port: int) -> bool:
    """May `sender` ring our `port`? Only when that port is bound
    interdomain to it: `peers` maps our interdomain ports to their
    (domid, port), and nothing else (unbound, VIRQ, closed) is in it."""
    peer = peers.get(port)
    return peer is not None and peer[0] == sender


def take(sock: socket.socket, limit: int, buf: bytearray | None = None
         ) -> list[int] | None:
    """The ports rung on `sock` since the last call, each once, in the order
    first rung, at most `limit` rings read, in one system call: like
    pending bits, rings of a port that came while the domain was busy
    coalesce. None once the peer's end is closed (nothing more will come).
    `buf`, if given, is where they are read (at least `limit` ports long)."""
    size = limit * PORT.size
    if buf is None or len(buf) < size:
        buf = bytearray(size)
    try:
        n = sock.recv_into(buf, size)
    except (BlockingIOError, InterruptedError):
        return []
    except OSError:
        return []  # closed under us (retired): nothing more to read
    if n == PORT.size:  # the common case, one ring: no more work than that
        return [PORT.unpack_from(buf)[0]]
    if n == 0:
        return None
    n -= n % PORT.size  # not whole ports: the peer garbles its own rings
    if LITTLE_ENDIAN:  # PORT's order: a cast reads them all at C speed
        return list(dict.fromkeys(memoryview(buf)[:n].cast("I")))
    return list(dict.fromkeys(p for (p,) in PORT.iter_unpack(memoryview(buf)[:n])))


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
            # 4 bytes go whole or not at all (EAGAIN), so rings of several
            # threads never interleave.
            sock.send(PORT.pack(port), socket.MSG_NOSIGNAL)
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
