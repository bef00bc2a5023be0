"""Framing of the xenstore wire protocol (io/xs_wire.h), and payload parsing.

Every message is a 16-byte `xsd_sockmsg` header (type, req_id, tx_id, len:
little-endian uint32) and `len` bytes of payload. A header announcing more
than XENSTORE_PAYLOAD_MAX bytes is a protocol violation: xenstored drops
the connection (docs/misc/xenstore.txt), so :class:`Decoder` raises
:class:`WireError` and stays broken.

Payloads are NUL-terminated strings. The helpers here parse them the way
xenstored's C does: :func:`get_strings` (the strings up to the last NUL,
anything after it ignored), :func:`count_strings` (the number of NULs),
:func:`onearg` (exactly one string, the NUL being the last byte), and
:func:`atoi` / :func:`strtol` for numbers.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass

from hypervisor.public.io.xs_wire import (
    XENSTORE_PAYLOAD_MAX,
    XS_ERROR,
    xsd_sockmsg,
    xsd_sockmsg_type,
)

HEADER = struct.Struct("<IIII")
HEADER_SIZE = HEADER.size
assert HEADER_SIZE == ctypes.sizeof(xsd_sockmsg)


@dataclass(frozen=True)
class Message:
    """One xenstore message: an xsd_sockmsg header's fields and the payload."""

    type: int
    req_id: int
    tx_id: int
    payload: bytes

    @property
    def type_name(self) -> str:
        try:
            return xsd_sockmsg_type(self.type).name
        except ValueError:
            return f"UNKNOWN({self.type})"


class WireError(Exception):
    """A framing violation: the connection must be closed.

    `messages` are the complete messages that preceded the violation in the
    data fed; they were well formed and are still to be handled."""

    def __init__(self, reason: str, messages: list[Message] | None = None) -> None:
        super().__init__(reason)
        self.messages = list(messages or [])


def encode(msg: Message) -> bytes:
    """The bytes of `msg` on the wire: header, then payload."""
    return HEADER.pack(msg.type, msg.req_id, msg.tx_id, len(msg.payload)) + msg.payload


class Decoder:
    """Splits a byte stream, fed in arbitrary pieces, into messages."""

    def __init__(self, max_payload: int = XENSTORE_PAYLOAD_MAX) -> None:
        self._buf = bytearray()
        self._max = max_payload
        self._broken: str | None = None

    @property
    def pending(self) -> int:
        """Bytes received that do not make a complete message yet."""
        return len(self._buf)

    @property
    def broken(self) -> bool:
        return self._broken is not None

    def feed(self, data: bytes) -> list[Message]:
        """Append `data`; return the messages it completes, in order."""
        if self._broken is not None:
            raise WireError(self._broken)
        buf = self._buf
        buf += data
        out: list[Message] = []
        pos = 0
        try:
            while len(buf) - pos >= HEADER_SIZE:
                type_, req_id, tx_id, length = HEADER.unpack_from(buf, pos)
                if length > self._max:
                    # Checked as soon as the header is complete, as Xen does.
                    self._broken = (f"header announces a {length}-byte payload "
                                    f"(at most {self._max})")
                    pos = len(buf)
                    raise WireError(self._broken, out)
                end = pos + HEADER_SIZE + length
                if len(buf) < end:
                    break
                out.append(Message(type_, req_id, tx_id,
                                   bytes(buf[pos + HEADER_SIZE:end])))
                pos = end
        finally:
            del buf[:pos]
        return out


# -- replies ------------------------------------------------------------------------


def reply_to(request: Message, payload: bytes, type_: int | None = None) -> Message:
    """A reply: the request's type (unless given), req_id and tx_id."""
    return Message(request.type if type_ is None else type_,
                   request.req_id, request.tx_id, payload)


def error_reply(request: Message, name: str) -> Message:
    """An XS_ERROR reply carrying the error's name, e.g. "ENOENT\\0"."""
    return Message(XS_ERROR, request.req_id, request.tx_id,
                   name.encode("ascii") + b"\0")


# -- payloads -----------------------------------------------------------------------


def join_strings(*strings: bytes | str) -> bytes:
    """Each string followed by a NUL: "a", "b" -> b"a\\0b\\0"."""
    return b"".join((s.encode("latin-1") if isinstance(s, str) else s) + b"\0"
                    for s in strings)


def get_strings(payload: bytes) -> list[bytes]:
    """The NUL-terminated strings of `payload`; bytes after the last NUL
    (an unterminated string) are ignored, as xenstored's get_strings()."""
    parts = payload.split(b"\0")
    return parts[:-1]


def split_strings(payload: bytes) -> list[bytes]:
    """Alias of :func:`get_strings`."""
    return get_strings(payload)


def count_strings(payload: bytes) -> int:
    """The number of NULs (xenstore_count_strings())."""
    return payload.count(b"\0")


def onearg(payload: bytes) -> bytes | None:
    """The single argument of a one-argument request, or None unless the
    payload is non-empty and its only NUL is its last byte."""
    if not payload or payload.find(b"\0") != len(payload) - 1:
        return None
    return payload[:-1]


def decode(raw: bytes) -> str:
    """Payload bytes as str, one character per byte (lossless)."""
    return raw.decode("latin-1")


_SPACE = " \t\n\v\f\r"
_LONG_MAX = (1 << 63) - 1
_LONG_MIN = -(1 << 63)


def strtol(text: str, base: int = 10) -> tuple[int, int]:
    """C's strtol() for base 10 or 0 (0x.. hex, 0.. octal): (value, end).

    `end` is the index after the number, or 0 if there was no number; the
    value saturates at the limits of a 64-bit long."""
    i = 0
    while i < len(text) and text[i] in _SPACE:
        i += 1
    negative = False
    if i < len(text) and text[i] in "+-":
        negative = text[i] == "-"
        i += 1
    if base == 0:
        if (text[i:i + 2].lower() == "0x" and i + 2 < len(text)
                and text[i + 2].lower() in "0123456789abcdef"):
            base, i = 16, i + 2
        elif text[i:i + 1] == "0":
            base = 8
        else:
            base = 10
    digits = "0123456789abcdef"[:base]
    start = i
    value = 0
    while i < len(text) and text[i].lower() in digits:
        value = value * base + digits.index(text[i].lower())
        i += 1
    if i == start:
        return 0, 0
    value = -value if negative else value
    return max(_LONG_MIN, min(_LONG_MAX, value)), i


def atoi(text: str | bytes) -> int:
    """C's atoi(): the leading decimal number as a (wrapped) 32-bit int."""
    if isinstance(text, bytes):
        text = decode(text)
    value = strtol(text, 10)[0] & 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def atou(text: str | bytes) -> int:
    """atoi() stored into an unsigned int, as xenstored does with domids."""
    return atoi(text) & 0xFFFFFFFF
