"""HYPERVISOR_sched_op: shutdown of oneself, or of another (privileged)."""

from __future__ import annotations

from hypervisor.args import NOTHING, U16, U32, Struct
from hypervisor.dispatch import PRIV, Call, hypercall
from hypervisor.public.errno import EINVAL, XenError
from hypervisor.public.sched import (
    SHUTDOWN_NAMES,
    SCHEDOP_remote_shutdown,
    SCHEDOP_shutdown,
    SCHEDOP_watchdog,
    SCHEDOP_yield,
)
from hypervisor.public.xen import HYPERVISOR_sched_op


def _reason(args: dict) -> int:
    reason = args["reason"]
    if reason not in SHUTDOWN_NAMES:
        raise XenError(EINVAL, f"unknown shutdown reason {reason}")
    return reason


@hypercall(HYPERVISOR_sched_op, SCHEDOP_shutdown, args=Struct({"reason": U32}))
def shutdown(call: Call, args: dict):
    call.machine.shutdown(call.caller, _reason(args))


@hypercall(HYPERVISOR_sched_op, SCHEDOP_remote_shutdown, PRIV,
           args=Struct({"domain_id": U16, "reason": U32}))
def remote_shutdown(call: Call, args: dict):
    dom = call.machine.domain(args["domain_id"])
    call.machine.shutdown(dom, _reason(args), remote=True)


@hypercall(HYPERVISOR_sched_op, SCHEDOP_watchdog,
           args=Struct({"id": U32, "timeout": U32}))
def watchdog(call: Call, args: dict):
    """Create (id 0), poke (a timeout) or remove (timeout 0) a watchdog;
    if one is not poked in time the domain is shut down (SHUTDOWN_watchdog)."""
    return call.machine.watchdog(call.caller, args["id"], args["timeout"])


@hypercall(HYPERVISOR_sched_op, SCHEDOP_yield, args=NOTHING)
def yield_(call: Call, args):
    return None
