"""Small hypercalls: timer, version, console, and pyxen's own op."""

from __future__ import annotations

from hypervisor.dispatch import Call, hypercall
from hypervisor.public.errno import EINVAL, XenError
from hypervisor.public.version import (
    XENVER_capabilities,
    XENVER_extraversion,
    XENVER_version,
)
from hypervisor.public.xen import (
    CONSOLEIO_write,
    HYPERVISOR_console_io,
    HYPERVISOR_pyxen_op,
    HYPERVISOR_set_timer_op,
    HYPERVISOR_xen_version,
    PYXEN_op_close_window,
    PYXEN_op_grant_window,
    PYXEN_op_ready,
)

XEN_MAJOR, XEN_MINOR, XEN_EXTRA = 4, 17, ".0-pyxen"


@hypercall(HYPERVISOR_set_timer_op, 0)
def set_timer_op(call: Call, args: dict):
    """Deadline in ns of CLOCK_MONOTONIC (pyxen's system time); 0 cancels."""
    if not 0 <= call.vcpu < call.caller.max_vcpus:
        raise XenError(EINVAL, f"d{call.caller.domid} has no vCPU {call.vcpu}")
    call.machine.set_timer(call.caller, call.vcpu, int(args["timeout"]))


@hypercall(HYPERVISOR_xen_version, XENVER_version)
def version(call: Call, args):
    return (XEN_MAJOR << 16) | XEN_MINOR


@hypercall(HYPERVISOR_xen_version, XENVER_extraversion)
def extraversion(call: Call, args):
    return XEN_EXTRA


@hypercall(HYPERVISOR_xen_version, XENVER_capabilities)
def capabilities(call: Call, args):
    return "xen-3.0-aarch64 xen-3.0-armv7l"


@hypercall(HYPERVISOR_console_io, CONSOLEIO_write)
def console_write(call: Call, args: dict):
    text = str(args["buf"])[:1024].rstrip("\n")
    call.machine.log(f"d{call.caller.domid} {text}")


@hypercall(HYPERVISOR_pyxen_op, PYXEN_op_ready)
def ready(call: Call, args: dict):
    call.machine.domain_ready(call.caller, list(args["vcpu_tids"]), args.get("announce"))


@hypercall(HYPERVISOR_pyxen_op, PYXEN_op_grant_window)
def grant_window(call: Call, args: dict):
    """Open a window of frames that only `peer` may map (see grant_table.py)."""
    peer = int(args["peer"])
    if peer == call.caller.domid:
        raise XenError(EINVAL, "a grant window is shared with another domain")
    region = call.machine.open_window(call.caller, peer, int(args["nr_frames"]))
    return {"window": region.window_id, "gfn": region.gfn,
            "nr_frames": region.segment.nr_pages}


@hypercall(HYPERVISOR_pyxen_op, PYXEN_op_close_window)
def close_window(call: Call, args: dict):
    """Give back one of the caller's grant windows, e.g. after its peer
    died: EBUSY while anything in it is still mapped."""
    call.machine.close_window(call.caller, int(args["window"]))
