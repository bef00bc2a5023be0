"""Decoding and assembling the packets a frontend transmits (guest tx).

Every tx request netback reads is untrusted: the frontend may put any 12
bytes in a slot, and may keep changing them while the backend looks.
:func:`parse_tx` decodes a private copy and never fails on 12 bytes.

A packet is a chain of slots (io/netif.h): slot 1 (its ``size`` is the
whole packet's), the extra info slots if slot 1 has NETTXF_extra_info
(chained by XEN_NETIF_EXTRA_FLAG_MORE), then slots 2..N while the previous
request has NETTXF_more_data (each ``size`` is that slot's own length).
:class:`TxAssembler` is fed the slots one by one, in ring order, and
returns a :class:`TxPacket` when a good packet is complete, a
:class:`TxError` naming the slots to answer when a bad one is, and None
while it needs more slots.  It always consumes the whole chain of a bad
packet, so that the next packet starts at the right slot: an error in
one packet never poisons the next.  What is checked (statuses as in
Linux's netback, which answers every refused packet XEN_NETIF_RSP_ERROR,
except that a packet of too many slots is XEN_NETIF_RSP_DROPPED here):

- every request slot lies within its page: offset + length <= 4096, where
  slot 1's own length is its size minus the other slots' sizes;
- the other slots' sizes never add up to more than slot 1's size (a
  frontend whose packet size overflowed 16 bits);
- the packet size is at least an Ethernet header (ETH_HLEN) and at most
  ``max_size`` (XEN_NETIF_MAX_TX_SIZE);
- at most ``max_slots`` request slots (XEN_NETIF_NR_SLOTS_MIN, which every
  backend must accept, or more) -> DROPPED;
- extra info slots: a known type (1..XEN_NETIF_EXTRA_TYPE_MAX-1), each type
  at most once; a GSO extra has a size (MSS) > 0 and type TCPV4 or TCPV6.

Where Linux's netback disables the whole vif (a "fatal" error: a slot
crossing its page, a bad extra, a chain longer than fatal_skb_slots),
pyxen only refuses the packet.  A chain that runs past ``max_slots`` (or
past four extras) is answered at once, and then slot by slot until it
ends, so the assembler never holds more than ``max_slots + 4`` slots and
a frontend cannot stall its own ring by withholding the end of a chain.

Grant references are the caller's to check when it copies the data: a
grant that fails makes that packet's answer ``packet.responses(ERROR)``,
and nothing else.  A packet with an MCAST_ADD / MCAST_DEL extra is a
multicast filter update (``packet.mcast``), not data to forward: its size
is not checked against ETH_HLEN.

Responses: every slot consumed gets exactly one.  A request slot's carries
its id; an extra slot's has status NETIF_RSP_NULL and id 0, and comes right
after slot 1's (:meth:`TxPacket.responses`, :meth:`TxError.responses`: the
(id, status) pairs in ring order; :func:`.rx.make_tx_response` encodes one).
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass
from typing import NamedTuple

from hypervisor.public import xen
from hypervisor.public.io import netif
from hypervisor.public.io.netif import (
    NETIF_RSP_DROPPED,
    NETIF_RSP_ERROR,
    NETIF_RSP_NULL,
    NETIF_RSP_OKAY,
    NETTXF_extra_info,
    NETTXF_more_data,
    XEN_NETIF_EXTRA_FLAG_MORE,
    XEN_NETIF_EXTRA_TYPE_GSO,
    XEN_NETIF_EXTRA_TYPE_HASH,
    XEN_NETIF_EXTRA_TYPE_MAX,
    XEN_NETIF_EXTRA_TYPE_MCAST_ADD,
    XEN_NETIF_EXTRA_TYPE_MCAST_DEL,
    XEN_NETIF_GSO_TYPE_TCPV4,
    XEN_NETIF_GSO_TYPE_TCPV6,
    XEN_NETIF_MAX_TX_SIZE,
    XEN_NETIF_NR_SLOTS_MIN,
)

from .rx import make_tx_response

#: Bytes of one tx ring entry: 12.
ENTRY_SIZE = netif.NETIF_TX_SRING_ENTRY_SIZE
#: Bytes of an Ethernet header: the smallest packet accepted.
ETH_HLEN = 14
#: Most extra info slots a packet can carry (one of each type).
MAX_EXTRAS = XEN_NETIF_EXTRA_TYPE_MAX - 1
_EXTRA_SIZE = ctypes.sizeof(netif.netif_extra_info)

#: (id, status) of one tx response.
TxResponse = tuple[int, int]


class TxRequest(NamedTuple):
    """A decoded netif_tx_request."""

    gref: int
    offset: int
    flags: int
    id: int
    size: int

    @property
    def more_data(self) -> bool:
        return bool(self.flags & NETTXF_more_data)

    @property
    def extra_info(self) -> bool:
        return bool(self.flags & NETTXF_extra_info)

    def encode(self) -> bytes:
        """The 12-byte ring entry."""
        return _REQUEST.pack(*self)


#: netif_tx_request, as the ring holds it (checked against the ctypes
#: layout below).
_REQUEST = struct.Struct("<IHHHH")
assert _REQUEST.size == ctypes.sizeof(netif.netif_tx_request)
#: A tx response in its 12-byte slot (netif_tx_response, then the rest of
#: the slot, which keeps the request's bytes in C; zero here).
_RESPONSE_SLOT = struct.Struct("<Hh8x")


def _copy(raw: bytes | bytearray | memoryview, size: int, what: str) -> bytes:
    data = bytes(raw)  # one private copy: decode nothing from shared memory
    if len(data) != size:
        raise ValueError(f"a {what} is {size} bytes, not {len(data)}")
    return data


def parse_tx(raw: bytes | bytearray | memoryview) -> TxRequest:
    """Decode one 12-byte tx ring entry as a request.  Never fails on 12
    bytes; ValueError if `raw` is not one ring entry (a caller's bug)."""
    return TxRequest._make(_REQUEST.unpack(_copy(raw, ENTRY_SIZE, "tx ring entry")))


@dataclass(frozen=True)
class ExtraInfo:
    """A decoded netif_extra_info: `type`, `flags` and the 6 bytes of its
    union `u`, read through the properties of the type's member."""

    type: int
    flags: int
    u: bytes = bytes(6)

    @property
    def more(self) -> bool:
        return bool(self.flags & XEN_NETIF_EXTRA_FLAG_MORE)

    @property
    def gso_size(self) -> int:
        return int.from_bytes(self.u[0:2], "little")

    @property
    def gso_type(self) -> int:
        return self.u[2]

    @property
    def gso_features(self) -> int:
        return int.from_bytes(self.u[4:6], "little")

    @property
    def addr(self) -> bytes:
        """u.mcast.addr: the MAC address of MCAST_ADD / MCAST_DEL."""
        return self.u

    @property
    def hash_type(self) -> int:
        return self.u[0]

    @property
    def hash_algorithm(self) -> int:
        return self.u[1]

    @property
    def hash_value(self) -> int:
        return int.from_bytes(self.u[2:6], "little")


def parse_extra(raw: bytes | bytearray | memoryview) -> ExtraInfo:
    """Decode an extra info from a tx ring entry (12 bytes) or an rx one
    (8 bytes).  Never fails on those sizes; ValueError on others."""
    data = bytes(raw)
    if len(data) not in (ENTRY_SIZE, _EXTRA_SIZE):
        raise ValueError(f"an extra info slot is {ENTRY_SIZE} or "
                         f"{_EXTRA_SIZE} bytes, not {len(data)}")
    return ExtraInfo(data[0], data[1], data[2:8])


def check_extra(extra: ExtraInfo) -> str | None:
    """Why `extra` is malformed, or None."""
    if not 0 < extra.type < XEN_NETIF_EXTRA_TYPE_MAX:
        return f"extra info of unknown type {extra.type}"
    if extra.type == XEN_NETIF_EXTRA_TYPE_GSO:
        if extra.gso_size == 0:
            return "GSO extra with size 0"
        if extra.gso_type not in (XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_GSO_TYPE_TCPV6):
            return f"GSO extra of unknown type {extra.gso_type}"
    return None


def _responses(ids: list[int], status: int, extra_count: int) -> list[TxResponse]:
    """Ring order: slot 1, its extras (NULL), slots 2..N."""
    out: list[TxResponse] = [(ids[0], status)] if ids else []
    out += [(0, NETIF_RSP_NULL)] * extra_count
    out += [(id, status) for id in ids[1:]]
    return out


@dataclass(frozen=True)
class TxPacket:
    """A well-formed packet: its request `slots` in ring order (slot 1
    first), its `extras` by type, its `size` (slot 1's size field)."""

    first_id: int
    slots: list[TxRequest]
    extras: dict[int, ExtraInfo]
    size: int

    @property
    def flags(self) -> int:
        """Slot 1's NETTXF_* flags (checksum offload: csum_blank,
        data_validated)."""
        return self.slots[0].flags

    @property
    def extra_count(self) -> int:
        """Extra info slots consumed."""
        return len(self.extras)

    @property
    def nr_slots(self) -> int:
        """Ring slots the packet took (requests and extras)."""
        return len(self.slots) + self.extra_count

    @property
    def gso(self) -> ExtraInfo | None:
        return self.extras.get(XEN_NETIF_EXTRA_TYPE_GSO)

    @property
    def hash(self) -> ExtraInfo | None:
        return self.extras.get(XEN_NETIF_EXTRA_TYPE_HASH)

    @property
    def mcast(self) -> ExtraInfo | None:
        """The MCAST_ADD / MCAST_DEL extra of a multicast filter update."""
        return (self.extras.get(XEN_NETIF_EXTRA_TYPE_MCAST_ADD)
                or self.extras.get(XEN_NETIF_EXTRA_TYPE_MCAST_DEL))

    def segments(self) -> list[tuple[int, int, int]]:
        """(gref, offset, length) of the packet's data, in order: slot 1's
        length is its size minus the others' sizes.  Slots of length 0 are
        included (copy nothing for them)."""
        first, rest = self.slots[0], self.slots[1:]
        first_len = first.size - sum(s.size for s in rest)
        return ([(first.gref, first.offset, first_len)]
                + [(s.gref, s.offset, s.size) for s in rest])

    def responses(self, status: int = NETIF_RSP_OKAY) -> list[TxResponse]:
        """(id, status) for every slot the packet took, in ring order."""
        return _responses([s.id for s in self.slots], status, self.extra_count)

    def response_bytes(self, status: int = NETIF_RSP_OKAY) -> list[bytes]:
        return [make_tx_response(id, st) for id, st in self.responses(status)]

    def response_slots(self, status: int = NETIF_RSP_OKAY) -> bytes:
        """Every response as a whole 12-byte ring slot, in ring order: for
        BackRing.put_responses."""
        return _response_slots([s.id for s in self.slots], status, self.extra_count)


def _response_slots(ids: list[int], status: int, extra_count: int) -> bytes:
    pack = _RESPONSE_SLOT.pack
    if not ids:
        return pack(0, NETIF_RSP_NULL) * extra_count
    return (pack(ids[0], status) + pack(0, NETIF_RSP_NULL) * extra_count
            + b"".join([pack(id, status) for id in ids[1:]]))


@dataclass(frozen=True)
class TxError:
    """Slots of a refused packet: answer each request slot in `ids` with
    `status` and each of the `extra_count` extra slots (which follow the
    first id's response) with NETIF_RSP_NULL."""

    ids: list[int]
    status: int
    reason: str
    extra_count: int = 0

    @property
    def nr_slots(self) -> int:
        return len(self.ids) + self.extra_count

    def responses(self) -> list[TxResponse]:
        return _responses(self.ids, self.status, self.extra_count)

    def response_bytes(self) -> list[bytes]:
        return [make_tx_response(id, st) for id, st in self.responses()]

    def response_slots(self) -> bytes:
        """Every response as a whole 12-byte ring slot, in ring order."""
        return _response_slots(self.ids, self.status, self.extra_count)


@dataclass(frozen=True)
class TxLimits:
    """What the backend accepts: `max_slots` request slots per packet (at
    least XEN_NETIF_NR_SLOTS_MIN), packets of `min_size`..`max_size`
    bytes, data within pages of `page_size` bytes."""

    max_slots: int = XEN_NETIF_NR_SLOTS_MIN
    max_size: int = XEN_NETIF_MAX_TX_SIZE
    min_size: int = ETH_HLEN
    page_size: int = xen.PAGE_SIZE

    def __post_init__(self) -> None:
        if self.max_slots < XEN_NETIF_NR_SLOTS_MIN:
            raise ValueError(f"a backend must accept {XEN_NETIF_NR_SLOTS_MIN} "
                             f"slots, not only {self.max_slots}")
        if not 0 <= self.min_size <= self.max_size:
            raise ValueError(f"packet sizes {self.min_size}..{self.max_size}")


DEFAULT_LIMITS = TxLimits()

_FIRST, _EXTRAS, _FRAGS = "first", "extras", "frags"


class TxAssembler:
    """Turns the tx ring entries of one ring, fed in ring order, into
    packets and errors.  Not thread-safe: one per ring."""

    def __init__(self, limits: TxLimits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self._reset()

    def _reset(self) -> None:
        self._state = _FIRST
        self._first: TxRequest | None = None
        self._frags: list[TxRequest] = []
        self._frag_total = 0
        self._extras: dict[int, ExtraInfo] = {}
        self._extra_count = 0       # extra slots consumed (and not answered)
        self._problem: tuple[int, str] | None = None
        self._dropping = False      # answered already: answer the rest singly

    @property
    def in_progress(self) -> bool:
        """Slots of an unfinished packet have been consumed."""
        return self._state != _FIRST

    def feed(self, entry: bytes | bytearray | memoryview | TxRequest
             ) -> TxPacket | TxError | None:
        """Consume the next tx ring entry (12 bytes, or a TxRequest).  A
        TxPacket or TxError when it ends a packet (or, for a packet already
        refused, answers slots), None while the packet goes on."""
        raw = entry.encode() if isinstance(entry, TxRequest) else entry
        results = self.feed_block(_copy(raw, ENTRY_SIZE, "tx ring entry"))
        return results[0] if results else None

    def feed_all(self, entries) -> list[TxPacket | TxError]:
        """Feed every entry; the packets and errors that came out."""
        return [r for r in map(self.feed, entries) if r is not None]

    def feed_block(self, entries: bytes) -> list[TxPacket | TxError]:
        """Feed whole 12-byte ring entries, as BackRing.get_requests copies
        them; the packets and errors that came out, in order.

        The hot path takes a whole chain at once when it lies in `entries`
        and passes every check (no extra but at most one GSO extra), with
        the per-slot work done by builtins over the decoded requests;
        anything else, and every slot of a chain that fails a check, goes
        through the per-slot state machine, which decides alike (the tests
        compare the two)."""
        if len(entries) % ENTRY_SIZE:
            raise ValueError(f"{len(entries)} bytes are not whole tx ring entries")
        out: list[TxPacket | TxError] = []
        reqs = list(_REQUEST.iter_unpack(entries))
        count = len(reqs)
        index = 0
        while index < count:
            if self._state == _FIRST:
                taken = self._whole_chain(reqs, entries, index, out)
                if taken:
                    index += taken
                    continue
            result = self._feed_slot(entries, reqs, index)
            if result is not None:
                out.append(result)
            index += 1
        return out

    def _feed_slot(self, entries: bytes, reqs: list, index: int
                   ) -> TxPacket | TxError | None:
        state = self._state
        if state == _EXTRAS:
            offset = index * ENTRY_SIZE
            return self._extra(ExtraInfo(entries[offset], entries[offset + 1],
                                         entries[offset + 2:offset + 8]))
        if state == _FIRST:
            return self._start(TxRequest._make(reqs[index]))
        return self._frag(TxRequest._make(reqs[index]))

    def _whole_chain(self, reqs: list, entries: bytes, index: int,
                     out: list) -> int:
        """Assemble the chain starting at `index` in one go if it is all in
        `reqs` and no check fails: how many slots it took (0: leave it to
        the state machine)."""
        count = len(reqs)
        first = reqs[index]
        flags = first[2]
        extras: dict[int, ExtraInfo] = {}
        frag_start = index + 1
        if flags & NETTXF_extra_info:
            if frag_start >= count:
                return 0
            offset = frag_start * ENTRY_SIZE
            extra = ExtraInfo(entries[offset], entries[offset + 1],
                              entries[offset + 2:offset + 8])
            if extra.more or check_extra(extra) is not None:
                return 0
            extras[extra.type] = extra
            frag_start += 1
        end = frag_start  # one past the chain's last slot
        if flags & NETTXF_more_data:
            while end < count and reqs[end][2] & NETTXF_more_data:
                end += 1
            if end == count:
                return 0  # the chain goes on in a later block
            end += 1
        frags = reqs[frag_start:end]
        limits = self.limits
        if frags:
            if len(frags) >= limits.max_slots:
                return 0
            frag_total = sum([r[4] for r in frags])
            if (frag_total > first[4]
                    or max([r[1] + r[4] for r in frags]) > limits.page_size):
                return 0
        else:
            frag_total = 0
        make = TxRequest._make
        self._first = make(first)
        self._frags = list(map(make, frags))
        self._frag_total = frag_total
        self._extras = extras
        self._extra_count = len(extras)
        out.append(self._finish())
        return end - index

    def abort(self, reason: str = "packet cut short") -> TxError | None:
        """Give up the unfinished packet (the frontend went away, or left
        a chain unfinished): a TxError for the slots consumed so far, and
        the next entry starts a new packet.  None if nothing is pending."""
        if not self.in_progress:
            return None
        if self._dropping:
            self._reset()
            return None  # every slot consumed was answered already
        error = self._error(NETIF_RSP_ERROR, reason)
        self._reset()
        return error

    # -- the chain ----------------------------------------------------------

    def _refuse(self, status: int, reason: str) -> None:
        if self._problem is None:
            self._problem = (status, reason)

    def _ids(self) -> list[int]:
        assert self._first is not None
        return [self._first.id] + [f.id for f in self._frags]

    def _error(self, status: int, reason: str) -> TxError:
        return TxError(self._ids(), status, reason, self._extra_count)

    def _flush(self) -> TxError:
        """Answer the refused packet's slots so far, and the rest one by one
        as they come."""
        assert self._problem is not None
        error = self._error(*self._problem)
        self._dropping = True
        self._frags = []
        self._extra_count = 0
        return error

    def _single(self, id: int | None) -> TxError:
        """The answer for one more slot of a packet answered already."""
        assert self._problem is not None
        status, reason = self._problem
        if id is None:
            return TxError([], status, reason, extra_count=1)
        return TxError([id], status, reason)

    def _start(self, req: TxRequest) -> TxPacket | TxError | None:
        self._first = req
        if req.extra_info:
            self._state = _EXTRAS
            return None
        return self._after_extras()

    def _after_extras(self) -> TxPacket | TxError | None:
        assert self._first is not None
        if self._first.more_data:
            self._state = _FRAGS
            return None
        return self._finish()

    def _extra(self, extra: ExtraInfo) -> TxPacket | TxError | None:
        assert self._first is not None
        if self._dropping:
            result = self._single(None)
            if not extra.more:
                if self._first.more_data:
                    self._state = _FRAGS
                else:
                    self._reset()
            return result
        self._extra_count += 1
        problem = check_extra(extra)
        if problem is None and extra.type in self._extras:
            problem = f"two extra infos of type {extra.type}"
        if problem is not None:
            self._refuse(NETIF_RSP_ERROR, problem)
        else:
            self._extras[extra.type] = extra
        if self._extra_count > MAX_EXTRAS:
            self._refuse(NETIF_RSP_ERROR, f"more than {MAX_EXTRAS} extra infos")
            if extra.more:
                return self._flush()
        if extra.more:
            return None
        return self._after_extras()

    def _frag(self, req: TxRequest) -> TxPacket | TxError | None:
        # The hot path (every slot but the first): plain tuple indexing.
        _gref, offset, flags, id, size = req
        more = flags & NETTXF_more_data
        if self._dropping:
            result = self._single(id)
            if not more:
                self._reset()
            return result
        frags = self._frags
        frags.append(req)
        self._frag_total += size
        limits = self.limits
        if offset + size > limits.page_size:
            self._refuse(NETIF_RSP_ERROR,
                         f"slot id {id}: {size} bytes at offset "
                         f"{offset} cross the page")
        if self._frag_total > self._first.size:
            self._refuse(NETIF_RSP_ERROR,
                         f"slots 2..{1 + len(frags)} hold "
                         f"{self._frag_total} bytes, more than the packet's "
                         f"{self._first.size}")
        if len(frags) >= limits.max_slots:
            self._refuse(NETIF_RSP_DROPPED,
                         f"more than {limits.max_slots} slots")
            if more:
                return self._flush()
        if more:
            return None
        return self._finish()

    def _finish(self) -> TxPacket | TxError:
        first = self._first
        assert first is not None
        limits = self.limits
        first_len = first.size - self._frag_total
        if first_len >= 0 and first.offset + first_len > limits.page_size:
            self._refuse(NETIF_RSP_ERROR,
                         f"slot id {first.id}: {first_len} bytes at offset "
                         f"{first.offset} cross the page")
        mcast = (XEN_NETIF_EXTRA_TYPE_MCAST_ADD in self._extras
                 or XEN_NETIF_EXTRA_TYPE_MCAST_DEL in self._extras)
        if first.size < limits.min_size and not mcast:
            self._refuse(NETIF_RSP_ERROR, f"packet of {first.size} bytes, "
                         f"less than {limits.min_size}")
        if first.size > limits.max_size:
            self._refuse(NETIF_RSP_ERROR, f"packet of {first.size} bytes, "
                         f"more than {limits.max_size}")
        result: TxPacket | TxError
        if self._problem is not None:
            result = self._error(*self._problem)
        else:
            result = TxPacket(first.id, [first] + self._frags,
                              dict(self._extras), first.size)
        self._reset()
        return result
