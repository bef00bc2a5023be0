"""version.h: XENVER_* commands of HYPERVISOR_xen_version.

pyxen answers as a Xen 4.17 on AArch64 would: XENVER_version gives
(major << 16) | minor, XENVER_extraversion the "-pyxen" suffix.
"""

XENVER_version = 0
XENVER_extraversion = 1
XENVER_compile_info = 2
XENVER_capabilities = 3
XENVER_changeset = 4
XENVER_platform_parameters = 5
XENVER_get_features = 6
XENVER_pagesize = 7
XENVER_guest_handle = 8
XENVER_commandline = 9
XENVER_build_id = 10
