"""blkfront's shadow table: every request in flight, by id.

A request's id is an index in the table, taken from a free list of
ring-size entries (LIFO, as Linux's blkfront: the id freed last is reused
first), so at most ring-size requests are in flight and a response's id
names its request directly.  The entry keeps what the request needs to be
reissued: operation, sector, segments, the caller's buffers, the grants it
holds, and the ring entry itself.

The backend is not trusted: a response whose id is out of range or names
no request in flight (a duplicate), or whose operation is not the
request's, is a protocol error (:class:`BlkfrontProtocolError`) after
which the frontend should reconnect.  When the backend goes away (its
driver domain died), :meth:`Shadow.inflight` lists, in issue order, every
request that had no response: revoke their grants, grant the buffers to
the new backend and issue them again.

Not thread-safe: the caller serialises access (one lock per ring).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hypervisor.public.io.blkif import (
    BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE,
    BLKIF_OP_INDIRECT,
    BLKIF_OP_READ,
    BLKIF_OP_WRITE,
)

from . import requests
from .requests import PageSegments, Response, SegmentSpec


class BlkfrontProtocolError(Exception):
    """The backend answered something no request asked for: reconnect."""


class ShadowFull(Exception):
    """Every id is in flight: wait for a response."""


@dataclass(slots=True)
class ShadowEntry:
    """One request in flight (or just completed, with its `status`)."""

    id: int
    operation: int                     # BLKIF_OP_*, as on the ring
    sector_number: int = 0
    segments: Sequence[SegmentSpec] = ()   # data segments (tuple or PageSegments)
    indirect_op: int = 0               # BLKIF_OP_INDIRECT: READ or WRITE
    indirect_grefs: tuple[int, ...] = ()
    nr_sectors: int = 0                # BLKIF_OP_DISCARD
    secure: bool = False               # BLKIF_OP_DISCARD
    handle: int = 0
    buffers: tuple[Any, ...] = ()      # the caller's data buffers, per segment
    grants: tuple[int, ...] = ()       # every grant the request holds
    request: bytes = b""               # the ring entry as issued
    status: int | None = None          # the response's, once completed
    seq: int = field(default=0, repr=False)  # issue order

    @property
    def io_operation(self) -> int:
        """The operation the backend's response must carry."""
        return self.indirect_op if self.operation == BLKIF_OP_INDIRECT else self.operation

    def indirect_pages(self) -> list[bytes]:
        """The indirect pages' contents (BLKIF_OP_INDIRECT only)."""
        return requests.indirect_pages(self.segments)


def _encode(entry: ShadowEntry) -> bytes:
    op = entry.operation
    if op in (BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_FLUSH_DISKCACHE):
        return requests.rw(op, entry.id, entry.sector_number, entry.segments,
                           entry.handle)
    if op == BLKIF_OP_DISCARD:
        return requests.discard(entry.id, entry.sector_number,
                                entry.nr_sectors, entry.handle, entry.secure)
    if op == BLKIF_OP_INDIRECT:
        return requests.indirect(entry.id, entry.indirect_op,
                                 entry.sector_number, len(entry.segments),
                                 entry.indirect_grefs, entry.handle)
    raise ValueError(f"blkfront issues no operation {op}")


class Shadow:
    """The in-flight requests of one ring of `size` slots."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"ring size {size}")
        self._clear(size)

    def _clear(self, size: int) -> None:
        self.size = size
        self._entries: list[ShadowEntry | None] = [None] * size
        self._free = list(range(size - 1, -1, -1))  # pop() gives 0 first
        self._seq = 0

    def __len__(self) -> int:
        """Requests in flight."""
        return self.size - len(self._free)

    @property
    def full(self) -> bool:
        return not self._free

    def add(self, operation: int, sector_number: int = 0, *,
            segments: Sequence[SegmentSpec] = (), indirect_op: int = 0,
            indirect_grefs: Sequence[int] = (), nr_sectors: int = 0,
            secure: bool = False, handle: int = 0,
            buffers: Sequence[Any] = (), grants: Sequence[int] = ()
            ) -> ShadowEntry:
        """Record a new request under a free id and build its ring entry
        (``entry.request``, to copy into the ring slot).  ShadowFull if no
        id is free; ValueError (nothing recorded) if the request is
        malformed."""
        if not self._free:
            raise ShadowFull(f"all {self.size} requests in flight")
        entry = ShadowEntry(
            id=self._free[-1], operation=operation, sector_number=sector_number,
            # PageSegments is immutable already and cheap to keep as is.
            segments=segments if isinstance(segments, (tuple, PageSegments))
            else tuple(segments), indirect_op=indirect_op,
            indirect_grefs=tuple(indirect_grefs), nr_sectors=nr_sectors,
            secure=secure, handle=handle, buffers=tuple(buffers),
            grants=tuple(grants), seq=self._seq)
        entry.request = _encode(entry)
        self._free.pop()
        self._seq += 1
        self._entries[entry.id] = entry
        return entry

    def get(self, id: int) -> ShadowEntry | None:
        return self._entries[id] if 0 <= id < self.size else None

    def complete(self, response: Response | bytes | bytearray | memoryview
                 ) -> ShadowEntry:
        """The request `response` answers, with its status set; its id is
        free again.  BlkfrontProtocolError if the backend answered an id
        not in flight (unknown or duplicate) or with another operation."""
        if not isinstance(response, Response):
            response = requests.parse_response(response)
        entry = self.get(response.id)
        if entry is None:
            raise BlkfrontProtocolError(
                f"response for id {response.id}: no such request in flight "
                f"(unknown or duplicate)")
        if response.operation != entry.io_operation:
            raise BlkfrontProtocolError(
                f"response for id {response.id} carries operation "
                f"{response.operation}, the request was {entry.io_operation}")
        self._entries[entry.id] = None
        self._free.append(entry.id)
        entry.status = response.status
        return entry

    def inflight(self) -> list[ShadowEntry]:
        """Every request without a response, in issue order."""
        return sorted((e for e in self._entries if e is not None),
                      key=lambda e: e.seq)

    def reset(self, size: int | None = None) -> list[ShadowEntry]:
        """Forget every request (for a new connection, optionally with a
        new ring size) and return those that were in flight, in issue
        order, to be reissued with :meth:`add`."""
        if size is not None and size < 1:
            raise ValueError(f"ring size {size}")
        pending = self.inflight()
        self._clear(self.size if size is None else size)
        return pending
