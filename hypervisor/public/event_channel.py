"""Event channels between domains (xen/event_channel.h).

An event is Xen's equivalent of a hardware interrupt: one pending bit per
port, delivered by an upcall and masked until the guest clears it.
``HYPERVISOR_event_channel_op(cmd, args)`` takes an ``EVTCHNOP_*`` command
and the matching ``struct evtchn_*``:

* ``alloc_unbound``: allocate a port in ``dom`` that ``remote_dom`` may bind
  to; the usual start of a split driver, the port is advertised in xenstore.
* ``bind_interdomain``: connect a fresh local port to that remote port.
* ``bind_virq`` / ``bind_ipi`` / ``bind_pirq``: bind a local port to a
  virtual IRQ on a VCPU, to an inter-VCPU IPI, or to a physical IRQ.
* ``send``: set the remote end pending; ``unmask``: unmask a local port and
  redeliver it if pending; ``close``: close a port (an interdomain peer goes
  back to ``EVTCHNSTAT_unbound``); ``status``: query a port's binding.
"""

import ctypes

from .pyxen.layout import scalar
from .xen import domid_t, xen_ulong_t

# ` enum event_channel_op { // EVTCHNOP_* => struct evtchn_*
EVTCHNOP_bind_interdomain = 0
EVTCHNOP_bind_virq = 1
EVTCHNOP_bind_pirq = 2
EVTCHNOP_close = 3
EVTCHNOP_send = 4
EVTCHNOP_status = 5
EVTCHNOP_alloc_unbound = 6
EVTCHNOP_bind_ipi = 7
EVTCHNOP_bind_vcpu = 8
EVTCHNOP_unmask = 9
EVTCHNOP_reset = 10
EVTCHNOP_init_control = 11
EVTCHNOP_expand_array = 12
EVTCHNOP_set_priority = 13
# ` }

evtchn_port_t = ctypes.c_uint32


class evtchn_alloc_unbound(ctypes.Structure):
    """EVTCHNOP_alloc_unbound: a fresh port in ``dom`` accepting bindings
    from ``remote_dom`` (which may be DOMID_SELF for loopback)."""

    _fields_ = [
        ("dom", domid_t),               # IN
        ("remote_dom", domid_t),        # IN
        ("port", evtchn_port_t),        # OUT
    ]


class evtchn_bind_interdomain(ctypes.Structure):
    """EVTCHNOP_bind_interdomain: connect to the unbound ``remote_port`` of
    ``remote_dom``; the new local port is set pending."""

    _fields_ = [
        ("remote_dom", domid_t),        # IN
        ("remote_port", evtchn_port_t),  # IN
        ("local_port", evtchn_port_t),  # OUT
    ]


class evtchn_bind_virq(ctypes.Structure):
    """EVTCHNOP_bind_virq: bind VIRQ ``virq`` on ``vcpu`` (global VIRQs
    must be bound on VCPU0)."""

    _fields_ = [
        ("virq", ctypes.c_uint32),      # IN: enum virq
        ("vcpu", ctypes.c_uint32),      # IN
        ("port", evtchn_port_t),        # OUT
    ]


BIND_PIRQ__WILL_SHARE = 1


class evtchn_bind_pirq(ctypes.Structure):
    """EVTCHNOP_bind_pirq: bind a physical IRQ (privileged domains only)."""

    _fields_ = [
        ("pirq", ctypes.c_uint32),      # IN
        ("flags", ctypes.c_uint32),     # IN: BIND_PIRQ__*
        ("port", evtchn_port_t),        # OUT
    ]


class evtchn_bind_ipi(ctypes.Structure):
    """EVTCHNOP_bind_ipi: a port notifying ``vcpu``; never rebound."""

    _fields_ = [
        ("vcpu", ctypes.c_uint32),      # IN
        ("port", evtchn_port_t),        # OUT
    ]


class evtchn_close(ctypes.Structure):
    """EVTCHNOP_close: close local ``port``."""

    _fields_ = [("port", evtchn_port_t)]     # IN


class evtchn_send(ctypes.Structure):
    """EVTCHNOP_send: notify the remote end of local ``port``."""

    _fields_ = [("port", evtchn_port_t)]     # IN


# evtchn_status.status values.
EVTCHNSTAT_closed = 0        # Channel is not in use.
EVTCHNSTAT_unbound = 1       # Channel is waiting interdom connection.
EVTCHNSTAT_interdomain = 2   # Channel is connected to remote domain.
EVTCHNSTAT_pirq = 3          # Channel is bound to a phys IRQ line.
EVTCHNSTAT_virq = 4          # Channel is bound to a virtual IRQ line
EVTCHNSTAT_ipi = 5           # Channel is bound to a virtual IPI line


class _evtchn_status_unbound(ctypes.Structure):
    _fields_ = [("dom", domid_t)]


class _evtchn_status_interdomain(ctypes.Structure):
    _fields_ = [("dom", domid_t), ("port", evtchn_port_t)]


class _evtchn_status_u(ctypes.Union):
    _fields_ = [
        ("unbound", _evtchn_status_unbound),          # EVTCHNSTAT_unbound
        ("interdomain", _evtchn_status_interdomain),  # EVTCHNSTAT_interdomain
        ("pirq", ctypes.c_uint32),                    # EVTCHNSTAT_pirq
        ("virq", ctypes.c_uint32),                    # EVTCHNSTAT_virq
    ]


class evtchn_status(ctypes.Structure):
    """EVTCHNOP_status: the binding of ``<dom, port>``; ``u`` is selected
    by ``status`` (EVTCHNSTAT_*)."""

    _fields_ = [
        ("dom", domid_t),               # IN
        ("port", evtchn_port_t),        # IN
        ("status", ctypes.c_uint32),    # OUT: EVTCHNSTAT_*
        ("vcpu", ctypes.c_uint32),      # OUT: VCPU to which it is bound
        ("u", _evtchn_status_u),        # OUT
    ]


class evtchn_bind_vcpu(ctypes.Structure):
    """EVTCHNOP_bind_vcpu: which VCPU ``port`` notifies (default VCPU0)."""

    _fields_ = [
        ("port", evtchn_port_t),        # IN
        ("vcpu", ctypes.c_uint32),      # IN
    ]


class evtchn_unmask(ctypes.Structure):
    """EVTCHNOP_unmask: unmask ``port``, redelivering a pending event."""

    _fields_ = [("port", evtchn_port_t)]     # IN


class evtchn_reset(ctypes.Structure):
    """EVTCHNOP_reset: close every event channel of ``dom``."""

    _fields_ = [("dom", domid_t)]            # IN


class evtchn_init_control(ctypes.Structure):
    """EVTCHNOP_init_control: set up the FIFO ABI's control block."""

    _fields_ = [
        ("control_gfn", ctypes.c_uint64),    # IN
        ("offset", ctypes.c_uint32),         # IN
        ("vcpu", ctypes.c_uint32),           # IN
        ("link_bits", ctypes.c_uint8),       # OUT
        ("_pad", ctypes.c_uint8 * 7),
    ]


class evtchn_expand_array(ctypes.Structure):
    """EVTCHNOP_expand_array: add a page to the FIFO event array."""

    _fields_ = [("array_gfn", ctypes.c_uint64)]  # IN


class evtchn_set_priority(ctypes.Structure):
    """EVTCHNOP_set_priority: FIFO priority of ``port``."""

    _fields_ = [
        ("port", evtchn_port_t),        # IN
        ("priority", ctypes.c_uint32),  # IN
    ]


# 2-level ABI: 4096 ports on ARM, whose xen_ulong_t is 64 bits even for
# 32-bit guests.
EVTCHN_2L_NR_CHANNELS = (
    ctypes.sizeof(xen_ulong_t) * ctypes.sizeof(xen_ulong_t) * 64)

# FIFO ABI: priorities run from 0 (highest) to 15 (lowest).
EVTCHN_FIFO_PRIORITY_MAX = 0
EVTCHN_FIFO_PRIORITY_DEFAULT = 7
EVTCHN_FIFO_PRIORITY_MIN = 15
EVTCHN_FIFO_MAX_QUEUES = EVTCHN_FIFO_PRIORITY_MIN + 1

event_word_t = ctypes.c_uint32

# Bits of an event_word_t.
EVTCHN_FIFO_PENDING = 31
EVTCHN_FIFO_MASKED = 30
EVTCHN_FIFO_LINKED = 29
EVTCHN_FIFO_BUSY = 28

EVTCHN_FIFO_LINK_BITS = 17
EVTCHN_FIFO_LINK_MASK = (1 << EVTCHN_FIFO_LINK_BITS) - 1
EVTCHN_FIFO_NR_CHANNELS = 1 << EVTCHN_FIFO_LINK_BITS


class evtchn_fifo_control_block(ctypes.Structure):
    """The FIFO ABI's per-VCPU control block (one head per queue)."""

    _fields_ = [
        ("ready", ctypes.c_uint32),
        ("_rsvd", ctypes.c_uint32),
        ("head", ctypes.c_uint32 * EVTCHN_FIFO_MAX_QUEUES),
    ]

# pyxen's shared-info segment, shared by the hypervisor and the domain:
# Xen keeps one bit per port in shared_info's evtchn_pending/evtchn_mask;
# pyxen keeps one byte per port (a byte store is atomic, Python has no atomic
# bit operations on shared memory), after a first page left for vcpu_info.
PYXEN_SHINFO_PENDING_OFFSET = 4096
PYXEN_SHINFO_MASK_OFFSET = PYXEN_SHINFO_PENDING_OFFSET + EVTCHN_2L_NR_CHANNELS
PYXEN_SHINFO_SIZE = PYXEN_SHINFO_MASK_OFFSET + EVTCHN_2L_NR_CHANNELS


#: pyxen's event message: the port an upcall (hypervisor -> domain) or a
#: doorbell (domain -> domain) is for, one evtchn_port_t; both ends use it.
PYXEN_EVTCHN_PORT = scalar(evtchn_port_t)
