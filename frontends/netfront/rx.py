"""netfront's receive side: posting buffers, reassembling frames.

The frontend posts empty granted pages as rx requests
(:func:`make_rx_request`); the backend answers each ring slot with either
an rx response (a data slot: `status` bytes at `offset` of the page) or,
after a frame's first slot, an extra info slot.  The frontend finds the
buffer of a response by its ring position, not its id (an extra has no
id), so the caller feeds :class:`RxAssembler` every response in ring order
together with the page it had posted in that slot.

Nothing is copied: a frame's data are views of the posted pages
(``RxFrame.chunks``), valid until those buffers are posted again, which
the caller does after writing the frame out (``RxFrame.data`` joins them
into bytes).

The backend is not trusted, and a bad frame must not lose the
assembler's place in the ring: every slot of a malformed frame is
consumed to the chain's end and the frame refused as an :class:`RxError`
(its buffers are reposted, nothing is delivered).  Malformed is: a
negative status (the backend's NETIF_RSP_*), data leaving the page
(offset + status > page size), an id that is not the posted request's
(when the caller passes it), more than `max_slots` data slots, a chain
without feature-sg, a frame larger than XEN_NETIF_MAX_TX_SIZE, an extra
of unknown type or a duplicate, a GSO extra with size 0 or an unknown
type, more extras than there are types.

:meth:`RxAssembler.feed_ring` is the receiver's hot path: it decodes a
block of responses with casts and takes each well-formed frame whole
(finding its chain's end with one bytes.find, checking its slots with
min/max/sum over lists), and hands anything unusual to the slot-by-slot
state machine of :meth:`RxAssembler.feed`, which decides alike.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from operator import add, getitem

from hypervisor.public import xen
from hypervisor.public.io import netif
from hypervisor.public.io.netif import (
    XEN_NETIF_EXTRA_FLAG_MORE,
    XEN_NETIF_EXTRA_TYPE_GSO,
    XEN_NETIF_EXTRA_TYPE_MAX,
    XEN_NETIF_GSO_TYPE_TCPV4,
    XEN_NETIF_GSO_TYPE_TCPV6,
    XEN_NETIF_MAX_TX_SIZE,
    XEN_NETIF_NR_SLOTS_MIN,
    ExtraInfo,
    NETRXF_csum_blank,
    NETRXF_data_validated,
    NETRXF_extra_info,
    NETRXF_more_data,
    RxResponse,
    extra_problem,
    make_rx_request,
    parse_extra,
    parse_rx_response,
)

__all__ = ["ExtraInfo", "RxAssembler", "RxError", "RxFrame", "RxResponse",
           "make_rx_request", "parse_extra", "parse_rx_response"]

ENTRY_SIZE = netif.NETIF_RX_SRING_ENTRY_SIZE  # 8: request, response, extra
PAGE_SIZE = xen.PAGE_SIZE
MAX_EXTRAS = XEN_NETIF_EXTRA_TYPE_MAX - 1
_RESPONSE = netif.RX_RESPONSE


_UNKNOWN: tuple = ()  # RxFrame.gso not looked up yet


class RxFrame:
    """A received frame: its data (views of the pages it came in, in
    order; a run of whole pages may be one view), the first slot's
    NETRXF_* flags, its extras by type, and the ring slots it took."""

    __slots__ = ("_gso", "chunks", "extras", "flags", "nr_slots", "size")

    def __init__(self, chunks: tuple[memoryview, ...], flags: int, extras: dict[int, ExtraInfo],
                 nr_slots: int, size: int, gso: tuple[int, int] | None = _UNKNOWN) -> None:
        self.chunks, self.flags, self.extras = chunks, flags, extras
        self.nr_slots, self.size = nr_slots, size
        self._gso = gso

    @property
    def data(self) -> bytes:
        """The frame's bytes (a copy)."""
        return b"".join(self.chunks)

    def head(self, n: int) -> bytes | memoryview:
        """The frame's first `n` bytes (fewer if it is shorter)."""
        first = self.chunks[0] if self.chunks else b""
        if len(first) >= n or len(self.chunks) <= 1:
            return first[:n]
        return self.data[:n]

    @property
    def gso(self) -> tuple[int, int] | None:
        """(XEN_NETIF_GSO_TYPE_*, MSS) of a GSO frame."""
        if self._gso is _UNKNOWN:
            extra = self.extras.get(XEN_NETIF_EXTRA_TYPE_GSO)
            self._gso = extra.gso if extra else None
        return self._gso

    @property
    def csum_blank(self) -> bool:
        return bool(self.flags & NETRXF_csum_blank)

    @property
    def data_validated(self) -> bool:
        return bool(self.flags & NETRXF_data_validated)

    def _key(self) -> tuple:
        return self.data, self.flags, self.extras, self.nr_slots, self.size

    def __eq__(self, other: object) -> bool:
        if type(other) is not RxFrame:
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"RxFrame(size={self.size}, flags={self.flags:#x}, extras={self.extras}, "
                f"nr_slots={self.nr_slots}, chunks={len(self.chunks)})")


@dataclass(frozen=True)
class RxError:
    """A refused frame: the `nr_slots` ring slots it took (repost their
    buffers) and why."""

    nr_slots: int
    reason: str


_FIRST, _EXTRAS, _FRAGS = "first", "extras", "frags"
#: The low byte of a response's flags (little-endian) -> 1 where
#: NETRXF_more_data is set, 0 where the chain ends.
_FLAGS_LOW = netif.netif_rx_response.flags.offset
_OFFSET, _FLAGS, _STATUS = (netif.RX_RESPONSE_OFFSET, netif.RX_RESPONSE_FLAGS,
                            netif.RX_RESPONSE_STATUS)
assert (_OFFSET.code, _FLAGS.code, _STATUS.code) == ("H", "H", "h")
_MORE_TABLE = bytes(1 if b & NETRXF_more_data else 0 for b in range(256))
assert NETRXF_more_data < 0x100
_NATIVE_LE = sys.byteorder == "little"
_GSO_TYPES = (XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_GSO_TYPE_TCPV6)


class RxAssembler:
    """Reassembles the rx responses of one ring, fed in ring order."""

    def __init__(self, *, sg: bool = True,
                 max_slots: int = XEN_NETIF_NR_SLOTS_MIN,
                 page_size: int = PAGE_SIZE) -> None:
        self.sg = sg
        self.max_slots = max_slots
        self.page_size = page_size
        self._extra_cache: dict[bytes, tuple[ExtraInfo, tuple[int, int]] | bool] = {}
        self._reset()

    def _reset(self) -> None:
        self._state = _FIRST
        self._chunks: list[memoryview] = []
        self._size = 0
        self._flags = 0
        self._first_more = False
        self._extras: dict[int, ExtraInfo] = {}
        self._data_slots = 0
        self._extra_slots = 0
        self._problem: str | None = None

    @property
    def in_progress(self) -> bool:
        return self._state != _FIRST

    @property
    def partial_slots(self) -> int:
        """Ring slots the frame under way has taken so far (its pages are
        still to be read: not to be posted again yet)."""
        return self._data_slots + self._extra_slots if self._state != _FIRST else 0

    def _refuse(self, reason: str) -> None:
        if self._problem is None:
            self._problem = reason
            self._chunks = []  # keep nothing of a refused frame

    def feed(self, raw: bytes | bytearray | memoryview,
             page: bytes | bytearray | memoryview | None = None, *,
             request_id: int | None = None) -> RxFrame | RxError | None:
        """Consume the next response (8 bytes); `page` is the buffer posted
        in its ring slot (only read for data slots), `request_id` the id it
        was posted with (checked if given).  A frame or an error when the
        chain ends, else None."""
        if self._state == _EXTRAS:
            return self._extra(parse_extra(raw))
        return self._data(parse_rx_response(raw), page, request_id)

    def feed_block(self, entries: bytes, pages: list) -> list[RxFrame | RxError]:
        """Feed whole 8-byte ring slots (as FrontRing.get_responses copies
        them), `pages[i]` being the buffer posted in the slot of entry i:
        the frames and errors that came out, in order."""
        return self.feed_ring(entries, pages, 0)

    def feed_ring(self, entries: bytes, pages: Sequence, start: int,
                  area: memoryview | None = None) -> list[RxFrame | RxError]:
        """Feed whole 8-byte ring slots (as FrontRing.get_responses copies
        them) taken from ring position `start` on: the buffer posted in
        position p is ``pages[p % len(pages)]``; `area`, if given, is all
        of `pages` back to back in one view (each `page_size` bytes), which
        makes a run of whole pages one chunk.  The frames and errors that
        came out, in order."""
        out: list[RxFrame | RxError] = []
        n = len(entries) // ENTRY_SIZE
        ring = len(pages)
        index = 0
        if not _NATIVE_LE or len(entries) % ENTRY_SIZE or not isinstance(entries, bytes):
            while index < n:
                index = self._slowly(entries, index, n, pages, start, ring, out)
            return out
        # One cast per width, sliced at netif's columns (Column.read would
        # cast per column: a frame's worth of time on small frames).
        view = memoryview(entries)
        half = view.cast("H")
        offsets = half[_OFFSET.start::_OFFSET.step].tolist()
        flags = half[_FLAGS.start::_FLAGS.step].tolist()
        statuses = view.cast("h")[_STATUS.start::_STATUS.step].tolist()
        more = entries[_FLAGS_LOW::ENTRY_SIZE].translate(_MORE_TABLE)
        page_size, max_slots, sg = self.page_size, self.max_slots, self.sg
        # A chain the previous block left under way.
        while index < n and self._state != _FIRST:
            if self._state == _FRAGS and self._problem is None and sg:
                last = more.find(0, index)
                end = n if last < 0 else last + 1
                lengths = statuses[index:end]
                starts = offsets[index:end]
                size = self._size + sum(lengths)
                if (min(lengths) >= 0 and size <= XEN_NETIF_MAX_TX_SIZE
                        and self._data_slots + end - index <= max_slots
                        and max(map(add, starts, lengths)) <= page_size):
                    self._chunks += self._run_views(index, end, starts, lengths, pages,
                                                    start, ring, area)
                    self._size = size
                    self._data_slots += end - index
                    index = end
                    if last >= 0:
                        out.append(self._finish())
                    continue
            index = self._slowly(entries, index, index + 1, pages, start, ring, out)
        extras: dict[int, ExtraInfo]
        extra_cache = self._extra_cache
        while index < n:
            first_flags = flags[index]
            status, offset = statuses[index], offsets[index]
            frag = index + 1  # the chain's next slot
            gso = None
            extras = {}
            if first_flags & NETRXF_extra_info:
                at = frag * ENTRY_SIZE
                known = extra_cache.get(entries[at:at + ENTRY_SIZE])
                if known is None:
                    known = self._good_gso_extra(entries[at:at + ENTRY_SIZE])
                if frag >= n or known is False:
                    index = self._slowly(entries, index, n, pages, start, ring, out)
                    continue
                extra, gso = known
                extras[XEN_NETIF_EXTRA_TYPE_GSO] = extra
                frag += 1
            if status < 0 or offset + status > page_size:
                index = self._slowly(entries, index, n, pages, start, ring, out)
                continue
            if not first_flags & NETRXF_more_data:
                out.append(RxFrame((pages[(start + index) % ring][offset:offset + status],),
                                   first_flags, extras, frag - index, status, gso))
                index = frag
                continue
            last = more.find(0, frag)
            end = n if last < 0 else last + 1
            lengths = statuses[frag:end]
            starts = offsets[frag:end]
            count = end - frag
            size = status + sum(lengths)
            if (not sg or count + 1 > max_slots or size > XEN_NETIF_MAX_TX_SIZE
                    or (count and (min(lengths) < 0
                                   or (max(map(add, starts, lengths)) if any(starts)
                                       else max(lengths)) > page_size))):
                index = self._slowly(entries, index, n, pages, start, ring, out)
                continue
            first = (start + index) % ring
            pos = (start + frag) % ring
            if (area is not None and count and offset == 0 and status == page_size
                    and pos + count <= ring and not any(starts)
                    and size - status - lengths[-1] == (count - 1) * page_size):
                # The usual chain: whole pages from offset 0, the last one
                # part full, no wrap: the first page and one run of the area
                # (a single one if no extra is between them).
                run_end = (pos + count - 1) * page_size + lengths[-1]
                if pos == first + 1:
                    chunks = (area[first * page_size:run_end],)
                else:
                    chunks = (area[first * page_size:(first + 1) * page_size],
                              area[pos * page_size:run_end])
            else:
                chunks = self._chain_views(index, frag, end, offset, status, starts, lengths,
                                           pages, start, ring, area)
            if last < 0:
                # The chain goes on in the next block: under way, as the
                # state machine would have it.
                self._state = _FRAGS
                self._chunks = list(chunks)
                self._size = size
                self._flags = first_flags
                self._first_more = True
                self._extras = extras
                self._data_slots = count + 1
                self._extra_slots = frag - index - 1
                break
            out.append(RxFrame(chunks, first_flags, extras, end - index, size, gso))
            index = end
        return out

    def _good_gso_extra(self, raw: bytes) -> tuple[ExtraInfo, tuple[int, int]] | bool:
        """A lone GSO extra the fast path takes as it is: (the Extra, its
        (type, size)); False for any other (the state machine decides),
        remembered either way."""
        known: tuple[ExtraInfo, tuple[int, int]] | bool = False
        if len(raw) == ENTRY_SIZE:
            type_, flags, size, gso_type, _ = netif.GSO_EXTRA.unpack(raw)
            if (type_ == XEN_NETIF_EXTRA_TYPE_GSO and not flags & XEN_NETIF_EXTRA_FLAG_MORE
                    and gso_type in _GSO_TYPES and size):
                known = (parse_extra(raw), (gso_type, size))
        if len(self._extra_cache) >= 32:  # the backend picks them: keep a few
            self._extra_cache.clear()
        self._extra_cache[raw] = known
        return known

    def _chain_views(self, index: int, frag: int, end: int, offset: int, status: int,
                     starts: list[int], lengths: list[int], pages: Sequence, start: int,
                     ring: int, area: memoryview | None) -> tuple:
        """The views of a good chain: slot `index`, then slots frag..end-1."""
        page_size = self.page_size
        first = (start + index) % ring
        if (area is not None and frag == index + 1 and offset == 0 and status == page_size
                and first + 1 < ring):
            # A whole first page right before the rest: one run with them.
            return self._run_views(index, end, [0, *starts], [status, *lengths], pages,
                                   start, ring, area)
        return (pages[first][offset:offset + status],
                *self._run_views(frag, end, starts, lengths, pages, start, ring, area))

    def _run_views(self, begin: int, end: int, starts: list[int], lengths: list[int],
                   pages: Sequence, start: int, ring: int, area: memoryview | None
                   ) -> tuple | list:
        """The views of the data slots begin..end-1 (good ones: `starts`
        and `lengths` are theirs)."""
        count = end - begin
        if not count:
            return ()
        pos = (start + begin) % ring
        page_size = self.page_size
        if (area is not None and not any(starts)
                and (count == 1 or min(lengths[:-1]) == page_size)):
            # Whole pages from offset 0, the last one part full: one view of
            # the area, two where the ring wraps.
            tail = lengths[-1]
            if pos + count <= ring:
                return (area[pos * page_size:(pos + count - 1) * page_size + tail],)
            wrap = ring - pos
            return (area[pos * page_size:], area[:(count - wrap - 1) * page_size + tail])
        if pos + count <= ring:
            buffers = pages[pos:pos + count]
        else:
            buffers = [*pages[pos:], *pages[:pos + count - ring]]
        return list(map(getitem, buffers, map(slice, starts, map(add, starts, lengths))))

    def _slowly(self, entries: bytes, index: int, n: int, pages: Sequence, start: int,
                ring: int, out: list) -> int:
        """Feed slots from `index` one at a time until a frame (or error)
        comes out or the block ends: the next slot's index."""
        while index < n:
            at = index * ENTRY_SIZE
            raw = entries[at:at + ENTRY_SIZE]
            if self._state == _EXTRAS:
                result = self._extra(parse_extra(raw))
            else:
                result = self._data(_RESPONSE.unpack(raw), pages[(start + index) % ring], None)
            index += 1
            if result is not None:
                out.append(result)
                break
        return index

    def abort(self, reason: str = "frame cut short") -> RxError | None:
        """Give up the frame under way (the backend went away)."""
        if not self.in_progress:
            return None
        error = RxError(self._data_slots + self._extra_slots, reason)
        self._reset()
        return error

    def _data(self, rsp: RxResponse, page, request_id: int | None
              ) -> RxFrame | RxError | None:
        id, offset, flags, status = rsp
        first = self._state == _FIRST
        more = flags & NETRXF_more_data
        self._data_slots += 1
        if request_id is not None and id != request_id:
            self._refuse(f"response id {id} in the slot of request {request_id}")
        if status < 0:
            self._refuse(f"backend status {status}")
        elif offset + status > self.page_size:
            self._refuse(f"{status} bytes at offset {offset} leave the page")
        elif self._problem is None:
            if page is None:
                raise ValueError("a data slot needs its page")
            chunk = (page if type(page) is memoryview else memoryview(page))[
                offset:offset + status]
            if len(chunk) != status:
                raise ValueError(f"page of {len(page)} bytes given")
            self._size += status
            self._chunks.append(chunk)
        if self._size > XEN_NETIF_MAX_TX_SIZE:
            self._refuse(f"frame of more than {XEN_NETIF_MAX_TX_SIZE} bytes")
        if self._data_slots > self.max_slots:
            self._refuse(f"more than {self.max_slots} slots")
        if more and not self.sg:
            self._refuse("multi-slot frame without feature-sg")
        if first:
            self._flags = flags
            self._first_more = more
            if flags & NETRXF_extra_info:
                self._state = _EXTRAS
                return None
        if more:
            self._state = _FRAGS
            return None
        return self._finish()

    def _extra(self, extra: ExtraInfo) -> RxFrame | RxError | None:
        self._extra_slots += 1
        problem = extra_problem(extra)
        if problem is None and extra.type in self._extras:
            problem = f"two extra infos of type {extra.type}"
        if problem is None and self._extra_slots > MAX_EXTRAS:
            problem = f"more than {MAX_EXTRAS} extra infos"
        if problem is not None:
            self._refuse(problem)
        else:
            self._extras[extra.type] = extra
        if extra.more:
            return None
        if self._first_more:
            self._state = _FRAGS
            return None
        return self._finish()

    def _finish(self) -> RxFrame | RxError:
        nr_slots = self._data_slots + self._extra_slots
        result: RxFrame | RxError
        if self._problem is not None:
            result = RxError(nr_slots, self._problem)
        else:
            result = RxFrame(tuple(self._chunks), self._flags,
                             dict(self._extras), nr_slots, self._size)
        self._reset()
        return result
