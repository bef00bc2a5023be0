"""Words in shared memory, read and written whole (used by every ring over shared memory).

C reads and writes a ring index with one load or store. Python's
struct.pack_into does not: it zeroes the target first and then writes the
value byte by byte, and unpack_from reads byte by byte. Another process can
then see 0, or half an old and half a new value, in the middle of an update:
a console or xenstore index that jumps to 0 looks like a corrupt ring. A
memoryview cast to "I" (or "H") moves the whole word at once, as C does.
"""

from __future__ import annotations


class Words:
    """Aligned words of `fmt` ("I": uint32, "H": uint16, native order, which
    is Xen's little-endian on the hosts pyxen runs on), addressed by byte
    offset."""

    def __init__(self, buf, fmt: str = "I") -> None:
        view = memoryview(buf)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        self.view = view.cast(fmt)
        self.size = self.view.itemsize

    def _index(self, offset: int) -> int:
        if offset % self.size:
            raise ValueError(f"offset {offset} is not aligned to {self.size} bytes")
        return offset // self.size

    def __getitem__(self, offset: int) -> int:
        return self.view[self._index(offset)]

    def __setitem__(self, offset: int, value: int) -> None:
        self.view[self._index(offset)] = value

    def release(self) -> None:
        self.view.release()
