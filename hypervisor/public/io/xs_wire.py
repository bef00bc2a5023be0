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
