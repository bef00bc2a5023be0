"""HYPERVISOR_event_channel_op: EVTCHNOP_* for the calling domain."""

from __future__ import annotations

from hypervisor.args import U16, U32, Struct
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


def _dom(call: Call, domid: int) -> int:
    return call.caller.domid if domid == DOMID_SELF else domid


PORT = Struct({"port": U32})


@hypercall(HYPERVISOR_event_channel_op, EVTCHNOP_alloc_unbound,
           args=Struct({"remote_dom": U16}, {"dom": U16}))
def alloc_unbound(call: Call, args: dict):
    dom = _dom(call, args.get("dom", DOMID_SELF))
    if dom != call.caller.domid and not call.caller.privileged:
        raise XenError(EPERM, "only a privileged domain allocates for another")
    port = call.machine.evtchn.alloc_unbound(dom, _dom(call, args["remote_dom"]))
    call.machine.domain(dom).bitmap.reset(port)
    return {"port": port}


@hypercall(HYPERVISOR_event_channel_op, EVTCHNOP_bind_interdomain,
           args=Struct({"remote_dom": U16, "remote_port": U32}))
def bind_interdomain(call: Call, args: dict):
    me = call.caller.domid
    remote_dom, remote_port = _dom(call, args["remote_dom"]), args["remote_port"]
    call.machine.doorbells.admit(me, remote_dom)  # EBUSY: the owner is behind
    port = call.machine.evtchn.bind_interdomain(me, remote_dom, remote_port)
    call.caller.bitmap.reset(port)
    # Both ends learn of the binding (and get doorbell ends) first; pyxen's
    # "doorbell" says whether the caller may ring its peer directly.
    return {"local_port": port,
            "doorbell": call.machine.doorbells.bound(me, port, remote_dom, remote_port)}


@hypercall(HYPERVISOR_event_channel_op, EVTCHNOP_bind_virq,
           args=Struct({"virq": U32}, {"vcpu": U32}))
def bind_virq(call: Call, args: dict):
    port = call.machine.evtchn.bind_virq(call.caller.domid, args["virq"],
                                         args.get("vcpu", 0),
                                         call.caller.max_vcpus)
    call.caller.bitmap.reset(port)
    return {"port": port}


@hypercall(HYPERVISOR_event_channel_op, EVTCHNOP_close, args=PORT)
def close(call: Call, args: dict):
    peer = call.machine.evtchn.close(call.caller.domid, args["port"])
    if peer is not None:
        call.machine.doorbells.unbound(*peer, closer=call.caller.domid)


@hypercall(HYPERVISOR_event_channel_op, EVTCHNOP_send, args=PORT)
def send(call: Call, args: dict):
    call.machine.deliver(call.machine.evtchn.send(call.caller.domid, args["port"]))


@hypercall(HYPERVISOR_event_channel_op, EVTCHNOP_status,
           args=Struct({"port": U32}, {"dom": U16}))
def status(call: Call, args: dict):
    dom = _dom(call, args.get("dom", DOMID_SELF))
    if dom != call.caller.domid and not call.caller.privileged:
        raise XenError(EPERM, "only a privileged domain reads another's ports")
    return call.machine.evtchn.status(dom, args["port"])


@hypercall(HYPERVISOR_event_channel_op, EVTCHNOP_unmask, args=PORT)
def unmask(call: Call, args: dict):
    """Unmask, and raise the upcall that arrived while the port was masked."""
    port = args["port"]
    call.machine.evtchn.table(call.caller.domid).get(port)
    bitmap = call.caller.bitmap
    if bitmap.unmask(port):
        bitmap.clear_pending(port)
        call.machine.deliver(Delivery(call.caller.domid, port))
