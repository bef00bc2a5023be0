"""struct codecs built from the ctypes layouts of hypervisor.public.

A ring entry or a message header is decoded and encoded on hot paths,
where one struct call beats a ctypes field access per field.  Writing its
struct format by hand says the layout a second time, and the two can drift
apart; :func:`layout` reads the offsets, sizes and signedness from the
ctypes class instead (which tests/cabi.py checks against Xen's headers),
so each wire format is said once, by its ctypes class.

Formats use native byte order with standard sizes and explicit padding
("="), as ctypes reads a plain Structure: Xen's little-endian on the hosts
pyxen runs on.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Sequence
from typing import Any

#: A ctypes Structure or Union class (or one of its field types).
CType = Any

_CODES = {(1, False): "B", (2, False): "H", (4, False): "I", (8, False): "Q",
          (1, True): "b", (2, True): "h", (4, True): "i", (8, True): "q"}


def field(ctype: CType, path: str) -> tuple[int, CType]:
    """(offset, ctypes type) of the field `path` of `ctype`: a member name,
    or names joined by dots into nested structures and unions
    ("u.gso.size")."""
    offset = 0
    for name in path.split("."):
        kinds = dict(ctype._fields_)
        if name not in kinds:
            raise ValueError(f"{ctype.__name__} has no field {name!r}")
        offset += getattr(ctype, name).offset
        ctype = kinds[name]
    return offset, ctype


def _leaves(ctype: CType, prefix: str = "") -> list[str]:
    """Every scalar (or array of scalars) field of `ctype`, in order."""
    out = []
    for name, kind in ctype._fields_:
        if issubclass(kind, ctypes.Union):
            raise ValueError(f"{ctype.__name__}.{name} is a union: name the member to read")
        if issubclass(kind, ctypes.Structure):
            out += _leaves(kind, f"{prefix}{name}.")
        else:
            out.append(prefix + name)
    return out


def _code(kind: CType) -> str:
    count = 1
    if issubclass(kind, ctypes.Array):
        count, kind = kind._length_, kind._type_
    if not issubclass(kind, ctypes._SimpleCData) or kind is ctypes.c_char:
        raise ValueError(f"{kind.__name__} is not an integer type")
    code = _CODES[ctypes.sizeof(kind), kind(-1).value == -1]
    return f"{count}{code}" if count > 1 else code


def layout(ctype: CType, names: Sequence[str] | None = None, *,
           size: int | None = None, base: int = 0) -> struct.Struct:
    """A struct reading and writing the fields `names` of the ctypes class
    `ctype` (every scalar field, nested structures included, if None) at
    the offsets ctypes gives them, the bytes between them padding; an
    array of integers is that many integers.  It is `size` bytes long,
    padding after the last field (a ring entry in its slot); by default
    sizeof(ctype) when every field is read, else up to the last field.
    With `base`, the struct starts at that offset of `ctype` (to write some
    fields without touching the bytes before them)."""
    if names is None:
        names = _leaves(ctype)
        if size is None:
            size = ctypes.sizeof(ctype)
    fmt, at = "=", base
    for name in names:
        offset, kind = field(ctype, name)
        if offset < at:
            raise ValueError(f"{ctype.__name__}.{name}: fields out of order")
        fmt += "x" * (offset - at) + _code(kind)
        at = offset + ctypes.sizeof(kind)
    if size is not None:
        if size < at:
            raise ValueError(f"{ctype.__name__}: {size} bytes hold no field past {size}")
        fmt += "x" * (size - at)  # size counts from the start of ctype
    return struct.Struct(fmt)


def scalar(kind: CType) -> struct.Struct:
    """A struct of one integer of the ctypes type `kind` (a typedef such
    as evtchn_port_t): a message that is one number."""
    return struct.Struct("=" + _code(kind))


def repeated(codec: struct.Struct, count: int) -> struct.Struct:
    """`count` of `codec`'s records back to back: one call for a run of
    ring entries."""
    return struct.Struct(codec.format[0] + codec.format[1:] * count)


class Column:
    """Field `name` of `ctype` in every `stride`-byte entry of a run of
    entries: :meth:`read` is one C-level strided read of a cast instead of
    an unpack per entry (a hot path that reads several fields casts once
    and slices ``[start::step]`` itself).  The field must be aligned to its
    size, as Xen's ring entries' are, and `stride` a multiple of it."""

    __slots__ = ("code", "start", "step")

    def __init__(self, ctype: CType, name: str, stride: int) -> None:
        offset, kind = field(ctype, name)
        width = ctypes.sizeof(kind)
        if offset % width or stride % width:
            raise ValueError(f"{ctype.__name__}.{name} is not aligned in a {stride}-byte entry")
        self.code: Any = _CODES[width, kind(-1).value == -1]  # a cast's format
        self.start = offset // width
        self.step = stride // width

    def read(self, entries: bytes | bytearray | memoryview) -> list[int]:
        """The field of every whole entry of `entries`."""
        view = memoryview(entries)
        if view.format != "B":
            view = view.cast("B")
        return view.cast(self.code)[self.start::self.step].tolist()
