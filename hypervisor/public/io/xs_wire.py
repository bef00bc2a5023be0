"""io/xs_wire.h: XenStore's wire protocol.

Every message is an `xsd_sockmsg` header (type, req_id, tx_id, len: four
little-endian uint32, 16 bytes) followed by `len` bytes of payload, at most
XENSTORE_PAYLOAD_MAX. Payloads are NUL-terminated strings (a path, a path
and a value, ...). A reply echoes req_id and tx_id and has the request's
type, or XS_ERROR with the error's name (e.g. "EACCES\\0") as payload.
Watch events arrive unsolicited as XS_WATCH_EVENT "path\\0token\\0".

A domain talks to xenstored over `xenstore_domain_interface`, one shared
page with two 1024-byte byte rings: `req` (domain -> xenstored) and `rsp`
(xenstored -> domain, replies and watch events). Indexes are free-running
uint32; MASK_XENSTORE_IDX gives the offset. A side writes data, then
advances its producer index, then notifies the event channel.
"""

import ctypes
import enum
from dataclasses import dataclass

from ..pyxen.layout import layout

# enum xsd_sockmsg_type
XS_CONTROL = 0
XS_DEBUG = XS_CONTROL
XS_DIRECTORY = 1
XS_READ = 2
XS_GET_PERMS = 3
XS_WATCH = 4
XS_UNWATCH = 5
XS_TRANSACTION_START = 6
XS_TRANSACTION_END = 7
XS_INTRODUCE = 8
XS_RELEASE = 9
XS_GET_DOMAIN_PATH = 10
XS_WRITE = 11
XS_MKDIR = 12
XS_RM = 13
XS_SET_PERMS = 14
XS_WATCH_EVENT = 15
XS_ERROR = 16
XS_IS_DOMAIN_INTRODUCED = 17
XS_RESUME = 18
XS_SET_TARGET = 19
XS_RESET_WATCHES = XS_SET_TARGET + 2
XS_DIRECTORY_PART = 22
XS_TYPE_COUNT = 23
XS_INVALID = 0xFFFF


class xsd_sockmsg_type(enum.IntEnum):
    """The message types by name, for logs and dispatch tables."""

    XS_CONTROL = XS_CONTROL
    XS_DIRECTORY = XS_DIRECTORY
    XS_READ = XS_READ
    XS_GET_PERMS = XS_GET_PERMS
    XS_WATCH = XS_WATCH
    XS_UNWATCH = XS_UNWATCH
    XS_TRANSACTION_START = XS_TRANSACTION_START
    XS_TRANSACTION_END = XS_TRANSACTION_END
    XS_INTRODUCE = XS_INTRODUCE
    XS_RELEASE = XS_RELEASE
    XS_GET_DOMAIN_PATH = XS_GET_DOMAIN_PATH
    XS_WRITE = XS_WRITE
    XS_MKDIR = XS_MKDIR
    XS_RM = XS_RM
    XS_SET_PERMS = XS_SET_PERMS
    XS_WATCH_EVENT = XS_WATCH_EVENT
    XS_ERROR = XS_ERROR
    XS_IS_DOMAIN_INTRODUCED = XS_IS_DOMAIN_INTRODUCED
    XS_RESUME = XS_RESUME
    XS_SET_TARGET = XS_SET_TARGET
    XS_RESET_WATCHES = XS_RESET_WATCHES
    XS_DIRECTORY_PART = XS_DIRECTORY_PART


XS_WRITE_NONE = "NONE"
XS_WRITE_CREATE = "CREATE"
XS_WRITE_CREATE_EXCL = "CREATE|EXCL"

# xsd_errors[]: the names a reply carries, in the header's order.
xsd_errors = (
    "EINVAL", "EACCES", "EEXIST", "EISDIR", "ENOENT", "ENOMEM", "ENOSPC", "EIO",
    "ENOTEMPTY", "ENOSYS", "EROFS", "EBUSY", "EAGAIN", "EISCONN", "E2BIG", "EPERM",
)


class xsd_sockmsg(ctypes.LittleEndianStructure):
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("req_id", ctypes.c_uint32),
        ("tx_id", ctypes.c_uint32),
        ("len", ctypes.c_uint32),
    ]


# enum xs_watch_type: field order of a watch event's payload
XS_WATCH_PATH = 0
XS_WATCH_TOKEN = 1

XENSTORE_RING_SIZE = 1024
XENSTORE_RING_IDX = ctypes.c_uint32


def MASK_XENSTORE_IDX(idx: int) -> int:
    return idx & (XENSTORE_RING_SIZE - 1)


class xenstore_domain_interface(ctypes.LittleEndianStructure):
    _fields_ = [
        ("req", ctypes.c_char * XENSTORE_RING_SIZE),
        ("rsp", ctypes.c_char * XENSTORE_RING_SIZE),
        ("req_cons", XENSTORE_RING_IDX),
        ("req_prod", XENSTORE_RING_IDX),
        ("rsp_cons", XENSTORE_RING_IDX),
        ("rsp_prod", XENSTORE_RING_IDX),
        ("server_features", ctypes.c_uint32),
        ("connection", ctypes.c_uint32),
        ("error", ctypes.c_uint32),
    ]


XENSTORE_PAYLOAD_MAX = 4096
XENSTORE_ABS_PATH_MAX = 3072
XENSTORE_REL_PATH_MAX = 2048

XENSTORE_SERVER_FEATURE_RECONNECTION = 1
XENSTORE_SERVER_FEATURE_ERROR = 2

XENSTORE_CONNECTED = 0
XENSTORE_RECONNECT = 1

XENSTORE_ERROR_NONE = 0
XENSTORE_ERROR_COMM = 1
XENSTORE_ERROR_RINGIDX = 2
XENSTORE_ERROR_PROTO = 3


# -- framing, for both ends ----------------------------------------------------
#
# The xenbus client (every domain) and xenstored frame and unframe messages
# with these: one header codec, built from the ctypes layout above, and one
# decoder.

#: The xsd_sockmsg header: type, req_id, tx_id, len (16 bytes).
XSD_SOCKMSG = layout(xsd_sockmsg)


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
    return XSD_SOCKMSG.pack(msg.type, msg.req_id, msg.tx_id, len(msg.payload)) + msg.payload


class Decoder:
    """Splits a byte stream, fed in arbitrary pieces, into messages.

    A header announcing more than `max_payload` bytes (XENSTORE_PAYLOAD_MAX)
    is a protocol violation that ends the connection (docs/misc/xenstore.txt):
    :meth:`feed` raises :class:`WireError` and the decoder stays broken."""

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
        header = XSD_SOCKMSG.size
        try:
            while len(buf) - pos >= header:
                type_, req_id, tx_id, length = XSD_SOCKMSG.unpack_from(buf, pos)
                if length > self._max:
                    # Checked as soon as the header is complete, as Xen does.
                    self._broken = (f"header announces a {length}-byte payload "
                                    f"(at most {self._max})")
                    pos = len(buf)
                    raise WireError(self._broken, out)
                end = pos + header + length
                if len(buf) < end:
                    break
                out.append(Message(type_, req_id, tx_id, bytes(buf[pos + header:end])))
                pos = end
        finally:
            del buf[:pos]
        return out
