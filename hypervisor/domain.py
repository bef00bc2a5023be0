"""The hypervisor's record of one domain: its memory, vCPUs, state."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from hypervisor.credit2 import DEFAULT_WEIGHT
from hypervisor.event_channel import EventBitmap
from hypervisor.grant_table import GrantDomain, GrantTable
from hypervisor.memchan import MemChannel
from hypervisor.memory import Physmap, PlatformMemory, Region, Segment
from hypervisor.process import DomainProcess
from hypervisor.public.domctl import (
    XEN_DOMINF_blocked,
    XEN_DOMINF_dying,
    XEN_DOMINF_paused,
    XEN_DOMINF_running,
    XEN_DOMINF_shutdown,
    XEN_DOMINF_shutdownshift,
)
from hypervisor.public.xen import PAGE_SIZE

SHARED_INFO_PAGES = -(-EventBitmap.SIZE // PAGE_SIZE)


@dataclass
class Domain:
    domid: int
    name: str
    privileged: bool
    max_vcpus: int
    max_pages: int
    ram: Segment
    shared_info: Segment
    gnttab: GrantTable
    physmap: Physmap
    handle: str = field(default_factory=lambda: str(uuid.uuid4()))
    process: DomainProcess | None = None
    ready: bool = False
    paused: bool = False
    shutdown_code: int | None = None
    dying: bool = False
    vcpu_tids: list[int] = field(default_factory=list)
    affinity: dict[int, tuple[int, ...] | None] = field(default_factory=dict)
    weight: int = DEFAULT_WEIGHT  # credit2's: its cgroup's CPU share (else its nice)
    cap: int = 0  # credit2's: percent of one pCPU, 0 for none (its cgroup's quota)
    windows: dict[int, Region] = field(default_factory=dict)
    # The grant-window pages it may hold (charged to it, see Machine.add_window).
    max_window_pages: int = 0
    fd_cost: int = 0  # fds committed to it (hypervisor/connections.py), windows apart
    watchdogs: dict[int, int] = field(default_factory=dict)  # id -> timeout (s)
    # Windows whose fd this domain already holds (its own and its peers').
    known_windows: set[int] = field(default_factory=set)
    memchan: MemChannel | None = None  # passes fds to the domain (windows, doorbells)
    # (reply address of the createdomain caller) while the kernel boots
    pending_create: object | None = None
    log_start: int = 0  # where this instance's lines begin in logs/<name>.log

    @property
    def bitmap(self) -> EventBitmap:
        return EventBitmap(self.shared_info.map)

    @property
    def grant_domain(self) -> GrantDomain:
        return GrantDomain(self.gnttab, self.physmap)

    @property
    def tot_pages(self) -> int:
        """The domain's RAM. Its grant windows are charged to it apart, in
        `window_pages`, against their own cap (`max_window_pages`)."""
        return self.ram.nr_pages

    @property
    def window_pages(self) -> int:
        return sum(r.segment.nr_pages for r in self.windows.values())

    def segments(self) -> list[Segment]:
        return [self.ram, self.shared_info, *self.gnttab.segments(),
                *(r.segment for r in self.windows.values())]

    def flags(self) -> int:
        """XEN_DOMINF_* as getdomaininfo reports them."""
        flags = 0
        if self.dying:
            flags |= XEN_DOMINF_dying
        if self.shutdown_code is not None:
            flags |= XEN_DOMINF_shutdown | (self.shutdown_code << XEN_DOMINF_shutdownshift)
        elif self.paused:
            flags |= XEN_DOMINF_paused
        elif self.process is not None and self.process.alive:
            flags |= XEN_DOMINF_running if self.process.running() else XEN_DOMINF_blocked
        return flags

    def info(self) -> dict:
        """xen_domctl_getdomaininfo's fields (plus pyxen's name and pid)."""
        proc = self.process
        return {
            "domain": self.domid,
            "flags": self.flags(),
            "tot_pages": self.tot_pages,
            "window_pages": self.window_pages,
            "max_window_pages": self.max_window_pages,
            "max_pages": self.max_pages,
            "nr_online_vcpus": self.max_vcpus if proc and proc.alive else 0,
            "max_vcpu_id": self.max_vcpus - 1,
            "cpu_time": proc.cpu_time() if proc else 0,
            "handle": self.handle,
            "name": self.name,
            "pid": proc.pid if proc else 0,
            "privileged": self.privileged,
        }

    def free(self, memory: PlatformMemory) -> None:
        for region in self.windows.values():
            memory.free(region.segment)
        self.windows.clear()
        self.gnttab.free(memory)
        memory.free(self.ram)
        memory.free(self.shared_info)
