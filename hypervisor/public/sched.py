"""Scheduler state interactions (xen/sched.h).

``HYPERVISOR_sched_op(cmd, arg)`` lets a guest yield, block until an event
arrives, poll a set of event-channel ports, and shut itself down: the
``SHUTDOWN_*`` reason is reported to the control tools, which decide what
to do (destroy, restart, save).  Xen itself mostly ignores the reason.
"""

import ctypes

from .xen import XEN_GUEST_HANDLE, domid_t

# ` enum sched_op { // SCHEDOP_* => struct sched_*
SCHEDOP_yield = 0            # Voluntarily yield the CPU. @arg == NULL.
SCHEDOP_block = 1            # Block until an event is received. @arg == NULL.
SCHEDOP_shutdown = 2         # Halt this domain. @arg == sched_shutdown.
SCHEDOP_poll = 3             # Wait for one of a set of ports. @arg == sched_poll.
SCHEDOP_remote_shutdown = 4  # Shut another domain down. sched_remote_shutdown.
SCHEDOP_shutdown_code = 5    # Latch the code reported at a later shutdown.
SCHEDOP_watchdog = 6         # Set up, poke or destroy a domain watchdog.
SCHEDOP_pin_override = 7     # Temporarily pin a vcpu to one pcpu (hw domain).
# ` }


class sched_shutdown(ctypes.Structure):
    """SCHEDOP_shutdown / SCHEDOP_shutdown_code argument."""

    _fields_ = [("reason", ctypes.c_uint)]   # SHUTDOWN_*


class sched_poll(ctypes.Structure):
    """SCHEDOP_poll: return when one of ``ports`` is pending, or at the
    absolute system time ``timeout`` (ns) if non-zero."""

    _fields_ = [
        ("ports", XEN_GUEST_HANDLE),    # evtchn_port_t[nr_ports]
        ("nr_ports", ctypes.c_uint),
        ("timeout", ctypes.c_uint64),
    ]


class sched_remote_shutdown(ctypes.Structure):
    """SCHEDOP_remote_shutdown: declare a shutdown for ``domain_id``."""

    _fields_ = [
        ("domain_id", domid_t),         # Remote domain ID
        ("reason", ctypes.c_uint),      # SHUTDOWN_*
    ]


class sched_watchdog(ctypes.Structure):
    """SCHEDOP_watchdog: id 0 creates a watchdog; timeout 0 destroys it."""

    _fields_ = [
        ("id", ctypes.c_uint32),        # watchdog ID
        ("timeout", ctypes.c_uint32),   # timeout
    ]


class sched_pin_override(ctypes.Structure):
    """SCHEDOP_pin_override: a negative ``pcpu`` undoes the override."""

    _fields_ = [("pcpu", ctypes.c_int32)]


# ` enum sched_shutdown_reason {
SHUTDOWN_poweroff = 0     # Domain exited normally. Clean up and kill.
SHUTDOWN_reboot = 1       # Clean up, kill, and then restart.
SHUTDOWN_suspend = 2      # Clean up, save suspend info, kill.
SHUTDOWN_crash = 3        # Tell controller we've crashed.
SHUTDOWN_watchdog = 4     # Restart because watchdog time expired.
SHUTDOWN_soft_reset = 5   # Reset Xen state, keep memory and vCPU contexts.
SHUTDOWN_MAX = 5          # Maximum valid shutdown reason.
# ` }

#: reason -> name as the tools print it ("poweroff", "soft_reset", ...).
SHUTDOWN_NAMES: dict[int, str] = {
    SHUTDOWN_poweroff: "poweroff",
    SHUTDOWN_reboot: "reboot",
    SHUTDOWN_suspend: "suspend",
    SHUTDOWN_crash: "crash",
    SHUTDOWN_watchdog: "watchdog",
    SHUTDOWN_soft_reset: "soft_reset",
}
