"""xenstored's side of the xenstore wire protocol (io/xs_wire.h): replies and
payload parsing.  The framing itself (the `xsd_sockmsg` header,
:class:`Message`, :class:`Decoder`, :func:`encode`) is the ABI module's,
shared with the xenbus client.

Payloads are NUL-terminated strings. The helpers here parse them the way
xenstored's C does: :func:`get_strings` (the strings up to the last NUL,
anything after it ignored), :func:`count_strings` (the number of NULs),
:func:`onearg` (exactly one string, the NUL being the last byte), and
:func:`atoi` / :func:`strtol` for numbers.
"""

from __future__ import annotations

from hypervisor.public.io.xs_wire import (
    XS_ERROR,
    XSD_SOCKMSG,
    Decoder,
    Message,
    WireError,
    encode,
)

__all__ = ["HEADER_SIZE", "Decoder", "Message", "WireError", "encode"]

HEADER_SIZE = XSD_SOCKMSG.size


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
