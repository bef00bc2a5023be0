"""Guest receive: putting a frame into the pages a frontend posted, and the
responses of both rings.

The frontend posts empty pages on the rx ring (`netif_rx_request`: id,
gref).  For each frame, :func:`plan_rx` decides which of the posted
requests (in ring order) it takes and what goes in each: data slots of at
most a page each, copied at offset 0, and, for a large TCP frame the
frontend takes as GSO, one extra info slot (XEN_NETIF_EXTRA_TYPE_GSO)
right after the first data slot.  The frontend finds each response in the
ring slot of the request it answers (extras overlay the id), so a plan
consumes exactly ``len(plan.slots)`` requests, in order, and its responses
go in the same order.

Slot flags: the first data slot carries the caller's checksum flags
(NETRXF_data_validated, NETRXF_csum_blank) and NETRXF_extra_info if an
extra follows; every data slot but the last carries NETRXF_more_data;
a data slot's status is its length.

Frames are dropped (:class:`RxDrop`, no request consumed) when they are
runts (< ETH_HLEN), larger than XEN_NETIF_MAX_TX_SIZE, larger than one
page without feature-sg, or larger than the MTU (plus Ethernet and VLAN
headers) unless they are GSO frames (the caller says so: the GSO extra
the sender gave, see offload.py) of a kind the frontend accepts
(feature-gso-tcpv4 / -tcpv6; the caller segments a GSO frame for a
frontend that takes none).  A plan that needs more requests than are
posted is None: wait for the frontend to post more (it kicks if
feature-rx-notify).

The switch (device.py's Vif.deliver) decides the same without building a
plan, with :func:`rx_response_block` and :func:`scatter`: plan_rx is the
oracle a property test holds it to (tests/test_netback_switch.py), drops,
waits, responses and page contents alike.  The ring entries' byte layouts
are hypervisor.public.io.netif's.
"""

from __future__ import annotations

from array import array
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from domains.kernel.netpkt import ETH_HLEN, ETH_P_8021Q, VLAN_HLEN
from hypervisor.public import xen
from hypervisor.public.io import netif
from hypervisor.public.io.netif import (
    NETIF_RSP_ERROR,
    XEN_NETIF_GSO_TYPE_TCPV4,
    XEN_NETIF_GSO_TYPE_TCPV6,
    XEN_NETIF_MAX_TX_SIZE,
    NETRXF_csum_blank,
    NETRXF_data_validated,
    NETRXF_extra_info,
    NETRXF_more_data,
    RxRequest,
    make_gso_extra,
    make_rx_response,
)

from .offload import Receiver

#: Flags the caller may ask for on a frame's first slot.
CSUM_FLAGS = NETRXF_data_validated | NETRXF_csum_blank


@dataclass(frozen=True)
class RxFeatures:
    """What the frontend takes (its XenStore nodes feature-sg,
    feature-gso-tcpv4, feature-gso-tcpv6, feature-no-csum-offload (`csum`
    is its negation), feature-ipv6-csum-offload, and the vif's mtu)."""

    sg: bool = False
    gso_tcpv4: bool = False
    gso_tcpv6: bool = False
    mtu: int = 1500
    page_size: int = xen.PAGE_SIZE
    csum: bool = True
    ipv6_csum: bool = False

    @property
    def receiver(self) -> Receiver:
        """The offloads it takes, as offload.py's software fallback sees
        them (GSO needs feature-sg: a GSO frame takes several pages)."""
        return Receiver(self.csum, self.ipv6_csum, self.gso_tcpv4 and self.sg,
                        self.gso_tcpv6 and self.sg)

    def accepts_gso(self, gso_type: int) -> bool:
        return ((gso_type == XEN_NETIF_GSO_TYPE_TCPV4 and self.gso_tcpv4)
                or (gso_type == XEN_NETIF_GSO_TYPE_TCPV6 and self.gso_tcpv6))


def _l3(frame: bytes) -> tuple[int, int]:
    """(ethertype, offset of the L3 header), past one 802.1Q tag."""
    ethertype = int.from_bytes(frame[12:14], "big")
    if ethertype == ETH_P_8021Q and len(frame) >= ETH_HLEN + VLAN_HLEN:
        return int.from_bytes(frame[16:18], "big"), ETH_HLEN + VLAN_HLEN
    return ethertype, ETH_HLEN


def max_frame(frame: bytes, mtu: int) -> int:
    """The largest non-GSO frame of `frame`'s kind: MTU + its L2 header."""
    return mtu + _l3(frame)[1]


@dataclass(frozen=True)
class RxSlot:
    """What goes in the ring slot of request (id, gref): a data slot's
    `length` bytes of the frame from `start`, copied at `offset` in the
    page, with `flags`; or an extra info slot's 8 bytes (`extra`)."""

    id: int
    gref: int
    offset: int = 0
    start: int = 0
    length: int = 0
    flags: int = 0
    extra: bytes = b""

    @property
    def is_extra(self) -> bool:
        return bool(self.extra)

    def response(self, status: int | None = None) -> bytes:
        """The 8 bytes to put in the slot: the extra info, or an rx response
        of status `length` (or `status`, e.g. NETIF_RSP_ERROR)."""
        if self.extra:
            return self.extra
        return make_rx_response(self.id, self.offset, self.flags,
                                self.length if status is None else status)


@dataclass(frozen=True)
class RxPlan:
    """A frame's slots, one per consumed rx request, in ring order."""

    slots: list[RxSlot]
    size: int
    gso: tuple[int, int] | None = None   # (XEN_NETIF_GSO_TYPE_*, MSS)
    frame: bytes = field(default=b"", repr=False)

    @property
    def nr_requests(self) -> int:
        return len(self.slots)

    def copies(self) -> list[tuple[int, int, int, bytes]]:
        """(slot index, gref, offset, data) of every grant copy to make."""
        return [(index, s.gref, s.offset, self.frame[s.start:s.start + s.length])
                for index, s in enumerate(self.slots) if not s.is_extra]

    def responses(self, failed: Collection[int] = ()) -> list[bytes]:
        """The 8-byte responses, one per slot; the data slots whose index
        is in `failed` (their copy failed: a bad grant) say NETIF_RSP_ERROR."""
        return [s.response(NETIF_RSP_ERROR if i in failed else None)
                for i, s in enumerate(self.slots)]


@dataclass(frozen=True)
class RxDrop:
    """A frame the frontend cannot take; no request is consumed."""

    reason: str


def rx_slots_needed(size: int, page_size: int = xen.PAGE_SIZE,
                    gso: bool = False) -> int:
    """Requests a frame of `size` bytes takes: a data slot per page, plus
    the GSO extra."""
    return max(1, -(-size // page_size)) + (1 if gso else 0)


def rx_slot_lengths(size: int, page_size: int = xen.PAGE_SIZE) -> list[int]:
    """The data slots of a frame of `size` bytes: whole pages, then the
    rest (each copied at offset 0 of its page)."""
    full, rest = divmod(size, page_size)
    return [page_size] * full + ([rest] if rest or not full else [])


def scatter(chunks: Iterable[bytes | bytearray | memoryview],
            pages: Sequence[memoryview]) -> None:
    """Copy `chunks`, in order, into `pages`, each filled from offset 0
    before the next (the layout of :func:`rx_slot_lengths`).  A "page" may
    be a run of consecutive pages: each is filled to its length.  One
    slice copy per chunk and page it meets, nothing joined first;
    ValueError if the pages are too few."""
    if len(pages) == 1:  # one run of pages (the usual): copies end to end
        page, pos = pages[0], 0
        for chunk in chunks:
            end = pos + len(chunk)
            if end > len(page):
                raise ValueError("more data than pages")
            page[pos:end] = chunk
            pos = end
        return
    index, pos, page, room = 0, 0, None, 0
    for chunk in chunks:
        n = len(chunk)
        if n and pos + n <= room:  # the common case
            page[pos:pos + n] = chunk
            pos += n
            continue
        view = memoryview(chunk)
        start = 0
        while start < n:
            if pos == room:
                if index == len(pages):
                    raise ValueError("more data than pages")
                page, pos, index = pages[index], 0, index + 1
                room = len(page)
            take = min(n - start, room - pos)
            page[pos:pos + take] = view[start:start + take]
            pos += take
            start += take


def page_runs(places: list[int], page_size: int = xen.PAGE_SIZE) -> list[tuple[int, int]]:
    """(first place, number of pages) of each run of consecutive pages in
    `places` (addresses of whole pages, in order)."""
    runs = []
    first = prev = places[0]
    for place in places[1:]:
        if place != prev + page_size:
            runs.append((first, (prev - first) // page_size + 1))
            first = place
        prev = place
    runs.append((first, (prev - first) // page_size + 1))
    return runs


_RESPONSE = netif.RX_RESPONSE


def rx_response_slots(ids: Sequence[int], lengths: Sequence[int], csum_flags: int = 0,
                      gso: tuple[int, int] | None = None) -> bytes:
    """The responses of one frame, as whole 8-byte ring slots in ring
    order (for BackRing.put_responses): a data slot of each length in
    `lengths` (at offset 0) for the requests `ids` (the GSO extra, if any,
    takes the slot of the second id: len(ids) == len(lengths) + 1)."""
    pack = _RESPONSE.pack
    last = len(lengths) - 1
    first_flags = csum_flags | (NETRXF_more_data if last else 0)
    if gso is None:
        out = [pack(ids[0], 0, first_flags, lengths[0])]
        data_ids = ids[1:]
    else:
        out = [pack(ids[0], 0, first_flags | NETRXF_extra_info, lengths[0]),
               make_gso_extra(gso_type=gso[0], size=gso[1])]
        data_ids = ids[2:]
    out += [pack(id, 0, NETRXF_more_data if n < last else 0, length)
            for n, (id, length) in enumerate(zip(data_ids, lengths[1:]), 1)]
    return b"".join(out)


@lru_cache(maxsize=64)
def _gso_extra_halves(gso: tuple[int, int]) -> array:
    """make_gso_extra's slot as uint16s: a stream keeps its MSS, so the
    same few are asked for again and again."""
    return array("H", make_gso_extra(gso_type=gso[0], size=gso[1]))


#: (id, offset, flags, status) halves of a full middle data slot's response.
_FULL_SLOT = array("H", [0, 0, NETRXF_more_data, xen.PAGE_SIZE])


def rx_response_block(ids: list[int], size: int, csum_flags: int = 0,
                      gso: tuple[int, int] | None = None) -> bytes:
    """rx_response_slots(ids, rx_slot_lengths(size), csum_flags, gso) for
    page-sized slots, built from a template with C-level slice
    assignments instead of a pack per slot: the switch's hot path."""
    count = len(ids)
    if count == 1:  # one slot: a small frame, no GSO
        return _RESPONSE.pack(ids[0], 0, csum_flags, size)
    out = _FULL_SLOT * count
    out[0::4] = array("H", ids)
    data = count - (gso is not None)
    last = size - (data - 1) * xen.PAGE_SIZE
    end = 4 * count
    out[end - 2] = 0            # the last data slot: no more_data,
    out[end - 1] = last         # and its own length
    first = csum_flags | (NETRXF_more_data if data > 1 else 0)
    if gso is not None:
        out[2] = first | NETRXF_extra_info
        out[3] = last if data == 1 else xen.PAGE_SIZE
        out[4:8] = _gso_extra_halves(gso)
    else:
        out[2] = first
        out[3] = last if data == 1 else xen.PAGE_SIZE
    return out.tobytes()


def plan_rx(frame: bytes | bytearray | memoryview,
            requests: Sequence[RxRequest | tuple[int, int]],
            features: RxFeatures = RxFeatures(), *,
            csum_flags: int = 0, gso: tuple[int, int] | None = None
            ) -> RxPlan | RxDrop | None:
    """How `frame` goes into the posted `requests` (ring order, from the
    next unconsumed one): an RxPlan taking the first ``len(plan.slots)`` of
    them, an RxDrop, or None if more requests must be posted first.
    `gso` ((XEN_NETIF_GSO_TYPE_*, MSS)) marks a GSO frame."""
    if csum_flags & ~CSUM_FLAGS:
        raise ValueError(f"rx flags {csum_flags:#x} are not checksum flags")
    data = bytes(frame)
    size = len(data)
    if size < ETH_HLEN:
        return RxDrop(f"runt frame of {size} bytes")
    if size > XEN_NETIF_MAX_TX_SIZE:
        return RxDrop(f"frame of {size} bytes, more than {XEN_NETIF_MAX_TX_SIZE}")
    if gso is not None:
        if not features.accepts_gso(gso[0]):
            return RxDrop(f"GSO frame of type {gso[0]} and the frontend takes "
                          f"no GSO of that type")
        if not 0 < gso[1] <= 0xFFFF:
            raise ValueError(f"GSO size {gso[1]}")
    elif size > max_frame(data, features.mtu):
        return RxDrop(f"frame of {size} bytes exceeds MTU {features.mtu}")
    page = features.page_size
    if size > page and not features.sg:
        return RxDrop(f"frame of {size} bytes needs feature-sg")
    needed = rx_slots_needed(size, page, gso is not None)
    if len(requests) < needed:
        return None
    posted = [r if isinstance(r, RxRequest) else RxRequest(*r)
              for r in requests[:needed]]
    lengths = rx_slot_lengths(size, page)
    slots: list[RxSlot] = []
    start = 0
    for index, length in enumerate(lengths):
        flags = NETRXF_more_data if index < len(lengths) - 1 else 0
        if index == 0:
            flags |= csum_flags | (NETRXF_extra_info if gso else 0)
        req = posted[len(slots)]
        slots.append(RxSlot(req.id, req.gref, 0, start, length, flags))
        start += length
        if index == 0 and gso is not None:
            extra = posted[len(slots)]
            slots.append(RxSlot(extra.id, extra.gref,
                                extra=make_gso_extra(gso_type=gso[0], size=gso[1])))
    return RxPlan(slots, size, gso, data)
