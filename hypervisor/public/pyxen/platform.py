"""The platform: the machine the hypervisor emulates, as its loader describes it.

One definition for both sides: `pyxen boot` reads it from the topology and
hands it to the hypervisor (`--platform`), which accounts domains' memory
against it and reports it in XEN_SYSCTL_physinfo, from which Dom0 rebuilds it
when it has no topology.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Platform:
    """The emulated machine: how many pCPUs and MiB of RAM domains share."""

    name: str = "virt"
    pcpus: int = 1
    memory: int = 4096  # MiB
