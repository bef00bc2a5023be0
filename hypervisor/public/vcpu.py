"""VCPU initialisation, query, and hotplug (xen/vcpu.h).

``HYPERVISOR_vcpu_op(cmd, vcpuid, extra_args)`` brings VCPUs up and down,
reports their run state and arms their timers.  The single-shot timer is
the guest's tick: it fires ``VIRQ_TIMER`` at an absolute system time.
"""

import ctypes

from .xen import XEN_GUEST_HANDLE

VCPUOP_initialise = 0             # arg == vcpu_guest_context (ARM)
VCPUOP_up = 1                     # Make an initialised VCPU runnable.
VCPUOP_down = 2                   # Make a VCPU non-runnable.
VCPUOP_is_up = 3                  # Returns 1 if the given VCPU is up.
VCPUOP_get_runstate_info = 4      # arg == vcpu_runstate_info
VCPUOP_register_runstate_memory_area = 5  # arg == ..._runstate_memory_area
VCPUOP_set_periodic_timer = 6     # arg == vcpu_set_periodic_timer
VCPUOP_stop_periodic_timer = 7    # arg == NULL
VCPUOP_set_singleshot_timer = 8   # arg == vcpu_set_singleshot_timer
VCPUOP_stop_singleshot_timer = 9  # arg == NULL
VCPUOP_register_vcpu_info = 10    # arg == vcpu_register_vcpu_info
VCPUOP_send_nmi = 11              # arg == NULL
VCPUOP_get_physid = 12            # arg == vcpu_get_physid
VCPUOP_register_vcpu_time_memory_area = 13  # arg == ..._time_memory_area


class vcpu_runstate_info(ctypes.Structure):
    """State and running time of a VCPU; ``time`` is indexed by
    RUNSTATE_* and its sum never drifts from system time."""

    _fields_ = [
        ("state", ctypes.c_int),                # RUNSTATE_*
        ("state_entry_time", ctypes.c_uint64),  # system time (ns)
        ("time", ctypes.c_uint64 * 4),          # ns spent in each state
    ]


# Set in state_entry_time while Xen updates a guest-mapped copy (when
# VMASST_TYPE_runstate_update_flag is active).
XEN_RUNSTATE_UPDATE = 1 << 63

RUNSTATE_running = 0    # Running on a physical CPU.
RUNSTATE_runnable = 1   # Runnable, but not currently scheduled.
RUNSTATE_blocked = 2    # Blocked (a.k.a. idle): not runnable.
RUNSTATE_offline = 3    # Not runnable, not blocked (hotplug, paused...).


class _vcpu_register_memory_area_addr(ctypes.Union):
    # C's third member, a struct pointer "v", means nothing across processes.
    _fields_ = [("h", XEN_GUEST_HANDLE), ("p", ctypes.c_uint64)]


class vcpu_register_runstate_memory_area(ctypes.Structure):
    """VCPUOP_register_runstate_memory_area: where Xen keeps a copy of the
    VCPU's vcpu_runstate_info, updated whenever it is scheduled."""

    _fields_ = [("addr", _vcpu_register_memory_area_addr)]


class vcpu_set_periodic_timer(ctypes.Structure):
    """VCPUOP_set_periodic_timer (periods under 1ms may be unsupported)."""

    _fields_ = [("period_ns", ctypes.c_uint64)]


class vcpu_set_singleshot_timer(ctypes.Structure):
    """VCPUOP_set_singleshot_timer: fire VIRQ_TIMER at ``timeout_abs_ns``."""

    _fields_ = [
        ("timeout_abs_ns", ctypes.c_uint64),  # Absolute system time (ns).
        ("flags", ctypes.c_uint32),           # VCPU_SSHOTTMR_*
    ]


# Request the timeout to be in the future (return -ETIME if it has
# passed); the hypervisor may ignore it.
_VCPU_SSHOTTMR_future = 0
VCPU_SSHOTTMR_future = 1 << _VCPU_SSHOTTMR_future


class vcpu_register_vcpu_info(ctypes.Structure):
    """VCPUOP_register_vcpu_info: place vcpu_info at ``mfn``+``offset``."""

    _fields_ = [
        ("mfn", ctypes.c_uint64),       # mfn of page to place vcpu_info
        ("offset", ctypes.c_uint32),    # offset within page
        ("rsvd", ctypes.c_uint32),      # unused
    ]


class vcpu_get_physid(ctypes.Structure):
    """VCPUOP_get_physid: architecture-specific id of the physical CPU."""

    _fields_ = [("phys_id", ctypes.c_uint64)]


class vcpu_register_time_memory_area(ctypes.Structure):
    """VCPUOP_register_vcpu_time_memory_area: a secondary copy of the
    VCPU's vcpu_time_info."""

    _fields_ = [("addr", _vcpu_register_memory_area_addr)]
