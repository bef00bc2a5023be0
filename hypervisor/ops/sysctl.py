"""HYPERVISOR_sysctl: machine-wide queries (privileged)."""

from __future__ import annotations

from hypervisor.args import NOTHING, U16, U32, Bool, Struct
from hypervisor.dispatch import PRIV, Call, hypercall
from hypervisor.public.sysctl import (
    XEN_SYSCTL_getdomaininfolist,
    XEN_SYSCTL_physinfo,
    XEN_SYSCTL_readconsole,
)
from hypervisor.public.xen import HYPERVISOR_sysctl


@hypercall(HYPERVISOR_sysctl, XEN_SYSCTL_physinfo, PRIV, args=NOTHING)
def physinfo(call: Call, args):
    return call.machine.physinfo()


@hypercall(HYPERVISOR_sysctl, XEN_SYSCTL_getdomaininfolist, PRIV,
           args=Struct(optional={"first_domain": U16, "max_domains": U32}))
def getdomaininfolist(call: Call, args: dict):
    first = args.get("first_domain", 0)
    limit = args.get("max_domains", 1 << 16)
    doms = sorted((d for d in call.machine.domains.values() if d.domid >= first),
                  key=lambda d: d.domid)
    return [d.info() for d in doms[:limit]]


@hypercall(HYPERVISOR_sysctl, XEN_SYSCTL_readconsole, PRIV,
           args=Struct(optional={"clear": Bool()}))
def readconsole(call: Call, args: dict):
    """The hypervisor's console ring; `clear` empties it as xl dmesg -c."""
    lines = list(call.machine.console)
    if args.get("clear"):
        call.machine.console.clear()
    return "\n".join(lines) + ("\n" if lines else "")
