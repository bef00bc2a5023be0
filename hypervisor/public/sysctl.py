"""System management operations, for the node control stack (xen/sysctl.h).

``HYPERVISOR_sysctl(struct xen_sysctl *)`` reads Xen's console ring,
describes the host (``physinfo``) and lists domains (``getdomaininfolist``,
whose entries are domctl getdomaininfo records).  Like domctl, its ABI is
not stable: the caller's ``XEN_SYSCTL_INTERFACE_VERSION`` must equal Xen's.
pyxen carries sysctl arguments and results as msgpack maps whose keys are
the C struct's field names (``struct xen_sysctl_physinfo`` becomes
``{"nr_cpus": ..., "total_pages": ..., ...}``), so this module holds only
constants, no ctypes structures.
"""

XEN_SYSCTL_INTERFACE_VERSION = 0x00000015

# xen_sysctl.cmd (gaps are removed operations).
XEN_SYSCTL_readconsole = 1
XEN_SYSCTL_tbuf_op = 2
XEN_SYSCTL_physinfo = 3
XEN_SYSCTL_sched_id = 4
XEN_SYSCTL_perfc_op = 5
XEN_SYSCTL_getdomaininfolist = 6
XEN_SYSCTL_debug_keys = 7
XEN_SYSCTL_getcpuinfo = 8
XEN_SYSCTL_availheap = 9
XEN_SYSCTL_get_pmstat = 10
XEN_SYSCTL_cpu_hotplug = 11
XEN_SYSCTL_pm_op = 12
XEN_SYSCTL_page_offline_op = 14
XEN_SYSCTL_lockprof_op = 15
XEN_SYSCTL_cputopoinfo = 16
XEN_SYSCTL_numainfo = 17
XEN_SYSCTL_cpupool_op = 18
XEN_SYSCTL_scheduler_op = 19
XEN_SYSCTL_coverage_op = 20
XEN_SYSCTL_psr_cmt_op = 21
XEN_SYSCTL_pcitopoinfo = 22
XEN_SYSCTL_psr_alloc = 23
XEN_SYSCTL_get_cpu_levelling_caps = 25
XEN_SYSCTL_get_cpu_featureset = 26
XEN_SYSCTL_livepatch_op = 27
XEN_SYSCTL_get_cpu_policy = 29

# XEN_SYSCTL_physinfo: xen_sysctl_physinfo.capabilities.
_XEN_SYSCTL_PHYSCAP_hvm = 0
XEN_SYSCTL_PHYSCAP_hvm = 1 << _XEN_SYSCTL_PHYSCAP_hvm            # HVM guests.
_XEN_SYSCTL_PHYSCAP_pv = 1
XEN_SYSCTL_PHYSCAP_pv = 1 << _XEN_SYSCTL_PHYSCAP_pv              # PV guests.
_XEN_SYSCTL_PHYSCAP_directio = 2
XEN_SYSCTL_PHYSCAP_directio = 1 << _XEN_SYSCTL_PHYSCAP_directio  # IOMMU I/O.
_XEN_SYSCTL_PHYSCAP_hap = 3
XEN_SYSCTL_PHYSCAP_hap = 1 << _XEN_SYSCTL_PHYSCAP_hap   # Hardware-assisted paging.
_XEN_SYSCTL_PHYSCAP_shadow = 4
XEN_SYSCTL_PHYSCAP_shadow = 1 << _XEN_SYSCTL_PHYSCAP_shadow      # Software paging.
_XEN_SYSCTL_PHYSCAP_iommu_hap_pt_share = 5
XEN_SYSCTL_PHYSCAP_iommu_hap_pt_share = 1 << _XEN_SYSCTL_PHYSCAP_iommu_hap_pt_share
XEN_SYSCTL_PHYSCAP_vmtrace = 1 << 6
XEN_SYSCTL_PHYSCAP_vpmu = 1 << 7
XEN_SYSCTL_PHYSCAP_gnttab_v1 = 1 << 8    # Xen supports the grant v1 ABI.
XEN_SYSCTL_PHYSCAP_gnttab_v2 = 1 << 9    # Xen supports the grant v2 ABI.
XEN_SYSCTL_PHYSCAP_MAX = XEN_SYSCTL_PHYSCAP_gnttab_v2   # Max XEN_SYSCTL_PHYSCAP_*.

# XEN_SYSCTL_scheduler_op commands.
XEN_SYSCTL_SCHEDOP_putinfo = 0
XEN_SYSCTL_SCHEDOP_getinfo = 1

# XEN_SYSCTL_cpupool_op commands.
XEN_SYSCTL_CPUPOOL_OP_CREATE = 1
XEN_SYSCTL_CPUPOOL_OP_DESTROY = 2
XEN_SYSCTL_CPUPOOL_OP_INFO = 3
XEN_SYSCTL_CPUPOOL_OP_ADDCPU = 4
XEN_SYSCTL_CPUPOOL_OP_RMCPU = 5
XEN_SYSCTL_CPUPOOL_OP_MOVEDOMAIN = 6
XEN_SYSCTL_CPUPOOL_OP_FREEINFO = 7
XEN_SYSCTL_CPUPOOL_PAR_ANY = 0xFFFFFFFF
