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

The per-slot work of a frame (encoding its entries, taking its answers)
is done by C-level builtins over whole lists (struct formats repeated per
slot, list slice assignment, map, set and Counter), not by a Python loop
per slot: at 17 slots a 64 KiB frame, netfront's sender spent most of its
time there.  Unusual input (a bad response, a caller's bug) takes a
slot-by-slot path that decides alike.

Not thread-safe: the caller serialises access (one lock per ring).
"""

from __future__ import annotations

import struct
import sys
from collections import Counter
from collections.abc import Sequence
from itertools import compress
from operator import add
from typing import Any

from hypervisor.public import xen
from hypervisor.public.io import netif
from hypervisor.public.io.netif import (
    NETIF_RSP_DROPPED,
    NETIF_RSP_ERROR,
    NETIF_RSP_NULL,
    NETIF_RSP_OKAY,
    XEN_NETIF_GSO_TYPE_TCPV4,
    XEN_NETIF_GSO_TYPE_TCPV6,
    XEN_NETIF_MAX_TX_SIZE,
    XEN_NETIF_NR_SLOTS_MIN,
    XEN_NETIF_TX_RING_SIZE,
    NETTXF_csum_blank,
    NETTXF_data_validated,
    NETTXF_extra_info,
    NETTXF_more_data,
    TxResponse,
    make_gso_extra,
    parse_extra,
    parse_tx_response,
)
from hypervisor.public.pyxen.layout import repeated

#: Bytes of one tx ring entry: 12.
ENTRY_SIZE = netif.NETIF_TX_SRING_ENTRY_SIZE
PAGE_SIZE = xen.PAGE_SIZE
#: Flags the caller may set on a frame (the rest are the chain's).
CSUM_FLAGS = NETTXF_csum_blank | NETTXF_data_validated

Segment = tuple[int, int, int]  # (gref, offset in the page, length)
_REQUEST = netif.TX_REQUEST
_RESPONSE_SLOT = netif.TX_RESPONSE_SLOT  # a response in its 12-byte slot


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


def gso_extra_slot(gso: tuple[int, int]) -> bytes:
    """The GSO extra info tx slot (12 bytes) of `gso` = (gso_type, MSS):
    segment into MSS-byte TCP segments of that type."""
    gso_type, size = gso
    if gso_type not in (XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_GSO_TYPE_TCPV6):
        raise ValueError(f"GSO type {gso_type}")
    return make_gso_extra(gso_type=gso_type, size=size, slot=ENTRY_SIZE)


#: struct formats of n request slots, and each slot's flags but the first's
#: (NETTXF_more_data but the last): built once, a frame is one pack call.
_REQUESTS = [repeated(_REQUEST, n) for n in range(XEN_NETIF_NR_SLOTS_MIN + 1)]
_CHAIN_FLAGS = [(NETTXF_more_data,) * (n - 1) + (0,) for n in range(XEN_NETIF_NR_SLOTS_MIN + 1)]


def _check_gso(gso: tuple[int, int] | None) -> bytes | None:
    return None if gso is None else gso_extra_slot(gso)


def tx_entries(segments: Sequence[Segment], ids: Sequence[int], *,
               flags: int = 0, gso: tuple[int, int] | None = None,
               max_slots: int = XEN_NETIF_NR_SLOTS_MIN,
               page_size: int = PAGE_SIZE) -> bytes:
    """:func:`tx_requests`, as the ring takes them: one bytes of whole
    12-byte slots, in order."""
    count = len(segments)
    if not 1 <= count <= max_slots:
        raise ValueError(f"{count} slots, not 1..{max_slots}")
    if len(ids) != count:
        raise ValueError(f"{count} slots but {len(ids)} ids")
    if flags & ~CSUM_FLAGS:
        raise ValueError(f"tx flags {flags:#x} are not checksum flags")
    if sum(map(len, segments)) != 3 * count:
        raise ValueError("a segment is not (gref, offset, length)")
    grefs, offsets, lengths = zip(*segments)
    if min(grefs) < 0 or max(grefs) >= 1 << 32:
        bad = next(g for g in grefs if not 0 <= g < 1 << 32)
        raise ValueError(f"grant ref {bad} does not fit in 32 bits")
    if min(offsets) < 0 or min(lengths) < 0 or max(map(add, offsets, lengths)) > page_size:
        _, offset, length = next(s for s in segments
                                 if s[1] < 0 or s[2] < 0 or s[1] + s[2] > page_size)
        raise ValueError(f"{length} bytes at offset {offset} leave the page")
    total = sum(lengths)
    if not 0 < total <= XEN_NETIF_MAX_TX_SIZE:
        raise ValueError(f"frame of {total} bytes")
    if min(ids) < 0 or max(ids) > 0xFFFF:
        raise ValueError("tx id does not fit in 16 bits")
    extra = _check_gso(gso)
    if count > len(_REQUESTS) - 1:  # a caller's max_slots above the protocol's
        return b"".join(_one_by_one(grefs, offsets, lengths, ids, flags, extra, total))
    args = [0] * (5 * count)
    args[0::5] = grefs
    args[1::5] = offsets
    args[2::5] = _CHAIN_FLAGS[count]
    args[3::5] = ids
    args[4::5] = lengths
    args[2] = flags | (NETTXF_more_data if count > 1 else 0) \
        | (NETTXF_extra_info if extra is not None else 0)
    args[4] = total
    entries = _REQUESTS[count].pack(*args)
    return entries if extra is None else entries[:ENTRY_SIZE] + extra + entries[ENTRY_SIZE:]


def _one_by_one(grefs, offsets, lengths, ids, flags, extra, total) -> list[bytes]:
    pack = _REQUEST.pack
    last = len(grefs) - 1
    out = [pack(grefs[0], offsets[0], flags | (NETTXF_more_data if last else 0)
                | (NETTXF_extra_info if extra is not None else 0), ids[0], total)]
    if extra is not None:
        out.append(extra)
    for index in range(1, last + 1):
        out.append(pack(grefs[index], offsets[index],
                        NETTXF_more_data if index < last else 0, ids[index], lengths[index]))
    return out


def tx_requests(segments: Sequence[Segment], ids: Sequence[int], *,
                flags: int = 0, gso: tuple[int, int] | None = None,
                max_slots: int = XEN_NETIF_NR_SLOTS_MIN,
                page_size: int = PAGE_SIZE) -> list[bytes]:
    """The ring entries of one frame whose data is `segments` in order,
    the request slots having `ids`; `flags` are checksum flags
    (NETTXF_csum_blank, NETTXF_data_validated); `gso` = (gso_type, MSS)
    adds the GSO extra slot after slot 1.  Every backend takes up to
    XEN_NETIF_NR_SLOTS_MIN request slots."""
    entries = tx_entries(segments, ids, flags=flags, gso=gso, max_slots=max_slots,
                         page_size=page_size)
    return [entries[i:i + ENTRY_SIZE] for i in range(0, len(entries), ENTRY_SIZE)]


_GSO_EXTRAS: dict[tuple[int, int], bytes] = {}


def _gso_extra(gso: tuple[int, int]) -> bytes:
    """gso_extra_slot, remembered: a flow's frames all have the same."""
    extra = _GSO_EXTRAS.get(gso)
    if extra is None:
        extra = gso_extra_slot(gso)
        if len(_GSO_EXTRAS) >= 64:
            _GSO_EXTRAS.clear()
        _GSO_EXTRAS[gso] = extra
    return extra


class TxPageEncoder:
    """The ring entries of frames laid out from offset 0 over whole pages
    (the last one part full), the pages numbered as in `grefs` (page i is
    granted as grefs[i]) and each slot's request id its page's number: a
    page is in flight at most once, so its number is an id no other slot
    in flight has.  Every whole page's entry is then the same each time:
    built once, a frame's entries are a join of them with its first and
    last slots (and GSO extra) made anew.  What :func:`tx_entries` makes
    of the same frame, ids being the pages."""

    def __init__(self, grefs: Sequence[int]) -> None:
        if len(grefs) > 0x10000:
            raise ValueError(f"{len(grefs)} pages: their numbers do not fit in 16 bits")
        pack = _REQUEST.pack
        try:
            whole = [pack(gref, 0, NETTXF_more_data, page, PAGE_SIZE)
                     for page, gref in enumerate(grefs)]
        except struct.error:
            raise ValueError("grant ref does not fit in 32 bits") from None
        self._whole = whole
        # The same back to back: the entries of consecutive pages are one
        # slice of it.
        self._run = b"".join(whole)
        self._numbers = list(range(len(grefs)))
        self.grefs = grefs  # not copied: the caller keeps it as it is

    def entries(self, pages: Sequence[int], size: int, *, flags: int = 0,
                gso: tuple[int, int] | None = None) -> bytes:
        """The entries of a frame of `size` bytes in `pages` (numbers, in
        order): ValueError if it is not what the protocol can carry or
        does not fill exactly those pages."""
        count = len(pages)
        if not 0 < size <= XEN_NETIF_MAX_TX_SIZE or -(-size // PAGE_SIZE) != count:
            raise ValueError(f"frame of {size} bytes in {count} pages")
        if flags & ~CSUM_FLAGS:
            raise ValueError(f"tx flags {flags:#x} are not checksum flags")
        first = pages[0]
        consecutive = first >= 0 and pages == self._numbers[first:first + count]
        if not consecutive and (min(pages) < 0 or max(pages) >= len(self.grefs)):
            raise ValueError(f"page numbers {min(pages)}..{max(pages)} outside "
                             f"0..{len(self.grefs) - 1}")
        pack, grefs = _REQUEST.pack, self.grefs
        if gso is None:
            if count == 1:
                return pack(grefs[first], 0, flags, first, size)
            head = pack(grefs[first], 0, flags | NETTXF_more_data, first, size)
        else:
            extra = _gso_extra(gso)
            if count == 1:
                return pack(grefs[first], 0, flags | NETTXF_extra_info, first, size) + extra
            head = pack(grefs[first], 0, flags | NETTXF_more_data | NETTXF_extra_info,
                        first, size) + extra
        last = pages[-1]
        tail = pack(grefs[last], 0, 0, last, size - (count - 1) * PAGE_SIZE)
        if consecutive:
            return b"".join((head, self._run[(first + 1) * ENTRY_SIZE:last * ENTRY_SIZE], tail))
        return b"".join((head, *map(self._whole.__getitem__, pages[1:-1]), tail))


class NetfrontProtocolError(Exception):
    """The backend answered something no request asked for: reconnect."""


class ShadowFull(Exception):
    """Not enough free ids: wait for responses."""


class TxSlot:
    """One request slot in flight (or answered, with its `status`): a view
    of its packet's record, made only when asked for."""

    __slots__ = ("gref", "id", "length", "offset", "packet")

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
    """A frame in flight: the ids of its request slots, its ring entries
    (`entries`, extras included, in order; `requests` one by one), and the
    answers so far (`statuses`, by id).  Its segments, flags and GSO are
    read back from its entries when asked for."""

    __slots__ = (
        "_bad",
        "_owner",
        "_slots",
        "_statuses",
        "buffers",
        "entries",
        "ids",
        "nr_extras",
        "pending",
        "seq",
    )

    def __init__(self, ids: list[int], entries: bytes, nr_extras: int = 0,
                 buffers: Any = None, seq: int = 0,
                 owner: dict[int, TxShadowPacket] | None = None) -> None:
        self.ids = ids
        self.entries = entries
        self.nr_extras = nr_extras
        self.buffers = buffers      # the caller's, freed once done
        self.seq = seq              # issue order
        self.pending = len(ids)     # slots without a response
        # Which ids are answered is which no longer belong to this packet in
        # the shadow's `owner`; only answers other than NETIF_RSP_OKAY are
        # written down (`_bad`): the hot path records nothing per slot.
        self._owner = owner if owner is not None else {}
        self._bad: dict[int, int] = {}
        self._statuses: dict[int, int] | None = None  # frozen by a reset
        self._slots: list[TxSlot] | None = None

    @property
    def requests(self) -> list[bytes]:
        entries = self.entries
        return [entries[i:i + ENTRY_SIZE] for i in range(0, len(entries), ENTRY_SIZE)]

    @property
    def segments(self) -> list[Segment]:
        """(gref, offset, length) of its request slots, in ring order."""
        entries = self.entries
        data = entries[:ENTRY_SIZE] + entries[ENTRY_SIZE * (1 + self.nr_extras):]
        reqs = list(_REQUEST.iter_unpack(data))
        rest = [(gref, offset, size) for gref, offset, _, _, size in reqs[1:]]
        gref, offset, _, _, total = reqs[0]
        return [(gref, offset, total - sum(size for _, _, size in rest))] + rest

    @property
    def flags(self) -> int:
        """The checksum flags it was sent with."""
        return _REQUEST.unpack_from(self.entries)[2] & CSUM_FLAGS

    @property
    def gso(self) -> tuple[int, int] | None:
        if not self.nr_extras:
            return None
        return parse_extra(self.entries[ENTRY_SIZE:2 * ENTRY_SIZE]).gso

    @property
    def statuses(self) -> dict[int, int]:
        """The answers so far, by id."""
        if self._statuses is not None:
            return self._statuses
        owner, bad = self._owner, self._bad
        return {id: bad.get(id, NETIF_RSP_OKAY) for id in self.ids
                if owner.get(id) is not self}

    def _freeze(self) -> None:
        """Write the answers down for good: the shadow forgets us."""
        self._statuses = self.statuses

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
        bad = self._bad if self._statuses is None else self._statuses
        return next((bad[id] for id in self.ids if bad.get(id, NETIF_RSP_OKAY)),
                    NETIF_RSP_OKAY)


_STATUSES = (NETIF_RSP_OKAY, NETIF_RSP_ERROR, NETIF_RSP_DROPPED)
_IDS, _STATUSES_READ = netif.TX_RESPONSE_ID, netif.TX_RESPONSE_STATUS
assert (_IDS.code, _STATUSES_READ.code) == ("H", "h")


def _answers(entries: bytes) -> tuple[list[int], list[int], int]:
    """The ids and statuses of whole tx response slots (native little-
    endian), without the NETIF_RSP_NULL ones, and how many those were."""
    view = memoryview(entries)  # one cast per width, sliced at netif's columns
    ids = view.cast("H")[_IDS.start::_IDS.step].tolist()
    statuses = view.cast("h")[_STATUSES_READ.start::_STATUSES_READ.step].tolist()
    nulls = statuses.count(NETIF_RSP_NULL)
    if nulls:
        _drop_nulls(ids, statuses, nulls)
    return ids, statuses, nulls


def _drop_nulls(ids: list[int], statuses: list[int], nulls: int) -> None:
    """Take the `nulls` NETIF_RSP_NULL answers (to extra slots, whose ids
    mean nothing) out of both lists, in place: a GSO frame has one, so
    finding each costs less than filtering every answer."""
    if nulls * 8 > len(statuses):
        keep = list(map(NETIF_RSP_NULL.__ne__, statuses))
        ids[:] = compress(ids, keep)
        statuses[:] = compress(statuses, keep)
        return
    index = statuses.index
    positions = []
    start = 0
    for _ in range(nulls):
        at = index(NETIF_RSP_NULL, start)
        positions.append(at)
        start = at + 1
    for at in reversed(positions):
        del ids[at]
        del statuses[at]

_STATUS_SET = frozenset(_STATUSES)
#: complete_block reads ids and statuses through native casts of the ring
#: slots, which are little-endian.
_NATIVE_LE = sys.byteorder == "little"


class TxShadow:
    """The tx slots in flight on one ring of `size` slots.

    Either the shadow numbers the slots (:meth:`add`: ids from its free
    list, a record per frame) or the caller does (:meth:`add_ids`, e.g.
    with the numbers of the pages the slots send, and
    :meth:`complete_ids`: no record, just which ids are in flight); one
    shadow is used one way only."""

    def __init__(self, size: int = XEN_NETIF_TX_RING_SIZE) -> None:
        if not 1 <= size <= 0x10000:
            raise ValueError(f"ring size {size}")
        self._clear(size)

    def _clear(self, size: int) -> None:
        self.size = size
        # By id; a new dict, not cleared: packets of the old one still ask
        # it which of their ids are answered.
        self._owner: dict[int, TxShadowPacket] = {}
        self._free = list(range(size - 1, -1, -1))  # pop() gives 0 first
        self._numbered: set[int] = set()  # the caller's ids in flight
        self._by_caller: bool | None = None  # which way the shadow is used
        self._nulls_expected = 0
        self._seq = 0

    def __len__(self) -> int:
        """Request slots in flight."""
        return len(self._owner) + len(self._numbered)

    @property
    def free(self) -> int:
        """Ids free: request slots a new frame may use."""
        return self.size - len(self._owner) - len(self._numbered)

    def _used_by_caller(self, by_caller: bool) -> None:
        if self._by_caller is None:
            self._by_caller = by_caller
        elif self._by_caller != by_caller:
            raise ValueError("this shadow's ids are "
                             + ("the caller's" if self._by_caller else "its own"))

    def _record(self, ids: list[int], entries: bytes, nr_extras: int,
                buffers: Any) -> TxShadowPacket:
        owner = self._owner
        packet = TxShadowPacket(ids, entries, nr_extras, buffers, self._seq, owner)
        owner.update(dict.fromkeys(ids, packet))
        del self._free[-len(ids):]
        self._seq += 1
        self._nulls_expected += nr_extras
        return packet

    def add(self, segments: Sequence[Segment], *, flags: int = 0,
            gso: tuple[int, int] | None = None, buffers: Any = None,
            max_slots: int = XEN_NETIF_NR_SLOTS_MIN) -> TxShadowPacket:
        """Record a frame under free ids and build its ring entries
        (``packet.entries``, to put on the ring as they are).  ShadowFull
        if too few ids are free; ValueError (nothing recorded) if
        malformed."""
        if self._by_caller is not False:
            self._used_by_caller(False)
        count = len(segments)
        free = self._free
        if count > len(free):
            raise ShadowFull(f"{count} slots wanted, {len(free)} free")
        ids = free[len(free) - count:][::-1]
        entries = tx_entries(segments, ids, flags=flags, gso=gso, max_slots=max_slots)
        return self._record(ids, entries, len(entries) // ENTRY_SIZE - count, buffers)

    def add_ids(self, ids: Sequence[int], nr_extras: int = 0) -> None:
        """Put request slots the caller numbered `ids` in flight (a frame
        whose `nr_extras` extra slots, answered NETIF_RSP_NULL, have none):
        ShadowFull if the ring has not that many free, ValueError (nothing
        recorded) if an id is in flight already, twice in `ids`, or does
        not fit in 16 bits."""
        if self._by_caller is not True:
            self._used_by_caller(True)
        count = len(ids)
        numbered = self._numbered
        if count > self.size - len(numbered):
            raise ShadowFull(f"{count} slots wanted, {self.size - len(numbered)} free")
        if not count or min(ids) < 0 or max(ids) > 0xFFFF:
            raise ValueError("tx ids must be 1 or more 16-bit numbers")
        if not numbered.isdisjoint(ids):
            raise ValueError(f"ids {sorted(numbered.intersection(ids))} are in flight")
        before = len(numbered)
        numbered.update(ids)
        if len(numbered) - before != count:
            numbered.difference_update(ids)
            raise ValueError(f"ids {list(ids)} name a slot twice")
        self._nulls_expected += nr_extras

    def complete_ids(self, entries: bytes) -> list[int]:
        """Take the responses in `entries` (whole 12-byte ring slots, as
        FrontRing.get_responses copies them) to slots of :meth:`add_ids`:
        the ids they answer, in order (NETIF_RSP_NULLs answer none), free
        again.  NetfrontProtocolError, as :meth:`complete`, for an answer
        to nothing in flight; the answers before it are taken."""
        if self._by_caller is not True:
            self._used_by_caller(True)
        if _NATIVE_LE and not len(entries) % ENTRY_SIZE:
            ids, statuses, nulls = _answers(entries)
            unique = set(ids)
            numbered = self._numbered
            if (nulls <= self._nulls_expected and len(unique) == len(ids)
                    and numbered.issuperset(unique) and _STATUS_SET.issuperset(statuses)):
                self._nulls_expected -= nulls
                numbered -= unique
                return ids
        # Something no request asked for: find it (and raise) in order.
        answered = []
        for id, status in _RESPONSE_SLOT.iter_unpack(entries):
            if status == NETIF_RSP_NULL:
                if not self._nulls_expected:
                    raise NetfrontProtocolError("NETIF_RSP_NULL answers no extra slot")
                self._nulls_expected -= 1
                continue
            if status not in _STATUSES:
                raise NetfrontProtocolError(f"response for id {id} has status {status}")
            if id not in self._numbered:
                raise NetfrontProtocolError(
                    f"response for id {id}: no such slot in flight (unknown or duplicate)")
            self._numbered.discard(id)
            answered.append(id)
        return answered

    def get(self, id: int) -> TxSlot | None:
        packet = self._owner.get(id)
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
        packet = self._owner.pop(id, None)
        if packet is None:
            raise NetfrontProtocolError(
                f"response for id {id}: no such slot in flight (unknown or duplicate)")
        if status:
            packet._bad[id] = status
        packet.pending -= 1
        self._free.append(id)
        return packet

    def complete(self, response: TxResponse | bytes | bytearray | memoryview
                 ) -> TxSlot | None:
        """The slot `response` answers, with its status set (end its grant;
        ``slot.packet.done`` says whether the frame is); its id is free
        again.  None for the NETIF_RSP_NULL answering an extra slot.
        NetfrontProtocolError if the response answers nothing in flight."""
        if self._by_caller:
            raise ValueError("this shadow's ids are the caller's: complete_ids")
        if not isinstance(response, TxResponse):
            response = parse_tx_response(response)
        packet = self._answer(response.id, response.status)
        return None if packet is None else packet.slot(response.id)

    def complete_block(self, entries: bytes) -> list[TxShadowPacket]:
        """:meth:`complete` for every response in `entries` (whole 12-byte
        ring slots, as FrontRing.get_responses copies them), making no
        slot objects: the frames they finished, in the order they
        finished."""
        if self._by_caller:
            raise ValueError("this shadow's ids are the caller's: complete_ids")
        if not _NATIVE_LE or len(entries) % ENTRY_SIZE:
            return self._complete_slowly(entries)
        ids, statuses, nulls = _answers(entries)
        owner = self._owner
        unique = set(ids)
        if (nulls > self._nulls_expected or len(unique) != len(ids)
                or not owner.keys() >= unique or not _STATUS_SET.issuperset(statuses)):
            # Something no request asked for: find it (and raise) in order.
            return self._complete_slowly(entries)
        self._nulls_expected -= nulls
        packets = list(map(owner.pop, ids))
        self._free += ids
        if any(statuses):
            for id, status, packet in zip(ids, statuses, packets):
                if status:
                    packet._bad[id] = status
        counts = Counter(packets)
        for packet, n in counts.items():
            packet.pending -= n
        if len(counts) == len(packets):  # a slot each (small frames)
            return [p for p in packets if not p.pending]
        # Finished at its last answer: in the order of the last answers.
        done = [p for p in dict.fromkeys(reversed(packets)) if not p.pending]
        done.reverse()
        return done

    def _complete_slowly(self, entries: bytes) -> list[TxShadowPacket]:
        done = []
        answer = self._answer
        for id, status in _RESPONSE_SLOT.iter_unpack(entries):
            packet = answer(id, status)
            if packet is not None and not packet.pending:
                done.append(packet)
        return done

    def inflight(self) -> list[TxShadowPacket]:
        """Every frame with a slot not answered yet, in issue order."""
        packets = {id(p): p for p in self._owner.values()}
        return sorted(packets.values(), key=lambda p: p.seq)

    def reset(self, size: int | None = None) -> list[TxShadowPacket]:
        """Forget everything in flight (for a new connection) and return
        the frames that were, in issue order: end their grants, and resend
        them (or drop them: the network may lose frames)."""
        if size is not None and not 1 <= size <= 0x10000:
            raise ValueError(f"ring size {size}")
        pending = self.inflight()
        for packet in pending:
            packet._freeze()
        self._clear(self.size if size is None else size)
        return pending
