"""The guest's block device API: read / write / flush / discard by sector,
and a file-like wrapper, over a connected blkfront device."""

from __future__ import annotations

import io

from frontends.blkfront.device import SECTOR, SECTORS_PER_PAGE, BlkfrontDevice
from hypervisor.public.io.blkif import (
    BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE,
    BLKIF_OP_READ,
    BLKIF_OP_WRITE,
)


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

    def read(self, sector: int, count: int) -> bytes:
        self._check(sector, count)
        out = bytearray(count * SECTOR)
        with memoryview(out) as view:
            for start, n, done in self._chunks(sector, count):
                self.device.io(BLKIF_OP_READ, start, n,
                               out=view[done * SECTOR:(done + n) * SECTOR])
        return bytes(out)

    def write(self, sector: int, data: bytes) -> None:
        if len(data) % SECTOR:
            raise ValueError(f"{self.name}: writes are whole 512-byte sectors")
        count = len(data) // SECTOR
        self._check(sector, count)
        if self.readonly:
            raise PermissionError(f"{self.name} is read-only")
        view = memoryview(data)
        for start, n, done in self._chunks(sector, count):
            self.device.io(BLKIF_OP_WRITE, start, n,
                           data=view[done * SECTOR:(done + n) * SECTOR])

    def flush(self) -> None:
        """Returns once everything written before is durable."""
        if self.device.flush_supported:
            self.device.io(BLKIF_OP_FLUSH_DISKCACHE, 0, 0)

    def discard(self, sector: int, count: int) -> None:
        self._check(sector, count)
        if not self.device.discard_supported:
            raise OSError(f"{self.name} does not support discard")
        self.device.io(BLKIF_OP_DISCARD, sector, count)

    def open(self) -> "BlockFile":
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
