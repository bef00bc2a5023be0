"""HYPERVISOR_domctl: the toolstack's control of other domains (privileged)."""

from __future__ import annotations

from hypervisor.args import U16, U32, U64, Int, List, Maybe, Num, Opaque, Str, Struct
from hypervisor.dispatch import DEFERRED, PRIV, Call, hypercall
from hypervisor.process import thread_stat
from hypervisor.public.domctl import (
    XEN_SCHEDULER_CREDIT2,
    XEN_DOMCTL_createdomain,
    XEN_DOMCTL_destroydomain,
    XEN_DOMCTL_getdomaininfo,
    XEN_DOMCTL_getvcpuaffinity,
    XEN_DOMCTL_getvcpuinfo,
    XEN_DOMCTL_max_mem,
    XEN_DOMCTL_pausedomain,
    XEN_DOMCTL_SCHEDOP_getinfo,
    XEN_DOMCTL_SCHEDOP_putinfo,
    XEN_DOMCTL_scheduler_op,
    XEN_DOMCTL_setvcpuaffinity,
    XEN_DOMCTL_unpausedomain,
)
from hypervisor.public.errno import EINVAL, ENOMEM, XenError
from hypervisor.public.xen import HYPERVISOR_domctl

# What the toolstack asks the sandbox of a new domain to hold beyond the
# default (hypervisor/jail/sandbox.py): Dom0 is trusted, but its requests
# are still read as the shapes they claim to be.
# Disk images and guests' TAPs are not part of it: they come as fds when a
# device needs them (PYXEN_op_pass_fd).
SANDBOX = Struct(optional={
    "role": Str(16),
    "binds": List(Opaque(list, max_depth=1, max_items=3, max_str=4096), 256),  # [path, rw]
    "uplinks": List(Opaque(dict, max_depth=2, max_items=32, max_str=256), 16),
})

# What a toolstack may ask of a new domain (and nothing else: the loader's
# private keys, like Dom0's extra fds, are not for hypercalls). It names the
# kernel (module:function), always: the hypervisor knows no domain code.
# boot_timeout: seconds the kernel has to report ready (else the domain is
# destroyed and the caller gets ETIMEDOUT); max_window_kb: the most grant-
# window memory the domain may hold (Xen's max_grant_frames, in kB).
CREATE = Struct({"name": Str(128), "max_memkb": U64, "kernel": Str(256)},
                {"max_vcpus": Int(1, 128), "cmdline": Str(4096),
                 "cpus": Maybe(List(U32, 1024, 1)), "boot_timeout": Num(0.001, 86400),
                 "max_window_kb": U64, "sandbox": SANDBOX})
DOMAIN = Struct({"domain": U16})
DOMAIN_VCPU = Struct({"domain": U16, "vcpu": U32})


def _target(call: Call, args: dict):
    return call.machine.domain(args["domain"])


@hypercall(HYPERVISOR_domctl, XEN_DOMCTL_createdomain, PRIV, args=CREATE)
def createdomain(call: Call, args: dict):
    """Build a domain and start its kernel; answers when the kernel is ready,
    or with ETIMEDOUT (the domain destroyed) past its boot deadline."""
    dom = call.machine.create_domain(args)
    dom.pending_create = call.reply_to
    call.machine.arm_boot_deadline(dom, args.get("boot_timeout"))
    return DEFERRED


@hypercall(HYPERVISOR_domctl, XEN_DOMCTL_destroydomain, PRIV, args=DOMAIN)
def destroydomain(call: Call, args: dict):
    dom = _target(call, args)
    if dom.domid == 0:
        raise XenError(EINVAL, "Domain 0 cannot be destroyed")
    call.machine.destroy(dom)


@hypercall(HYPERVISOR_domctl, XEN_DOMCTL_pausedomain, PRIV, args=DOMAIN)
def pausedomain(call: Call, args: dict):
    dom = _target(call, args)
    if dom is call.caller:
        raise XenError(EINVAL, "a domain cannot pause itself")
    call.machine.pause(dom)


@hypercall(HYPERVISOR_domctl, XEN_DOMCTL_unpausedomain, PRIV, args=DOMAIN)
def unpausedomain(call: Call, args: dict):
    call.machine.unpause(_target(call, args))


@hypercall(HYPERVISOR_domctl, XEN_DOMCTL_getdomaininfo, PRIV, args=DOMAIN)
def getdomaininfo(call: Call, args: dict):
    return _target(call, args).info()


@hypercall(HYPERVISOR_domctl, XEN_DOMCTL_max_mem, PRIV,
           args=Struct({"domain": U16, "max_memkb": U64}))
def max_mem(call: Call, args: dict):
    dom = _target(call, args)
    pages = args["max_memkb"] // 4
    if pages < dom.tot_pages:
        raise XenError(ENOMEM, f"d{dom.domid} already uses {dom.tot_pages} pages")
    dom.max_pages = pages


@hypercall(HYPERVISOR_domctl, XEN_DOMCTL_setvcpuaffinity, PRIV,
           args=Struct({"domain": U16, "vcpu": U32},
                       {"cpumap_hard": Maybe(List(U32, 1024, 1))}))
def setvcpuaffinity(call: Call, args: dict):
    cpus = args.get("cpumap_hard")
    call.machine.set_vcpu_affinity(_target(call, args), args["vcpu"],
                                   None if cpus is None else tuple(cpus))


@hypercall(HYPERVISOR_domctl, XEN_DOMCTL_getvcpuaffinity, PRIV, args=DOMAIN_VCPU)
def getvcpuaffinity(call: Call, args: dict):
    dom = _target(call, args)
    vcpu = args["vcpu"]
    if vcpu not in dom.affinity:
        raise XenError(EINVAL, f"d{dom.domid} has no vCPU {vcpu}")
    cpus = dom.affinity[vcpu]
    return {"cpumap_hard": None if cpus is None else list(cpus), "cpumap_soft": None}


@hypercall(HYPERVISOR_domctl, XEN_DOMCTL_getvcpuinfo, PRIV, args=DOMAIN_VCPU)
def getvcpuinfo(call: Call, args: dict):
    """vCPUs are the domain's threads: their CPU time and last CPU are real."""
    dom = _target(call, args)
    vcpu = args["vcpu"]
    if not 0 <= vcpu < dom.max_vcpus:
        raise XenError(EINVAL, f"d{dom.domid} has no vCPU {vcpu}")
    proc = dom.process
    online = bool(proc and proc.alive and vcpu < len(dom.vcpu_tids))
    cpu_time, cpu, state = (thread_stat(proc.pid, dom.vcpu_tids[vcpu])
                            if online else (0, -1, "X"))
    host = sorted(call.machine.host_cpus(None))
    return {
        "vcpu": vcpu,
        "online": online,
        "blocked": online and state not in "R",
        "running": online and state == "R" and not dom.paused,
        "cpu_time": cpu_time,
        "cpu": host.index(cpu) if cpu in host else max(cpu, 0),
    }


# credit2's weight and cap are checked by value below (with their own
# messages); the schema only makes them integers.
CREDIT2 = Struct(optional={"weight": Int(-(1 << 31), U32.hi), "cap": Int(-(1 << 31), U32.hi)})


@hypercall(HYPERVISOR_domctl, XEN_DOMCTL_scheduler_op, PRIV,
           args=Struct({"domain": U16},
                       {"sched_id": Int(-1, U32.hi), "cmd": Int(-1, U32.hi),
                        "credit2": Maybe(CREDIT2)}))
def scheduler_op(call: Call, args: dict):
    """struct xen_domctl_scheduler_op for credit2, pyxen's only scheduler:
    {"sched_id", "cmd", "credit2": {"weight", "cap"}} (the union member
    by its name). getinfo answers {"sched_id", "cmd", "credit2": {...}}."""
    dom = _target(call, args)
    sched_id = args.get("sched_id", -1)
    if sched_id != XEN_SCHEDULER_CREDIT2:
        raise XenError(EINVAL, f"scheduler {sched_id} is not this machine's "
                       f"(credit2, {XEN_SCHEDULER_CREDIT2})")
    cmd = args.get("cmd", -1)
    if cmd == XEN_DOMCTL_SCHEDOP_getinfo:
        return {"sched_id": sched_id, "cmd": cmd,
                "credit2": {"weight": dom.weight, "cap": dom.cap}}
    if cmd != XEN_DOMCTL_SCHEDOP_putinfo:
        raise XenError(EINVAL, f"credit2 has no scheduler_op command {cmd}")
    params = args.get("credit2") or {}
    weight, cap = params.get("weight", 0), params.get("cap", 0)
    # As Xen's credit2: weight 0 leaves the weight as it is; cap 0 is no cap.
    call.machine.set_sched(dom, weight, cap)
