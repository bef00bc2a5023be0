"""Small hypercalls: timer, version, console, and pyxen's own op."""

from __future__ import annotations

from hypervisor.args import NOTHING, U16, U32, U64, Bool, Int, List, Opaque, Str, Struct
from hypervisor.dispatch import PRIV, Call, hypercall
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
    PYXEN_op_pass_fd,
    PYXEN_op_ready,
)

XEN_MAJOR, XEN_MINOR, XEN_EXTRA = 4, 17, ".0-pyxen"

PID_MAX_LIMIT = 1 << 22  # Linux's largest pid_max: no thread id is above it
MAX_VCPUS = 128
# What a kernel tells its creator at boot: passed on unread, so only its size
# is the hypervisor's business.
ANNOUNCE = Opaque(dict, max_depth=4, max_items=64, max_str=256)
CONSOLE_LINE = 1024  # what one CONSOLEIO_write puts on the console, at most


@hypercall(HYPERVISOR_set_timer_op, 0, args=Struct({"timeout": U64}))
def set_timer_op(call: Call, args: dict):
    """Deadline in ns of CLOCK_MONOTONIC (pyxen's system time); 0 cancels."""
    if not 0 <= call.vcpu < call.caller.max_vcpus:
        raise XenError(EINVAL, f"d{call.caller.domid} has no vCPU {call.vcpu}")
    call.machine.set_timer(call.caller, call.vcpu, args["timeout"])


@hypercall(HYPERVISOR_xen_version, XENVER_version, args=NOTHING)
def version(call: Call, args):
    return (XEN_MAJOR << 16) | XEN_MINOR


@hypercall(HYPERVISOR_xen_version, XENVER_extraversion, args=NOTHING)
def extraversion(call: Call, args):
    return XEN_EXTRA


@hypercall(HYPERVISOR_xen_version, XENVER_capabilities, args=NOTHING)
def capabilities(call: Call, args):
    return "xen-3.0-aarch64 xen-3.0-armv7l"


@hypercall(HYPERVISOR_console_io, CONSOLEIO_write, args=Struct({"buf": Str(16384)}))
def console_write(call: Call, args: dict):
    """A guest's line on the hypervisor console: prefixed with its domain,
    stripped of control characters, rate-limited per domain (xenlog)."""
    call.machine.guest_write(call.caller, args["buf"][:CONSOLE_LINE])


@hypercall(HYPERVISOR_pyxen_op, PYXEN_op_ready,
           args=Struct({"vcpu_tids": List(Int(1, PID_MAX_LIMIT), MAX_VCPUS, 1)},
                       {"announce": ANNOUNCE}))
def ready(call: Call, args: dict):
    call.machine.domain_ready(call.caller, args["vcpu_tids"], args.get("announce"))


@hypercall(HYPERVISOR_pyxen_op, PYXEN_op_grant_window,
           args=Struct({"peer": U16, "nr_frames": U32}))
def grant_window(call: Call, args: dict):
    """Open a window of frames that only `peer` may map (see grant_table.py)."""
    peer = args["peer"]
    if peer == call.caller.domid:
        raise XenError(EINVAL, "a grant window is shared with another domain")
    region = call.machine.open_window(call.caller, peer, args["nr_frames"])
    return {"window": region.window_id, "gfn": region.gfn,
            "nr_frames": region.segment.nr_pages}


@hypercall(HYPERVISOR_pyxen_op, PYXEN_op_close_window, args=Struct({"window": U64}))
def close_window(call: Call, args: dict):
    """Give back one of the caller's grant windows, e.g. after its peer
    died: EBUSY while anything in it is still mapped."""
    call.machine.close_window(call.caller, args["window"])


# Dom0's request for a device's fd: the domain to hand it to, the key its
# driver takes it by, what to open (an image at `path`, read-write only if
# `writable`; or a TAP fd of the domain's own network namespace).
PASS_FD = Struct({"domain": U16, "key": Str(128), "kind": Str(8)},
                 {"path": Str(4096), "writable": Bool()})


@hypercall(HYPERVISOR_pyxen_op, PYXEN_op_pass_fd, PRIV, args=PASS_FD)
def pass_fd(call: Call, args: dict):
    """Open a device's backing image or TAP for a domain and queue the fd
    on its memory channel (hypervisor/devfds.py), before Dom0 writes the
    device's nodes: {"type": "file" | "phy" | "tun", "size": bytes}."""
    dom = call.machine.domain(args["domain"])
    return call.machine.pass_fd(dom, args["key"], args["kind"], args.get("path"),
                                args.get("writable", False))
