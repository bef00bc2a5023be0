"""pyxen's guest/hypervisor ABI: a mirror of Xen's ``xen/include/public``.

One module per Xen public header, holding that header's constants with
Xen's names and values and, where a structure crosses the hypercall
boundary, a ``ctypes`` structure with Xen's name, field names and layout
(the AArch64 layout: pyxen re-creates Xen on ARM)::

    errno          xen/errno.h          XEN_E* values, XenError
    xen            xen/xen.h            hypercall numbers, VIRQs, DOMID_*
    event_channel  xen/event_channel.h  EVTCHNOP_*, struct evtchn_*
    grant_table    xen/grant_table.h    GNTTABOP_*, GTF_*, GNTST_*, gnttab_*
    sched          xen/sched.h          SCHEDOP_*, SHUTDOWN_*
    vcpu           xen/vcpu.h           VCPUOP_*, RUNSTATE_*
    domctl         xen/domctl.h         XEN_DOMCTL_*, XEN_DOMINF_*
    sysctl         xen/sysctl.h         XEN_SYSCTL_*

Names prefixed ``PYXEN_`` (and ``HYPERVISOR_pyxen_op``) are pyxen's own
extensions and have no Xen counterpart.  tests/test_public_abi.py compiles
C against Debian's libxen-dev headers to prove everything else matches.

This package is the ABI only: it imports nothing from the hypervisor
implementation, and frontends, backends and guest kernels import only this
package to talk to the hypervisor.
"""
