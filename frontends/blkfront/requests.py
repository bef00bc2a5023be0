"""The ring entries blkfront builds, and the responses it reads.

Every builder returns exactly one ring slot, BLKIF_SRING_ENTRY_SIZE (112)
bytes, padding zeroed (discard and indirect requests are shorter than a
slot).  A segment is ``(gref, first_sect, last_sect)``: the 512-byte
sectors first_sect..last_sect (inclusive, 0..7) of the granted page gref.
Arguments out of the protocol's bounds are the frontend's own bug and
raise ValueError.
"""

from __future__ import annotations

import ctypes
import sys
from array import array
from collections.abc import Iterator, Sequence

from hypervisor.public import xen
from hypervisor.public.io import blkif
from hypervisor.public.io.blkif import (
    BLKIF_DISCARD_SECURE,
    BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST,
    BLKIF_MAX_SEGMENTS_PER_REQUEST,
    BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE,
    BLKIF_OP_INDIRECT,
    BLKIF_OP_READ,
    BLKIF_OP_WRITE,
    SEGS_PER_INDIRECT_FRAME,
)

SegmentSpec = tuple[int, int, int]  # (gref, first_sect, last_sect)

ENTRY_SIZE = blkif.BLKIF_SRING_ENTRY_SIZE
SECTORS_PER_PAGE = xen.PAGE_SIZE // blkif.PYXEN_SECTOR_SIZE
_U64 = 1 << 64
_U32 = 1 << 32


def _slot(struct: ctypes.Structure) -> bytes:
    data = bytes(struct)
    return data + bytes(ENTRY_SIZE - len(data))


def _check_u64(name: str, value: int) -> None:
    if not 0 <= value < _U64:
        raise ValueError(f"{name} {value} does not fit in 64 bits")


def _check_handle(handle: int) -> None:
    if not 0 <= handle <= 0xFFFF:
        raise ValueError(f"handle {handle} does not fit in 16 bits")


def _segment(spec: SegmentSpec) -> blkif.blkif_request_segment:
    gref, first, last = spec
    if not 0 <= gref < _U32:
        raise ValueError(f"grant ref {gref} does not fit in 32 bits")
    if not 0 <= first <= last < SECTORS_PER_PAGE:
        raise ValueError(f"segment sectors {first}..{last} outside "
                         f"0..{SECTORS_PER_PAGE - 1}")
    return blkif.blkif_request_segment(gref, first, last)


def segment_sectors(segments: Sequence[SegmentSpec]) -> int:
    """512-byte sectors the segments transfer."""
    return sum(last - first + 1 for _, first, last in segments)


def rw(operation: int, id: int, sector: int, segments: Sequence[SegmentSpec],
       handle: int = 0) -> bytes:
    """A direct BLKIF_OP_READ / WRITE (or FLUSH_DISKCACHE with data) request."""
    if operation not in (BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_FLUSH_DISKCACHE):
        raise ValueError(f"operation {operation} carries no direct segments")
    low = 0 if operation == BLKIF_OP_FLUSH_DISKCACHE else 1
    if not low <= len(segments) <= BLKIF_MAX_SEGMENTS_PER_REQUEST:
        raise ValueError(f"{len(segments)} segments, not "
                         f"{low}..{BLKIF_MAX_SEGMENTS_PER_REQUEST}")
    _check_u64("id", id)
    _check_u64("sector", sector)
    _check_handle(handle)
    req = blkif.blkif_request(operation=operation, nr_segments=len(segments),
                              handle=handle, id=id, sector_number=sector)
    for index, spec in enumerate(segments):
        req.seg[index] = _segment(spec)
    return _slot(req)


def read(id: int, sector: int, segments: Sequence[SegmentSpec],
         handle: int = 0) -> bytes:
    return rw(BLKIF_OP_READ, id, sector, segments, handle)


def write(id: int, sector: int, segments: Sequence[SegmentSpec],
          handle: int = 0) -> bytes:
    return rw(BLKIF_OP_WRITE, id, sector, segments, handle)


def flush(id: int, handle: int = 0, sector: int = 0,
          segments: Sequence[SegmentSpec] = ()) -> bytes:
    """BLKIF_OP_FLUSH_DISKCACHE: make completed writes durable (writing
    `segments` at `sector` first, if any: a FUA write)."""
    return rw(BLKIF_OP_FLUSH_DISKCACHE, id, sector, segments, handle)


def discard(id: int, sector: int, nr_sectors: int, handle: int = 0,
            secure: bool = False) -> bytes:
    _check_u64("id", id)
    _check_u64("sector", sector)
    _check_u64("nr_sectors", nr_sectors)
    _check_handle(handle)
    return _slot(blkif.blkif_request_discard(
        operation=BLKIF_OP_DISCARD, flag=BLKIF_DISCARD_SECURE if secure else 0,
        handle=handle, id=id, sector_number=sector, nr_sectors=nr_sectors))


def indirect(id: int, indirect_op: int, sector: int, nr_segments: int,
             indirect_grefs: Sequence[int], handle: int = 0) -> bytes:
    """A BLKIF_OP_INDIRECT request of `nr_segments` segments whose
    blkif_request_segment arrays are in the granted pages `indirect_grefs`
    (fill them with :func:`indirect_pages`)."""
    if indirect_op not in (BLKIF_OP_READ, BLKIF_OP_WRITE):
        raise ValueError(f"indirect operation {indirect_op}")
    pages = blkif.indirect_pages(nr_segments)
    if not 1 <= nr_segments or pages > BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST:
        raise ValueError(f"{nr_segments} indirect segments")
    if len(indirect_grefs) != pages:
        raise ValueError(f"{nr_segments} segments need {pages} indirect "
                         f"pages, {len(indirect_grefs)} given")
    if any(not 0 <= gref < _U32 for gref in indirect_grefs):
        raise ValueError("indirect grant ref does not fit in 32 bits")
    _check_u64("id", id)
    _check_u64("sector", sector)
    _check_handle(handle)
    grefs = tuple(indirect_grefs) + (0,) * (BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST - pages)
    # One struct call (blkfront issues one of these per 1 MiB request).
    return _INDIRECT_SLOT.pack(BLKIF_OP_INDIRECT, indirect_op, nr_segments, id, sector,
                               handle, *grefs)


_INDIRECT_SLOT = blkif.REQUEST_INDIRECT


def indirect_pages(segments: Sequence[SegmentSpec]) -> list[bytes]:
    """The contents of the indirect pages listing `segments`: pages of
    SEGS_PER_INDIRECT_FRAME blkif_request_segment entries, zero-padded."""
    if not 1 <= len(segments) <= SEGS_PER_INDIRECT_FRAME * BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST:
        raise ValueError(f"{len(segments)} indirect segments")
    pages = []
    for start in range(0, len(segments), SEGS_PER_INDIRECT_FRAME):
        chunk = segments[start:start + SEGS_PER_INDIRECT_FRAME]
        data = b"".join(bytes(_segment(spec)) for spec in chunk)
        pages.append(data + bytes(xen.PAGE_SIZE - len(data)))
    return pages


class PageSegments(Sequence[SegmentSpec]):
    """The segments of `nr_sectors` sectors laid out page after page from
    the start of the granted pages `grefs`: whole pages, the last one
    holding what is left (what blkfront's pool pages carry).

    A Sequence of (gref, first_sect, last_sect) like any segment list, but
    kept as the grefs and the count, so that a 1 MiB request (256
    segments) is not 256 tuples, and its indirect page is written in bulk
    (:func:`fill_indirect_pages`)."""

    __slots__ = ("grefs", "last_sect", "nr_sectors")

    def __init__(self, grefs: Sequence[int], nr_sectors: int) -> None:
        pages = -(-nr_sectors // SECTORS_PER_PAGE)
        if nr_sectors < 1 or len(grefs) != pages:
            raise ValueError(f"{nr_sectors} sectors from page starts take {pages} "
                             f"pages, not {len(grefs)}")
        self.grefs = grefs
        self.nr_sectors = nr_sectors
        self.last_sect = (nr_sectors - 1) % SECTORS_PER_PAGE

    def __len__(self) -> int:
        return len(self.grefs)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return tuple(self)[index]
        gref = self.grefs[index]  # IndexError past the end
        last = self.last_sect if index in (-1, len(self.grefs) - 1) else SECTORS_PER_PAGE - 1
        return (gref, 0, last)

    def __iter__(self) -> Iterator[SegmentSpec]:
        full = SECTORS_PER_PAGE - 1
        grefs = self.grefs
        for gref in grefs[:-1]:
            yield (gref, 0, full)
        yield (grefs[-1], 0, self.last_sect)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (PageSegments, tuple, list)):
            return tuple(self) == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"PageSegments({list(self.grefs)!r}, {self.nr_sectors})"


def _segment_word(first: int, last: int) -> int:
    """The second uint32 of a blkif_request_segment: first_sect, last_sect
    and two bytes of padding, in native order (as the ctypes ABI lays it)."""
    return int.from_bytes(bytes((first, last, 0, 0)), sys.byteorder)


_FULL_WORDS = array("I", [_segment_word(0, SECTORS_PER_PAGE - 1)]) * SEGS_PER_INDIRECT_FRAME
_SEGMENT_BYTES = ctypes.sizeof(blkif.blkif_request_segment)
assert _SEGMENT_BYTES == 8 and array("I").itemsize == 4


def fill_indirect_pages(buf: memoryview, offsets: Sequence[int],
                        segments: Sequence[SegmentSpec]) -> None:
    """Write the indirect pages listing `segments` (what
    :func:`indirect_pages` returns) into `buf` at the byte `offsets`, one
    per page needed.  PageSegments are written in bulk: an array of
    uint32 pairs (gref, first/last word), not one struct per segment."""
    if not 1 <= len(segments) <= SEGS_PER_INDIRECT_FRAME * BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST:
        raise ValueError(f"{len(segments)} indirect segments")
    pages = -(-len(segments) // SEGS_PER_INDIRECT_FRAME)
    if len(offsets) < pages:
        raise ValueError(f"{len(segments)} segments need {pages} indirect pages, "
                         f"{len(offsets)} given")
    if not isinstance(segments, PageSegments):
        for offset, page in zip(offsets, indirect_pages(segments)):
            buf[offset:offset + xen.PAGE_SIZE] = page
        return
    grefs = segments.grefs
    if any(not 0 <= gref < _U32 for gref in (min(grefs), max(grefs))):
        raise ValueError("grant ref does not fit in 32 bits")
    for index in range(pages):
        chunk = grefs[index * SEGS_PER_INDIRECT_FRAME:(index + 1) * SEGS_PER_INDIRECT_FRAME]
        n = len(chunk)
        words = array("I", bytes(2 * 4 * n))
        words[0::2] = array("I", chunk)
        words[1::2] = _FULL_WORDS[:n]
        if index == pages - 1:
            words[-1] = _segment_word(0, segments.last_sect)
        start = offsets[index]
        used = n * _SEGMENT_BYTES
        buf[start:start + used] = memoryview(words).cast("B")
        buf[start + used:start + xen.PAGE_SIZE] = bytes(xen.PAGE_SIZE - used)


#: A decoded blkif_response, and its decoder (hypervisor.public.io.blkif).
Response = blkif.BlkifResponse
parse_response = blkif.parse_response
