"""Event channels inside a domain: binding ports, sending, the upcall handler.

Upcalls arrive carrying the port that went pending. The handler clears the
pending byte *before* running the port's handler, so an event raised while
the handler runs is never lost: it makes a fresh upcall.

Sending has two paths. The hypervisor's (EVTCHNOP_send) always works. Once
a port is connected, the kernel rings the peer directly over the doorbell
end the hypervisor handed it for that peer (doorbell.py), as a doorbell page
would. The hypervisor still decides who is connected to whom: binding and
closing go through it, and it tells both kernels of each binding over
their memory channels (memchan.py) before the binder may ring. A receiving
kernel accepts a ring only on a port bound interdomain to the domain at
the other end of the doorbell it came in on; the rest are dropped and
counted. A ring that cannot be delivered falls back to the hypercall.

A driver may also have a file descriptor polled by the upcall loop
(watch_fd), level-triggered, its handler run on the upcall thread like an
event handler: the driver then needs no thread of its own, and no wakeup
of another thread each time that fd becomes readable. The loop also polls
the memory channel, so that a doorbell end is polled as soon as it
arrives, and every doorbell end.
"""

from __future__ import annotations

import socket
import threading
from collections import deque
from collections.abc import Callable

import zmq

from domains.kernel.doorbell import PORT, Doorbells, Drops, accepts, take
from domains.kernel.hypercall import Hypercalls
from domains.kernel.memchan import MemChannel
from domains.kernel.threads import OwnedThread
from hypervisor.public.errno import EINVAL, XenError
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

PENDING_OFFSET = PYXEN_SHINFO_PENDING_OFFSET
MASK_OFFSET = PYXEN_SHINFO_MASK_OFFSET
NR_PORTS = EVTCHN_2L_NR_CHANNELS

Handler = Callable[[int], None]
FdHandler = Callable[[int], None]  # given the fd
#: Messages on the loop's inproc pair.
_STOP = b""
_CONTROL = b"c"  # watch_fd/unwatch_fd requests are queued
#: Rings read off a doorbell end at a time (one system call), each port
#: then run once: a peer ringing in a loop costs us a read per turn of
#: the loop, and the other ends and the hypervisor's upcalls have their
#: turn between two reads.
NR_COALESCE = 4096
#: A retired doorbell end is read to the end: more than its queue can hold.
NR_DRAIN = 1 << 16


class EventChannels:
    def __init__(self, hypercall: Hypercalls, ctx: zmq.Context, endpoints: dict,
                 shared_info, log, memchan: MemChannel | None = None) -> None:
        self.hypercall = hypercall
        self.shared_info = shared_info
        self.log = log
        self.handlers: dict[int, Handler] = {}
        self.ports: set[int] = set()  # our own ports, whatever their state
        # Our interdomain ports -> their peer (domid, port), as the
        # hypervisor told us: whom we ring, and whose rings we take.
        self.peers: dict[int, tuple[int, int]] = {}
        # Interdomain ports we must not ring (the peer may not know the
        # binding yet, or ever): EVTCHNOP_send only.
        self.slow: set[int] = set()
        self.drops = Drops(log)
        self._pull = ctx.socket(zmq.PULL)
        self._pull.setsockopt(zmq.LINGER, 0)
        self._pull.connect(endpoints["upcall"])
        self.doorbells = Doorbells(dead=self._end_dead)
        # Doorbell ends taken out of use, read one last time and closed at
        # the end of the loop's turn (never under a running handler).
        self._retired: list[tuple[int, socket.socket]] = []
        self.memchan = memchan
        if memchan is not None:
            memchan.on("bind", self._on_bind)
            memchan.on("unbind", self._on_unbind)
            memchan.on("unbell", self._on_unbell)
        self._stop = ctx.socket(zmq.PAIR)
        self._stop.bind(f"inproc://upcall-stop-{id(self)}")
        self._stop_peer = ctx.socket(zmq.PAIR)
        self._stop_peer.connect(f"inproc://upcall-stop-{id(self)}")
        # The peer socket is used by any thread: one at a time.
        self._peer_lock = threading.Lock()
        # Changes to the polled fds asked by other threads: the poller is
        # the upcall thread's alone.
        self._control: deque = deque()
        self._fd_handlers: dict[int, FdHandler] = {}
        # Doorbell ends polled: fd -> (peer, end). Read before the fds
        # above in each turn, as a driver's handler of its fd may want
        # what the peer rang (a tx ring with room again).
        self._bells: dict[int, tuple[int, socket.socket]] = {}
        self._ring_buf = bytearray(NR_COALESCE * PORT.size)  # the loop's alone
        self._poller: zmq.Poller | None = None
        self._stopped = False
        self.thread = OwnedThread("upcall", self._upcall_loop)  # stop() joins it
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
        result = self._op(EVTCHNOP_bind_interdomain,
                          {"remote_dom": remote_dom, "remote_port": remote_port})
        port = result["local_port"]
        self.ports.add(port)
        if handler is not None:
            self.handlers[port] = handler
        # The hypervisor's message about this binding (and a new doorbell
        # end) came before its answer: take it first, so that the answer
        # has the last word on whether we may ring.
        if self.memchan is not None:
            self.memchan.pump()
        self.peers[port] = (remote_dom, remote_port)
        if result.get("doorbell") is True:
            self.slow.discard(port)
        else:
            self.slow.add(port)
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
        if peer is not None and port not in self.slow and self.doorbells.ring(*peer):
            return
        self._op(EVTCHNOP_send, {"port": port})

    def close(self, port: int) -> None:
        self.handlers.pop(port, None)
        self.peers.pop(port, None)
        self.slow.discard(port)
        self.ports.discard(port)
        self._op(EVTCHNOP_close, {"port": port})

    # -- what the hypervisor tells us on the memory channel ----------------------
    #
    # Called by whichever thread reads the channel, under its lock: tables
    # are changed at once (a ring may be waiting on them), the poller only
    # by the upcall thread (through _change).

    def _on_bind(self, meta: dict, fds: list) -> None:
        end = None
        for fd in fds:  # at most one: the end to the peer
            if end is None:
                end = socket.socket(fileno=fd)
            else:
                socket.close(fd)
        port, peer = int(meta["port"]), int(meta["peer"])
        if end is not None:
            self._new_end(peer, end)
        self.peers[port] = (peer, int(meta["remote_port"]))
        if meta.get("ring") is True:
            self.slow.discard(port)
        else:
            self.slow.add(port)

    def _on_unbind(self, meta: dict, fds: list) -> None:
        port, peer = int(meta["port"]), int(meta["peer"])
        current = self.peers.get(port)
        if current is not None and current[0] == peer:
            del self.peers[port]
            self.slow.discard(port)

    def _on_unbell(self, meta: dict, fds: list) -> None:
        peer = int(meta["peer"])
        for port in [p for p, (d, _) in list(self.peers.items()) if d == peer]:
            self.peers.pop(port, None)
        end = self.doorbells.remove(peer)
        if end is not None:
            self._change(("retire", peer, end))

    def _new_end(self, peer: int, end: socket.socket) -> None:
        old = self.doorbells.install(peer, end)
        if old is end:  # stopped: nothing rings or polls any more
            end.close()
            return
        self._change(("bell", peer, end))
        if old is not None:
            self._change(("retire", peer, old))

    def _end_dead(self, peer: int, end: socket.socket) -> None:
        """A ring found its peer's end closed: retire ours."""
        self._change(("retire", peer, end))

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

    # -- fds polled by the upcall loop -----------------------------------------

    def watch_fd(self, fd: int, handler: FdHandler) -> None:
        """Poll `fd` for input (level-triggered) and run `handler(fd)` on
        the upcall thread while it is readable; watching it again replaces
        the handler."""
        self._change(("watch", fd, handler))

    def unwatch_fd(self, fd: int, timeout: float = 5.0) -> None:
        """Stop polling `fd`.  From another thread, this returns once the
        loop has let go of it: no handler of it runs any more, and the fd
        may be closed."""
        self._change(("unwatch", fd, None), timeout)

    def _change(self, change: tuple, timeout: float = 5.0) -> None:
        if threading.current_thread() is self.thread:
            self._apply(change)  # a handler's own: the loop is not polling
            return
        done = threading.Event()
        with self._peer_lock:
            if self._stopped or not self.thread.is_alive():
                self._apply(change)  # no loop: only the table is left
                return
            self._control.append((change, done))
            self._stop_peer.send(_CONTROL)
        if change[0] == "unwatch":
            done.wait(timeout)

    def _apply(self, change: tuple) -> None:
        what, fd, handler = change
        poller = self._poller
        if what == "bell":  # (peer, its end): poll it for the peer's rings
            peer, end = fd, handler
            if end.fileno() >= 0 and end.fileno() not in self._bells:
                self._bells[end.fileno()] = (peer, end)
                if poller is not None:
                    poller.register(end.fileno(), zmq.POLLIN)
        elif what == "retire":  # (peer, its end): out of use
            peer, end = fd, handler
            self._retire(peer, end)
        elif what == "watch":
            if fd not in self._fd_handlers and poller is not None:
                poller.register(fd, zmq.POLLIN)
            self._fd_handlers[fd] = handler
        elif self._fd_handlers.pop(fd, None) is not None and poller is not None:
            poller.unregister(fd)

    def _retire(self, peer: int, end: socket.socket) -> None:
        """Stop polling an end. Shut first, so that the peer's next ring
        fails and takes the hypercall instead; what it rang before is read
        at the end of the loop's turn, and the end closed."""
        if end.fileno() < 0:
            return
        if self._bells.pop(end.fileno(), None) is not None and self._poller is not None:
            self._poller.unregister(end.fileno())
        try:
            end.shutdown(socket.SHUT_RD)
        except OSError:
            pass
        if self._poller is None:  # no loop: nobody reads it any more
            end.close()
        else:
            self._retired.append((peer, end))

    def _close_retired(self) -> None:
        while self._retired:
            peer, end = self._retired.pop()
            # What a peer rang before it died or we moved on: delivered if
            # still bound to it, dropped silently if not (not forged).
            self._rings_from(peer, end, limit=NR_DRAIN, count_drops=False)
            end.close()

    def _take_control(self) -> bool:
        """Apply the queued changes; False when told to stop."""
        go_on = True
        while True:
            try:
                message = self._stop.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if message == _STOP:
                go_on = False
        while self._control:
            change, done = self._control.popleft()
            try:
                self._apply(change)
            except Exception as exc:  # e.g. an fd already closed
                self.log.error("fd watch change failed", change=change[:2],
                               error=repr(exc))
            done.set()
        return go_on

    def _upcall_loop(self) -> None:
        poller = self._poller = zmq.Poller()
        poller.register(self._pull, zmq.POLLIN)
        poller.register(self._stop, zmq.POLLIN)
        channel = self.memchan
        memchan = channel.fileno() if channel is not None else None
        if memchan is not None:
            poller.register(memchan, zmq.POLLIN)
        for fd in [*self._bells, *self._fd_handlers]:
            poller.register(fd, zmq.POLLIN)
        fd_handlers, bells = self._fd_handlers, self._bells
        stop, pull, rings_from = self._stop, self._pull, self._rings_from
        while True:
            ready = dict(poller.poll())
            left = len(ready)
            if stop in ready:
                if not self._take_control():
                    break
                left -= 1
            if pull in ready:
                self._dispatch(pull.recv(), from_hypervisor=True)
                left -= 1
            if memchan in ready and channel is not None:
                left -= 1
                if not channel.pump():
                    poller.unregister(memchan)  # the hypervisor is gone
                    memchan = None
            if left:
                others = None
                for fd in ready:
                    if type(fd) is not int:
                        continue
                    bell = bells.get(fd)
                    if bell is not None:
                        rings_from(bell[0], bell[1])
                    elif others is None:
                        others = [fd]
                    else:
                        others.append(fd)
                for fd in others or ():
                    # A handler run before may have unwatched it.
                    handler = fd_handlers.get(fd)
                    if handler is None:
                        continue
                    try:
                        handler(fd)
                    except Exception as exc:  # a driver bug must not kill the loop
                        self.log.error("fd handler failed", fd=fd, error=repr(exc))
            if self._retired:
                self._close_retired()
        with self._peer_lock:
            self._stopped = True
            self._poller = None
            for _change, done in self._control:
                done.set()  # nothing polls any more
            self._control.clear()
        self._close_retired()
        for end in self.doorbells.close():
            end.close()
        for sock in (self._pull, self._stop):
            sock.close()

    def _rings_from(self, peer: int, end: socket.socket, limit: int = NR_COALESCE,
                    count_drops: bool = True) -> None:
        """Run the ports `peer` rang on its end (at most `limit` rings read),
        each once (like a pending bit, rings that came while we were busy
        coalesce), and only those bound to it; the others are dropped."""
        peers, channel = self.peers, self.memchan
        rung = take(end, limit, self._ring_buf if limit == NR_COALESCE else None)
        if rung is None:
            # The peer's end is closed (it died, or moved on to a new pair):
            # stop polling ours, and ringing through it.
            bell = self._bells.get(end.fileno())
            if bell is not None and bell[1] is end:  # not one retired already
                self.doorbells.remove(peer, end)
                self._retire(peer, end)
            return
        for port in rung:
            bound = peers.get(port)  # accepts(), inline: this is the hot path
            if bound is None or bound[0] != peer:
                if channel is not None:
                    # Its binding may be on the memory channel still: the
                    # hypervisor told us before the peer could ring.
                    channel.pump()
                    channel = None  # once per batch
                if not accepts(peers, peer, port):
                    if count_drops:
                        self.drops(peer, port)
                    continue
            self._dispatch_port(port, from_hypervisor=False)

    def _dispatch(self, message: bytes, from_hypervisor: bool) -> None:
        if len(message) == PORT.size:
            self._dispatch_port(PORT.unpack(message)[0], from_hypervisor)

    def _dispatch_port(self, port: int, from_hypervisor: bool) -> None:
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
        with self._peer_lock:
            if self._stop_peer.closed:
                return  # stopped already
            self._stop_peer.send(_STOP)
        self.thread.join(timeout=5)
        with self._peer_lock:
            self._stop_peer.close()
