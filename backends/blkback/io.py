"""Performing a checked request on the backing file or block device.

The buffers are the frontend's granted pages, mapped by the backend: the
data moves between them and the disk with one preadv/pwritev per request
(short transfers are continued), never through an intermediate copy.
Segment i covers bytes [first_sect*512, (last_sect+1)*512) of page i.

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
import ctypes.util
import errno
import os

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

from .validate import SECTOR_SIZE, Request

# <linux/falloc.h>
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

_ZERO_CHUNK = 1 << 20
_FALLBACK_ERRNOS = frozenset(
    {errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL, errno.ENODEV})


def _load_fallocate():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
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
    op = request.io_operation
    if op not in (BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_FLUSH_DISKCACHE,
                  BLKIF_OP_DISCARD):
        return BLKIF_RSP_EOPNOTSUPP
    if request.operation == BLKIF_OP_INDIRECT and request.segments is None:
        raise ValueError("indirect request without its segments")
    if op != BLKIF_OP_DISCARD and len(segments) != len(request.segments or ()):
        raise ValueError(f"{len(request.segments or ())} segments, "
                         f"{len(segments)} pages given")
    try:
        if op == BLKIF_OP_DISCARD:
            _discard(fd, request.sector_number * SECTOR_SIZE,
                     request.nr_sectors * SECTOR_SIZE)
            return BLKIF_RSP_OKAY
        buffers = _buffers(request, segments, writable=op == BLKIF_OP_READ)
        if buffers is None:
            return BLKIF_RSP_ERROR
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


def _buffers(request: Request, pages: list[memoryview],
             writable: bool) -> list[memoryview] | None:
    """The byte ranges of the pages the segments cover; None if a page
    cannot hold its segment (or is read-only for a read)."""
    buffers = []
    append = buffers.append
    for seg, page in zip(request.segments or (), pages):
        # A mapped grant page is already a 1-D view of bytes: use it as is.
        view = (page if type(page) is memoryview and page.format == "B"
                and page.ndim == 1 and page.c_contiguous else memoryview(page).cast("B"))
        start, end = seg.first_sect * SECTOR_SIZE, (seg.last_sect + 1) * SECTOR_SIZE
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
