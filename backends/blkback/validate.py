"""Decoding and checking the requests a frontend puts on the ring.

Every request a backend reads is untrusted: the frontend may put any 112
bytes in a slot, and may keep changing them while the backend looks.
:func:`parse_request` therefore copies the slot once and decodes only the
copy (no double fetch), and never fails on any 112 bytes; :func:`check`
turns every way a request can be wrong into a :class:`Problem` with the
status to answer (as Linux's blkback does):

- an operation the backend does not offer -> BLKIF_RSP_EOPNOTSUPP
  (unknown codes, WRITE_BARRIER, RESERVED_1, and FLUSH_DISKCACHE, DISCARD or
  INDIRECT when the disk does not advertise them);
- anything else malformed -> BLKIF_RSP_ERROR: a bad segment count, a
  segment outside its page (first_sect <= last_sect < sectors per page), a
  sector range outside the disk or misaligned to its sector size, a write
  or discard on a read-only disk, an indirect request whose indirect_op is
  not READ or WRITE.

Sector quantities are 512-byte sectors (pyxen's frontends do not use
feature-large-sector-size); a disk with a larger sector size only accepts
requests aligned to it.
"""

from __future__ import annotations

import ctypes
import sys
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from hypervisor.public import xen
from hypervisor.public.io import blkif
from hypervisor.public.io.blkif import (
    BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE,
    BLKIF_OP_INDIRECT,
    BLKIF_OP_READ,
    BLKIF_OP_WRITE,
    BLKIF_RSP_EOPNOTSUPP,
    BLKIF_RSP_ERROR,
)

SECTOR_SIZE = blkif.PYXEN_SECTOR_SIZE
ENTRY_SIZE = blkif.BLKIF_SRING_ENTRY_SIZE
_SEGMENT_SIZE = ctypes.sizeof(blkif.blkif_request_segment)


@dataclass(frozen=True)
class Segment:
    """One segment: sectors first_sect..last_sect (inclusive) of page gref."""

    gref: int
    first_sect: int
    last_sect: int

    @property
    def nr_sectors(self) -> int:
        return self.last_sect - self.first_sect + 1

    @property
    def offset(self) -> int:
        """Byte offset of the first sector in the page."""
        return self.first_sect * SECTOR_SIZE

    @property
    def length(self) -> int:
        """Bytes to transfer (meaningful once checked)."""
        return self.nr_sectors * SECTOR_SIZE


# A blkif_request_segment is 8 bytes: gref (uint32, native order, as the C
# struct and the ctypes ABI module read it), first_sect, last_sect, 2 bytes
# of padding. Bulk decoding reads the grefs as every other uint32 of the
# records and first/last_sect as every 8th byte.
assert _SEGMENT_SIZE == 8
assert array("I").itemsize == 4
_GREF_BYTES = slice(0, 4)
_FIRST = 4
_LAST = 5


class Segments(Sequence[Segment]):
    """A request's segments, decoded in bulk: `grefs` (array of uint32),
    `firsts` and `lasts` (bytes: first_sect and last_sect of each).

    A 1 MiB indirect request has 256 segments; building 256 Segment objects
    per request cost more than the I/O itself, so the checks and the I/O
    read these three columns instead.  As a Sequence it still yields
    Segment objects (and compares equal to a tuple of the same Segments)."""

    __slots__ = ("_fine", "_records", "_total", "firsts", "grefs", "lasts")

    def __init__(self, grefs: array, firsts: bytes, lasts: bytes,
                 records: bytes | None = None) -> None:
        if not len(grefs) == len(firsts) == len(lasts):
            raise ValueError("segment columns of different lengths")
        self.grefs = grefs
        self.firsts = firsts
        self.lasts = lasts
        self._records = records
        self._total: int | None = None
        self._fine: tuple[int, int, bool] | None = None  # memo of _segments_fine

    @classmethod
    def decode(cls, data: bytes, offset: int = 0, count: int | None = None) -> Segments:
        """`count` blkif_request_segment records at `offset` of `data`
        (which the caller copied out of shared memory: decoded once)."""
        if count is None:
            count = (len(data) - offset) // _SEGMENT_SIZE
        end = offset + count * _SEGMENT_SIZE
        if count < 0 or end > len(data):
            raise ValueError(f"{count} segments do not fit in {len(data)} bytes")
        records = bytes(data[offset:end])
        found = _DECODED.get(records)
        if found is not None:
            return found
        words = array("I")
        words.frombytes(records)
        segments = cls(words[0::2], records[_FIRST::_SEGMENT_SIZE],
                       records[_LAST::_SEGMENT_SIZE], records)
        if len(_DECODED) >= _DECODED_MAX:
            _DECODED.clear()
        _DECODED[records] = segments
        return segments

    @classmethod
    def of(cls, segments: Sequence[Segment] | Segments) -> Segments:
        """Segments from Segment objects (ValueError if a field does not fit
        its wire type)."""
        if isinstance(segments, Segments):
            return segments
        try:
            return cls(array("I", [s.gref for s in segments]),
                       bytes(s.first_sect for s in segments),
                       bytes(s.last_sect for s in segments))
        except OverflowError as exc:
            raise ValueError(f"segment field out of range: {exc}") from None

    def __len__(self) -> int:
        return len(self.firsts)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return tuple(self)[index]
        return Segment(self.grefs[index], self.firsts[index], self.lasts[index])

    def __iter__(self) -> Iterator[Segment]:
        return map(Segment, self.grefs, self.firsts, self.lasts)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Segments):
            return (self.grefs == other.grefs and self.firsts == other.firsts
                    and self.lasts == other.lasts)
        if isinstance(other, (tuple, list)):
            return tuple(self) == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"Segments({list(self)!r})"

    @property
    def total_sectors(self) -> int:
        """Sum of last_sect - first_sect + 1 over the segments."""
        if self._total is None:
            self._total = sum(self.lasts) - sum(self.firsts) + len(self.firsts)
        return self._total

    @property
    def records(self) -> bytes:
        """The blkif_request_segment records (as decoded; padding zero when
        built from Segment objects): bytes that determine every segment,
        usable as a key, e.g. for a cache of their mapped buffers."""
        if self._records is None:
            words = array("I", bytes(8 * len(self)))
            words[0::2] = self.grefs
            words[1::2] = array("I", (int.from_bytes(bytes((f, l, 0, 0)), sys.byteorder)
                                      for f, l in zip(self.firsts, self.lasts)))
            self._records = words.tobytes()
        return self._records

    def full_pages(self, last_allowed: int) -> bool:
        """Every segment covers its whole page (0..last_allowed)."""
        n = len(self.firsts)
        return self.firsts.count(0) == n and self.lasts.count(last_allowed) == n


EMPTY_SEGMENTS = Segments(array("I"), b"", b"")

# Records -> their decoded Segments. A frontend lists the same pages request
# after request (its pool hands out the same runs, its buffers stay put), so
# the same records recur: decoding them (and checking them, memoised on the
# Segments) once is enough. Decoding is a pure function of the bytes, so
# sharing the result is safe; the records are a private copy, never shared
# memory. Bounded: cleared when full.
_DECODED: dict[bytes, Segments] = {}
_DECODED_MAX = 1024


@dataclass(frozen=True)
class Request:
    """A decoded request.  Fields not carried by `operation`'s layout are 0.

    `segments` holds the direct segments (the first min(nr_segments, 11)
    of the slot) for READ, WRITE and FLUSH_DISKCACHE; for INDIRECT it is
    None until :func:`with_indirect_segments` read the indirect pages,
    whose grants are `indirect_grefs` (as many as nr_segments needs, at
    most BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST).
    """

    operation: int
    id: int
    handle: int = 0
    sector_number: int = 0
    nr_segments: int = 0
    segments: Segments | None = EMPTY_SEGMENTS  # a tuple of Segments is converted
    indirect_op: int = 0
    indirect_grefs: tuple[int, ...] = ()
    nr_sectors: int = 0  # BLKIF_OP_DISCARD
    flag: int = 0        # BLKIF_OP_DISCARD: BLKIF_DISCARD_SECURE

    def __post_init__(self) -> None:
        if self.segments is not None and not isinstance(self.segments, Segments):
            object.__setattr__(self, "segments", Segments.of(self.segments))

    @property
    def io_operation(self) -> int:
        """What the request does (an indirect request's indirect_op); the
        operation its response carries, as in Linux's blkback."""
        return self.indirect_op if self.operation == BLKIF_OP_INDIRECT else self.operation

    @property
    def total_sectors(self) -> int:
        """512-byte sectors transferred: the sum over segments, or a
        discard's nr_sectors."""
        if self.operation == BLKIF_OP_DISCARD:
            return self.nr_sectors
        return self.segments.total_sectors if self.segments else 0

    @property
    def writes(self) -> bool:
        """Whether the request changes the disk."""
        if self.operation == BLKIF_OP_FLUSH_DISKCACHE:
            return bool(self.nr_segments)
        return self.io_operation in (BLKIF_OP_WRITE, BLKIF_OP_DISCARD)


@dataclass(frozen=True)
class DiskInfo:
    """What the backend offers: the disk's size in `sector_size` units (the
    XenStore node "sectors"), read-only-ness ("mode" = "r"), and the
    optional operations it advertises (feature-discard,
    feature-flush-cache, feature-max-indirect-segments; 0: no indirect)."""

    sectors: int
    sector_size: int = SECTOR_SIZE
    readonly: bool = False
    discard: bool = False
    flush: bool = True
    max_indirect_segments: int = 0

    def __post_init__(self) -> None:
        if self.sectors < 0:
            raise ValueError(f"negative disk size {self.sectors}")
        size = self.sector_size
        if size < SECTOR_SIZE or size & (size - 1):
            raise ValueError(f"sector size {size} is not a power of two >= 512")
        if self.max_indirect_segments < 0:
            raise ValueError("negative max_indirect_segments")

    @property
    def size_in_512(self) -> int:
        """The disk's size in 512-byte sectors."""
        return self.sectors * (self.sector_size // SECTOR_SIZE)


@dataclass(frozen=True)
class Limits:
    """Protocol limits a request is checked against."""

    max_segments: int = blkif.BLKIF_MAX_SEGMENTS_PER_REQUEST
    max_indirect_pages: int = blkif.BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST
    page_size: int = xen.PAGE_SIZE

    @property
    def sectors_per_page(self) -> int:
        return self.page_size // SECTOR_SIZE

    @property
    def segments_per_indirect_page(self) -> int:
        return self.page_size // _SEGMENT_SIZE


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Problem:
    """Why a request is refused, and the BLKIF_RSP_* status to answer."""

    status: int
    reason: str


_SEG_OFFSET = blkif.blkif_request.seg.offset
_RW = blkif.REQUEST_RW
_DISCARD = blkif.REQUEST_DISCARD
_INDIRECT = blkif.REQUEST_INDIRECT


def parse_request(raw: bytes | bytearray | memoryview) -> Request:
    """Decode one 112-byte ring entry.  Never fails on 112 bytes, whatever
    they hold; ValueError if `raw` is not one ring entry (a caller's bug)."""
    data = bytes(raw)  # one private copy: decode nothing from shared memory
    if len(data) != ENTRY_SIZE:
        raise ValueError(f"a ring entry is {ENTRY_SIZE} bytes, not {len(data)}")
    operation = data[0]
    if operation == BLKIF_OP_DISCARD:
        _, flag, handle, id, sector, nr_sectors = _DISCARD.unpack_from(data)
        return Request(operation, id, handle=handle, sector_number=sector,
                       nr_sectors=nr_sectors, flag=flag)
    if operation == BLKIF_OP_INDIRECT:
        fields = _INDIRECT.unpack_from(data)
        _, indirect_op, nr_segments, id, sector, handle = fields[:6]
        pages = min(blkif.indirect_pages(nr_segments),
                    blkif.BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST)
        return Request(operation, id, handle=handle, sector_number=sector,
                       nr_segments=nr_segments, segments=None, indirect_op=indirect_op,
                       indirect_grefs=fields[6:6 + pages])
    _, nr_segments, handle, id, sector = _RW.unpack_from(data)
    segments = EMPTY_SEGMENTS
    if operation in (BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_FLUSH_DISKCACHE):
        count = min(nr_segments, blkif.BLKIF_MAX_SEGMENTS_PER_REQUEST)
        segments = Segments.decode(data, _SEG_OFFSET, count)
    return Request(operation, id, handle=handle, sector_number=sector,
                   nr_segments=nr_segments, segments=segments)


def with_indirect_segments(request: Request,
                           pages: Sequence[bytes | bytearray | memoryview],
                           limits: Limits = DEFAULT_LIMITS) -> Request:
    """The indirect `request` with its segments read from `pages`, the
    contents of its `indirect_grefs` in order (copied first).  Check the
    request before (so that the page count is sane) and after."""
    if request.operation != BLKIF_OP_INDIRECT:
        raise ValueError("not an indirect request")
    if len(pages) != len(request.indirect_grefs):
        raise ValueError(f"{len(request.indirect_grefs)} indirect pages "
                         f"expected, {len(pages)} given")
    per_page = limits.segments_per_indirect_page
    left = request.nr_segments
    chunks = []
    for index, page in enumerate(pages):
        if len(page) < limits.page_size:
            raise ValueError(f"indirect page {index} holds {len(page)} bytes")
        count = max(0, min(per_page, left))
        # One private copy of the records this page contributes (the
        # frontend may rewrite the page meanwhile): nothing is read twice.
        chunks.append(bytes(page[:count * _SEGMENT_SIZE]))
        left -= count
    r = request  # every other field as it was (dataclasses.replace, but faster)
    return Request(r.operation, r.id, handle=r.handle, sector_number=r.sector_number,
                   nr_segments=r.nr_segments, segments=Segments.decode(b"".join(chunks)),
                   indirect_op=r.indirect_op, indirect_grefs=r.indirect_grefs,
                   nr_sectors=r.nr_sectors, flag=r.flag)


def _check_segments(request: Request, disk: DiskInfo,
                    limits: Limits) -> Problem | None:
    segments = request.segments or EMPTY_SEGMENTS
    last_allowed = limits.sectors_per_page - 1
    ratio = disk.sector_size // SECTOR_SIZE
    if _segments_fine(segments, last_allowed, ratio):
        return _check_range(request.sector_number, request.total_sectors, disk)
    for index, seg in enumerate(segments):
        if not seg.first_sect <= seg.last_sect <= last_allowed:
            return Problem(BLKIF_RSP_ERROR,
                           f"segment {index}: sectors {seg.first_sect}.."
                           f"{seg.last_sect} outside 0..{last_allowed}")
        if seg.nr_sectors % ratio:
            return Problem(BLKIF_RSP_ERROR,
                           f"segment {index}: {seg.nr_sectors} sectors, "
                           f"not whole {disk.sector_size}-byte sectors")
    return _check_range(request.sector_number, request.total_sectors, disk)


_SECTOR_INDEXES = bytes(range(256))


def _segments_fine(segments: Segments, last_allowed: int, ratio: int) -> bool:
    """The checks of _check_segments' loop, in bulk: True only if every
    segment has first_sect <= last_sect <= last_allowed and covers whole
    disk sectors.  False means "look at each segment" (which then finds
    the culprit), never that a segment is wrong for sure."""
    memo = segments._fine
    if memo is not None and memo[0] == last_allowed and memo[1] == ratio:
        return memo[2]
    fine = _segments_fine_now(segments, last_allowed, ratio)
    segments._fine = (last_allowed, ratio, fine)
    return fine


def _segments_fine_now(segments: Segments, last_allowed: int, ratio: int) -> bool:
    firsts, lasts = segments.firsts, segments.lasts
    if not lasts:
        return True
    if lasts.translate(None, _SECTOR_INDEXES[:last_allowed + 1]):
        return False  # some last_sect beyond the page (what is left after
                      # deleting the allowed values)
    if firsts.count(0) != len(firsts):
        # Partial segments: first <= last needs a look at each one (rare:
        # only the first/last page of an unaligned request).
        if any(first > last for first, last in zip(firsts, lasts)):
            return False
        if ratio == 1:
            return True
        return all((last - first + 1) % ratio == 0
                   for first, last in zip(firsts, lasts))
    if ratio == 1:
        return True
    # first_sect is 0 everywhere: whole sectors iff every last_sect + 1 is
    # a multiple of the ratio.
    return all((last + 1) % ratio == 0 for last in set(lasts))


def _check_range(start: int, count: int, disk: DiskInfo) -> Problem | None:
    ratio = disk.sector_size // SECTOR_SIZE
    if start % ratio:
        return Problem(BLKIF_RSP_ERROR, f"sector {start} misaligned to "
                       f"{disk.sector_size}-byte sectors")
    if start + count > disk.size_in_512:
        return Problem(BLKIF_RSP_ERROR,
                       f"sectors [{start}, {start + count}) beyond the disk's "
                       f"{disk.size_in_512}")
    return None


def _check_readonly(request: Request, disk: DiskInfo) -> Problem | None:
    if disk.readonly and request.writes:
        return Problem(BLKIF_RSP_ERROR, "write to a read-only disk")
    return None


def check(request: Request, disk: DiskInfo,
          limits: Limits = DEFAULT_LIMITS) -> Problem | None:
    """None if `request` may be performed on `disk`, else the Problem.

    An indirect request whose segments are not read yet is checked as far
    as its header goes; check it again after :func:`with_indirect_segments`.
    """
    op = request.operation
    if op in (BLKIF_OP_READ, BLKIF_OP_WRITE):
        if not 1 <= request.nr_segments <= limits.max_segments:
            return Problem(BLKIF_RSP_ERROR, f"{request.nr_segments} segments, "
                           f"not 1..{limits.max_segments}")
        return _check_readonly(request, disk) or _check_segments(request, disk, limits)
    if op == BLKIF_OP_FLUSH_DISKCACHE:
        if not disk.flush:
            return Problem(BLKIF_RSP_EOPNOTSUPP, "flush not offered")
        if request.nr_segments > limits.max_segments:
            return Problem(BLKIF_RSP_ERROR, f"flush with {request.nr_segments} "
                           f"segments, more than {limits.max_segments}")
        if not request.nr_segments:
            return None
        return _check_readonly(request, disk) or _check_segments(request, disk, limits)
    if op == BLKIF_OP_DISCARD:
        if not disk.discard:
            return Problem(BLKIF_RSP_EOPNOTSUPP, "discard not offered")
        return (_check_readonly(request, disk)
                or _check_range(request.sector_number, request.nr_sectors, disk)
                or _check_discard_length(request, disk))
    if op == BLKIF_OP_INDIRECT:
        return _check_indirect(request, disk, limits)
    return Problem(BLKIF_RSP_EOPNOTSUPP, f"operation {op} not offered")


def _check_discard_length(request: Request, disk: DiskInfo) -> Problem | None:
    if request.nr_sectors % (disk.sector_size // SECTOR_SIZE):
        return Problem(BLKIF_RSP_ERROR, f"discard of {request.nr_sectors} "
                       f"sectors, not whole {disk.sector_size}-byte sectors")
    return None


def _check_indirect(request: Request, disk: DiskInfo,
                    limits: Limits) -> Problem | None:
    if not disk.max_indirect_segments:
        return Problem(BLKIF_RSP_EOPNOTSUPP, "indirect requests not offered")
    if request.indirect_op not in (BLKIF_OP_READ, BLKIF_OP_WRITE):
        return Problem(BLKIF_RSP_ERROR,
                       f"indirect operation {request.indirect_op}")
    nseg = request.nr_segments
    if not 1 <= nseg <= disk.max_indirect_segments:
        return Problem(BLKIF_RSP_ERROR, f"{nseg} indirect segments, not "
                       f"1..{disk.max_indirect_segments}")
    pages = -(-nseg // limits.segments_per_indirect_page)
    if pages > limits.max_indirect_pages:
        return Problem(BLKIF_RSP_ERROR, f"{nseg} indirect segments need "
                       f"{pages} pages, more than {limits.max_indirect_pages}")
    problem = _check_readonly(request, disk)
    if problem or request.segments is None:
        return problem
    if len(request.segments) != nseg:
        return Problem(BLKIF_RSP_ERROR, f"{len(request.segments)} indirect "
                       f"segments read, {nseg} announced")
    return _check_segments(request, disk, limits)
