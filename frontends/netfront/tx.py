"""The tx ring entries netfront builds for a frame, and its tx shadow.

A frame goes out as a chain of slots (io/netif.h): each slot names a
granted page and a byte range of it that stays within the page.  Slot 1's
size is the whole frame's; it carries the caller's checksum flags,
NETTXF_more_data if more slots follow and NETTXF_extra_info if a GSO extra
slot follows it; slots 2..N carry their own length and NETTXF_more_data
but the last.  :func:`split_frame` lays a frame out in page-sized pieces
(to copy into pages the frontend then grants), :func:`tx_requests` builds
the 12-byte ring entries.  Arguments out of the protocol's bounds are the
frontend's own bug and raise ValueError.

:class:`TxShadow` gives each request slot an id (a free list of ring-size
ids, LIFO as Linux's netfront) and remembers it until the backend
answers: the slot's grant can then be ended and, once every slot of the
packet is answered, its buffers freed.  The backend is not trusted: a
response whose id is not in flight (unknown, or answered already), whose
status is not a NETIF_RSP_* one, or a NETIF_RSP_NULL that answers no extra
slot is a :class:`NetfrontProtocolError` (reconnect).

Not thread-safe: the caller serialises access (one lock per ring).
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hypervisor.public import xen
from hypervisor.public.io import netif
from hypervisor.public.io.netif import (
    NETIF_RSP_DROPPED,
    NETIF_RSP_ERROR,
    NETIF_RSP_NULL,
    NETIF_RSP_OKAY,
    NETTXF_csum_blank,
    NETTXF_data_validated,
    NETTXF_extra_info,
    NETTXF_more_data,
    XEN_NETIF_EXTRA_TYPE_GSO,
    XEN_NETIF_GSO_TYPE_TCPV4,
    XEN_NETIF_GSO_TYPE_TCPV6,
    XEN_NETIF_MAX_TX_SIZE,
    XEN_NETIF_NR_SLOTS_MIN,
    XEN_NETIF_TX_RING_SIZE,
)

#: Bytes of one tx ring entry: 12.
ENTRY_SIZE = netif.NETIF_TX_SRING_ENTRY_SIZE
RESPONSE_SIZE = ctypes.sizeof(netif.netif_tx_response)
PAGE_SIZE = xen.PAGE_SIZE
#: Flags the caller may set on a frame (the rest are the chain's).
CSUM_FLAGS = NETTXF_csum_blank | NETTXF_data_validated

Segment = tuple[int, int, int]  # (gref, offset in the page, length)
#: netif_tx_request and netif_tx_response as the ring holds them (checked
#: against the ctypes layouts).
_REQUEST = struct.Struct("<IHHHH")
_RESPONSE = struct.Struct("<Hh")
_RESPONSE_SLOT = struct.Struct("<Hh8x")  # a response in its 12-byte slot
_GSO_EXTRA = struct.Struct("<BBHBxH4x")  # netif_extra_info.u.gso, in a tx slot
assert _REQUEST.size == ctypes.sizeof(netif.netif_tx_request) == ENTRY_SIZE
assert _RESPONSE.size == RESPONSE_SIZE


def split_frame(frame: bytes | bytearray | memoryview, offset: int = 0,
                page_size: int = PAGE_SIZE) -> list[tuple[int, bytes]]:
    """`frame` cut at page boundaries, laid out from `offset` in a first
    page: (offset in its page, bytes) per page; the pieces after the
    first start at 0."""
    data = bytes(frame)
    if not data:
        raise ValueError("empty frame")
    if not 0 <= offset < page_size:
        raise ValueError(f"offset {offset} outside the page")
    pieces = [(offset, data[:page_size - offset])]
    for start in range(page_size - offset, len(data), page_size):
        pieces.append((0, data[start:start + page_size]))
    return pieces


def make_gso_extra(gso_type: int, size: int) -> bytes:
    """A GSO extra info tx slot (12 bytes): segment into `size`-byte
    (MSS) TCP segments of `gso_type`."""
    if gso_type not in (XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_GSO_TYPE_TCPV6):
        raise ValueError(f"GSO type {gso_type}")
    if not 0 < size <= 0xFFFF:
        raise ValueError(f"GSO size {size}")
    return _GSO_EXTRA.pack(XEN_NETIF_EXTRA_TYPE_GSO, 0, size, gso_type, 0)


def tx_requests(segments: Sequence[Segment], ids: Sequence[int], *,
                flags: int = 0, gso: tuple[int, int] | None = None,
                max_slots: int = XEN_NETIF_NR_SLOTS_MIN,
                page_size: int = PAGE_SIZE) -> list[bytes]:
    """The ring entries of one frame whose data is `segments` in order,
    the request slots having `ids`; `flags` are checksum flags
    (NETTXF_csum_blank, NETTXF_data_validated); `gso` = (gso_type, MSS)
    adds the GSO extra slot after slot 1.  Every backend takes up to
    XEN_NETIF_NR_SLOTS_MIN request slots."""
    count = len(segments)
    if not 1 <= count <= max_slots:
        raise ValueError(f"{count} slots, not 1..{max_slots}")
    if len(ids) != count:
        raise ValueError(f"{count} slots but {len(ids)} ids")
    if flags & ~CSUM_FLAGS:
        raise ValueError(f"tx flags {flags:#x} are not checksum flags")
    total = 0
    for gref, offset, length in segments:
        if not 0 <= gref < 1 << 32:
            raise ValueError(f"grant ref {gref} does not fit in 32 bits")
        if offset < 0 or length < 0 or offset + length > page_size:
            raise ValueError(f"{length} bytes at offset {offset} leave the page")
        total += length
    if not 0 < total <= XEN_NETIF_MAX_TX_SIZE:
        raise ValueError(f"frame of {total} bytes")
    if min(ids) < 0 or max(ids) > 0xFFFF:
        raise ValueError("tx id does not fit in 16 bits")
    pack = _REQUEST.pack
    gref, offset, _ = segments[0]
    first_flags = flags | (NETTXF_more_data if count > 1 else 0)
    if gso is None:
        entries = [pack(gref, offset, first_flags, ids[0], total)]
    else:
        entries = [pack(gref, offset, first_flags | NETTXF_extra_info, ids[0], total),
                   make_gso_extra(*gso)]
    last = count - 1
    entries += [pack(gref, offset, NETTXF_more_data if index < last else 0, id, length)
                for index, ((gref, offset, length), id)
                in enumerate(zip(segments[1:], ids[1:]), 1)]
    return entries


@dataclass(frozen=True)
class TxResponse:
    id: int
    status: int


def parse_tx_response(raw: bytes | bytearray | memoryview) -> TxResponse:
    """Decode a netif_tx_response (the first 4 bytes of `raw`, copied)."""
    data = bytes(raw[:RESPONSE_SIZE])
    if len(data) != RESPONSE_SIZE:
        raise ValueError(f"a tx response is {RESPONSE_SIZE} bytes, not {len(data)}")
    return TxResponse(*_RESPONSE.unpack(data))


class NetfrontProtocolError(Exception):
    """The backend answered something no request asked for: reconnect."""


class ShadowFull(Exception):
    """Not enough free ids: wait for responses."""


class TxSlot:
    """One request slot in flight (or answered, with its `status`): a view
    of its packet's record, made only when asked for."""

    __slots__ = ("id", "gref", "offset", "length", "packet")

    def __init__(self, id: int, gref: int, offset: int, length: int,
                 packet: TxShadowPacket) -> None:
        self.id, self.gref, self.offset, self.length = id, gref, offset, length
        self.packet = packet

    @property
    def status(self) -> int | None:
        """The backend's answer, None while there is none."""
        return self.packet.statuses.get(self.id)

    def __repr__(self) -> str:
        return (f"TxSlot(id={self.id}, gref={self.gref}, offset={self.offset}, "
                f"length={self.length}, status={self.status})")


class TxShadowPacket:
    """A frame in flight: the ids and segments of its request slots, its
    ring entries, and the answers so far (`statuses`, by id)."""

    __slots__ = ("ids", "segments", "requests", "flags", "gso", "buffers", "seq",
                 "pending", "statuses", "_slots")

    def __init__(self, ids: list[int], segments: Sequence[Segment], requests: list[bytes],
                 flags: int = 0, gso: tuple[int, int] | None = None, buffers: Any = None,
                 seq: int = 0) -> None:
        self.ids, self.segments = ids, segments
        self.requests = requests    # the ring entries, extras included, in order
        self.flags, self.gso = flags, gso
        self.buffers = buffers      # the caller's, freed once done
        self.seq = seq              # issue order
        self.pending = len(ids)     # slots without a response
        self.statuses: dict[int, int] = {}
        self._slots: list[TxSlot] | None = None

    @property
    def slots(self) -> list[TxSlot]:
        """Its request slots, in ring order."""
        if self._slots is None:
            self._slots = [TxSlot(id, gref, offset, length, self)
                           for id, (gref, offset, length) in zip(self.ids, self.segments)]
        return self._slots

    def slot(self, id: int) -> TxSlot:
        return self.slots[self.ids.index(id)]

    @property
    def done(self) -> bool:
        return self.pending == 0

    @property
    def status(self) -> int | None:
        """None while slots are pending; then NETIF_RSP_OKAY if every slot
        was, else the first slot's status that was not."""
        if self.pending:
            return None
        statuses = self.statuses
        return next((statuses[id] for id in self.ids if statuses[id] != NETIF_RSP_OKAY),
                    NETIF_RSP_OKAY)


_STATUSES = (NETIF_RSP_OKAY, NETIF_RSP_ERROR, NETIF_RSP_DROPPED)


class TxShadow:
    """The tx slots in flight on one ring of `size` slots."""

    def __init__(self, size: int = XEN_NETIF_TX_RING_SIZE) -> None:
        if not 1 <= size <= 0x10000:
            raise ValueError(f"ring size {size}")
        self._clear(size)

    def _clear(self, size: int) -> None:
        self.size = size
        self._owner: list[TxShadowPacket | None] = [None] * size  # by id
        self._free = list(range(size - 1, -1, -1))  # pop() gives 0 first
        self._nulls_expected = 0
        self._seq = 0

    def __len__(self) -> int:
        """Request slots in flight."""
        return self.size - len(self._free)

    @property
    def free(self) -> int:
        """Ids free: request slots a new frame may use."""
        return len(self._free)

    def add(self, segments: Sequence[Segment], *, flags: int = 0,
            gso: tuple[int, int] | None = None, buffers: Any = None,
            max_slots: int = XEN_NETIF_NR_SLOTS_MIN) -> TxShadowPacket:
        """Record a frame under free ids and build its ring entries
        (``packet.requests``, to put on the ring in order).  ShadowFull if
        too few ids are free; ValueError (nothing recorded) if malformed."""
        count = len(segments)
        free = self._free
        if count > len(free):
            raise ShadowFull(f"{count} slots wanted, {len(free)} free")
        ids = free[len(free) - count:][::-1]
        requests = tx_requests(segments, ids, flags=flags, gso=gso,
                               max_slots=max_slots)
        packet = TxShadowPacket(ids, segments, requests, flags, gso, buffers, self._seq)
        owner = self._owner
        for id in ids:
            owner[id] = packet
        del free[len(free) - count:]
        self._seq += 1
        self._nulls_expected += len(requests) - count
        return packet

    def get(self, id: int) -> TxSlot | None:
        packet = self._owner[id] if 0 <= id < self.size else None
        return packet.slot(id) if packet is not None else None

    def _answer(self, id: int, status: int) -> TxShadowPacket | None:
        """Record one answer; its packet, or None for an extra's NULL."""
        if status == NETIF_RSP_NULL:
            if not self._nulls_expected:
                raise NetfrontProtocolError("NETIF_RSP_NULL answers no extra slot")
            self._nulls_expected -= 1
            return None
        if status not in _STATUSES:
            raise NetfrontProtocolError(f"response for id {id} has status {status}")
        packet = self._owner[id] if id < self.size else None
        if packet is None:
            raise NetfrontProtocolError(
                f"response for id {id}: no such slot in flight (unknown or duplicate)")
        packet.statuses[id] = status
        packet.pending -= 1
        self._owner[id] = None
        self._free.append(id)
        return packet

    def complete(self, response: TxResponse | bytes | bytearray | memoryview
                 ) -> TxSlot | None:
        """The slot `response` answers, with its status set (end its grant;
        ``slot.packet.done`` says whether the frame is); its id is free
        again.  None for the NETIF_RSP_NULL answering an extra slot.
        NetfrontProtocolError if the response answers nothing in flight."""
        if not isinstance(response, TxResponse):
            response = parse_tx_response(response)
        packet = self._answer(response.id, response.status)
        return None if packet is None else packet.slot(response.id)

    def complete_block(self, entries: bytes) -> list[TxShadowPacket]:
        """:meth:`complete` for every response in `entries` (whole 12-byte
        ring slots, as FrontRing.get_responses copies them), making no
        slot objects: the frames they finished, in the order they
        finished."""
        done = []
        answer = self._answer
        for id, status in _RESPONSE_SLOT.iter_unpack(entries):
            packet = answer(id, status)
            if packet is not None and not packet.pending:
                done.append(packet)
        return done

    def inflight(self) -> list[TxShadowPacket]:
        """Every frame with a slot not answered yet, in issue order."""
        packets = {id(p): p for p in self._owner if p is not None}
        return sorted(packets.values(), key=lambda p: p.seq)

    def reset(self, size: int | None = None) -> list[TxShadowPacket]:
        """Forget everything in flight (for a new connection) and return
        the frames that were, in issue order: end their grants, and resend
        them (or drop them: the network may lose frames)."""
        if size is not None and not 1 <= size <= 0x10000:
            raise ValueError(f"ring size {size}")
        pending = self.inflight()
        self._clear(self.size if size is None else size)
        return pending
