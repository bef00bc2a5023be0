"""HYPERVISOR_event_channel_op: EVTCHNOP_* for the calling domain."""

from __future__ import annotations

from hypervisor.dispatch import Call, hypercall
from hypervisor.event_channel import Delivery
from hypervisor.public.errno import EPERM, XenError
from hypervisor.public.event_channel import (
    EVTCHNOP_alloc_unbound,
    EVTCHNOP_bind_interdomain,
    EVTCHNOP_bind_virq,
    EVTCHNOP_close,
    EVTCHNOP_send,
    EVTCHNOP_status,
    EVTCHNOP_unmask,
)
from hypervisor.public.xen import DOMID_SELF, HYPERVISOR_event_channel_op


def _dom(call: Call, domid) -> int:
    domid = int(domid)
    return call.caller.domid if domid == DOMID_SELF else domid


@hypercall(HYPERVISOR_event_channel_op, EVTCHNOP_alloc_unbound)
def alloc_unbound(call: Call, args: dict):
    dom = _dom(call, args.get("dom", DOMID_SELF))
    if dom != call.caller.domid and not call.caller.privileged:
        raise XenError(EPERM, "only a privileged domain allocates for another")
    port = call.machine.evtchn.alloc_unbound(dom, _dom(call, args["remote_dom"]))
    call.machine.domain(dom).bitmap.reset(port)
    return {"port": port}


@hypercall(HYPERVISOR_event_channel_op, EVTCHNOP_bind_interdomain)
def bind_interdomain(call: Call, args: dict):
    me = call.caller.domid
    remote_dom, remote_port = _dom(call, args["remote_dom"]), int(args["remote_port"])
    port = call.machine.evtchn.bind_interdomain(me, remote_dom, remote_port)
    call.caller.bitmap.reset(port)
    # Both ends learn of the binding (and get doorbell ends) first; pyxen's
    # "doorbell" says whether the caller may ring its peer directly.
    return {"local_port": port,
            "doorbell": call.machine.doorbells.bound(me, port, remote_dom, remote_port)}


@hypercall(HYPERVISOR_event_channel_op, EVTCHNOP_bind_virq)
def bind_virq(call: Call, args: dict):
    port = call.machine.evtchn.bind_virq(call.caller.domid, int(args["virq"]),
                                         int(args.get("vcpu", 0)),
                                         call.caller.max_vcpus)
    call.caller.bitmap.reset(port)
    return {"port": port}


@hypercall(HYPERVISOR_event_channel_op, EVTCHNOP_close)
def close(call: Call, args: dict):
    peer = call.machine.evtchn.close(call.caller.domid, int(args["port"]))
    if peer is not None:
        call.machine.doorbells.unbound(*peer, closer=call.caller.domid)


@hypercall(HYPERVISOR_event_channel_op, EVTCHNOP_send)
def send(call: Call, args: dict):
    call.machine.deliver(call.machine.evtchn.send(call.caller.domid, int(args["port"])))


@hypercall(HYPERVISOR_event_channel_op, EVTCHNOP_status)
def status(call: Call, args: dict):
    dom = _dom(call, args.get("dom", DOMID_SELF))
    if dom != call.caller.domid and not call.caller.privileged:
        raise XenError(EPERM, "only a privileged domain reads another's ports")
    return call.machine.evtchn.status(dom, int(args["port"]))


@hypercall(HYPERVISOR_event_channel_op, EVTCHNOP_unmask)
def unmask(call: Call, args: dict):
    """Unmask, and raise the upcall that arrived while the port was masked."""
    port = int(args["port"])
    call.machine.evtchn.table(call.caller.domid).get(port)
    bitmap = call.caller.bitmap
    if bitmap.unmask(port):
        bitmap.clear_pending(port)
        call.machine.deliver(Delivery(call.caller.domid, port))
