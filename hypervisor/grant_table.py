"""Grant tables (v1 entries): every map and copy is checked here.

A granting domain writes `grant_entry_v1` records in its own grant-table
frames (a segment the hypervisor owns and the domain maps writable). The
hypervisor reads an entry at every map and copy and refuses, with Xen's
GNTST code, anything the entry does not permit: another domid, a missing
GTF_permit_access, a write to a GTF_readonly grant, a ref past the table.

Pin state. Xen flips GTF_reading/GTF_writing in the shared entry with
cmpxchg. Python has no compare-and-swap on shared memory, so pyxen borrows
grant-table v2's layout for this one part: pin state lives in a separate
status frame that only the hypervisor writes and the domain maps read-only.
The two sides follow v2's protocol: the hypervisor sets the status, then
re-reads the entry and backs out if it was revoked meanwhile; the granter
clears the entry, then reads the status to learn whether the page is still
mapped (and must not be reused yet). So a mapped grant cannot disappear
under its mapper without the granter knowing.

Isolation. A map hands the mapper a view of exactly one frame, and only a
frame inside a grant window the granter opened for that very mapper (see
`hypervisor.memory`). Frames outside such a window are refused with
GNTST_bad_page for mapping; they can still be reached by grant copy, which
the hypervisor performs itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from hypervisor.memory import Physmap, PlatformMemory, Region, Segment
from hypervisor.public.grant_table import (
    GRANT_ENTRY_V1,
    PYXEN_GRANT_STATUS,
    GNTCOPY_dest_gref,
    GNTCOPY_source_gref,
    GNTMAP_device_map,
    GNTMAP_host_map,
    GNTMAP_readonly,
    GNTST_bad_copy_arg,
    GNTST_bad_domain,
    GNTST_bad_gntref,
    GNTST_bad_handle,
    GNTST_bad_page,
    GNTST_general_error,
    GNTST_no_space,
    GNTST_okay,
    GNTST_permission_denied,
    GTF_permit_access,
    GTF_reading,
    GTF_readonly,
    GTF_type_mask,
    GTF_writing,
)
from hypervisor.public.pyxen.words import Words
from hypervisor.public.xen import DOMID_SELF, PAGE_SIZE

ENTRY = GRANT_ENTRY_V1  # flags, domid, frame
STATUS = PYXEN_GRANT_STATUS  # pyxen's status word per ref (v2's grant_status_t)
MAX_GRANT_FRAMES = 32  # Xen's gnttab_max_frames default is 64; 16k refs is plenty
MAX_MAPTRACK = 65536


class GrantError(Exception):
    """A grant operation refused with a GNTST code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Pin:
    readers: int = 0
    writers: int = 0


@dataclass
class Mapping:
    """A maptrack entry: what one handle of the mapper refers to."""

    granter: int
    ref: int
    readonly: bool
    region: Region
    offset: int


class GrantTable:
    """One domain's grant table: entries it writes, pins the hypervisor keeps."""

    def __init__(self, memory: PlatformMemory, domid: int, name: str) -> None:
        self.domid = domid
        self.nr_frames = 1
        self.max_frames = MAX_GRANT_FRAMES
        nr_refs = self.max_frames * PAGE_SIZE // ENTRY.size
        status_pages = -(-nr_refs * STATUS.size // PAGE_SIZE)
        self.entries = memory.allocate(f"pyxen-{name}-gnttab", self.max_frames)
        try:
            self.status = memory.allocate(f"pyxen-{name}-gntstatus", status_pages)
        except BaseException:
            memory.free(self.entries)
            raise
        # Pin words are read by the granter while we write them: whole words.
        self.status_words = Words(self.status.map, "H")
        self.pins: dict[int, Pin] = {}
        # Handles this domain holds as a mapper, and how many of them are in
        # each window (so that "still mapped?" is a lookup, not a scan).
        self.maptrack: dict[int, Mapping] = {}
        self.window_maps: dict[int, int] = {}
        self._next_handle = 0

    @property
    def nr_refs(self) -> int:
        return self.nr_frames * PAGE_SIZE // ENTRY.size

    def segments(self) -> list[Segment]:
        return [self.entries, self.status]

    def read_entry(self, ref: int) -> tuple[int, int, int]:
        return ENTRY.unpack_from(self.entries.map, ref * ENTRY.size)

    def _publish_pin(self, ref: int) -> None:
        pin = self.pins.get(ref)
        word = 0
        if pin is not None:
            word = (GTF_reading if pin.readers + pin.writers else 0) | (
                GTF_writing if pin.writers else 0
            )
            if not pin.readers + pin.writers:
                del self.pins[ref]
        self.status_words[ref * STATUS.size] = word

    def pin(self, ref: int, readonly: bool) -> None:
        pin = self.pins.setdefault(ref, Pin())
        if readonly:
            pin.readers += 1
        else:
            pin.writers += 1
        self._publish_pin(ref)

    def unpin(self, ref: int, readonly: bool) -> None:
        pin = self.pins.get(ref)
        if pin is None:
            return
        if readonly:
            pin.readers = max(0, pin.readers - 1)
        else:
            pin.writers = max(0, pin.writers - 1)
        self._publish_pin(ref)

    def new_handle(self) -> int:
        if len(self.maptrack) >= MAX_MAPTRACK:
            raise GrantError(GNTST_no_space, f"d{self.domid} maptrack full")
        while self._next_handle in self.maptrack:
            self._next_handle = (self._next_handle + 1) % MAX_MAPTRACK
        handle = self._next_handle
        self._next_handle = (handle + 1) % MAX_MAPTRACK
        return handle

    def free(self, memory: PlatformMemory) -> None:
        self.status_words.release()
        memory.free(self.entries)
        memory.free(self.status)


@dataclass
class GrantDomain:
    """What the grant code needs to know of a domain."""

    table: GrantTable
    physmap: Physmap


@dataclass
class Grants:
    """The grant operations, over a lookup of live domains."""

    lookup: Callable[[int], GrantDomain | None]
    # log(domid, message): a refusal, said on the console on behalf of the
    # domain that caused it (which may be rate-limited for it).
    log: Callable[[int, str], None] = field(default=lambda domid, msg: None)

    def _granter(self, domid: int) -> GrantDomain:
        dom = self.lookup(domid)
        if dom is None:
            raise GrantError(GNTST_bad_domain, f"no domain {domid}")
        return dom

    def _check_entry(self, granter: GrantDomain, ref: int, grantee: int,
                     readonly: bool) -> int:
        """Validate `ref` for `grantee`; returns the granted frame."""
        table = granter.table
        if not 0 <= ref < table.nr_refs:
            raise GrantError(GNTST_bad_gntref, f"ref {ref} out of range "
                             f"(d{table.domid} has {table.nr_refs})")
        flags, domid, frame = table.read_entry(ref)
        if (flags & GTF_type_mask) != GTF_permit_access or domid != grantee:
            raise GrantError(GNTST_general_error,
                             f"d{table.domid} ref {ref}: bad flags ({flags:#x}) "
                             f"or dom ({domid}); expected d{grantee}")
        if not readonly and flags & GTF_readonly:
            raise GrantError(GNTST_general_error,
                             f"d{table.domid} ref {ref}: attempt to write-pin "
                             "a r/o grant entry")
        return frame

    def map_grant_ref(self, mapper: int, op: dict) -> dict:
        """GNTTABOP_map_grant_ref for one op; returns the op's result fields."""
        try:
            return self._map(mapper, op)
        except GrantError as exc:
            self.log(mapper, f"d{mapper} map: {exc}")
            return {"status": exc.status, "handle": -1}

    def _map(self, mapper: int, op: dict) -> dict:
        flags = int(op.get("flags", 0))
        if not flags & (GNTMAP_host_map | GNTMAP_device_map):
            raise GrantError(GNTST_bad_gntref, "neither host_map nor device_map")
        me = self._granter(mapper)
        granter = self._granter(int(op["dom"]))
        ref = int(op["ref"])
        readonly = bool(flags & GNTMAP_readonly)
        frame = self._check_entry(granter, ref, mapper, readonly)
        hit = granter.physmap.lookup(frame)
        if hit is None or hit[0].peer != mapper:
            raise GrantError(GNTST_bad_page,
                             f"d{granter.table.domid} frame {frame:#x} is not in "
                             f"a grant window shared with d{mapper}")
        region, offset = hit
        handle = me.table.new_handle()
        granter.table.pin(ref, readonly)
        # v2's double check: the granter may have revoked between our read and
        # the pin becoming visible; if so back out.
        if self._entry_changed(granter, ref, mapper, readonly):
            granter.table.unpin(ref, readonly)
            raise GrantError(GNTST_general_error, f"ref {ref} revoked while mapping")
        me.table.maptrack[handle] = Mapping(granter.table.domid, ref, readonly,
                                            region, offset)
        windows = me.table.window_maps
        windows[region.window_id] = windows.get(region.window_id, 0) + 1
        region.mapped += 1
        return {"status": GNTST_okay, "handle": handle,
                "window": region.window_id, "offset": offset}

    def _entry_changed(self, granter: GrantDomain, ref: int, grantee: int,
                       readonly: bool) -> bool:
        try:
            self._check_entry(granter, ref, grantee, readonly)
        except GrantError:
            return True
        return False

    def unmap_grant_ref(self, mapper: int, op: dict) -> dict:
        me = self.lookup(mapper)
        return self._unmap(me.table, op) if me else {"status": GNTST_bad_handle}

    def _unmap(self, table: GrantTable, op: dict) -> dict:
        mapping = table.maptrack.pop(int(op["handle"]), None)
        if mapping is None:
            return {"status": GNTST_bad_handle}
        window = mapping.region.window_id
        table.window_maps[window] -= 1
        if not table.window_maps[window]:
            del table.window_maps[window]
        mapping.region.mapped -= 1
        granter = self.lookup(mapping.granter)
        if granter is not None:
            granter.table.unpin(mapping.ref, mapping.readonly)
        return {"status": GNTST_okay}

    def release_mapper(self, table: GrantTable) -> None:
        """Drop every mapping a dead or dying domain held, unpinning the
        grants (its table is passed in: lookups no longer see a dying one)."""
        for handle in list(table.maptrack):
            self._unmap(table, {"handle": handle})

    def copy(self, caller: int, op: dict) -> dict:
        """GNTTABOP_copy for one op: the hypervisor moves the bytes itself."""
        try:
            length = int(op["len"])
            flags = int(op.get("flags", 0))
            src = self._copy_side(caller, op["source"], flags & GNTCOPY_source_gref,
                                  True, length)
            dst = self._copy_side(caller, op["dest"], flags & GNTCOPY_dest_gref,
                                  False, length)
        except GrantError as exc:
            self.log(caller, f"d{caller} copy: {exc}")
            return {"status": exc.status}
        (sseg, soff), (dseg, doff) = src, dst
        dseg.map[doff:doff + length] = sseg.map[soff:soff + length]
        return {"status": GNTST_okay}

    def _copy_side(self, caller: int, side: dict, by_ref: int, readonly: bool,
                   length: int) -> tuple[Segment, int]:
        offset = int(side.get("offset", 0))
        if length < 0 or offset < 0 or offset + length > PAGE_SIZE:
            raise GrantError(GNTST_bad_copy_arg, "copy crosses a page boundary")
        domid = int(side["domid"])
        if domid == DOMID_SELF:
            domid = caller
        owner = self._granter(domid)
        if ("ref" if by_ref else "gmfn") not in side:
            raise GrantError(GNTST_bad_copy_arg,
                             f"copy side without its {'ref' if by_ref else 'gmfn'}")
        if by_ref:
            frame = self._check_entry(owner, int(side["ref"]), caller, readonly)
        elif domid != caller:
            raise GrantError(GNTST_permission_denied,
                             f"d{caller} may copy by frame only in its own memory")
        else:
            frame = int(side["gmfn"])
        hit = owner.physmap.lookup(frame)
        if hit is None:
            raise GrantError(GNTST_bad_page, f"d{domid} has no frame {frame:#x}")
        region, page_offset = hit
        return region.segment, page_offset + offset
