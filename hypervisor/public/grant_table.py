"""Granting foreign access to page frames (xen/grant_table.h).

Each domain has a grant table, shared with Xen, saying which other domains
may access which of its pages.  A grant reference (``grant_ref_t``) indexes
that table and acts as a capability: the grantee presents ``<dom, ref>`` to
``HYPERVISOR_grant_table_op(cmd, args, count)`` (``GNTTABOP_*``, ``args`` an
array of ``count`` ``struct gnttab_*``) to map or copy the granter's page,
without ever learning its machine address.  This underpins the split
block and network drivers.

Introducing a v1 entry: write ``domid``, write ``frame``, write barrier,
then write ``flags`` including the type (``GTF_permit_access``).  An unused
entry is revoked by a compare-and-swap of ``flags`` to 0 after checking
that neither ``GTF_reading`` nor ``GTF_writing`` is set.

Per-operation results are ``GNTST_*`` codes in each struct's ``status``
field; ``GNTTABOP_error_msgs[-status]`` describes them.
"""

import ctypes

from . import xen
from .pyxen.layout import layout, scalar
from .xen import XEN_GUEST_HANDLE, domid_t, xen_pfn_t

# Reference to a grant entry in a specified domain's grant table.
grant_ref_t = ctypes.c_uint32


class grant_entry_v1(ctypes.Structure):
    """A version 1 grant entry; tables are packed arrays of these."""

    _fields_ = [
        ("flags", ctypes.c_uint16),   # GTF_xxx [XEN,GST]
        ("domid", domid_t),           # domain granted foreign privileges [GST]
        # GTF_permit_access: GFN @domid may map and access. [GST]
        # GTF_accept_transfer: GFN @domid may transfer into. [GST]
        # GTF_transfer_completed: MFN transferred by @domid. [XEN]
        ("frame", ctypes.c_uint32),
    ]


GRANT_ENTRIES_PER_FRAME_V1 = xen.PAGE_SIZE // ctypes.sizeof(grant_entry_v1)

# The first few entries are preserved across grant table version changes
# and may be pre-populated at domain creation by tools.
GNTTAB_NR_RESERVED_ENTRIES = 8
GNTTAB_RESERVED_CONSOLE = 0
GNTTAB_RESERVED_XENSTORE = 1

# Type of grant entry.
GTF_invalid = 0 << 0           # Grants no privileges.
GTF_permit_access = 1 << 0     # Allow @domid to map/access @frame.
GTF_accept_transfer = 2 << 0   # Allow @domid to transfer a frame to us.
GTF_transitive = 3 << 0        # Allow transitive access (v2 only).
GTF_type_mask = 3 << 0

# Subflags for GTF_permit_access and GTF_transitive.
_GTF_readonly = 2
GTF_readonly = 1 << _GTF_readonly   # Restrict @domid to read-only. [GST]
_GTF_reading = 3
GTF_reading = 1 << _GTF_reading     # Currently mapped for reading. [XEN]
_GTF_writing = 4
GTF_writing = 1 << _GTF_writing     # Currently mapped for writing. [XEN]
# Further subflags for GTF_permit_access only.
_GTF_PWT = 5
GTF_PWT = 1 << _GTF_PWT             # (x86) cache attribute flags [GST]
_GTF_PCD = 6
GTF_PCD = 1 << _GTF_PCD
_GTF_PAT = 7
GTF_PAT = 1 << _GTF_PAT
_GTF_sub_page = 8
GTF_sub_page = 1 << _GTF_sub_page   # Copy-only access to a subrange. [GST]

# Subflags for GTF_accept_transfer.
_GTF_transfer_committed = 2
GTF_transfer_committed = 1 << _GTF_transfer_committed   # [XEN]
_GTF_transfer_completed = 3
GTF_transfer_completed = 1 << _GTF_transfer_completed   # [XEN]


class grant_entry_header(ctypes.Structure):
    """The prefix shared by version 1 and version 2 entries."""

    _fields_ = [("flags", ctypes.c_uint16), ("domid", domid_t)]


class _grant_entry_v2_full_page(ctypes.Structure):
    _fields_ = [
        ("hdr", grant_entry_header),
        ("pad0", ctypes.c_uint32),
        ("frame", ctypes.c_uint64),
    ]


class _grant_entry_v2_sub_page(ctypes.Structure):
    _fields_ = [
        ("hdr", grant_entry_header),
        ("page_off", ctypes.c_uint16),
        ("length", ctypes.c_uint16),
        ("frame", ctypes.c_uint64),
    ]


class _grant_entry_v2_transitive(ctypes.Structure):
    _fields_ = [
        ("hdr", grant_entry_header),
        ("trans_domid", domid_t),
        ("pad0", ctypes.c_uint16),
        ("gref", grant_ref_t),
    ]


class grant_entry_v2(ctypes.Union):
    """A version 2 grant entry (16 bytes); status lives in a separate
    array of ``grant_status_t``."""

    _fields_ = [
        ("hdr", grant_entry_header),
        ("full_page", _grant_entry_v2_full_page),
        ("sub_page", _grant_entry_v2_sub_page),
        ("transitive", _grant_entry_v2_transitive),
        ("__spacer", ctypes.c_uint32 * 4),   # Pad to a power of two
    ]


grant_status_t = ctypes.c_uint16

# ` enum grant_table_op { // GNTTABOP_* => struct gnttab_*
GNTTABOP_map_grant_ref = 0
GNTTABOP_unmap_grant_ref = 1
GNTTABOP_setup_table = 2
GNTTABOP_dump_table = 3
GNTTABOP_transfer = 4
GNTTABOP_copy = 5
GNTTABOP_query_size = 6
GNTTABOP_unmap_and_replace = 7
GNTTABOP_set_version = 8
GNTTABOP_get_status_frames = 9
GNTTABOP_get_version = 10
GNTTABOP_swap_grant_ref = 11
GNTTABOP_cache_flush = 12
# ` }

# Handle to track a mapping created via a grant reference.
grant_handle_t = ctypes.c_uint32


class gnttab_map_grant_ref(ctypes.Structure):
    """GNTTABOP_map_grant_ref: map ``<dom, ref>``; ``handle`` must later be
    presented to unmap it."""

    _fields_ = [
        ("host_addr", ctypes.c_uint64),   # IN
        ("flags", ctypes.c_uint32),       # IN: GNTMAP_*
        ("ref", grant_ref_t),             # IN
        ("dom", domid_t),                 # IN
        ("status", ctypes.c_int16),       # OUT: GNTST_*
        ("handle", grant_handle_t),       # OUT
        ("dev_bus_addr", ctypes.c_uint64),  # OUT
    ]


class gnttab_unmap_grant_ref(ctypes.Structure):
    """GNTTABOP_unmap_grant_ref: destroy the mappings tracked by
    ``handle`` (a zero address field is ignored)."""

    _fields_ = [
        ("host_addr", ctypes.c_uint64),     # IN
        ("dev_bus_addr", ctypes.c_uint64),  # IN
        ("handle", grant_handle_t),         # IN
        ("status", ctypes.c_int16),         # OUT: GNTST_*
    ]


class gnttab_setup_table(ctypes.Structure):
    """GNTTABOP_setup_table: a grant table of at least ``nr_frames`` pages
    for ``dom``; their frame numbers are written to ``frame_list``."""

    _fields_ = [
        ("dom", domid_t),                   # IN
        ("nr_frames", ctypes.c_uint32),     # IN
        ("status", ctypes.c_int16),         # OUT: GNTST_*
        ("frame_list", XEN_GUEST_HANDLE),   # OUT: xen_pfn_t[nr_frames]
    ]


class gnttab_dump_table(ctypes.Structure):
    """GNTTABOP_dump_table: dump ``dom``'s table to Xen's console."""

    _fields_ = [
        ("dom", domid_t),                   # IN
        ("status", ctypes.c_int16),         # OUT: GNTST_*
    ]


class gnttab_transfer(ctypes.Structure):
    """GNTTABOP_transfer: give ``mfn`` to ``<domid, ref>`` (PV only)."""

    _fields_ = [
        ("mfn", xen_pfn_t),                 # IN
        ("domid", domid_t),                 # IN
        ("ref", grant_ref_t),               # IN
        ("status", ctypes.c_int16),         # OUT: GNTST_*
    ]


# gnttab_copy.flags: which of source and dest are grant references.
_GNTCOPY_source_gref = 0
GNTCOPY_source_gref = 1 << _GNTCOPY_source_gref
_GNTCOPY_dest_gref = 1
GNTCOPY_dest_gref = 1 << _GNTCOPY_dest_gref


class _gnttab_copy_ptr_u(ctypes.Union):
    _fields_ = [("ref", grant_ref_t), ("gmfn", xen_pfn_t)]


class gnttab_copy_ptr(ctypes.Structure):
    """One end of a GNTTABOP_copy: a grant reference of ``domid`` or a
    frame of the caller, and a byte offset in it."""

    _fields_ = [
        ("u", _gnttab_copy_ptr_u),
        ("domid", domid_t),
        ("offset", ctypes.c_uint16),
    ]


class gnttab_copy(ctypes.Structure):
    """GNTTABOP_copy: Xen copies ``len`` bytes from ``source`` to ``dest``;
    neither range may cross a page boundary."""

    _fields_ = [
        ("source", gnttab_copy_ptr),        # IN
        ("dest", gnttab_copy_ptr),          # IN
        ("len", ctypes.c_uint16),           # IN
        ("flags", ctypes.c_uint16),         # IN: GNTCOPY_*
        ("status", ctypes.c_int16),         # OUT: GNTST_*
    ]


class gnttab_query_size(ctypes.Structure):
    """GNTTABOP_query_size: current and maximum size of ``dom``'s table."""

    _fields_ = [
        ("dom", domid_t),                   # IN
        ("nr_frames", ctypes.c_uint32),     # OUT
        ("max_nr_frames", ctypes.c_uint32),  # OUT
        ("status", ctypes.c_int16),         # OUT: GNTST_*
    ]


class gnttab_unmap_and_replace(ctypes.Structure):
    """GNTTABOP_unmap_and_replace: unmap ``handle``, atomically pointing
    the mapping at ``new_addr`` instead."""

    _fields_ = [
        ("host_addr", ctypes.c_uint64),     # IN
        ("new_addr", ctypes.c_uint64),      # IN
        ("handle", grant_handle_t),         # IN
        ("status", ctypes.c_int16),         # OUT: GNTST_*
    ]


class gnttab_set_version(ctypes.Structure):
    """GNTTABOP_set_version: switch table format (1 or 2) while no grants
    are active."""

    _fields_ = [("version", ctypes.c_uint32)]   # IN/OUT


class gnttab_get_status_frames(ctypes.Structure):
    """GNTTABOP_get_status_frames: the v2 status frames of ``dom``."""

    _fields_ = [
        ("nr_frames", ctypes.c_uint32),     # IN
        ("dom", domid_t),                   # IN
        ("status", ctypes.c_int16),         # OUT: GNTST_*
        ("frame_list", XEN_GUEST_HANDLE),   # OUT: uint64_t[nr_frames]
    ]


class gnttab_get_version(ctypes.Structure):
    """GNTTABOP_get_version: the table format in effect for ``dom``."""

    _fields_ = [
        ("dom", domid_t),                   # IN
        ("pad", ctypes.c_uint16),
        ("version", ctypes.c_uint32),       # OUT
    ]


class gnttab_swap_grant_ref(ctypes.Structure):
    """GNTTABOP_swap_grant_ref: swap the contents of two grant entries."""

    _fields_ = [
        ("ref_a", grant_ref_t),             # IN
        ("ref_b", grant_ref_t),             # IN
        ("status", ctypes.c_int16),         # OUT: GNTST_*
    ]


class _gnttab_cache_flush_a(ctypes.Union):
    _fields_ = [("dev_bus_addr", ctypes.c_uint64), ("ref", grant_ref_t)]


# gnttab_cache_flush.op bits.
GNTTAB_CACHE_CLEAN = 1 << 0
GNTTAB_CACHE_INVAL = 1 << 1
GNTTAB_CACHE_SOURCE_GREF = 1 << 31


class gnttab_cache_flush(ctypes.Structure):
    """GNTTABOP_cache_flush: cache maintenance on part of a granted page."""

    _fields_ = [
        ("a", _gnttab_cache_flush_a),
        ("offset", ctypes.c_uint16),        # offset from start of grant
        ("length", ctypes.c_uint16),        # size within the grant
        ("op", ctypes.c_uint32),            # GNTTAB_CACHE_*
    ]


# Bitfield values for gnttab_map_grant_ref.flags.
_GNTMAP_device_map = 0
GNTMAP_device_map = 1 << _GNTMAP_device_map       # Map for I/O devices.
_GNTMAP_host_map = 1
GNTMAP_host_map = 1 << _GNTMAP_host_map           # Map for host CPUs.
_GNTMAP_readonly = 2
GNTMAP_readonly = 1 << _GNTMAP_readonly           # Read-only access.
_GNTMAP_application_map = 3
GNTMAP_application_map = 1 << _GNTMAP_application_map  # User-space access.
_GNTMAP_contains_pte = 4
GNTMAP_contains_pte = 1 << _GNTMAP_contains_pte   # host_addr is a PTE.
# Bits for guest kernel available PTE bits.
_GNTMAP_guest_avail0 = 16
GNTMAP_guest_avail_mask = (0xFFFFFFFF << _GNTMAP_guest_avail0) & 0xFFFFFFFF

# ` enum grant_status {  -- all errors are negative.
GNTST_okay = 0                  # Normal return.
GNTST_general_error = -1        # General undefined error.
GNTST_bad_domain = -2           # Unrecognsed domain id.
GNTST_bad_gntref = -3           # Unrecognised or inappropriate gntref.
GNTST_bad_handle = -4           # Unrecognised or inappropriate handle.
GNTST_bad_virt_addr = -5        # Inappropriate virtual address to map.
GNTST_bad_dev_addr = -6         # Inappropriate device address to unmap.
GNTST_no_device_space = -7      # Out of space in I/O MMU.
GNTST_permission_denied = -8    # Not enough privilege for operation.
GNTST_bad_page = -9             # Specified page was invalid for op.
GNTST_bad_copy_arg = -10        # copy arguments cross page boundary.
GNTST_address_too_big = -11     # transfer page address too large.
GNTST_eagain = -12              # Operation not done; try again.
GNTST_no_space = -13            # Out of space (handles etc).
# ` }

#: Xen's messages for GNTST_* codes: ``GNTTABOP_error_msgs[-status]``.
GNTTABOP_error_msgs: list[str] = [
    "okay",
    "undefined error",
    "unrecognised domain id",
    "invalid grant reference",
    "invalid mapping handle",
    "invalid virtual address",
    "invalid device address",
    "no spare translation slot in the I/O MMU",
    "permission denied",
    "bad page",
    "copy arguments cross page boundary",
    "page address size too large",
    "operation not done; try again",
    "out of space",
]

# pyxen: the most ops one grant_table_op hypercall may carry (a hypercall is
# one message; Xen bounds its batches by preemption instead).
PYXEN_GNTTAB_MAX_BATCH = 512


# -- the byte codecs of a grant table, for the granter (a domain's kernel)
# and for Xen (the hypervisor's grant table): built from the ctypes layout.

#: A grant_entry_v1: flags, domid, frame (8 bytes).
GRANT_ENTRY_V1 = layout(grant_entry_v1)
#: domid and frame, from grant_entry_v1.domid on: introducing an entry
#: writes them before its flags, and leaves the flags' bytes alone.
GRANT_ENTRY_V1_TARGET = layout(grant_entry_v1, ("domid", "frame"),
                               base=grant_entry_v1.domid.offset)
#: The flags word alone (at the entry's start).
GRANT_ENTRY_V1_FLAGS = layout(grant_entry_v1, ("flags",))
#: pyxen's status word per ref (v2's grant_status_t), beside the v1 table.
PYXEN_GRANT_STATUS = scalar(grant_status_t)
