"""The memory channel: file descriptors the hypervisor hands a running domain.

One SEQPACKET socket, hypervisor -> domain, made at spawn. Each message is a
msgpack map whose "tag" says what it carries, with its fds: a grant window
("window", read by gnttab.Windows), a doorbell end and the bindings it
serves ("bind", "unbind", "unbell", read by events.EventChannels; see
hypervisor/doorbell.py), or a device's image or TAP fd Dom0 had the
hypervisor open for us ("fd", read by fdtable.FdTable).

Several threads need messages from it: the upcall loop polls it (a peer's
doorbell end must be polled before the peer's rings pile up), and a thread
that mapped a grant needs that window's fd before it can touch the page,
maybe the upcall thread itself inside an event handler. So no thread
waits for a message of its own: whoever reads, reads everything waiting
(under a lock, without blocking) and hands each message to the sink
registered for its tag, which stashes it for its user. The hypervisor
queues a message before it answers the hypercall that made it, so after
that answer one `pump()` is enough to find it.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

import msgpack

#: A message's size and fds are the hypervisor's to choose; these bound
#: what one recvmsg takes (anything beyond is cut and dropped).
MAX_MESSAGE = 4096
MAX_FDS = 4

Sink = Callable[[dict, list], None]  # (meta, fds it now owns)


class MemChannel:
    def __init__(self, sock: socket.socket, log=None) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.log = log
        self.sinks: dict[str, Sink] = {}
        self.closed = False
        self._lock = threading.Lock()

    def fileno(self) -> int:
        return self.sock.fileno()

    def on(self, tag: str, sink: Sink) -> None:
        """Hand messages tagged `tag` to `sink`, called under the channel's
        lock by whichever thread read them: it must stash, not wait, and
        never pump itself."""
        self.sinks[tag] = sink

    def pump(self) -> bool:
        """Read and hand out every message waiting; False once the
        hypervisor's end is closed (nothing more will come)."""
        with self._lock:
            while not self.closed:
                try:
                    data, fds, flags, _ = socket.recv_fds(self.sock, MAX_MESSAGE, MAX_FDS)
                except BlockingIOError:
                    return True
                except OSError:
                    self.closed = True
                    break
                if not data and not fds:
                    self.closed = True  # EOF: the hypervisor is gone
                    break
                self._hand_out(data, fds, flags)
            return False

    def _hand_out(self, data: bytes, fds: list, flags: int) -> None:
        meta = None
        if not flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            try:
                meta = msgpack.unpackb(data)
            except (ValueError, msgpack.UnpackException):
                pass
        tag = meta.get("tag") if isinstance(meta, dict) else None
        sink = self.sinks.get(tag) if isinstance(tag, str) else None
        if sink is None or not isinstance(meta, dict):
            for fd in fds:
                _close(fd)
            if self.log is not None:
                self.log.warning("memory channel: message dropped", tag=repr(tag))
            return
        try:
            sink(meta, fds)
        except Exception as exc:  # a bad message must not stop the others
            if self.log is not None:
                self.log.error("memory channel: message refused", tag=tag, error=repr(exc))

    def close(self) -> None:
        with self._lock:
            self.closed = True
            self.sock.close()


def _close(fd: int) -> None:
    try:
        socket.close(fd)
    except OSError:
        pass
