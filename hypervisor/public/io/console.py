"""io/console.h: the PV console ring.

One shared page, `xencons_interface`: `out` carries the domain's output to
the console daemon (xenconsoled), `in` carries keystrokes back. Indexes are
free-running uint32; MASK_XENCONS_IDX(idx, ring) is the offset in a ring
whose size is a power of two. The writer copies bytes, advances its
producer index, then notifies the console event channel.

XenStore nodes (the toolstack writes them in /local/domain/<domid>/console):
  ring-ref   grant ref of the page (GNTTAB_RESERVED_CONSOLE)
  port       the event channel, bound to the console backend's domain
  type       "xenconsoled"
  limit      bytes xenconsoled keeps per domain before discarding output
"""

import ctypes

XENCONS_RING_IDX = ctypes.c_uint32
XENCONS_IN_SIZE = 1024
XENCONS_OUT_SIZE = 2048


def MASK_XENCONS_IDX(idx: int, ring_size: int) -> int:
    return idx & (ring_size - 1)


class xencons_interface(ctypes.LittleEndianStructure):
    _fields_ = [
        ("in", ctypes.c_char * XENCONS_IN_SIZE),
        ("out", ctypes.c_char * XENCONS_OUT_SIZE),
        ("in_cons", XENCONS_RING_IDX),
        ("in_prod", XENCONS_RING_IDX),
        ("out_cons", XENCONS_RING_IDX),
        ("out_prod", XENCONS_RING_IDX),
    ]
