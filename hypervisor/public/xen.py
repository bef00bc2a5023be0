"""Guest OS interface to Xen (xen/xen.h).

Hypercall numbers, virtual interrupts, reserved domain ids and the basic
ABI types.  Xen's hypercall numbers are ``__HYPERVISOR_*``; here they drop
the leading double underscore (``HYPERVISOR_sched_op`` is Xen's
``__HYPERVISOR_sched_op``), because Python mangles ``__X`` names inside
class bodies.

The ABI is Xen-on-ARM's (arch-arm.h): ``xen_pfn_t`` and ``xen_ulong_t``
are 64 bits even for 32-bit guests, and every ``XEN_GUEST_HANDLE(type)``
is a 64-bit, 8-byte aligned union of a pointer and a ``uint64_t``.  pyxen
guests have no pointers Xen could follow, so a guest handle is carried as
that ``uint64_t``: an address in the guest's memory.
"""

import ctypes

# ` enum hypercall_num { // __HYPERVISOR_* => HYPERVISOR_*()
HYPERVISOR_set_trap_table = 0
HYPERVISOR_mmu_update = 1
HYPERVISOR_set_gdt = 2
HYPERVISOR_stack_switch = 3
HYPERVISOR_set_callbacks = 4
HYPERVISOR_fpu_taskswitch = 5
HYPERVISOR_sched_op_compat = 6           # compat since 0x00030101
HYPERVISOR_platform_op = 7
HYPERVISOR_set_debugreg = 8
HYPERVISOR_get_debugreg = 9
HYPERVISOR_update_descriptor = 10
HYPERVISOR_memory_op = 12
HYPERVISOR_multicall = 13
HYPERVISOR_update_va_mapping = 14
HYPERVISOR_set_timer_op = 15
HYPERVISOR_event_channel_op_compat = 16  # compat since 0x00030202
HYPERVISOR_xen_version = 17
HYPERVISOR_console_io = 18
HYPERVISOR_physdev_op_compat = 19        # compat since 0x00030202
HYPERVISOR_grant_table_op = 20
HYPERVISOR_vm_assist = 21
HYPERVISOR_update_va_mapping_otherdomain = 22
HYPERVISOR_iret = 23                     # x86 only
HYPERVISOR_vcpu_op = 24
HYPERVISOR_set_segment_base = 25         # x86/64 only
HYPERVISOR_mmuext_op = 26
HYPERVISOR_xsm_op = 27
HYPERVISOR_nmi_op = 28
HYPERVISOR_sched_op = 29
HYPERVISOR_callback_op = 30
HYPERVISOR_xenoprof_op = 31
HYPERVISOR_event_channel_op = 32
HYPERVISOR_physdev_op = 33
HYPERVISOR_hvm_op = 34
HYPERVISOR_sysctl = 35
HYPERVISOR_domctl = 36
HYPERVISOR_kexec_op = 37
HYPERVISOR_tmem_op = 38
HYPERVISOR_argo_op = 39
HYPERVISOR_xenpmu_op = 40
HYPERVISOR_dm_op = 41
HYPERVISOR_hypfs_op = 42

# Architecture-specific hypercall definitions.
HYPERVISOR_arch_0 = 48
HYPERVISOR_arch_1 = 49
HYPERVISOR_arch_2 = 50
HYPERVISOR_arch_3 = 51
HYPERVISOR_arch_4 = 52
HYPERVISOR_arch_5 = 53
HYPERVISOR_arch_6 = 54
HYPERVISOR_arch_7 = 55
# ` }

# pyxen's own hypercall.  Xen numbers 0-42 generically, keeps 43-47 for
# future generic calls and 48-55 for each architecture, and sizes its
# hypercall table NR_hypercalls = 64 (xen/arch/arm/include/asm/config.h).
# 64 is the first number outside that table: no Xen hypercall can ever take
# it without an ABI break, and a real Xen answers it with -ENOSYS.
HYPERVISOR_pyxen_op = 64
PYXEN_op_ready = 1          # A new domain's kernel reports it has booted.
PYXEN_op_grant_window = 2   # Allocate a grant window shared with one peer.
PYXEN_op_close_window = 3   # Give a grant window back (nothing in it mapped).
PYXEN_op_pass_fd = 4        # (Dom0) Open a device's image or TAP fd for a domain.

# VIRTUAL INTERRUPTS: 'V.' is a per-VCPU VIRQ, 'G.' a global one (bound once
# per guest, initially to VCPU0).
# ` enum virq {
VIRQ_TIMER = 0        # V. Timebase update, and/or requested timeout.
VIRQ_DEBUG = 1        # V. Request guest to dump debug info.
VIRQ_CONSOLE = 2      # G. (DOM0) Bytes received on emergency console.
VIRQ_DOM_EXC = 3      # G. (DOM0) Exceptional event for some domain.
VIRQ_TBUF = 4         # G. (DOM0) Trace buffer has records available.
VIRQ_DEBUGGER = 6     # G. (DOM0) A domain has paused for debugging.
VIRQ_XENOPROF = 7     # V. XenOprofile interrupt: new sample available
VIRQ_CON_RING = 8     # G. (DOM0) Bytes received on console
VIRQ_PCPU_STATE = 9   # G. (DOM0) PCPU state changed
VIRQ_MEM_EVENT = 10   # G. (DOM0) A memory event has occurred
VIRQ_ARGO = 11        # G. Argo interdomain message notification
VIRQ_ENOMEM = 12      # G. (DOM0) Low on heap memory
VIRQ_XENPMU = 13      # V.  PMC interrupt

# Architecture-specific VIRQ definitions.
VIRQ_ARCH_0 = 16
VIRQ_ARCH_1 = 17
VIRQ_ARCH_2 = 18
VIRQ_ARCH_3 = 19
VIRQ_ARCH_4 = 20
VIRQ_ARCH_5 = 21
VIRQ_ARCH_6 = 22
VIRQ_ARCH_7 = 23
# ` }

NR_VIRQS = 24

# HYPERVISOR_console_io(cmd, count, buffer) commands.
CONSOLEIO_write = 0   # Write the buffer to Xen's console.
CONSOLEIO_read = 1    # Read up to @count characters from Xen's console.

# Domain ids >= DOMID_FIRST_RESERVED cannot be used for ordinary domains.
DOMID_FIRST_RESERVED = 0x7FF0
DOMID_SELF = 0x7FF0      # Refers to the calling domain itself.
DOMID_IO = 0x7FF1        # Restricts page-table updates to I/O memory.
DOMID_XEN = 0x7FF2       # Lets privileged domains map parts of Xen's heap.
DOMID_COW = 0x7FF3       # Owner of sharable pages.
DOMID_INVALID = 0x7FF4   # Identifies pages with unknown owner.
DOMID_IDLE = 0x7FFF      # Idle domain.
DOMID_MASK = 0x7FFF      # Mask for valid domain id values.

# Domain ids are 16 bits on the wire.
domid_t = ctypes.c_uint16
xen_pfn_t = ctypes.c_uint64
xen_ulong_t = ctypes.c_uint64
# XEN_GUEST_HANDLE(type): a guest address (see the module docstring).
XEN_GUEST_HANDLE = ctypes.c_uint64

# The page size of hypercall interfaces and ring protocols is always 4K
# (XEN_PAGE_SHIFT in io/ring.h), whatever the guest's own page size.
PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
