"""io/netif.h: the PV network device protocol (netfront <-> netback).

A vif has two rings per queue, both Xen's generic ring (io/ring.h) in one
granted page each: the **tx** ring (``DEFINE_RING_TYPES(netif_tx, ...)``:
guest transmit; 12-byte `netif_tx_request`s from the frontend, 4-byte
`netif_tx_response`s back; 12-byte slots, 256 of them in a page) and the
**rx** ring (``DEFINE_RING_TYPES(netif_rx, ...)``: guest receive; the
frontend posts empty granted pages as 8-byte `netif_rx_request`s and the
backend answers each with an 8-byte `netif_rx_response` after copying
packet data into the page; 8-byte slots, 256 in a page).  Packet data
never travels in a ring: each slot names a granted page (``gref``) and a
byte range of it.

Guest transmit (frontend -> backend), one packet:

  slot 1:     netif_tx_request  flags = NETTXF_*, size = the WHOLE packet's
                                size; offset + (its own data length) must
                                stay within the page
  [extra 1]:  netif_extra_info  only if slot 1 has NETTXF_extra_info
  [extra N]:  netif_extra_info  only if extra N-1 has XEN_NETIF_EXTRA_FLAG_MORE
  slot 2..N:  netif_tx_request  only while the previous request (not extra)
                                has NETTXF_more_data; size = that slot's
                                own data length, within its page

So slot 1's own data length is only known after the chain: its size minus
the sizes of slots 2..N (which can therefore never add up to more than
slot 1's size).  An extra-info slot is a tx ring slot (12 bytes) holding
an 8-byte `netif_extra_info` (and 4 bytes of padding); it has no id.  The
backend answers every slot exactly once: each request slot with a
`netif_tx_response` carrying its id and NETIF_RSP_OKAY / ERROR / DROPPED,
each extra slot with status NETIF_RSP_NULL (in the response slot right
after slot 1's).  Responses may come in any order across packets, but a
frontend must not reuse an id before its response.  A backend must
accept packets of up to XEN_NETIF_NR_SLOTS_MIN (18) request slots (it may
take more; a packet beyond its limit is dropped); a packet is
never larger than XEN_NETIF_MAX_TX_SIZE (65535, the size field's range).
Checksum flags: NETTXF_csum_blank (the L4 checksum is not filled in:
offload; Linux's netfront sets NETTXF_data_validated along with it),
NETTXF_data_validated (the data needs no checksum check).

Guest receive (backend -> frontend), one packet:

  slot 1:     netif_rx_response flags = NETRXF_*, status = this slot's data
                                length (negative: NETIF_RSP_*), offset = where
                                in the page the data starts
  [extra 1..N]: netif_extra_info as for transmit, only if slot 1 has
                                NETRXF_extra_info (8 bytes: the whole slot)
  slot 2..N:  netif_rx_response only while the previous response (not extra)
                                has NETRXF_more_data

Here every slot carries its own length: the packet's size is their sum.
The frontend identifies an rx buffer by ring position, not by id (extras
overlay the id): a backend must put each response (and each extra) in the
slot of the request it consumed, so it consumes requests in order, one per
data slot and one per extra slot.  Without feature-sg a frontend only
takes single-slot packets (at most one page).

Extra info types: XEN_NETIF_EXTRA_TYPE_GSO (u.gso: size = MSS, must not be
0; type = XEN_NETIF_GSO_TYPE_TCPV4 / TCPV6; features: none defined), MCAST_ADD
/ MCAST_DEL (u.mcast.addr: multicast filter updates, transmit only, with
feature-multicast-control), HASH (u.hash: type = one of
_XEN_NETIF_CTRL_HASH_TYPE_*, algorithm, value: the 32-bit hash, little
endian).  Type NONE (0) and anything >= XEN_NETIF_EXTRA_TYPE_MAX are
invalid.

Notifications use the rings' hold-off (req_event / rsp_event).  A frontend
that kicks the backend after posting rx requests says feature-rx-notify
(Linux's netback requires it; without it a backend would have to poll).

XenStore nodes (strings; numbers in decimal; "0"/"1" booleans; a default
applies when the node is absent).  Backend,
/local/domain/<backend>/backend/vif/<front>/<handle>:
  handle                  uint: the vif's number (toolstack)
  mac                     "aa:bb:cc:dd:ee:ff": the frontend's MAC (toolstack)
  bridge / script / ip    hotplug script parameters (toolstack, private)
  rate                    "bytes,usec": transmit credit, default unlimited
  hotplug-status          "connected" once the hotplug script ran (private)
  feature-sg              0/1, default 0: accepts multi-slot tx packets
  feature-gso-tcpv4       0/1, default 0: accepts GSO TCPv4 tx packets
  feature-gso-tcpv6       0/1, default 0: accepts GSO TCPv6 tx packets
  feature-ipv6-csum-offload 0/1, default 0: IPv6 csum_blank packets accepted
  feature-rx-copy         0/1, default 0: rx by grant copy (the only mode a
                          modern frontend asks for)
  feature-rx-flip         0/1, default 0: rx by page flipping (obsolete)
  feature-multicast-control          0/1, default 0: MCAST_ADD/DEL extras
  feature-dynamic-multicast-control  0/1, default 0: request-multicast-
                          control may change while connected
  feature-split-event-channels 0/1, default 0: separate tx and rx ports
  multi-queue-max-queues  uint, default 1 (absent: no multi-queue)
  feature-ctrl-ring       0/1, default 0: a control ring is accepted
  feature-xdp-headroom    0/1, default 0 (Linux extension, not in netif.h)
  carrier                 0/1, default 1 (absent): the link is up
Frontend, /local/domain/<front>/device/vif/<handle>:
  handle, mac, backend, backend-id, state   (toolstack / xenbus)
  mtu                     uint, default 1500: MTU the toolstack suggests
  tx-ring-ref             grant of the tx ring page
  rx-ring-ref             grant of the rx ring page
  event-channel           uint: the port for both rings, or
  event-channel-tx / event-channel-rx  two ports (feature-split-event-
                          channels); then event-channel is absent
  request-rx-copy         0/1, default 0: must be 1 (rx by copy)
  feature-rx-notify       0/1, default 0: the frontend kicks after posting
                          rx requests
  feature-sg              0/1, default 0: accepts multi-slot rx packets
  feature-gso-tcpv4       0/1, default 0: accepts GSO TCPv4 rx packets
  feature-gso-tcpv6       0/1, default 0: accepts GSO TCPv6 rx packets
  feature-gso-tcpv4-prefix / -tcpv6-prefix  obsolete (NETRXF_gso_prefix)
  feature-no-csum-offload 0/1, default 0: IPv4 csum_blank rx not accepted
  feature-ipv6-csum-offload 0/1, default 0: IPv6 csum_blank rx accepted
  request-multicast-control 0/1, default 0: filter rx multicast
  multi-queue-num-queues  1..multi-queue-max-queues, default 1; with two or
                          more, each queue-N/ (N = 0..num-1) holds that
                          queue's tx-ring-ref, rx-ring-ref and event
                          channel node(s), and the top-level ones are absent
  ctrl-ring-ref / event-channel-ctrl  the control ring (feature-ctrl-ring)
  trusted                 0/1, default 1: 0 means protect from the backend
  xdp-headroom            uint, default 0 (Linux extension)

Start-up: the backend publishes its features -> InitWait; the frontend
reads them, allocates and grants its rings, posts rx buffers, publishes
its nodes -> Connected (netfront skips Initialised); the backend reads
them, maps the rings, binds the ports -> Connected.

Control ring (``DEFINE_RING_TYPES(xen_netif_ctrl, ...)``): 16-byte
`xen_netif_ctrl_request`s and `xen_netif_ctrl_response`s for the hash
(XEN_NETIF_CTRL_TYPE_*) and static-grant operations; answered
XEN_NETIF_CTRL_STATUS_*.  pyxen's netback offers none of it.
"""

import ctypes
from typing import NamedTuple

from .. import xen
from ..grant_table import grant_ref_t
from ..pyxen.layout import Column, layout

XEN_NETIF_NR_SLOTS_MIN = 18

# Hash types (bits of XEN_NETIF_CTRL_TYPE_{GET,SET}_HASH_FLAGS; the bit
# numbers are the u.hash.type of an extra info).
_XEN_NETIF_CTRL_HASH_TYPE_IPV4 = 0
XEN_NETIF_CTRL_HASH_TYPE_IPV4 = 1 << _XEN_NETIF_CTRL_HASH_TYPE_IPV4
_XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP = 1
XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP = 1 << _XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP
_XEN_NETIF_CTRL_HASH_TYPE_IPV6 = 2
XEN_NETIF_CTRL_HASH_TYPE_IPV6 = 1 << _XEN_NETIF_CTRL_HASH_TYPE_IPV6
_XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP = 3
XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP = 1 << _XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP

# Hash algorithms.
XEN_NETIF_CTRL_HASH_ALGORITHM_NONE = 0
XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ = 1

# Control request types.
XEN_NETIF_CTRL_TYPE_INVALID = 0
XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS = 1
XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS = 2
XEN_NETIF_CTRL_TYPE_SET_HASH_KEY = 3
XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE = 4
XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE = 5
XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING = 6
XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM = 7
XEN_NETIF_CTRL_TYPE_GET_GREF_MAPPING_SIZE = 8
XEN_NETIF_CTRL_TYPE_ADD_GREF_MAPPING = 9
XEN_NETIF_CTRL_TYPE_DEL_GREF_MAPPING = 10

# Control response statuses.
XEN_NETIF_CTRL_STATUS_SUCCESS = 0
XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED = 1
XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER = 2
XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW = 3

# xen_netif_gref.flags.
_XEN_NETIF_CTRLF_GREF_readonly = 0
XEN_NETIF_CTRLF_GREF_readonly = 1 << _XEN_NETIF_CTRLF_GREF_readonly

# netif_tx_request.flags.
_NETTXF_csum_blank = 0
NETTXF_csum_blank = 1 << _NETTXF_csum_blank          # L4 checksum not filled in
_NETTXF_data_validated = 1
NETTXF_data_validated = 1 << _NETTXF_data_validated  # checksum already checked
_NETTXF_more_data = 2
NETTXF_more_data = 1 << _NETTXF_more_data            # another request follows
_NETTXF_extra_info = 3
NETTXF_extra_info = 1 << _NETTXF_extra_info          # extra info slot(s) follow

XEN_NETIF_MAX_TX_SIZE = 0xFFFF

# netif_extra_info.type.
XEN_NETIF_EXTRA_TYPE_NONE = 0       # never used: invalid
XEN_NETIF_EXTRA_TYPE_GSO = 1        # u.gso
XEN_NETIF_EXTRA_TYPE_MCAST_ADD = 2  # u.mcast
XEN_NETIF_EXTRA_TYPE_MCAST_DEL = 3  # u.mcast
XEN_NETIF_EXTRA_TYPE_HASH = 4       # u.hash
XEN_NETIF_EXTRA_TYPE_MAX = 5

# netif_extra_info.flags.
_XEN_NETIF_EXTRA_FLAG_MORE = 0
XEN_NETIF_EXTRA_FLAG_MORE = 1 << _XEN_NETIF_EXTRA_FLAG_MORE

# u.gso.type.
XEN_NETIF_GSO_TYPE_NONE = 0
XEN_NETIF_GSO_TYPE_TCPV4 = 1
XEN_NETIF_GSO_TYPE_TCPV6 = 2

# netif_rx_response.flags.
_NETRXF_data_validated = 0
NETRXF_data_validated = 1 << _NETRXF_data_validated
_NETRXF_csum_blank = 1
NETRXF_csum_blank = 1 << _NETRXF_csum_blank
_NETRXF_more_data = 2
NETRXF_more_data = 1 << _NETRXF_more_data
_NETRXF_extra_info = 3
NETRXF_extra_info = 1 << _NETRXF_extra_info
_NETRXF_gso_prefix = 4
NETRXF_gso_prefix = 1 << _NETRXF_gso_prefix  # deprecated

# Response statuses (Xen's names; Linux calls them XEN_NETIF_RSP_*).
NETIF_RSP_DROPPED = -2
NETIF_RSP_ERROR = -1
NETIF_RSP_OKAY = 0
NETIF_RSP_NULL = 1  # the "response" to an extra info slot
XEN_NETIF_RSP_DROPPED = NETIF_RSP_DROPPED
XEN_NETIF_RSP_ERROR = NETIF_RSP_ERROR
XEN_NETIF_RSP_OKAY = NETIF_RSP_OKAY
XEN_NETIF_RSP_NULL = NETIF_RSP_NULL


class xen_netif_ctrl_request(ctypes.Structure):
    _fields_ = [
        ("id", ctypes.c_uint16),     # echoed in the response
        ("type", ctypes.c_uint16),   # XEN_NETIF_CTRL_TYPE_*
        ("data", ctypes.c_uint32 * 3),
    ]


class xen_netif_ctrl_response(ctypes.Structure):
    _fields_ = [
        ("id", ctypes.c_uint16),
        ("type", ctypes.c_uint16),
        ("status", ctypes.c_uint32),  # XEN_NETIF_CTRL_STATUS_*
        ("data", ctypes.c_uint32),
    ]


class xen_netif_gref(ctypes.Structure):
    _fields_ = [
        ("ref", grant_ref_t),
        ("flags", ctypes.c_uint16),   # XEN_NETIF_CTRLF_GREF_*
        ("status", ctypes.c_uint16),  # XEN_NETIF_CTRL_STATUS_* (out)
    ]


class netif_tx_request(ctypes.Structure):
    _fields_ = [
        ("gref", grant_ref_t),          # the buffer page
        ("offset", ctypes.c_uint16),    # of the data in the page
        ("flags", ctypes.c_uint16),     # NETTXF_*
        ("id", ctypes.c_uint16),        # echoed in the response
        ("size", ctypes.c_uint16),      # packet size (slot 1), else slot's
    ]


class _netif_extra_info_gso(ctypes.Structure):
    _fields_ = [
        ("size", ctypes.c_uint16),      # MSS
        ("type", ctypes.c_uint8),       # XEN_NETIF_GSO_TYPE_*
        ("pad", ctypes.c_uint8),
        ("features", ctypes.c_uint16),  # XEN_NETIF_GSO_FEAT_* (none defined)
    ]


class _netif_extra_info_mcast(ctypes.Structure):
    _fields_ = [("addr", ctypes.c_uint8 * 6)]


class _netif_extra_info_hash(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint8),       # _XEN_NETIF_CTRL_HASH_TYPE_*
        ("algorithm", ctypes.c_uint8),  # XEN_NETIF_CTRL_HASH_ALGORITHM_*
        ("value", ctypes.c_uint8 * 4),  # little endian
    ]


class _netif_extra_info_u(ctypes.Union):
    _fields_ = [
        ("gso", _netif_extra_info_gso),
        ("mcast", _netif_extra_info_mcast),
        ("hash", _netif_extra_info_hash),
        ("pad", ctypes.c_uint16 * 3),
    ]


class netif_extra_info(ctypes.Structure):
    """Fits both a tx request and an rx response slot: 8 bytes."""

    _fields_ = [
        ("type", ctypes.c_uint8),   # XEN_NETIF_EXTRA_TYPE_*
        ("flags", ctypes.c_uint8),  # XEN_NETIF_EXTRA_FLAG_*
        ("u", _netif_extra_info_u),
    ]


class netif_tx_response(ctypes.Structure):
    _fields_ = [
        ("id", ctypes.c_uint16),
        ("status", ctypes.c_int16),  # NETIF_RSP_*
    ]


class netif_rx_request(ctypes.Structure):
    _fields_ = [
        ("id", ctypes.c_uint16),     # echoed in the response
        ("pad", ctypes.c_uint16),
        ("gref", grant_ref_t),       # the empty page to fill
    ]


class netif_rx_response(ctypes.Structure):
    _fields_ = [
        ("id", ctypes.c_uint16),
        ("offset", ctypes.c_uint16),  # of the data in the page
        ("flags", ctypes.c_uint16),   # NETRXF_*
        ("status", ctypes.c_int16),   # data length, or NETIF_RSP_* if < 0
    ]


class netif_tx_sring_entry(ctypes.Union):
    """One tx ring slot: DEFINE_RING_TYPES' union of request and response."""

    _fields_ = [("req", netif_tx_request), ("rsp", netif_tx_response)]


class netif_rx_sring_entry(ctypes.Union):
    """One rx ring slot."""

    _fields_ = [("req", netif_rx_request), ("rsp", netif_rx_response)]


#: Bytes of one tx ring slot: 12.
NETIF_TX_SRING_ENTRY_SIZE = ctypes.sizeof(netif_tx_sring_entry)
#: Bytes of one rx ring slot: 8.
NETIF_RX_SRING_ENTRY_SIZE = ctypes.sizeof(netif_rx_sring_entry)
#: Bytes of an extra info (in a tx slot, followed by 4 bytes of padding).
NETIF_EXTRA_INFO_SIZE = ctypes.sizeof(netif_extra_info)
#: Offset of the first slot in a shared ring (io/ring.h's header).
PYXEN_SRING_RING_OFFSET = 64


def net_ring_size(entry_size: int, nr_pages: int = 1) -> int:
    """Slots in a ring of `nr_pages` pages of `entry_size`-byte slots:
    __CONST_RING_SIZE, a power of two."""
    slots = (nr_pages * xen.PAGE_SIZE - PYXEN_SRING_RING_OFFSET) // entry_size
    return 1 << (slots.bit_length() - 1) if slots > 0 else 0


#: Slots in a one-page tx ring (Linux's XEN_NETIF_TX_RING_SIZE): 256.
XEN_NETIF_TX_RING_SIZE = net_ring_size(NETIF_TX_SRING_ENTRY_SIZE)
#: Slots in a one-page rx ring (Linux's XEN_NETIF_RX_RING_SIZE): 256.
XEN_NETIF_RX_RING_SIZE = net_ring_size(NETIF_RX_SRING_ENTRY_SIZE)


# -- the byte codecs of the ring entries, for both ends ------------------------
#
# Built from the ctypes layouts above (see pyxen/layout.py): netfront and
# netback encode and decode every entry with these, so each layout is said
# once.  Decoders never fail on an entry of the right size, whatever the
# other end put in it; encoders raise ValueError on a field out of range
# (the caller's own bug).

#: netif_tx_request: gref, offset, flags, id, size (12 bytes).
TX_REQUEST = layout(netif_tx_request)
#: netif_tx_response: id, status (4 bytes).
TX_RESPONSE = layout(netif_tx_response)
#: A tx response in its 12-byte ring slot, the rest of the slot zero.
TX_RESPONSE_SLOT = layout(netif_tx_response, size=NETIF_TX_SRING_ENTRY_SIZE)
#: netif_rx_request: id, gref (8 bytes).
RX_REQUEST = layout(netif_rx_request, ("id", "gref"), size=NETIF_RX_SRING_ENTRY_SIZE)
#: netif_rx_response: id, offset, flags, status (8 bytes).
RX_RESPONSE = layout(netif_rx_response)
#: A GSO extra info: type, flags, u.gso.size, u.gso.type, u.gso.features.
GSO_EXTRA = layout(netif_extra_info, ("type", "flags", "u.gso.size", "u.gso.type",
                                      "u.gso.features"), size=NETIF_EXTRA_INFO_SIZE)

#: Columns of runs of ring slots, read with one strided cast each.
TX_RESPONSE_ID = Column(netif_tx_response, "id", NETIF_TX_SRING_ENTRY_SIZE)
TX_RESPONSE_STATUS = Column(netif_tx_response, "status", NETIF_TX_SRING_ENTRY_SIZE)
RX_REQUEST_ID = Column(netif_rx_request, "id", NETIF_RX_SRING_ENTRY_SIZE)
RX_REQUEST_GREF = Column(netif_rx_request, "gref", NETIF_RX_SRING_ENTRY_SIZE)
RX_RESPONSE_OFFSET = Column(netif_rx_response, "offset", NETIF_RX_SRING_ENTRY_SIZE)
RX_RESPONSE_FLAGS = Column(netif_rx_response, "flags", NETIF_RX_SRING_ENTRY_SIZE)
RX_RESPONSE_STATUS = Column(netif_rx_response, "status", NETIF_RX_SRING_ENTRY_SIZE)
TX_REQUEST_GREF = Column(netif_tx_request, "gref", NETIF_TX_SRING_ENTRY_SIZE)
TX_REQUEST_OFFSET = Column(netif_tx_request, "offset", NETIF_TX_SRING_ENTRY_SIZE)
TX_REQUEST_FLAGS = Column(netif_tx_request, "flags", NETIF_TX_SRING_ENTRY_SIZE)
TX_REQUEST_ID = Column(netif_tx_request, "id", NETIF_TX_SRING_ENTRY_SIZE)
TX_REQUEST_SIZE = Column(netif_tx_request, "size", NETIF_TX_SRING_ENTRY_SIZE)

_pyxen_extra_u = _netif_extra_info_u  # the union's bytes: u is 6 of them
_pyxen_extra_u_offset = netif_extra_info.u.offset
_pyxen_extra_u_size = ctypes.sizeof(_netif_extra_info_u)


def _check(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name} {value} outside {low}..{high}")


class TxRequest(NamedTuple):
    """A decoded netif_tx_request."""

    gref: int
    offset: int
    flags: int
    id: int
    size: int

    @property
    def more_data(self) -> bool:
        return bool(self.flags & NETTXF_more_data)

    @property
    def extra_info(self) -> bool:
        return bool(self.flags & NETTXF_extra_info)

    def encode(self) -> bytes:
        """The 12-byte ring entry."""
        return TX_REQUEST.pack(*self)


def parse_tx_request(raw: bytes | bytearray | memoryview) -> TxRequest:
    """Decode one 12-byte tx ring entry as a request (from a private copy:
    the other end may rewrite it meanwhile).  Never fails on 12 bytes;
    ValueError if `raw` is not one ring entry."""
    data = bytes(raw)
    if len(data) != TX_REQUEST.size:
        raise ValueError(f"a tx ring entry is {TX_REQUEST.size} bytes, not {len(data)}")
    return TxRequest._make(TX_REQUEST.unpack(data))


class TxResponse(NamedTuple):
    """A decoded netif_tx_response."""

    id: int
    status: int


def make_tx_response(id: int, status: int) -> bytes:
    """A netif_tx_response (4 bytes, the start of a tx slot)."""
    _check("id", id, 0, 0xFFFF)
    _check("status", status, -0x8000, 0x7FFF)
    return TX_RESPONSE.pack(id, status)


def parse_tx_response(raw: bytes | bytearray | memoryview) -> TxResponse:
    """Decode a netif_tx_response: the first 4 bytes of `raw` (a response
    or a whole slot), copied first."""
    data = bytes(raw[:TX_RESPONSE.size])
    if len(data) != TX_RESPONSE.size:
        raise ValueError(f"a tx response is {TX_RESPONSE.size} bytes, not {len(data)}")
    return TxResponse._make(TX_RESPONSE.unpack(data))


class RxRequest(NamedTuple):
    """A posted rx buffer: echo `id`, copy into the page granted as `gref`."""

    id: int
    gref: int


def make_rx_request(id: int, gref: int) -> bytes:
    """An rx request (8 bytes) posting the page granted as `gref`."""
    _check("rx id", id, 0, 0xFFFF)
    _check("grant ref", gref, 0, 0xFFFFFFFF)
    return RX_REQUEST.pack(id, gref)


def parse_rx_request(raw: bytes | bytearray | memoryview) -> RxRequest:
    """Decode an 8-byte rx ring entry (a private copy); ValueError on
    other sizes."""
    data = bytes(raw)
    if len(data) != RX_REQUEST.size:
        raise ValueError(f"an rx ring entry is {RX_REQUEST.size} bytes, not {len(data)}")
    return RxRequest._make(RX_REQUEST.unpack(data))


class RxResponse(NamedTuple):
    """A decoded netif_rx_response."""

    id: int
    offset: int
    flags: int
    status: int

    @property
    def more_data(self) -> bool:
        return bool(self.flags & NETRXF_more_data)


def make_rx_response(id: int, offset: int, flags: int, status: int) -> bytes:
    """A netif_rx_response (8 bytes): status is the slot's data length, or
    a negative NETIF_RSP_*."""
    _check("id", id, 0, 0xFFFF)
    _check("offset", offset, 0, 0xFFFF)
    _check("flags", flags, 0, 0xFFFF)
    _check("status", status, -0x8000, 0x7FFF)
    return RX_RESPONSE.pack(id, offset, flags, status)


def parse_rx_response(raw: bytes | bytearray | memoryview) -> RxResponse:
    """Decode an rx response (8 bytes, copied first)."""
    if len(raw) != RX_RESPONSE.size:
        raise ValueError(f"an rx response is {RX_RESPONSE.size} bytes, not {len(raw)}")
    return RxResponse._make(RX_RESPONSE.unpack(bytes(raw)))


class ExtraInfo(NamedTuple):
    """A decoded netif_extra_info: `type`, `flags` and the 6 bytes of its
    union `u`, read through the properties of the type's member."""

    type: int
    flags: int
    u: bytes = bytes(_pyxen_extra_u_size)

    @property
    def more(self) -> bool:
        return bool(self.flags & XEN_NETIF_EXTRA_FLAG_MORE)

    @property
    def gso_size(self) -> int:
        return _pyxen_extra_u.from_buffer_copy(self.u).gso.size

    @property
    def gso_type(self) -> int:
        return _pyxen_extra_u.from_buffer_copy(self.u).gso.type

    @property
    def gso_features(self) -> int:
        return _pyxen_extra_u.from_buffer_copy(self.u).gso.features

    @property
    def gso(self) -> tuple[int, int]:
        """(u.gso.type, u.gso.size)."""
        return self.gso_type, self.gso_size

    @property
    def addr(self) -> bytes:
        """u.mcast.addr: the MAC address of MCAST_ADD / MCAST_DEL."""
        return bytes(_pyxen_extra_u.from_buffer_copy(self.u).mcast.addr)

    @property
    def hash_type(self) -> int:
        return _pyxen_extra_u.from_buffer_copy(self.u).hash.type

    @property
    def hash_algorithm(self) -> int:
        return _pyxen_extra_u.from_buffer_copy(self.u).hash.algorithm

    @property
    def hash_value(self) -> int:
        return int.from_bytes(bytes(_pyxen_extra_u.from_buffer_copy(self.u).hash.value),
                              "little")


def parse_extra(raw: bytes | bytearray | memoryview) -> ExtraInfo:
    """Decode an extra info from a tx ring slot (12 bytes) or an rx one (8
    bytes).  Never fails on those sizes; ValueError on others."""
    data = bytes(raw)
    if len(data) not in (NETIF_TX_SRING_ENTRY_SIZE, NETIF_EXTRA_INFO_SIZE):
        raise ValueError(f"an extra info slot is {NETIF_TX_SRING_ENTRY_SIZE} or "
                         f"{NETIF_EXTRA_INFO_SIZE} bytes, not {len(data)}")
    return ExtraInfo(data[0], data[1], data[_pyxen_extra_u_offset:_pyxen_extra_u_offset + _pyxen_extra_u_size])


def extra_problem(extra: ExtraInfo) -> str | None:
    """Why `extra` breaks the protocol on its own (an unknown type, a GSO
    extra of size 0 or of an unknown GSO type), or None."""
    if not 0 < extra.type < XEN_NETIF_EXTRA_TYPE_MAX:
        return f"extra info of unknown type {extra.type}"
    if extra.type == XEN_NETIF_EXTRA_TYPE_GSO:
        if extra.gso_size == 0:
            return "GSO extra with size 0"
        if extra.gso_type not in (XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_GSO_TYPE_TCPV6):
            return f"GSO extra of unknown type {extra.gso_type}"
    return None


def make_extra(type: int, u: bytes = b"", *, more: bool = False,
               slot: int = NETIF_EXTRA_INFO_SIZE) -> bytes:
    """A netif_extra_info of `type` whose union holds `u` (zero-padded to
    its 6 bytes), in a `slot`-byte ring slot (8: rx; 12: tx)."""
    _check("extra type", type, 0, 0xFF)
    if len(u) > _pyxen_extra_u_size:
        raise ValueError(f"extra info data of {len(u)} bytes")
    _check("slot size", slot, NETIF_EXTRA_INFO_SIZE, NETIF_TX_SRING_ENTRY_SIZE)
    flags = XEN_NETIF_EXTRA_FLAG_MORE if more else 0
    return (bytes((type, flags)) + bytes(u) + bytes(_pyxen_extra_u_size - len(u))
            + bytes(slot - NETIF_EXTRA_INFO_SIZE))


def make_gso_extra(*, gso_type: int, size: int, more: bool = False,
                   slot: int = NETIF_EXTRA_INFO_SIZE) -> bytes:
    """The XEN_NETIF_EXTRA_TYPE_GSO extra info: segment into `size`-byte
    (MSS) segments of `gso_type` (XEN_NETIF_GSO_TYPE_*), in a `slot`-byte
    ring slot (8: rx; 12: tx).  Keyword-only: the two numbers are easily
    swapped."""
    _check("GSO size", size, 1, 0xFFFF)
    _check("GSO type", gso_type, 0, 0xFF)
    _check("slot size", slot, NETIF_EXTRA_INFO_SIZE, NETIF_TX_SRING_ENTRY_SIZE)
    return GSO_EXTRA.pack(XEN_NETIF_EXTRA_TYPE_GSO, XEN_NETIF_EXTRA_FLAG_MORE if more else 0,
                          size, gso_type, 0) + bytes(slot - NETIF_EXTRA_INFO_SIZE)
