"""Domain management operations, for the node control stack (xen/domctl.h).

``HYPERVISOR_domctl(struct xen_domctl *)`` is dom0's interface for
creating, destroying, pausing and inspecting domains.  Its ABI is not
stable: the caller's ``XEN_DOMCTL_INTERFACE_VERSION`` must equal Xen's.
pyxen carries domctl arguments and results as msgpack maps whose keys are
the C struct's field names (``struct xen_domctl_getdomaininfo`` becomes
``{"domain": ..., "flags": ..., "tot_pages": ..., ...}``), so this module
holds only constants, no ctypes structures.
"""

XEN_DOMCTL_INTERFACE_VERSION = 0x00000015

# XEN_DOMCTL_createdomain flags (xen_domctl_createdomain.flags).
_XEN_DOMCTL_CDF_hvm = 0
XEN_DOMCTL_CDF_hvm = 1 << _XEN_DOMCTL_CDF_hvm        # HVM (not PV) guest?
_XEN_DOMCTL_CDF_hap = 1
XEN_DOMCTL_CDF_hap = 1 << _XEN_DOMCTL_CDF_hap        # Hardware-assisted paging?
_XEN_DOMCTL_CDF_s3_integrity = 2
XEN_DOMCTL_CDF_s3_integrity = 1 << _XEN_DOMCTL_CDF_s3_integrity
_XEN_DOMCTL_CDF_oos_off = 3
XEN_DOMCTL_CDF_oos_off = 1 << _XEN_DOMCTL_CDF_oos_off
_XEN_DOMCTL_CDF_xs_domain = 4
XEN_DOMCTL_CDF_xs_domain = 1 << _XEN_DOMCTL_CDF_xs_domain  # Xenstore domain?
_XEN_DOMCTL_CDF_iommu = 5
XEN_DOMCTL_CDF_iommu = 1 << _XEN_DOMCTL_CDF_iommu    # May use the IOMMU?
_XEN_DOMCTL_CDF_nested_virt = 6
XEN_DOMCTL_CDF_nested_virt = 1 << _XEN_DOMCTL_CDF_nested_virt
XEN_DOMCTL_CDF_vpmu = 1 << 7                         # Expose the vPMU?
XEN_DOMCTL_CDF_MAX = XEN_DOMCTL_CDF_vpmu             # Max XEN_DOMCTL_CDF_*.

# xen_domctl_createdomain.iommu_opts.
_XEN_DOMCTL_IOMMU_no_sharept = 0
XEN_DOMCTL_IOMMU_no_sharept = 1 << _XEN_DOMCTL_IOMMU_no_sharept
XEN_DOMCTL_IOMMU_MAX = XEN_DOMCTL_IOMMU_no_sharept

# xen_domctl_createdomain.grant_opts: grant table version in the low 4 bits.
XEN_DOMCTL_GRANT_version_mask = 0xF

# XEN_DOMCTL_getdomaininfo flags (xen_domctl_getdomaininfo.flags).
_XEN_DOMINF_dying = 0
XEN_DOMINF_dying = 1 << _XEN_DOMINF_dying            # Scheduled to die.
_XEN_DOMINF_hvm_guest = 1
XEN_DOMINF_hvm_guest = 1 << _XEN_DOMINF_hvm_guest    # An HVM guest.
_XEN_DOMINF_shutdown = 2
XEN_DOMINF_shutdown = 1 << _XEN_DOMINF_shutdown      # The guest has shut down.
_XEN_DOMINF_paused = 3
XEN_DOMINF_paused = 1 << _XEN_DOMINF_paused          # Paused by control software.
_XEN_DOMINF_blocked = 4
XEN_DOMINF_blocked = 1 << _XEN_DOMINF_blocked        # Blocked pending an event.
_XEN_DOMINF_running = 5
XEN_DOMINF_running = 1 << _XEN_DOMINF_running        # Currently running.
_XEN_DOMINF_debugged = 6
XEN_DOMINF_debugged = 1 << _XEN_DOMINF_debugged      # Being debugged.
_XEN_DOMINF_xs_domain = 7
XEN_DOMINF_xs_domain = 1 << _XEN_DOMINF_xs_domain    # A xenstore domain.
_XEN_DOMINF_hap = 8
XEN_DOMINF_hap = 1 << _XEN_DOMINF_hap                # Hardware-assisted paging.
# The SHUTDOWN_* code of a XEN_DOMINF_shutdown domain is
# (flags >> XEN_DOMINF_shutdownshift) & XEN_DOMINF_shutdownmask.
XEN_DOMINF_shutdownmask = 255
XEN_DOMINF_shutdownshift = 16

# xen_domctl_getdomaininfo.max_vcpu_id of a domain without vcpus.
XEN_INVALID_MAX_VCPU_ID = 0xFFFFFFFF

# XEN_DOMCTL_{set,get}vcpuaffinity flags.
_XEN_VCPUAFFINITY_HARD = 0
XEN_VCPUAFFINITY_HARD = 1 << _XEN_VCPUAFFINITY_HARD
_XEN_VCPUAFFINITY_SOFT = 1
XEN_VCPUAFFINITY_SOFT = 1 << _XEN_VCPUAFFINITY_SOFT
_XEN_VCPUAFFINITY_FORCE = 2
XEN_VCPUAFFINITY_FORCE = 1 << _XEN_VCPUAFFINITY_FORCE   # Undo SCHEDOP_pin_override

# XEN_DOMCTL_scheduler_op: scheduler types and commands.
XEN_SCHEDULER_CREDIT = 5
XEN_SCHEDULER_CREDIT2 = 6
XEN_SCHEDULER_ARINC653 = 7
XEN_SCHEDULER_RTDS = 8
XEN_SCHEDULER_NULL = 9
XEN_DOMCTL_SCHEDOP_putinfo = 0
XEN_DOMCTL_SCHEDOP_getinfo = 1
XEN_DOMCTL_SCHEDOP_putvcpuinfo = 2
XEN_DOMCTL_SCHEDOP_getvcpuinfo = 3

# xen_domctl.cmd (gaps are removed or obsolete operations).
XEN_DOMCTL_createdomain = 1
XEN_DOMCTL_destroydomain = 2
XEN_DOMCTL_pausedomain = 3
XEN_DOMCTL_unpausedomain = 4
XEN_DOMCTL_getdomaininfo = 5
XEN_DOMCTL_setvcpuaffinity = 9
XEN_DOMCTL_shadow_op = 10
XEN_DOMCTL_max_mem = 11
XEN_DOMCTL_setvcpucontext = 12
XEN_DOMCTL_getvcpucontext = 13
XEN_DOMCTL_getvcpuinfo = 14
XEN_DOMCTL_max_vcpus = 15
XEN_DOMCTL_scheduler_op = 16
XEN_DOMCTL_setdomainhandle = 17
XEN_DOMCTL_setdebugging = 18
XEN_DOMCTL_irq_permission = 19
XEN_DOMCTL_iomem_permission = 20
XEN_DOMCTL_ioport_permission = 21
XEN_DOMCTL_hypercall_init = 22
XEN_DOMCTL_settimeoffset = 24
XEN_DOMCTL_getvcpuaffinity = 25
XEN_DOMCTL_real_mode_area = 26           # Obsolete PPC only
XEN_DOMCTL_resumedomain = 27
XEN_DOMCTL_sendtrigger = 28
XEN_DOMCTL_subscribe = 29
XEN_DOMCTL_gethvmcontext = 33
XEN_DOMCTL_sethvmcontext = 34
XEN_DOMCTL_set_address_size = 35
XEN_DOMCTL_get_address_size = 36
XEN_DOMCTL_assign_device = 37
XEN_DOMCTL_bind_pt_irq = 38
XEN_DOMCTL_memory_mapping = 39
XEN_DOMCTL_ioport_mapping = 40
XEN_DOMCTL_set_ext_vcpucontext = 42
XEN_DOMCTL_get_ext_vcpucontext = 43
XEN_DOMCTL_set_opt_feature = 44          # Obsolete IA64 only
XEN_DOMCTL_test_assign_device = 45
XEN_DOMCTL_set_target = 46
XEN_DOMCTL_deassign_device = 47
XEN_DOMCTL_unbind_pt_irq = 48
XEN_DOMCTL_get_device_group = 50
XEN_DOMCTL_debug_op = 54
XEN_DOMCTL_gethvmcontext_partial = 55
XEN_DOMCTL_vm_event_op = 56
XEN_DOMCTL_mem_sharing_op = 57
XEN_DOMCTL_gettscinfo = 59
XEN_DOMCTL_settscinfo = 60
XEN_DOMCTL_getpageframeinfo3 = 61
XEN_DOMCTL_setvcpuextstate = 62
XEN_DOMCTL_getvcpuextstate = 63
XEN_DOMCTL_set_access_required = 64
XEN_DOMCTL_audit_p2m = 65
XEN_DOMCTL_set_virq_handler = 66
XEN_DOMCTL_set_broken_page_p2m = 67
XEN_DOMCTL_setnodeaffinity = 68
XEN_DOMCTL_getnodeaffinity = 69
XEN_DOMCTL_cacheflush = 71
XEN_DOMCTL_get_vcpu_msrs = 72
XEN_DOMCTL_set_vcpu_msrs = 73
XEN_DOMCTL_setvnumainfo = 74
XEN_DOMCTL_psr_cmt_op = 75
XEN_DOMCTL_monitor_op = 77
XEN_DOMCTL_psr_alloc = 78
XEN_DOMCTL_soft_reset = 79
XEN_DOMCTL_vuart_op = 81
XEN_DOMCTL_get_cpu_policy = 82
XEN_DOMCTL_set_cpu_policy = 83
XEN_DOMCTL_vmtrace_op = 84
XEN_DOMCTL_get_paging_mempool_size = 85
XEN_DOMCTL_set_paging_mempool_size = 86
XEN_DOMCTL_gdbsx_guestmemio = 1000
XEN_DOMCTL_gdbsx_pausevcpu = 1001
XEN_DOMCTL_gdbsx_unpausevcpu = 1002
XEN_DOMCTL_gdbsx_domstatus = 1003
