"""HYPERVISOR_sysctl: machine-wide queries (privileged)."""

from __future__ import annotations

from hypervisor.dispatch import PRIV, Call, hypercall
from hypervisor.public.sysctl import (
    XEN_SYSCTL_getdomaininfolist,
    XEN_SYSCTL_physinfo,
    XEN_SYSCTL_readconsole,
)
from hypervisor.public.xen import HYPERVISOR_sysctl


@hypercall(HYPERVISOR_sysctl, XEN_SYSCTL_physinfo, PRIV)
def physinfo(call: Call, args):
    return call.machine.physinfo()


@hypercall(HYPERVISOR_sysctl, XEN_SYSCTL_getdomaininfolist, PRIV)
def getdomaininfolist(call: Call, args: dict):
    first = int(args.get("first_domain", 0))
    limit = int(args.get("max_domains", 1 << 16))
    doms = sorted((d for d in call.machine.domains.values() if d.domid >= first),
                  key=lambda d: d.domid)
    return [d.info() for d in doms[:limit]]


@hypercall(HYPERVISOR_sysctl, XEN_SYSCTL_readconsole, PRIV)
def readconsole(call: Call, args: dict):
    """The hypervisor's console ring; `clear` empties it as xl dmesg -c."""
    lines = list(call.machine.console)
    if args.get("clear"):
        call.machine.console.clear()
    return "\n".join(lines) + ("\n" if lines else "")
