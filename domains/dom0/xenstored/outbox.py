"""What xenstored still has to send on one connection, and what it costs.

Replies and watch events queue here in order. Xen 4.17's quotas count this
queue: a reply not yet sent is an *outstanding request* of the connection
(`quota-outstanding`), and every queued byte (header and payload) is
memory charged to the connection's domain (`quota-memory`). So the counts
are kept as messages come and go, never recounted.

The I/O layer takes the bytes out without copying the backlog:
:meth:`Outbox.chunks` encodes the next few messages (each once) and hands
out views of what is left of them, :meth:`Outbox.advance` says how many
bytes went out. A message stays counted until its last byte is sent.

For everybody else the outbox behaves like the deque of not-yet-taken
:class:`~.wire.Message` s it always was (append, popleft, clear,
iteration, ``in``).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Iterator

from domains.dom0.xenstored.wire import HEADER_SIZE, Message, encode
from hypervisor.public.io.xs_wire import XS_WATCH_EVENT


def _cost(msg: Message) -> int:
    return HEADER_SIZE + len(msg.payload)


class Outbox:
    def __init__(self) -> None:
        self._queue: deque[Message] = deque()
        self._events: Counter[bytes] = Counter()  # payloads of queued events
        # Taken for sending, not all sent: (bytes left, is a reply, cost).
        self._flight: deque[tuple[memoryview, bool, int]] = deque()
        self.replies = 0   # queued or in flight
        self.bytes = 0     # queued or in flight

    # -- the deque of messages ------------------------------------------------------

    def _added(self, msg: Message) -> None:
        if msg.type == XS_WATCH_EVENT:
            self._events[msg.payload] += 1
        else:
            self.replies += 1
        self.bytes += _cost(msg)

    def _removed(self, msg: Message) -> None:
        if msg.type == XS_WATCH_EVENT:
            self._events[msg.payload] -= 1
            if not self._events[msg.payload]:
                del self._events[msg.payload]
        else:
            self.replies -= 1
        self.bytes -= _cost(msg)

    def append(self, msg: Message) -> None:
        self._queue.append(msg)
        self._added(msg)

    def appendleft(self, msg: Message) -> None:
        self._queue.appendleft(msg)
        self._added(msg)

    def extend(self, msgs: Iterable[Message]) -> None:
        for msg in msgs:
            self.append(msg)

    def extendleft(self, msgs: Iterable[Message]) -> None:
        for msg in msgs:
            self.appendleft(msg)

    def popleft(self) -> Message:
        msg = self._queue.popleft()
        self._removed(msg)
        return msg

    def clear(self) -> None:
        """Drop what is queued; a message already being sent is finished."""
        while self._queue:
            self.popleft()

    def has_event(self, payload: bytes) -> bool:
        """Is an event with this payload still waiting? (Xen drops a duplicate.)"""
        return payload in self._events

    def __len__(self) -> int:
        return len(self._queue)

    def __bool__(self) -> bool:
        return bool(self._queue)

    def __iter__(self) -> Iterator[Message]:
        return iter(self._queue)

    def __contains__(self, msg: object) -> bool:
        return msg in self._queue

    def __repr__(self) -> str:
        return f"<Outbox {len(self._queue)} queued, {len(self._flight)} in flight>"

    # -- the I/O layer's side -------------------------------------------------------

    @property
    def sending(self) -> bool:
        """Is there anything to send (queued or part-sent)?"""
        return bool(self._flight or self._queue)

    def chunks(self, limit: int = 65536) -> list[memoryview]:
        """Views of the next bytes to send: what is left of the messages in
        flight, then newly taken ones, up to about `limit` bytes."""
        total = sum(len(view) for view, _, _ in self._flight)
        while self._queue and total < limit:
            msg = self._queue.popleft()
            if msg.type == XS_WATCH_EVENT:
                self._events[msg.payload] -= 1
                if not self._events[msg.payload]:
                    del self._events[msg.payload]
            view = memoryview(encode(msg))
            self._flight.append((view, msg.type != XS_WATCH_EVENT, len(view)))
            total += len(view)
        return [view for view, _, _ in self._flight]

    def advance(self, sent: int) -> None:
        """`sent` bytes of :meth:`chunks` went out, in order."""
        while sent and self._flight:
            view, reply, cost = self._flight[0]
            if sent < len(view):
                self._flight[0] = (view[sent:], reply, cost)
                return
            sent -= len(view)
            self._flight.popleft()
            self.bytes -= cost
            if reply:
                self.replies -= 1
