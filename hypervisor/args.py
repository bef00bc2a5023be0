"""Hypercall arguments checked against a schema, as Xen's copy_from_guest
checks a guest's struct before any handler reads it.

Pure: no hypervisor state. Each handler declares the shape it reads next to
its code (`@hypercall(..., args=Struct(...))`); dispatch checks the decoded
message against it once, so a handler only ever sees the types it declared.
Types are exact: a bool or a float is not an int, a list is not a map.

Errors follow Xen's split: arguments that cannot be read as the declared
structure at all (not a map, a field missing) are EFAULT, as a bad guest
handle is; a field of the wrong type or out of range is EINVAL.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

from hypervisor.public.errno import EFAULT, EINVAL, XenError

U16_MAX = 0xFFFF
U32_MAX = 0xFFFF_FFFF
U64_MAX = 0xFFFF_FFFF_FFFF_FFFF
S64_MIN = -(1 << 63)


class ArgError(XenError):
    """Arguments that do not match their schema; `path` says where."""

    def __init__(self, errno: int, path: str, message: str) -> None:
        super().__init__(errno, f"{path or 'args'}: {message}")
        self.path = path


# msgpack's names for what a schema expects, as the other checks word them.
_WIRE_NAMES = {dict: "a map", list: "an array", str: "a string"}


def _type_name(value: Any) -> str:
    return "nil" if value is None else type(value).__name__


class Schema:
    """Checks one value; raises ArgError, returns nothing."""

    def check(self, value: Any, path: str = "") -> None:
        raise NotImplementedError

    def __call__(self, value: Any) -> None:
        self.check(value)


class Int(Schema):
    """An integer in [lo, hi]; bool is not an integer here."""

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi

    def check(self, value: Any, path: str = "") -> None:
        if type(value) is not int:
            raise ArgError(EINVAL, path, f"expected an integer, got {_type_name(value)}")
        if not self.lo <= value <= self.hi:
            raise ArgError(EINVAL, path, f"{value} is not in [{self.lo}, {self.hi}]")


U16 = Int(0, U16_MAX)  # domid_t
U32 = Int(0, U32_MAX)  # evtchn_port_t, grant_ref_t, grant_handle_t, unsigned int
U64 = Int(0, U64_MAX)  # uint64_t, xen_pfn_t
S64 = Int(S64_MIN, (1 << 63) - 1)


class Num(Schema):
    """A finite number in [lo, hi]: an int (not a bool) or a float."""

    def __init__(self, lo: float, hi: float) -> None:
        self.lo, self.hi = lo, hi

    def check(self, value: Any, path: str = "") -> None:
        if type(value) not in (int, float):
            raise ArgError(EINVAL, path, f"expected a number, got {_type_name(value)}")
        if not math.isfinite(value) or not self.lo <= value <= self.hi:
            raise ArgError(EINVAL, path, f"{value} is not in [{self.lo}, {self.hi}]")


class Bool(Schema):
    def check(self, value: Any, path: str = "") -> None:
        if type(value) is not bool:
            raise ArgError(EINVAL, path, f"expected a bool, got {_type_name(value)}")


class Str(Schema):
    def __init__(self, max_len: int) -> None:
        self.max_len = max_len

    def check(self, value: Any, path: str = "") -> None:
        if type(value) is not str:
            raise ArgError(EINVAL, path, f"expected a string, got {_type_name(value)}")
        if len(value) > self.max_len:
            raise ArgError(EINVAL, path, f"string of {len(value)} characters "
                           f"(at most {self.max_len})")


class Nil(Schema):
    def check(self, value: Any, path: str = "") -> None:
        if value is not None:
            raise ArgError(EINVAL, path, f"expected nil, got {_type_name(value)}")


class Maybe(Schema):
    """nil, or a value of `inner`."""

    def __init__(self, inner: Schema) -> None:
        self.inner = inner

    def check(self, value: Any, path: str = "") -> None:
        if value is not None:
            self.inner.check(value, path)


class List(Schema):
    def __init__(self, item: Schema, max_len: int, min_len: int = 0) -> None:
        self.item, self.max_len, self.min_len = item, max_len, min_len

    def check(self, value: Any, path: str = "") -> None:
        if type(value) is not list:
            raise ArgError(EFAULT, path, f"expected an array, got {_type_name(value)}")
        if not self.min_len <= len(value) <= self.max_len:
            raise ArgError(EINVAL, path, f"array of {len(value)} items "
                           f"(between {self.min_len} and {self.max_len})")
        for i, item in enumerate(value):
            self.item.check(item, f"{path}[{i}]")


class Struct(Schema):
    """A map with string keys: `required` fields, `optional` ones, no others
    (a field nobody reads is a caller's mistake worth an error)."""

    def __init__(self, required: Mapping[str, Schema] | None = None,
                 optional: Mapping[str, Schema] | None = None) -> None:
        self.required = dict(required or {})
        self.optional = dict(optional or {})
        self.fields = {**self.required, **self.optional}

    def check(self, value: Any, path: str = "") -> None:
        if type(value) is not dict:
            raise ArgError(EFAULT, path, f"expected a map, got {_type_name(value)}")
        for key in value:
            if key not in self.fields:  # str keys only: an int is never a field
                raise ArgError(EINVAL, path, f"unknown field {str(key)[:40]!r}")
        for key in self.required:
            if key not in value:
                raise ArgError(EFAULT, path, f"field {key!r} missing")
        for key, item in value.items():
            self.fields[key].check(item, f"{path}.{key}" if path else key)


NOTHING = Maybe(Struct())  # calls that take no argument: nil or an empty map


class Opaque(Schema):
    """Any msgpack value the hypervisor passes along without reading (a
    kernel's `announce` to its creator), bounded in depth, items and
    string length so that what is passed on is small. `top` is the type
    the outermost value must have."""

    def __init__(self, top: type, max_depth: int, max_items: int, max_str: int) -> None:
        self.top, self.max_depth = top, max_depth
        self.max_items, self.max_str = max_items, max_str

    def check(self, value: Any, path: str = "") -> None:
        if type(value) is not self.top:
            raise ArgError(EINVAL, path, f"expected {_WIRE_NAMES.get(self.top, self.top)}, "
                           f"got {_type_name(value)}")
        count = 0
        for item, depth in _walk(value, 0):
            count += 1
            if count > self.max_items:
                raise ArgError(EINVAL, path, f"more than {self.max_items} items")
            if depth > self.max_depth:
                raise ArgError(EINVAL, path, f"nested deeper than {self.max_depth}")
            if type(item) in (str, bytes) and len(item) > self.max_str:
                raise ArgError(EINVAL, path, f"a string longer than {self.max_str}")
            if type(item) is float and not math.isfinite(item):
                raise ArgError(EINVAL, path, "a float that is not finite")
            if type(item) not in _OPAQUE_TYPES:
                raise ArgError(EINVAL, path, f"a value of type {_type_name(item)}")


_OPAQUE_TYPES = (type(None), bool, int, float, str, bytes, list, dict)


def _walk(value: Any, depth: int) -> Iterator[tuple[Any, int]]:
    """Every value inside `value` (keys too), with its depth; iterative, so
    that nesting never costs Python stack."""
    stack = [(value, depth)]
    while stack:
        item, d = stack.pop()
        yield item, d
        if type(item) is list:
            stack.extend((x, d + 1) for x in item)
        elif type(item) is dict:
            for k, v in item.items():
                stack.append((k, d + 1))
                stack.append((v, d + 1))


def check_envelope(message: Any, max_vcpus: int) -> tuple[int, int, Any, int]:
    """`[nr, cmd, args, vcpu]`: a 4-item array of an op number, a command,
    the arguments (checked later, against the op's schema) and a vCPU the
    caller has. Returns the four items."""
    if type(message) is not list or len(message) != 4:
        raise ArgError(EINVAL, "hypercall", "expected [nr, cmd, args, vcpu]")
    nr, cmd, args, vcpu = message
    U32.check(nr, "nr")
    U32.check(cmd, "cmd")
    Int(0, max_vcpus - 1).check(vcpu, "vcpu")
    return nr, cmd, args, vcpu
