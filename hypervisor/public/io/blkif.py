"""io/blkif.h: the PV block device protocol (blkfront <-> blkback).

The frontend (in the guest) puts `blkif_request`s on a shared ring and the
backend (in the disk driver domain) answers each with a `blkif_response`
carrying the request's `id`.  The ring is Xen's generic one (io/ring.h,
``DEFINE_RING_TYPES(blkif, ...)``): a 64-byte header of free-running
indexes (req_prod, req_event, rsp_prod, rsp_event, padding) followed by a
power-of-two number of `blkif_sring_entry` slots (112 bytes: a request and
its response share a slot), :func:`blk_ring_size` per ring size.  Data
never travels in the ring: each segment names a granted page (`gref`) and
the 512-byte sectors `first_sect..last_sect` (inclusive, at most 7 in a
4096-byte page) of it to transfer.  `sector_number` counts 512-byte sectors
unless the frontend wrote feature-large-sector-size.

Requests: BLKIF_OP_READ / WRITE carry 1..BLKIF_MAX_SEGMENTS_PER_REQUEST
(11) segments; FLUSH_DISKCACHE makes earlier completed writes durable (it
may carry segments to write first: Linux sends FUA writes this way);
WRITE_BARRIER additionally orders (optional, rarely offered); DISCARD
(`blkif_request_discard`) gives up `nr_sectors` sectors; INDIRECT
(`blkif_request_indirect`) reads or writes up to feature-max-indirect-
segments segments listed in up to BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST
granted pages of SEGS_PER_INDIRECT_FRAME (512) segments each.  Responses:
BLKIF_RSP_OKAY, BLKIF_RSP_ERROR (I/O error or bad request),
BLKIF_RSP_EOPNOTSUPP (operation not offered; may happen at any time for
the optional operations).  Notifications use the ring's hold-off: the
backend sets req_event (RING_FINAL_CHECK_FOR_REQUESTS), the frontend
rsp_event.

XenStore nodes (strings; numbers in decimal; a default applies when the
node is absent).  Backend, /local/domain/<backend>/backend/vbd/<front>/<dev>:
  mode                   "r" or "w": access granted to the frontend (private)
  params                 free-form string for the hotplug script (private)
  type                   "file", "phy" or "tap" (private)
  physical-device        "MAJOR:MINOR" of the backing device (private)
  physical-device-path   absolute path of the disk image (private)
  direct-io-safe         0/1, default 0: O_DIRECT may be used
  discard-enable         0/1, default 1: toolstack lets the backend offer discard
  feature-barrier        0/1, default 0: BLKIF_OP_WRITE_BARRIER accepted
  feature-flush-cache    0/1, default 0: BLKIF_OP_FLUSH_DISKCACHE accepted
  feature-discard        0/1, default 0: BLKIF_OP_DISCARD accepted
  discard-granularity    bytes per discard extent, default sector-size
  discard-alignment      byte offset of the first discard extent, default 0
  discard-secure         0/1, default 0: BLKIF_DISCARD_SECURE honoured
  feature-persistent     0/1, default 0: backend keeps grants mapped
  feature-max-indirect-segments  max segments of a BLKIF_OP_INDIRECT
                         request; absent: no indirect requests
  max-ring-page-order    uint32, default 0: ring of up to 2**order pages
  max-ring-pages         deprecated: ring pages, power of two, default 1
  multi-queue-max-queues max rings (queues) the backend accepts
  sectors                uint64: disk size in units of sector-size
  sector-size            uint32, logical block size, power of two >= 512
                         (512 unless the frontend has feature-large-sector-size)
  physical-sector-size   uint32, multiple of sector-size, default sector-size
  info                   uint32 bitmap of VDISK_CDROM/REMOVABLE/READONLY
Frontend, /local/domain/<front>/device/vbd/<dev>:
  ring-ref               grant of the sole ring page (one-page ring)
  ring-refN              grant of ring page N, N = 0..2**ring-page-order - 1
                         (multi-page ring: no ring-ref node)
  ring-page-order        uint32, default 0, at most max-ring-page-order
  num-ring-pages         deprecated: ring pages, default 1
  event-channel          uint32: the port signalling ring activity
  multi-queue-num-queues 1..multi-queue-max-queues; with two or more, each
                         queue-N/ holds that ring's ring-ref(N) and
                         event-channel and the top-level ones are absent
  protocol               XEN_IO_PROTO_ABI_*, default the native ABI
  feature-persistent     0/1, default 0: frontend reuses the same grants
  feature-large-sector-size  0/1, default 0: sector quantities are in
                         sector-size units instead of 512 bytes
  trusted                0/1, default 1: 0 means protect from the backend
  device-type            "disk", "cdrom", "floppy", ...
  virtual-device         uint32: which device to present (vbd-interface.txt)

Start-up (both ends start in Initialising, the toolstack made the nodes):
  Back:  open and validate the device, publish features and transport
         parameters -> InitWait.
  Front: read the backend's features, allocate the ring, publish ring-ref,
         event-channel, protocol... -> Initialised.
  Back:  read the frontend's parameters, map the ring, bind the event
         channel, publish sectors/info/sector-size -> Connected.
  Front: read the device properties, create the disk -> Connected.
A frontend may go to Initialised without waiting for InitWait, and a
backend to Initialised without waiting for the frontend: defaults are then
in effect, and each end must tolerate the skipped transitions.
"""

import ctypes
from typing import NamedTuple

from .. import xen
from ..grant_table import grant_ref_t
from ..pyxen.layout import layout

# The macros blkif_vdev_t and blkif_sector_t.
blkif_vdev_t = ctypes.c_uint16
blkif_sector_t = ctypes.c_uint64

# Request codes.
BLKIF_OP_READ = 0
BLKIF_OP_WRITE = 1
BLKIF_OP_WRITE_BARRIER = 2    # feature-barrier
BLKIF_OP_FLUSH_DISKCACHE = 3  # feature-flush-cache
BLKIF_OP_RESERVED_1 = 4       # SLES device-specific packets
BLKIF_OP_DISCARD = 5          # feature-discard
BLKIF_OP_INDIRECT = 6         # feature-max-indirect-segments

BLKIF_MAX_SEGMENTS_PER_REQUEST = 11
BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST = 8

# blkif_request_discard.flag.
BLKIF_DISCARD_SECURE = 1 << 0  # ignored if discard-secure=0

# Status return codes.
BLKIF_RSP_EOPNOTSUPP = -2  # operation not supported
BLKIF_RSP_ERROR = -1       # operation failed (-EIO)
BLKIF_RSP_OKAY = 0

# The "info" node's bits.
VDISK_CDROM = 0x1
VDISK_REMOVABLE = 0x2
VDISK_READONLY = 0x4

#: Bytes in the 512-byte sectors of first_sect/last_sect/sector_number.
PYXEN_SECTOR_SIZE = 512
PYXEN_SECTOR_SHIFT = 9


class blkif_request_segment(ctypes.Structure):
    _fields_ = [
        ("gref", grant_ref_t),           # reference to the I/O buffer frame
        ("first_sect", ctypes.c_uint8),  # first sector in frame (inclusive)
        ("last_sect", ctypes.c_uint8),   # last sector in frame (inclusive)
    ]


class blkif_request(ctypes.Structure):
    """The starting ring element of every request."""

    _fields_ = [
        ("operation", ctypes.c_uint8),    # BLKIF_OP_*
        ("nr_segments", ctypes.c_uint8),
        ("handle", blkif_vdev_t),         # only for read/write requests
        ("id", ctypes.c_uint64),          # private guest value, echoed
        ("sector_number", blkif_sector_t),  # start sector (r/w only)
        ("seg", blkif_request_segment * BLKIF_MAX_SEGMENTS_PER_REQUEST),
    ]


class blkif_request_discard(ctypes.Structure):
    """blkif_request when operation == BLKIF_OP_DISCARD."""

    _fields_ = [
        ("operation", ctypes.c_uint8),    # BLKIF_OP_DISCARD
        ("flag", ctypes.c_uint8),         # BLKIF_DISCARD_SECURE or zero
        ("handle", blkif_vdev_t),
        ("id", ctypes.c_uint64),
        ("sector_number", blkif_sector_t),
        ("nr_sectors", ctypes.c_uint64),  # contiguous sectors to discard
    ]


class blkif_request_indirect(ctypes.Structure):
    """blkif_request when operation == BLKIF_OP_INDIRECT (no i386 pad:
    pyxen's ABI is a 64-bit one)."""

    _fields_ = [
        ("operation", ctypes.c_uint8),    # BLKIF_OP_INDIRECT
        ("indirect_op", ctypes.c_uint8),  # BLKIF_OP_READ or BLKIF_OP_WRITE
        ("nr_segments", ctypes.c_uint16),
        ("id", ctypes.c_uint64),
        ("sector_number", blkif_sector_t),
        ("handle", blkif_vdev_t),
        ("indirect_grefs", grant_ref_t * BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST),
    ]


class blkif_response(ctypes.Structure):
    _fields_ = [
        ("id", ctypes.c_uint64),         # copied from the request
        ("operation", ctypes.c_uint8),   # copied from the request
        ("status", ctypes.c_int16),      # BLKIF_RSP_*
    ]


class blkif_sring_entry(ctypes.Union):
    """One ring slot: DEFINE_RING_TYPES' union of request and response."""

    _fields_ = [("req", blkif_request), ("rsp", blkif_response)]


#: Bytes of one ring slot (max of request and response): 112.
BLKIF_SRING_ENTRY_SIZE = ctypes.sizeof(blkif_sring_entry)
#: Offset of the first slot in the shared ring (struct blkif_sring).
BLKIF_SRING_RING_OFFSET = 64
#: Segments one indirect page holds: PAGE_SIZE / sizeof(segment) = 512.
SEGS_PER_INDIRECT_FRAME = xen.PAGE_SIZE // ctypes.sizeof(blkif_request_segment)


def blk_ring_size(nr_ring_pages: int = 1) -> int:
    """Slots in a ring of `nr_ring_pages` pages: __CONST_RING_SIZE(blkif,
    nr_ring_pages * PAGE_SIZE), rounded down to a power of two."""
    slots = (nr_ring_pages * xen.PAGE_SIZE - BLKIF_SRING_RING_OFFSET) // BLKIF_SRING_ENTRY_SIZE
    return 1 << (slots.bit_length() - 1) if slots else 0


#: Slots in a one-page ring: 32.
XEN_BLKIF_REQS_PER_PAGE = blk_ring_size(1)


def indirect_pages(nr_segments: int) -> int:
    """Indirect pages holding `nr_segments` segments (Linux's INDIRECT_PAGES)."""
    return -(-nr_segments // SEGS_PER_INDIRECT_FRAME)


# -- the byte codecs of the ring entries, for both ends ------------------------
#
# Built from the ctypes layouts above (see pyxen/layout.py): blkfront and
# blkback encode and decode with these, so each layout is said once.

#: The header of a read / write / flush request: operation, nr_segments,
#: handle, id, sector_number (its segments follow at blkif_request.seg).
REQUEST_RW = layout(blkif_request, ("operation", "nr_segments", "handle", "id",
                                    "sector_number"))
#: A discard request: operation, flag, handle, id, sector_number, nr_sectors.
REQUEST_DISCARD = layout(blkif_request_discard)
#: An indirect request in its ring slot: operation, indirect_op,
#: nr_segments, id, sector_number, handle, indirect_grefs[8].
REQUEST_INDIRECT = layout(blkif_request_indirect, size=BLKIF_SRING_ENTRY_SIZE)
#: blkif_response: id, operation, status (16 bytes, padding included).
RESPONSE = layout(blkif_response)


class BlkifResponse(NamedTuple):
    """A decoded blkif_response."""

    id: int
    operation: int
    status: int


def make_response(id: int, operation: int, status: int) -> bytes:
    """A blkif_response (16 bytes, padding zeroed), written at the start of
    the ring slot: `id` and `operation` echo the request."""
    if not 0 <= id < 1 << 64 or not 0 <= operation <= 0xFF or not -0x8000 <= status <= 0x7FFF:
        raise ValueError(f"response ({id}, {operation}, {status}) out of range")
    return RESPONSE.pack(id, operation, status)


def parse_response(raw: bytes | bytearray | memoryview) -> BlkifResponse:
    """Decode a blkif_response: the first 16 bytes of `raw` (a response or
    a whole slot), copied first."""
    data = bytes(raw[:RESPONSE.size])
    if len(data) != RESPONSE.size:
        raise ValueError(f"a response is {RESPONSE.size} bytes, not {len(data)}")
    return BlkifResponse._make(RESPONSE.unpack(data))
