"""The console ring (io/console.h) for both ends, over any writable buffer.

The domain writes `out` and reads `in`; the console daemon reads `out` and
writes `in`. Each write returns how many bytes fit; a caller that moved any
byte notifies the other end.
"""

from __future__ import annotations

from hypervisor.public.io.console import (
    MASK_XENCONS_IDX,
    XENCONS_IN_SIZE,
    XENCONS_OUT_SIZE,
    xencons_interface,
)
from hypervisor.public.pyxen.words import Words

_IN = xencons_interface.__dict__["in"].offset
_OUT = xencons_interface.out.offset
_IN_CONS = xencons_interface.in_cons.offset
_IN_PROD = xencons_interface.in_prod.offset
_OUT_CONS = xencons_interface.out_cons.offset
_OUT_PROD = xencons_interface.out_prod.offset


class ConsoleRingError(Exception):
    """The other end published indexes no honest peer could."""


class XenconsRing:
    def __init__(self, buf) -> None:
        self.buf = buf
        self.indexes = Words(buf)  # each read and written whole: see words.py

    def _get(self, off: int) -> int:
        return self.indexes[off]

    def _put(self, off: int, value: int) -> None:
        self.indexes[off] = value & 0xFFFFFFFF

    def _write(self, ring: int, size: int, cons_off: int, prod_off: int, data: bytes) -> int:
        cons, prod = self._get(cons_off), self._get(prod_off)
        used = (prod - cons) & 0xFFFFFFFF
        if used > size:
            raise ConsoleRingError(f"ring indexes {cons}/{prod} overflow {size}")
        n = min(len(data), size - used)
        start = MASK_XENCONS_IDX(prod, size)
        first = min(n, size - start)
        self.buf[ring + start:ring + start + first] = data[:first]
        self.buf[ring:ring + n - first] = data[first:n]
        # The reader must see the bytes before the producer index moves.
        self._put(prod_off, prod + n)
        return n

    def _read(self, ring: int, size: int, cons_off: int, prod_off: int, limit: int) -> bytes:
        cons, prod = self._get(cons_off), self._get(prod_off)
        avail = (prod - cons) & 0xFFFFFFFF
        if avail > size:
            raise ConsoleRingError(f"ring indexes {cons}/{prod} overflow {size}")
        n = min(avail, limit)
        start = MASK_XENCONS_IDX(cons, size)
        first = min(n, size - start)
        data = bytes(self.buf[ring + start:ring + start + first])
        data += bytes(self.buf[ring:ring + n - first])
        # The bytes are copied out before the writer may reuse their space.
        self._put(cons_off, cons + n)
        return data

    # the domain's end
    def write_out(self, data: bytes) -> int:
        return self._write(_OUT, XENCONS_OUT_SIZE, _OUT_CONS, _OUT_PROD, data)

    def read_in(self, limit: int = XENCONS_IN_SIZE) -> bytes:
        return self._read(_IN, XENCONS_IN_SIZE, _IN_CONS, _IN_PROD, limit)

    # the console daemon's end
    def read_out(self, limit: int = XENCONS_OUT_SIZE) -> bytes:
        return self._read(_OUT, XENCONS_OUT_SIZE, _OUT_CONS, _OUT_PROD, limit)

    def write_in(self, data: bytes) -> int:
        return self._write(_IN, XENCONS_IN_SIZE, _IN_CONS, _IN_PROD, data)
