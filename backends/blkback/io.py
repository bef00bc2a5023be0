"""Performing a checked request on the backing file or block device.

The buffers are the frontend's granted pages, mapped by the backend: the
data moves between them and the disk with one preadv/pwritev per request
(short transfers are continued), never through an intermediate copy.
Segment i covers bytes [first_sect*512, (last_sect+1)*512) of page i;
segments that are contiguous in the backend's mapping are merged into one
iovec (:func:`merge_extents`, :func:`perform_iov`).

- READ / WRITE (direct or indirect): preadv / pwritev at sector_number*512.
  Writes complete into the page cache, like a disk with a volatile cache;
  the frontend makes them durable with FLUSH_DISKCACHE (advertise
  feature-flush-cache), or pass ``durable=True`` to sync every write (for
  a backend that does not offer flushes: then its frontends expect every
  completed write to be on stable storage).
- FLUSH_DISKCACHE: writes its segments, if any, then fdatasync; it is
  acknowledged only once the data is durable.
- DISCARD: fallocate(PUNCH_HOLE | KEEP_SIZE) where the file system supports
  it, else zeros are written: either way the range then reads as zeros.

Any OSError (EIO, EBADF, ENOSPC, a short read at end of file...) answers
BLKIF_RSP_ERROR.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Sequence

from hypervisor.public.io.blkif import (
    BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE,
    BLKIF_OP_INDIRECT,
    BLKIF_OP_READ,
    BLKIF_OP_WRITE,
    BLKIF_RSP_EOPNOTSUPP,
    BLKIF_RSP_ERROR,
    BLKIF_RSP_OKAY,
)
from hypervisor.public.xen import PAGE_SIZE

from .validate import EMPTY_SEGMENTS, SECTOR_SIZE, Request, Segments

# <linux/falloc.h>
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

_ZERO_CHUNK = 1 << 20
_FALLBACK_ERRNOS = frozenset(
    {errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL, errno.ENODEV})


def _load_fallocate():
    try:
        # libc is already in the process: find_library would run ldconfig,
        # which a sandboxed driver domain has not (and may not exec).
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.fallocate
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    function.restype = ctypes.c_int
    return function


_fallocate = _load_fallocate()

try:
    _IOV_MAX = max(1, os.sysconf("SC_IOV_MAX"))
except (OSError, ValueError):
    _IOV_MAX = 1024


def perform(request: Request, segments: list[memoryview], fd: int,
            *, durable: bool = False) -> int:
    """Do the I/O of a checked `request` on `fd`; `segments[i]` is the
    mapped page of request.segments[i].  Returns BLKIF_RSP_OKAY, or
    BLKIF_RSP_ERROR on an I/O error (BLKIF_RSP_EOPNOTSUPP for an operation
    this module does not perform).  Raises ValueError only for a caller's
    bug: page count mismatch, or an indirect request whose segments were
    not read."""
    op = _performed(request)
    if op is None:
        return BLKIF_RSP_EOPNOTSUPP
    if op != BLKIF_OP_DISCARD and len(segments) != len(request.segments or ()):
        raise ValueError(f"{len(request.segments or ())} segments, "
                         f"{len(segments)} pages given")
    buffers = None
    if op != BLKIF_OP_DISCARD:
        buffers = _buffers(request, segments, writable=op == BLKIF_OP_READ)
        if buffers is None:
            return BLKIF_RSP_ERROR
    return _perform(request, op, buffers, fd, durable)


def perform_iov(request: Request, iov: list[memoryview], fd: int,
                *, durable: bool = False) -> int:
    """:func:`perform` with the I/O vector already built: `iov` is the
    bytes the segments cover, in order, as few views as the mapping allows
    (see :func:`merge_extents`).  ValueError (a caller's bug) if `iov` does
    not hold exactly the request's sectors or is read-only for a read."""
    op = _performed(request)
    if op is None:
        return BLKIF_RSP_EOPNOTSUPP
    if op != BLKIF_OP_DISCARD:
        if sum(map(len, iov)) != request.total_sectors * SECTOR_SIZE:
            raise ValueError(f"an I/O vector of {sum(map(len, iov))} bytes for "
                             f"{request.total_sectors} sectors")
        if op == BLKIF_OP_READ and any(view.readonly for view in iov):
            raise ValueError("a read into read-only memory")
    return _perform(request, op, iov, fd, durable)


def _performed(request: Request) -> int | None:
    """The operation to perform, None if this module does not perform it."""
    op = request.io_operation
    if op not in (BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_FLUSH_DISKCACHE,
                  BLKIF_OP_DISCARD):
        return None
    if request.operation == BLKIF_OP_INDIRECT and request.segments is None:
        raise ValueError("indirect request without its segments")
    return op


def _perform(request: Request, op: int, buffers: list[memoryview] | None, fd: int,
             durable: bool) -> int:
    try:
        if op == BLKIF_OP_DISCARD:
            _discard(fd, request.sector_number * SECTOR_SIZE,
                     request.nr_sectors * SECTOR_SIZE)
            return BLKIF_RSP_OKAY
        offset = request.sector_number * SECTOR_SIZE
        if op == BLKIF_OP_READ:
            _transfer(fd, buffers, offset, write=False)
        elif buffers:
            _transfer(fd, buffers, offset, write=True)
        if op == BLKIF_OP_FLUSH_DISKCACHE or (durable and buffers):
            os.fdatasync(fd)
    except OSError:
        return BLKIF_RSP_ERROR
    return BLKIF_RSP_OKAY


def merge_extents(addresses: Sequence[int], segments: Segments,
                  page_size: int = PAGE_SIZE) -> list[tuple[int, int]]:
    """The byte extents ``(start, length)`` covering `segments` in order,
    where segment i is bytes [first_sect*512, (last_sect+1)*512) of the page
    at ``addresses[i]`` (any integer address space, e.g. window and offset).

    A segment that starts exactly where the previous one ended joins its
    extent: persistently granted pages that are consecutive in the
    frontend's grant window are consecutive in our mapping of it, so a
    1 MiB request usually becomes one preadv/pwritev buffer instead of 256
    (the kernel walks one iovec, and we build one memoryview).  Pure: the
    caller turns extents into views of its mappings."""
    n = len(segments)
    if len(addresses) != n:
        raise ValueError(f"{n} segments, {len(addresses)} addresses")
    if not n:
        return []
    firsts, lasts = segments.firsts, segments.lasts
    last_allowed = page_size // SECTOR_SIZE - 1
    a0 = addresses[0]
    # The usual case, in bulk: consecutive pages, and every boundary between
    # two segments a page boundary (only the ends may be partial pages).
    if (firsts.count(0, 1) == n - 1 and lasts.count(last_allowed, 0, n - 1) == n - 1
            and addresses[-1] == a0 + (n - 1) * page_size
            and list(addresses) == list(range(a0, a0 + n * page_size, page_size))):
        start = a0 + firsts[0] * SECTOR_SIZE
        return [(start, a0 + (n - 1) * page_size + (lasts[-1] + 1) * SECTOR_SIZE - start)]
    extents: list[tuple[int, int]] = []
    start = end = -1
    for address, first, last in zip(addresses, firsts, lasts):
        seg_start = address + first * SECTOR_SIZE
        seg_end = address + (last + 1) * SECTOR_SIZE
        if seg_start == end:
            end = seg_end
            continue
        if end >= 0:
            extents.append((start, end - start))
        start, end = seg_start, seg_end
    extents.append((start, end - start))
    return extents


def _buffers(request: Request, pages: list[memoryview],
             writable: bool) -> list[memoryview] | None:
    """The byte ranges of the pages the segments cover; None if a page
    cannot hold its segment (or is read-only for a read)."""
    segments = request.segments or EMPTY_SEGMENTS
    buffers = []
    append = buffers.append
    for first, last, page in zip(segments.firsts, segments.lasts, pages):
        # A mapped grant page is already a 1-D view of bytes: use it as is.
        view = (page if type(page) is memoryview and page.format == "B"
                and page.ndim == 1 and page.c_contiguous else memoryview(page).cast("B"))
        start, end = first * SECTOR_SIZE, (last + 1) * SECTOR_SIZE
        size = len(view)
        if not 0 <= start < end <= size or (writable and view.readonly):
            return None
        append(view if start == 0 and end == size else view[start:end])
    return buffers


def _transfer(fd: int, buffers: list[memoryview], offset: int,
              write: bool) -> None:
    """preadv/pwritev all of `buffers` at `offset`, continuing short
    transfers; a transfer of nothing (end of file) is EIO."""
    pending = list(buffers)
    index = 0
    while index < len(pending):
        batch = pending[index:index + _IOV_MAX]
        done = (os.pwritev if write else os.preadv)(fd, batch, offset)
        if done <= 0:
            raise OSError(errno.EIO, "unexpected end of the backing file")
        offset += done
        while done:
            head = pending[index]
            if done >= len(head):
                done -= len(head)
                index += 1
            else:
                pending[index] = head[done:]
                done = 0


def _discard(fd: int, offset: int, length: int) -> None:
    if not length:
        return
    if _fallocate is not None:
        if _fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                      offset, length) == 0:
            return
        err = ctypes.get_errno()
        if err not in _FALLBACK_ERRNOS:
            raise OSError(err, os.strerror(err))
    _write_zeros(fd, offset, length)


def _write_zeros(fd: int, offset: int, length: int) -> None:
    zeros = memoryview(bytes(min(length, _ZERO_CHUNK)))
    end = offset + length
    while offset < end:
        done = os.pwrite(fd, zeros[:min(len(zeros), end - offset)], offset)
        if done <= 0:
            raise OSError(errno.EIO, "short write while zeroing")
        offset += done
