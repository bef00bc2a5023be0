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
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass
from typing import NamedTuple

from hypervisor.public import xen
from hypervisor.public.io import netif
from hypervisor.public.io.netif import (
    NETRXF_csum_blank,
    NETRXF_data_validated,
    NETRXF_extra_info,
    NETRXF_more_data,
    XEN_NETIF_EXTRA_FLAG_MORE,
    XEN_NETIF_EXTRA_TYPE_GSO,
    XEN_NETIF_EXTRA_TYPE_MAX,
    XEN_NETIF_GSO_TYPE_TCPV4,
    XEN_NETIF_GSO_TYPE_TCPV6,
    XEN_NETIF_MAX_TX_SIZE,
    XEN_NETIF_NR_SLOTS_MIN,
)

ENTRY_SIZE = netif.NETIF_RX_SRING_ENTRY_SIZE  # 8: request, response, extra
PAGE_SIZE = xen.PAGE_SIZE
MAX_EXTRAS = XEN_NETIF_EXTRA_TYPE_MAX - 1
_RSP_SIZE = ctypes.sizeof(netif.netif_rx_response)
_RESPONSE = struct.Struct("<HHHh")
assert _RESPONSE.size == _RSP_SIZE


def make_rx_request(id: int, gref: int) -> bytes:
    """An rx request (8 bytes) posting the page granted as `gref`."""
    if not 0 <= id <= 0xFFFF:
        raise ValueError(f"rx id {id} does not fit in 16 bits")
    if not 0 <= gref < 1 << 32:
        raise ValueError(f"grant ref {gref} does not fit in 32 bits")
    return bytes(netif.netif_rx_request(id=id, gref=gref))


class RxResponse(NamedTuple):
    id: int
    offset: int
    flags: int
    status: int

    @property
    def more_data(self) -> bool:
        return bool(self.flags & NETRXF_more_data)


def parse_rx_response(raw: bytes | bytearray | memoryview) -> RxResponse:
    """Decode an rx response (8 bytes, copied first)."""
    if len(raw) != _RSP_SIZE:
        raise ValueError(f"an rx response is {_RSP_SIZE} bytes, not {len(raw)}")
    return RxResponse._make(_RESPONSE.unpack(bytes(raw)))


@dataclass(frozen=True)
class Extra:
    """A decoded netif_extra_info: type, flags, the union's 6 bytes."""

    type: int
    flags: int
    u: bytes

    @property
    def more(self) -> bool:
        return bool(self.flags & XEN_NETIF_EXTRA_FLAG_MORE)

    @property
    def gso(self) -> tuple[int, int]:
        """(u.gso.type, u.gso.size)."""
        return self.u[2], int.from_bytes(self.u[0:2], "little")


def parse_extra(raw: bytes | bytearray | memoryview) -> Extra:
    data = bytes(raw)
    if len(data) < ctypes.sizeof(netif.netif_extra_info):
        raise ValueError(f"an extra info is 8 bytes, not {len(data)}")
    return Extra(data[0], data[1], data[2:8])


def _extra_problem(extra: Extra) -> str | None:
    if not 0 < extra.type < XEN_NETIF_EXTRA_TYPE_MAX:
        return f"extra info of unknown type {extra.type}"
    if extra.type == XEN_NETIF_EXTRA_TYPE_GSO:
        gso_type, size = extra.gso
        if size == 0:
            return "GSO extra with size 0"
        if gso_type not in (XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_GSO_TYPE_TCPV6):
            return f"GSO extra of unknown type {gso_type}"
    return None


@dataclass(frozen=True)
class RxFrame:
    """A received frame: its data (views of the pages it came in, in
    order), the first slot's NETRXF_* flags, its extras by type, and the
    ring slots it took."""

    chunks: tuple[memoryview, ...]
    flags: int
    extras: dict[int, Extra]
    nr_slots: int
    size: int

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
        extra = self.extras.get(XEN_NETIF_EXTRA_TYPE_GSO)
        return extra.gso if extra else None

    @property
    def csum_blank(self) -> bool:
        return bool(self.flags & NETRXF_csum_blank)

    @property
    def data_validated(self) -> bool:
        return bool(self.flags & NETRXF_data_validated)


@dataclass(frozen=True)
class RxError:
    """A refused frame: the `nr_slots` ring slots it took (repost their
    buffers) and why."""

    nr_slots: int
    reason: str


_FIRST, _EXTRAS, _FRAGS = "first", "extras", "frags"


class RxAssembler:
    """Reassembles the rx responses of one ring, fed in ring order."""

    def __init__(self, *, sg: bool = True,
                 max_slots: int = XEN_NETIF_NR_SLOTS_MIN,
                 page_size: int = PAGE_SIZE) -> None:
        self.sg = sg
        self.max_slots = max_slots
        self.page_size = page_size
        self._reset()

    def _reset(self) -> None:
        self._state = _FIRST
        self._chunks: list[memoryview] = []
        self._size = 0
        self._flags = 0
        self._first_more = False
        self._extras: dict[int, Extra] = {}
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
        out = []
        unpack = _RESPONSE.unpack_from
        data = self._data
        page_size, max_slots, sg = self.page_size, self.max_slots, self.sg
        for index in range(len(entries) // ENTRY_SIZE):
            offset = index * ENTRY_SIZE
            state = self._state
            if state == _EXTRAS:
                result = self._extra(parse_extra(entries[offset:offset + ENTRY_SIZE]))
            else:
                rsp = unpack(entries, offset)
                _id, start, flags, status = rsp
                more = flags & NETRXF_more_data
                size = self._size + status
                if (state == _FRAGS and self._problem is None and 0 <= status
                        and start + status <= page_size and size <= XEN_NETIF_MAX_TX_SIZE
                        and self._data_slots < max_slots and (sg or not more)):
                    # A good slot 2..N, the hot path: what _data would do when
                    # no check fails.
                    self._data_slots += 1
                    self._size = size
                    self._chunks.append(pages[index][start:start + status])
                    if more:
                        continue
                    result = self._finish()
                else:
                    result = data(rsp, pages[index], None)
            if result is not None:
                out.append(result)
        return out

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

    def _extra(self, extra: Extra) -> RxFrame | RxError | None:
        self._extra_slots += 1
        problem = _extra_problem(extra)
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
