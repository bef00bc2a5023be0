"""Machine memory: the platform's accounting and each domain's physmap (p2m).

Every page a domain can touch is backed by a memfd the hypervisor creates and
owns. A memfd has no name in /dev/shm, so nothing outlives the processes that
hold it: when the hypervisor and the domain are gone, so is the memory. The
hypervisor keeps its own mapping of every segment so that it can read grant
tables and do grant copies; the domain maps the same fds, handed to it at
spawn or over its memory channel.

A domain's guest-physical address space (counted in frames, gfns) is laid out
as Xen on ARM lays out a guest's: RAM from gfn 0, then, above RAM, the regions
the hypervisor adds at run time (grant windows). `Physmap.lookup` is the
stage-2 translation: gfn -> (segment, byte offset), or None for a hole.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field

from hypervisor.public.errno import ENOMEM, XenError
from hypervisor.public.xen import PAGE_SIZE

MiB = 1024 * 1024
PAGES_PER_MIB = MiB // PAGE_SIZE


class Segment:
    """One memfd and the hypervisor's own mapping of it."""

    def __init__(self, name: str, nr_pages: int) -> None:
        if nr_pages <= 0:
            raise ValueError(f"segment {name} needs at least one page")
        self.name = name
        self.nr_pages = nr_pages
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        try:
            # ftruncate makes a sparse file: accounting reserves the memory,
            # the host only commits the pages a domain really touches.
            os.ftruncate(self.fd, nr_pages * PAGE_SIZE)
            self.map = mmap.mmap(self.fd, nr_pages * PAGE_SIZE)
        except BaseException:
            os.close(self.fd)
            raise

    @property
    def size(self) -> int:
        return self.nr_pages * PAGE_SIZE

    def close(self) -> None:
        if self.fd < 0:
            return
        try:
            self.map.close()
        except BufferError:
            # A view is still exported (a copy in flight when the domain is
            # destroyed): the fd goes, the mapping follows with the view.
            pass
        os.close(self.fd)
        self.fd = -1


@dataclass
class Region:
    """A run of gfns backed by one segment."""

    gfn: int
    segment: Segment
    # Grant windows are shared with exactly one peer domain; RAM with none.
    peer: int | None = None
    window_id: int | None = None
    mapped: int = 0  # how many grant mappings point into it, all mappers

    @property
    def end(self) -> int:
        return self.gfn + self.segment.nr_pages


@dataclass
class Physmap:
    """A domain's guest-physical layout: RAM at gfn 0, windows above it."""

    regions: list[Region] = field(default_factory=list)

    def add(self, region: Region) -> None:
        self.regions.append(region)
        self.regions.sort(key=lambda r: r.gfn)

    def next_free_gfn(self) -> int:
        return self.regions[-1].end if self.regions else 0

    def lookup(self, gfn: int) -> tuple[Region, int] | None:
        for region in self.regions:
            if region.gfn <= gfn < region.end:
                return region, (gfn - region.gfn) * PAGE_SIZE
        return None

    def remove(self, region: Region) -> None:
        self.regions.remove(region)


class PlatformMemory:
    """Accounts every page handed out against the machine's RAM."""

    def __init__(self, total_mib: int) -> None:
        self.total_pages = total_mib * PAGES_PER_MIB
        self.used_pages = 0

    @property
    def free_pages(self) -> int:
        return self.total_pages - self.used_pages

    def claim(self, nr_pages: int, what: str) -> None:
        if nr_pages > self.free_pages:
            raise XenError(
                ENOMEM,
                f"{what}: needs {nr_pages // PAGES_PER_MIB} MiB, "
                f"{self.free_pages // PAGES_PER_MIB} MiB free",
            )
        self.used_pages += nr_pages

    def release(self, nr_pages: int) -> None:
        self.used_pages -= nr_pages
        assert self.used_pages >= 0, "memory released twice"

    def allocate(self, name: str, nr_pages: int, what: str | None = None) -> Segment:
        """Claim and create a segment; on any failure nothing stays claimed.
        `what` names it in errors, for the user (the segment's name is ours)."""
        what = what or name
        self.claim(nr_pages, what)
        try:
            return Segment(name, nr_pages)
        except OSError as exc:
            self.release(nr_pages)
            raise XenError(ENOMEM, f"{what}: {exc.strerror}") from exc
        except BaseException:
            # ValueError (no pages), OverflowError (size beyond off_t), ...
            self.release(nr_pages)
            raise

    def free(self, segment: Segment) -> None:
        if segment.fd >= 0:
            self.release(segment.nr_pages)
            segment.close()
