"""The guest's block device API: read / write / flush / discard by sector,
asynchronous submit_read / submit_write (several requests in flight, as a
block layer's queue depth), DMA buffers for I/O without a copy, and a
file-like wrapper, over a connected blkfront device."""

from __future__ import annotations

import io
from typing import Any

from frontends.blkfront.device import (
    SECTOR,
    SECTORS_PER_PAGE,
    BlkfrontDevice,
    DmaBuffer,
    IORequest,
)
from hypervisor.public.io.blkif import (
    BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE,
    BLKIF_OP_READ,
    BLKIF_OP_WRITE,
)


class Completion:
    """Requests issued together (one caller operation split into requests
    of at most max_segments pages): wait() until every one is answered."""

    def __init__(self, requests: list[IORequest]) -> None:
        self.requests = requests

    @property
    def done(self) -> bool:
        return all(req.finished for req in self.requests)

    def wait(self, timeout: float | None = None) -> None:
        """Until all are answered; the first failure is raised (after all
        are answered: the caller's buffer is free again either way)."""
        error = None
        for req in self.requests:
            try:
                req.wait(timeout)
            except TimeoutError:
                raise
            except OSError as exc:
                error = error or exc
        if error is not None:
            raise error


class BlockDevice:
    def __init__(self, device: BlkfrontDevice, name: str) -> None:
        self.device = device
        self.name = name

    @property
    def sectors(self) -> int:
        """Size in 512-byte sectors."""
        return self.device.sectors * (self.device.sector_size // SECTOR)

    @property
    def size(self) -> int:
        return self.sectors * SECTOR

    @property
    def readonly(self) -> bool:
        return self.device.readonly

    def _check(self, sector: int, count: int) -> None:
        if sector < 0 or count < 0 or sector + count > self.sectors:
            raise ValueError(f"{self.name}: sectors [{sector}, {sector + count}) "
                             f"outside the disk ({self.sectors} sectors)")

    def _chunks(self, sector: int, count: int):
        step = self.device.max_segments * SECTORS_PER_PAGE
        done = 0
        while done < count:
            n = min(step, count - done)
            yield sector + done, n, done
            done += n

    @staticmethod
    def _part(buf: Any, start: int, length: int) -> Any:
        """Bytes start..start+length-1 of a caller's buffer (chunks start at
        multiples of max_segments pages, so a DmaBuffer stays one)."""
        if isinstance(buf, DmaBuffer):
            return buf if (start, length) == (0, len(buf)) else buf.part(start, length)
        return buf[start:start + length]

    @staticmethod
    def _bytes(buf: Any, writable: bool = False) -> tuple[Any, int]:
        """A caller's buffer as something sliceable, and its length."""
        if isinstance(buf, DmaBuffer):
            return buf, len(buf)
        view = memoryview(buf).cast("B")
        if writable and view.readonly:
            raise TypeError("reads need a writable buffer")
        return view, len(view)

    def buffer(self, nbytes: int) -> DmaBuffer:
        """A buffer in the memory shared with the backend: reads into it and
        writes from it need no copy in the guest (see DmaBuffer).  close()
        it (or use `with`) to give it back."""
        return self.device.buffer(nbytes)

    def submit_read(self, sector: int, buffer: Any) -> Completion:
        """Start reading len(buffer) bytes (whole sectors) at `sector` into
        `buffer` (writable bytes-like, or a DmaBuffer); wait() on the
        result.  Several reads and writes may be in flight at once."""
        buf, length = self._bytes(buffer, writable=True)
        if length % SECTOR:
            raise ValueError(f"{self.name}: reads are whole 512-byte sectors")
        count = length // SECTOR
        self._check(sector, count)
        return Completion([self.device.submit(BLKIF_OP_READ, start, n,
                                              out=self._part(buf, done * SECTOR, n * SECTOR))
                           for start, n, done in self._chunks(sector, count)])

    def submit_write(self, sector: int, data: Any) -> Completion:
        """Start writing `data` (whole sectors; bytes-like or a DmaBuffer)
        at `sector`; wait() on the result.  Leave `data` untouched until
        then."""
        buf, length = self._bytes(data)
        if length % SECTOR:
            raise ValueError(f"{self.name}: writes are whole 512-byte sectors")
        count = length // SECTOR
        self._check(sector, count)
        if self.readonly:
            raise PermissionError(f"{self.name} is read-only")
        return Completion([self.device.submit(BLKIF_OP_WRITE, start, n,
                                              data=self._part(buf, done * SECTOR, n * SECTOR))
                           for start, n, done in self._chunks(sector, count)])

    def readinto(self, sector: int, buffer: Any) -> int:
        """Read len(buffer) bytes at `sector` into `buffer`; returns the count."""
        self.submit_read(sector, buffer).wait()
        return len(buffer)

    def read(self, sector: int, count: int) -> bytes:
        self._check(sector, count)
        out = bytearray(count * SECTOR)
        self.readinto(sector, out)
        return bytes(out)

    def write(self, sector: int, data: Any) -> None:
        self.submit_write(sector, data).wait()

    def flush(self) -> None:
        """Returns once every write that completed before the call is
        durable (one still in flight, from submit_write, may or may not be:
        wait for it first, as with a disk's cache flush)."""
        if self.device.flush_supported:
            self.device.io(BLKIF_OP_FLUSH_DISKCACHE, 0, 0)

    def discard(self, sector: int, count: int) -> None:
        self._check(sector, count)
        if not self.device.discard_supported:
            raise OSError(f"{self.name} does not support discard")
        self.device.io(BLKIF_OP_DISCARD, sector, count)

    def open(self) -> BlockFile:
        return BlockFile(self)


class BlockFile(io.RawIOBase):
    """Byte-addressed access; unaligned reads and writes read-modify-write."""

    def __init__(self, disk: BlockDevice) -> None:
        self.disk = disk
        self.pos = 0

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return not self.disk.readonly

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.disk.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def _span(self, length: int) -> tuple[int, int, int]:
        first = self.pos // SECTOR
        last = -(-(self.pos + length) // SECTOR)
        return first, last - first, self.pos - first * SECTOR

    def readinto(self, buffer) -> int:
        length = min(len(buffer), max(0, self.disk.size - self.pos))
        if not length:
            return 0
        first, count, skip = self._span(length)
        data = self.disk.read(first, count)
        buffer[:length] = data[skip:skip + length]
        self.pos += length
        return length

    def write(self, data) -> int:
        data = bytes(data)
        if self.pos + len(data) > self.disk.size:
            raise OSError(f"{self.disk.name}: write past the end of the disk")
        first, count, skip = self._span(len(data))
        if skip or len(data) % SECTOR:
            block = bytearray(self.disk.read(first, count))
        else:
            block = bytearray(len(data))
        block[skip:skip + len(data)] = data
        self.disk.write(first, bytes(block))
        self.pos += len(data)
        return len(data)

    def flush(self) -> None:
        self.disk.flush()
