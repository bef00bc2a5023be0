"""Decoding and assembling the packets a frontend transmits (guest tx).

Every tx request netback reads is untrusted: the frontend may put any 12
bytes in a slot, and may keep changing them while the backend looks.
:func:`netif.parse_tx_request` decodes a private copy and never fails on
12 bytes.

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
(id, status) pairs in ring order; :func:`netif.make_tx_response` encodes one).
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from operator import add

from domains.kernel.netpkt import ETH_HLEN
from hypervisor.public import xen
from hypervisor.public.io import netif
from hypervisor.public.io.netif import (
    NETIF_RSP_DROPPED,
    NETIF_RSP_ERROR,
    NETIF_RSP_NULL,
    NETIF_RSP_OKAY,
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
    ExtraInfo,
    NETTXF_extra_info,
    NETTXF_more_data,
    TxRequest,
    TxResponse,
    extra_problem,
    parse_extra,
)

__all__ = ["ExtraInfo", "TxAssembler", "TxBlock", "TxError", "TxPacket", "TxRequest",
           "parse_extra"]

#: Bytes of one tx ring entry: 12.
ENTRY_SIZE = netif.NETIF_TX_SRING_ENTRY_SIZE
#: Most extra info slots a packet can carry (one of each type).
MAX_EXTRAS = XEN_NETIF_EXTRA_TYPE_MAX - 1

_REQUEST = netif.TX_REQUEST
#: A tx response in its 12-byte slot (netif_tx_response, then the rest of
#: the slot, which keeps the request's bytes in C; zero here).
_RESPONSE_SLOT = netif.TX_RESPONSE_SLOT


def _copy(raw: bytes | bytearray | memoryview, size: int, what: str) -> bytes:
    data = bytes(raw)  # one private copy: decode nothing from shared memory
    if len(data) != size:
        raise ValueError(f"a {what} is {size} bytes, not {len(data)}")
    return data


def _responses(ids: list[int], status: int, extra_count: int) -> list[TxResponse]:
    """Ring order: slot 1, its extras (NULL), slots 2..N."""
    out = [TxResponse(ids[0], status)] if ids else []
    out += [TxResponse(0, NETIF_RSP_NULL)] * extra_count
    out += [TxResponse(id, status) for id in ids[1:]]
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

#: A slot's low flags byte -> 1 if it has NETTXF_more_data, else 0: the
#: last slot of a chain is the first 0 after its first slot (and extra).
_MORE = bytes(1 if b & NETTXF_more_data else 0 for b in range(256))
#: The low byte of a request's flags (little-endian).
_FLAGS_LOW = netif.netif_tx_request.flags.offset
_GREF, _OFFSET, _FLAGS, _ID, _SIZE = (netif.TX_REQUEST_GREF, netif.TX_REQUEST_OFFSET,
                                     netif.TX_REQUEST_FLAGS, netif.TX_REQUEST_ID,
                                     netif.TX_REQUEST_SIZE)
assert (_GREF.code, _OFFSET.code, _FLAGS.code, _ID.code, _SIZE.code) == ("I", "H", "H", "H", "H")
_GSO_EXTRA = netif.GSO_EXTRA
_GSO_TYPES = (XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_GSO_TYPE_TCPV6)

#: A chain that passed every check: (end, frags, first_len, gso): its slots
#: are [start, end); the request slots are start and frags..end-1 (an extra
#: slot, if any, is start + 1); slot 1 holds first_len bytes of the packet;
#: gso is its GSO extra's (type, size) or None.
Chain = tuple[int, int, int, "tuple[int, int] | None"]


class TxBlock:
    """Whole tx ring entries (a private copy, as BackRing.get_requests
    makes) decoded column by column with C-level slicing, so that a chain
    of 17 slots costs a few Python operations rather than a few per slot.
    The columns are lists indexed by slot: gref, offset, flags, id, size."""

    __slots__ = ("_more", "count", "entries", "flags", "gref", "id", "offset", "size")

    def __init__(self, entries: bytes) -> None:
        if len(entries) % ENTRY_SIZE:
            raise ValueError(f"{len(entries)} bytes are not whole tx ring entries")
        self.entries = entries
        self.count = len(entries) // ENTRY_SIZE
        if self.count == 1:  # a lone small frame, e.g. a TCP ACK
            gref, offset, flags, id, size = _REQUEST.unpack(entries)
            self.gref, self.offset, self.flags = [gref], [offset], [flags]
            self.id, self.size = [id], [size]
            self._more = _MORE[flags & 0xFF:(flags & 0xFF) + 1]
            return
        # One cast per width, sliced at netif's columns.
        halves = memoryview(entries).cast("H")
        self.gref = memoryview(entries).cast("I")[_GREF.start::_GREF.step].tolist()
        self.offset = halves[_OFFSET.start::_OFFSET.step].tolist()
        self.flags = halves[_FLAGS.start::_FLAGS.step].tolist()
        self.id = halves[_ID.start::_ID.step].tolist()
        self.size = halves[_SIZE.start::_SIZE.step].tolist()
        self._more = entries[_FLAGS_LOW::ENTRY_SIZE].translate(_MORE)

    def extra(self, index: int) -> ExtraInfo:
        """Slot `index` read as an extra info."""
        at = index * ENTRY_SIZE
        return parse_extra(self.entries[at:at + ENTRY_SIZE])

    def chain(self, start: int, limits: TxLimits = DEFAULT_LIMITS) -> Chain | None:
        """The chain whose slot 1 is `start`, if it lies whole in the block,
        has no extra but at most one GSO extra, and passes every check of
        the module's docstring; else None (the state machine decides)."""
        flags = self.flags[start]
        frags = start + 1
        gso = None
        if flags & NETTXF_extra_info:
            if frags >= self.count:
                return None
            type_, extra_flags, gso_size, gso_type, _ = _GSO_EXTRA.unpack_from(
                self.entries, frags * ENTRY_SIZE)
            if type_ != XEN_NETIF_EXTRA_TYPE_GSO or extra_flags & XEN_NETIF_EXTRA_FLAG_MORE:
                return None
            if gso_size == 0 or gso_type not in _GSO_TYPES:
                return None
            gso = (gso_type, gso_size)
            frags += 1
        end = frags
        if flags & NETTXF_more_data:
            last = self._more.find(0, frags)
            if last < 0:
                return None  # the chain goes on in a later block
            end = last + 1
        size = self.size
        total = size[start]
        frag_total = 0
        if end > frags:
            if end - frags >= limits.max_slots:
                return None
            sizes = size[frags:end]
            frag_total = sum(sizes)
            if (frag_total > total
                    or max(map(add, self.offset[frags:end], sizes)) > limits.page_size):
                return None
        first_len = total - frag_total
        if (self.offset[start] + first_len > limits.page_size
                or not limits.min_size <= total <= limits.max_size):
            return None
        return end, frags, first_len, gso

    def ends_within(self, start: int) -> bool:
        """Whether the chain whose slot 1 is `start` (with at most one
        extra) ends in this block."""
        flags = self.flags[start]
        frags = start + 1 + (1 if flags & NETTXF_extra_info else 0)
        if frags > self.count:
            return False
        return not flags & NETTXF_more_data or self._more.find(0, frags) >= 0

    def request(self, index: int) -> TxRequest:
        """Slot `index` as a request."""
        return TxRequest(self.gref[index], self.offset[index], self.flags[index],
                         self.id[index], self.size[index])

    def segments(self, start: int, chain: Chain) -> tuple[list[int], list[int], list[int]]:
        """The chain's data: (grefs, offsets, lengths) of its request slots
        in order (slot 1's length is first_len)."""
        end, frags, first_len, _ = chain
        if end == frags:
            return [self.gref[start]], [self.offset[start]], [first_len]
        return ([self.gref[start], *self.gref[frags:end]],
                [self.offset[start], *self.offset[frags:end]],
                [first_len, *self.size[frags:end]])

    def packet(self, start: int, chain: Chain) -> TxPacket:
        """The chain as the state machine's TxPacket."""
        end, frags, _, gso = chain
        slots = [self.request(k) for k in (start, *range(frags, end))]
        extras = {XEN_NETIF_EXTRA_TYPE_GSO: self.extra(start + 1)} if gso else {}
        return TxPacket(slots[0].id, slots, extras, slots[0].size)


def tx_response_block(block: TxBlock) -> array:
    """Every slot of `block` answered NETIF_RSP_OKAY with its own id, as
    12-byte ring slots in an array of uint16 (6 per slot: id, status, then
    zeros): the caller marks the extra slots with :func:`answer_extra` and
    refused packets with :func:`answer_status`, then writes
    ``.tobytes()``."""
    out = array("H", bytes(len(block.entries)))
    out[0::6] = array("H", block.id)
    return out


def answer_extra(out: array, index: int) -> None:
    """Slot `index` of a response block is an extra info's: id 0, NULL."""
    out[6 * index] = 0
    out[6 * index + 1] = NETIF_RSP_NULL


def answer_status(out: array, start: int, chain: Chain, status: int) -> None:
    """Answer every request slot of the chain at `start` with `status`."""
    end, frags, _, _ = chain
    value = status & 0xFFFF
    out[6 * start + 1] = value
    for index in range(frags, end):
        out[6 * index + 1] = value

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

    def feed_block(self, entries: bytes) -> list[TxPacket | TxError]:
        """Feed whole 12-byte ring entries, as BackRing.get_requests copies
        them; the packets and errors that came out, in order.

        The hot path takes a whole chain at once when it lies in `entries`
        and passes every check (no extra but at most one GSO extra), with
        the per-slot work done by builtins over the decoded requests;
        anything else, and every slot of a chain that fails a check, goes
        through the per-slot state machine, which decides alike (the tests
        compare the two)."""
        block = TxBlock(entries)
        out: list[TxPacket | TxError] = []
        count, limits = block.count, self.limits
        index = 0
        while index < count:
            if self._state == _FIRST:
                chain = block.chain(index, limits)
                if chain is not None:
                    out.append(block.packet(index, chain))
                    index = chain[0]
                    continue
            result = self._feed_slot(block, index)
            if result is not None:
                out.append(result)
            index += 1
        return out

    def _feed_slot(self, block: TxBlock, index: int) -> TxPacket | TxError | None:
        state = self._state
        if state == _EXTRAS:
            return self._extra(block.extra(index))
        request = block.request(index)
        if state == _FIRST:
            return self._start(request)
        return self._frag(request)

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
        problem = extra_problem(extra)
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
