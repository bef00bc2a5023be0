"""Grant tables v1 (hypervisor/grant_table.py): every map and copy is checked."""

import struct
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hypervisor.grant_table import (
    ENTRY,
    STATUS,
    GrantDomain,
    Grants,
    GrantTable,
)
from hypervisor.memory import Physmap, PlatformMemory, Region, Segment
from hypervisor.public.grant_table import (
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
    GTF_accept_transfer,
    GTF_permit_access,
    GTF_reading,
    GTF_readonly,
    GTF_writing,
    grant_entry_v1,
)
from hypervisor.public.xen import DOMID_SELF, PAGE_SIZE

pytestmark = pytest.mark.timeout(60)

RAM_PAGES = 4
WINDOW_GFN = 8  # a hole at 4..7, then the window for d2, then one for d3
W1_PAGES = 2
W2_GFN = WINDOW_GFN + W1_PAGES
RW = GNTMAP_host_map
RO = GNTMAP_host_map | GNTMAP_readonly
ALL_GNTST = set(range(-13, 1))


class World:
    """Three fake domains sharing one machine's memory.

    d1 is the granter: RAM at gfn 0..3, a hole, a grant window (id 1) for d2
    at gfn 8..9 and one (id 2) for d3 at gfn 10..11. d2 and d3 have RAM only.
    """

    def __init__(self) -> None:
        self.memory = PlatformMemory(64)
        self.doms: dict[int, GrantDomain] = {}
        self.segments: list[Segment] = []
        self.messages: list[str] = []
        self.grants = Grants(lookup=self.doms.get,
                             log=lambda domid, msg: self.messages.append(msg))

    def add_domain(self, domid: int) -> GrantDomain:
        table = GrantTable(self.memory, domid, f"test-d{domid}")
        physmap = Physmap()
        ram = self.memory.allocate(f"pyxen-test-d{domid}-ram", RAM_PAGES)
        self.segments.append(ram)
        physmap.add(Region(0, ram))
        dom = GrantDomain(table, physmap)
        self.doms[domid] = dom
        return dom

    def add_window(self, domid: int, gfn: int, nr_pages: int, peer: int,
                   window_id: int) -> Region:
        seg = self.memory.allocate(f"pyxen-test-w{window_id}", nr_pages)
        self.segments.append(seg)
        region = Region(gfn, seg, peer=peer, window_id=window_id)
        self.doms[domid].physmap.add(region)
        return region

    def close(self) -> None:
        for dom in self.doms.values():
            dom.table.free(self.memory)
        for seg in self.segments:
            self.memory.free(seg)
        assert self.memory.used_pages == 0

    # -- the granter's side -------------------------------------------------

    def grant(self, granter: int, ref: int, grantee: int, frame: int,
              flags: int = GTF_permit_access) -> None:
        table = self.doms[granter].table
        struct.pack_into("<HHI", table.entries.map, ref * 8, flags, grantee, frame)

    def revoke(self, granter: int, ref: int) -> None:
        struct.pack_into("<H", self.doms[granter].table.entries.map, ref * 8, 0)

    def pin_flags(self, granter: int, ref: int) -> int:
        return struct.unpack_from("<H", self.doms[granter].table.status.map, ref * 2)[0]

    def frame_bytes(self, domid: int, gfn: int, offset: int, length: int) -> bytes:
        found = self.doms[domid].physmap.lookup(gfn)
        assert found is not None
        region, base = found
        return region.segment.map[base + offset:base + offset + length]

    def write_frame(self, domid: int, gfn: int, offset: int, data: bytes) -> None:
        found = self.doms[domid].physmap.lookup(gfn)
        assert found is not None
        region, base = found
        region.segment.map[base + offset:base + offset + len(data)] = data

    # -- the hypercalls -------------------------------------------------------

    def map(self, mapper: int, dom: int, ref: int, flags: int = RW) -> dict:
        return self.grants.map_grant_ref(mapper, {"dom": dom, "ref": ref,
                                                  "flags": flags, "host_addr": 0})

    def unmap(self, mapper: int, handle: int) -> dict:
        return self.grants.unmap_grant_ref(mapper, {"handle": handle,
                                                    "host_addr": 0})

    def copy(self, caller: int, source: dict, dest: dict, length: int,
             flags: int = 0) -> dict:
        return self.grants.copy(caller, {"source": source, "dest": dest,
                                         "len": length, "flags": flags})


@contextmanager
def make_world():
    w = World()
    try:
        for domid in (1, 2, 3):
            w.add_domain(domid)
        w.add_window(1, WINDOW_GFN, W1_PAGES, peer=2, window_id=1)
        w.add_window(1, W2_GFN, 2, peer=3, window_id=2)
        yield w
    finally:
        w.close()


@pytest.fixture
def world():
    with make_world() as w:
        yield w


# -- layout -------------------------------------------------------------------


def test_entry_layout_is_grant_entry_v1():
    import ctypes

    assert ENTRY.size == ctypes.sizeof(grant_entry_v1) == 8
    assert STATUS.size == 2
    entry = grant_entry_v1(flags=GTF_permit_access | GTF_readonly, domid=2,
                           frame=0x1234)
    assert ENTRY.unpack(bytes(entry)) == (GTF_permit_access | GTF_readonly, 2,
                                          0x1234)


def test_table_geometry(world):
    table = world.doms[1].table
    assert table.nr_refs == PAGE_SIZE // 8
    assert table.segments() == [table.entries, table.status]
    assert table.status.size >= table.max_frames * PAGE_SIZE // 8 * 2


def test_read_entry(world):
    world.grant(1, 5, 2, 0xABCDEF, GTF_permit_access | GTF_readonly)
    assert world.doms[1].table.read_entry(5) == (
        GTF_permit_access | GTF_readonly, 2, 0xABCDEF)


# -- map / unmap ----------------------------------------------------------------


def test_map_ok(world):
    world.grant(1, 3, 2, WINDOW_GFN + 1)
    result = world.map(2, 1, 3)
    assert result["status"] == GNTST_okay
    assert result["window"] == 1
    assert result["offset"] == PAGE_SIZE  # second frame of the window
    assert isinstance(result["handle"], int) and result["handle"] >= 0
    assert world.pin_flags(1, 3) == GTF_reading | GTF_writing
    mapping = world.doms[2].table.maptrack[result["handle"]]
    assert (mapping.granter, mapping.ref, mapping.readonly) == (1, 3, False)
    # The mapper gets exactly the granted frame: what the granter writes there
    # is at the returned offset of the window.
    world.write_frame(1, WINDOW_GFN + 1, 0, b"shared")
    assert mapping.region.segment.map[result["offset"]:result["offset"] + 6] == b"shared"


def test_map_first_frame_of_window(world):
    world.grant(1, 0, 2, WINDOW_GFN)
    result = world.map(2, 1, 0)
    assert result["status"] == GNTST_okay
    assert (result["window"], result["offset"]) == (1, 0)


def test_map_for_third_domain_uses_its_window(world):
    world.grant(1, 4, 3, W2_GFN + 1)
    result = world.map(3, 1, 4)
    assert result["status"] == GNTST_okay
    assert (result["window"], result["offset"]) == (2, PAGE_SIZE)


def test_map_readonly(world):
    world.grant(1, 3, 2, WINDOW_GFN)
    result = world.map(2, 1, 3, RO)
    assert result["status"] == GNTST_okay
    assert world.pin_flags(1, 3) == GTF_reading


def test_unmap_clears_pin(world):
    world.grant(1, 3, 2, WINDOW_GFN)
    handle = world.map(2, 1, 3)["handle"]
    assert world.unmap(2, handle) == {"status": GNTST_okay}
    assert world.pin_flags(1, 3) == 0
    assert world.doms[2].table.maptrack == {}
    assert world.doms[1].table.pins == {}
    # The handle is gone: a second unmap is refused.
    assert world.unmap(2, handle) == {"status": GNTST_bad_handle}


def test_pins_count_every_mapping(world):
    world.grant(1, 3, 2, WINDOW_GFN)
    rw1 = world.map(2, 1, 3)["handle"]
    rw2 = world.map(2, 1, 3)["handle"]
    ro = world.map(2, 1, 3, RO)["handle"]
    assert len({rw1, rw2, ro}) == 3
    assert world.pin_flags(1, 3) == GTF_reading | GTF_writing
    world.unmap(2, rw1)
    assert world.pin_flags(1, 3) == GTF_reading | GTF_writing
    world.unmap(2, rw2)
    assert world.pin_flags(1, 3) == GTF_reading  # only the readonly map left
    world.unmap(2, ro)
    assert world.pin_flags(1, 3) == 0


def test_pins_are_per_ref(world):
    world.grant(1, 3, 2, WINDOW_GFN)
    world.grant(1, 4, 2, WINDOW_GFN + 1)
    h3 = world.map(2, 1, 3)["handle"]
    world.map(2, 1, 4, RO)
    assert world.pin_flags(1, 3) == GTF_reading | GTF_writing
    assert world.pin_flags(1, 4) == GTF_reading
    assert world.pin_flags(1, 5) == 0
    world.unmap(2, h3)
    assert world.pin_flags(1, 3) == 0
    assert world.pin_flags(1, 4) == GTF_reading


@pytest.mark.parametrize("handle", [0, 1, 12345, -1, 1 << 40])
def test_unmap_bad_handle(world, handle):
    assert world.unmap(2, handle) == {"status": GNTST_bad_handle}


def test_unmap_someone_elses_handle(world):
    world.grant(1, 3, 2, WINDOW_GFN)
    handle = world.map(2, 1, 3)["handle"]
    assert world.unmap(3, handle) == {"status": GNTST_bad_handle}
    assert world.unmap(99, handle) == {"status": GNTST_bad_handle}
    assert world.pin_flags(1, 3) == GTF_reading | GTF_writing


def test_unmap_after_granter_died(world):
    world.grant(1, 3, 2, WINDOW_GFN)
    handle = world.map(2, 1, 3)["handle"]
    granter = world.doms.pop(1)
    try:
        assert world.unmap(2, handle) == {"status": GNTST_okay}
    finally:
        world.doms[1] = granter


def assert_refused(world, result, status, ref=None):
    assert result["status"] == status
    assert result["handle"] == -1
    assert world.doms[2].table.maptrack == {}
    if ref is not None:
        assert world.pin_flags(1, ref) == 0


def test_map_grant_for_another_domain(world):
    world.grant(1, 3, 3, WINDOW_GFN)  # granted to d3, d2 tries
    assert_refused(world, world.map(2, 1, 3), GNTST_general_error, 3)
    assert_refused(world, world.map(2, 1, 3, RO), GNTST_general_error, 3)


def test_map_readonly_grant_writable(world):
    world.grant(1, 3, 2, WINDOW_GFN, GTF_permit_access | GTF_readonly)
    assert_refused(world, world.map(2, 1, 3), GNTST_general_error, 3)
    result = world.map(2, 1, 3, RO)
    assert result["status"] == GNTST_okay
    assert world.pin_flags(1, 3) == GTF_reading


@pytest.mark.parametrize("ref", [PAGE_SIZE // 8, PAGE_SIZE // 8 + 1, -1,
                                 1 << 32, 1 << 70])
def test_map_ref_out_of_range(world, ref):
    assert_refused(world, world.map(2, 1, ref), GNTST_bad_gntref)


def test_map_last_ref(world):
    last = world.doms[1].table.nr_refs - 1
    world.grant(1, last, 2, WINDOW_GFN)
    assert world.map(2, 1, last)["status"] == GNTST_okay


@pytest.mark.parametrize("dom", [0, 4, 99, DOMID_SELF, -1, 1 << 40])
def test_map_nonexistent_granter(world, dom):
    assert_refused(world, world.map(2, dom, 3), GNTST_bad_domain)


def test_map_by_nonexistent_mapper(world):
    world.grant(1, 3, 7, WINDOW_GFN)
    assert world.map(7, 1, 3)["status"] == GNTST_bad_domain
    assert world.pin_flags(1, 3) == 0


@pytest.mark.parametrize("flags", [0, GTF_readonly, GTF_accept_transfer,
                                   GTF_accept_transfer | GTF_readonly, 3,
                                   GTF_reading | GTF_writing])
def test_map_without_permit_access(world, flags):
    world.grant(1, 3, 2, WINDOW_GFN, flags)
    assert_refused(world, world.map(2, 1, 3), GNTST_general_error)
    assert_refused(world, world.map(2, 1, 3, RO), GNTST_general_error)
    assert world.pin_flags(1, 3) == 0


def test_map_revoked_grant(world):
    world.grant(1, 3, 2, WINDOW_GFN)
    world.revoke(1, 3)
    assert_refused(world, world.map(2, 1, 3), GNTST_general_error, 3)


@pytest.mark.parametrize("frame", [0, RAM_PAGES - 1])
def test_map_frame_in_ram(world, frame):
    world.grant(1, 3, 2, frame)
    assert_refused(world, world.map(2, 1, 3), GNTST_bad_page, 3)
    assert_refused(world, world.map(2, 1, 3, RO), GNTST_bad_page, 3)


@pytest.mark.parametrize("frame", [W2_GFN, W2_GFN + 1])
def test_map_frame_in_window_for_another_peer(world, frame):
    world.grant(1, 3, 2, frame)
    assert_refused(world, world.map(2, 1, 3), GNTST_bad_page, 3)


@pytest.mark.parametrize("frame", [RAM_PAGES, WINDOW_GFN - 1, W2_GFN + 2,
                                   0xFFFFFFFF])
def test_map_frame_in_hole(world, frame):
    world.grant(1, 3, 2, frame)
    assert_refused(world, world.map(2, 1, 3), GNTST_bad_page, 3)


@pytest.mark.parametrize("flags", [0, GNTMAP_readonly])
def test_map_without_host_map(world, flags):
    world.grant(1, 3, 2, WINDOW_GFN)
    result = world.map(2, 1, 3, flags)
    assert result["status"] != GNTST_okay
    assert_refused(world, result, GNTST_bad_gntref, 3)


def test_map_failure_is_logged(world):
    world.grant(1, 3, 3, WINDOW_GFN)
    world.map(2, 1, 3)
    assert world.messages and world.messages[-1].startswith("d2 map:")


def test_release_mapper_unpins_everything(world):
    world.grant(1, 3, 2, WINDOW_GFN)
    world.grant(1, 4, 2, WINDOW_GFN + 1, GTF_permit_access | GTF_readonly)
    world.grant(1, 5, 3, W2_GFN)
    world.map(2, 1, 3)
    world.map(2, 1, 3, RO)
    world.map(2, 1, 4, RO)
    world.map(2, 1, 4, RO)
    d3 = world.map(3, 1, 5)
    assert world.pin_flags(1, 3) == GTF_reading | GTF_writing
    assert world.pin_flags(1, 4) == GTF_reading
    world.grants.release_mapper(world.doms[2].table)
    assert world.doms[2].table.maptrack == {}
    assert world.pin_flags(1, 3) == 0
    assert world.pin_flags(1, 4) == 0
    # Another mapper's pins are untouched.
    assert world.pin_flags(1, 5) == GTF_reading | GTF_writing
    assert set(world.doms[1].table.pins) == {5}
    assert world.unmap(3, d3["handle"]) == {"status": GNTST_okay}
    assert world.doms[1].table.pins == {}
    # Releasing again is harmless, and so is releasing a dying domain that
    # lookups no longer find.
    world.grants.release_mapper(world.doms[2].table)
    dom3 = world.doms.pop(3)
    try:
        world.grants.release_mapper(dom3.table)
        assert world.doms[1].table.pins == {}
    finally:
        world.doms[3] = dom3


def test_handles_are_reused_after_unmap(world):
    world.grant(1, 3, 2, WINDOW_GFN)
    handles = [world.map(2, 1, 3)["handle"] for _ in range(3)]
    assert len(set(handles)) == 3
    for h in handles:
        world.unmap(2, h)
    assert world.map(2, 1, 3)["status"] == GNTST_okay


def test_maptrack_full(world, monkeypatch):
    import hypervisor.grant_table as gt

    monkeypatch.setattr(gt, "MAX_MAPTRACK", 4)
    world.grant(1, 3, 2, WINDOW_GFN)
    handles = [world.map(2, 1, 3)["handle"] for _ in range(4)]
    assert sorted(handles) == [0, 1, 2, 3]
    result = world.map(2, 1, 3)
    assert result == {"status": GNTST_no_space, "handle": -1}
    world.unmap(2, handles[2])
    assert world.map(2, 1, 3)["handle"] == handles[2]


def test_revoked_during_map_backs_out(world, monkeypatch):
    """v2's double check: a grant revoked between the check and the pin is
    unpinned and refused."""
    world.grant(1, 3, 2, WINDOW_GFN)
    table = world.doms[1].table
    real_pin = table.pin

    def pin_then_revoke(ref, readonly):
        real_pin(ref, readonly)
        world.revoke(1, ref)

    monkeypatch.setattr(table, "pin", pin_then_revoke)
    assert_refused(world, world.map(2, 1, 3), GNTST_general_error, 3)
    assert table.pins == {}


# -- copy -----------------------------------------------------------------------


def gref(domid, ref, offset=0):
    return {"domid": domid, "ref": ref, "offset": offset}


def gmfn(frame, offset=0, domid=DOMID_SELF):
    return {"domid": domid, "gmfn": frame, "offset": offset}


def test_copy_from_grant_to_own_frame(world):
    world.grant(1, 7, 2, 1)  # copy works on any granted frame, RAM included
    world.write_frame(1, 1, 100, bytes(range(64)))
    result = world.copy(2, gref(1, 7, 100), gmfn(2, 50), 64, GNTCOPY_source_gref)
    assert result == {"status": GNTST_okay}
    assert world.frame_bytes(2, 2, 50, 64) == bytes(range(64))
    assert world.frame_bytes(2, 2, 0, 50) == bytes(50)
    assert world.frame_bytes(2, 2, 114, 16) == bytes(16)
    assert world.frame_bytes(1, 1, 100, 64) == bytes(range(64))  # source intact
    # A copy pins nothing once done.
    assert world.pin_flags(1, 7) == 0


def test_copy_from_own_frame_to_grant(world):
    world.grant(1, 7, 2, 3)
    world.write_frame(2, 0, 0, b"from d2!")
    result = world.copy(2, gmfn(0), gref(1, 7, PAGE_SIZE - 8), 8,
                        GNTCOPY_dest_gref)
    assert result == {"status": GNTST_okay}
    assert world.frame_bytes(1, 3, PAGE_SIZE - 8, 8) == b"from d2!"
    assert world.frame_bytes(1, 3, 0, PAGE_SIZE - 8) == bytes(PAGE_SIZE - 8)


def test_copy_with_explicit_own_domid(world):
    world.grant(1, 7, 2, 1)
    world.write_frame(2, 3, 0, b"xyz")
    result = world.copy(2, gmfn(3, domid=2), gref(1, 7), 3, GNTCOPY_dest_gref)
    assert result["status"] == GNTST_okay
    assert world.frame_bytes(1, 1, 0, 3) == b"xyz"


def test_copy_into_window_frame(world):
    world.grant(1, 7, 2, WINDOW_GFN + 1)
    world.write_frame(2, 1, 10, b"win")
    result = world.copy(2, gmfn(1, 10), gref(1, 7, 20), 3, GNTCOPY_dest_gref)
    assert result["status"] == GNTST_okay
    assert world.frame_bytes(1, WINDOW_GFN + 1, 20, 3) == b"win"


def test_copy_grant_to_grant(world):
    world.grant(1, 7, 2, 0)
    world.grant(3, 9, 2, 2)
    world.write_frame(1, 0, 0, b"relay")
    result = world.copy(2, gref(1, 7), gref(3, 9, 5), 5,
                        GNTCOPY_source_gref | GNTCOPY_dest_gref)
    assert result["status"] == GNTST_okay
    assert world.frame_bytes(3, 2, 5, 5) == b"relay"


def test_copy_own_frames(world):
    world.write_frame(2, 0, 0, b"local")
    assert world.copy(2, gmfn(0), gmfn(1, 1), 5)["status"] == GNTST_okay
    assert world.frame_bytes(2, 1, 1, 5) == b"local"


def test_copy_whole_page_and_zero_length(world):
    world.grant(1, 7, 2, 2)
    world.write_frame(1, 2, 0, b"\xAA" * PAGE_SIZE)
    assert world.copy(2, gref(1, 7), gmfn(0), PAGE_SIZE,
                      GNTCOPY_source_gref)["status"] == GNTST_okay
    assert world.frame_bytes(2, 0, 0, PAGE_SIZE) == b"\xAA" * PAGE_SIZE
    assert world.frame_bytes(2, 1, 0, 1) == b"\0"
    assert world.copy(2, gref(1, 7, PAGE_SIZE), gmfn(1, PAGE_SIZE), 0,
                      GNTCOPY_source_gref)["status"] == GNTST_okay


@pytest.mark.parametrize("soff,doff,length", [
    (PAGE_SIZE - 10, 0, 11),
    (0, PAGE_SIZE - 10, 11),
    (4000, 0, 200),
    (0, 0, PAGE_SIZE + 1),
    (PAGE_SIZE, 0, 1),
    (-1, 0, 1),
    (0, -1, 1),
    (0, 0, -1),
    (1 << 40, 0, 1),
])
def test_copy_crossing_page_boundary(world, soff, doff, length):
    world.grant(1, 7, 2, 1)
    world.write_frame(1, 1, 0, b"\x55" * PAGE_SIZE)
    world.write_frame(1, 2, 0, b"\x66" * 16)
    result = world.copy(2, gref(1, 7, soff), gmfn(1, doff), length,
                        GNTCOPY_source_gref)
    assert result == {"status": GNTST_bad_copy_arg}
    assert world.frame_bytes(2, 1, 0, PAGE_SIZE) == bytes(PAGE_SIZE)
    assert world.frame_bytes(2, 2, 0, 16) == bytes(16)  # nothing spilled


def test_copy_by_gmfn_from_another_domain(world):
    world.write_frame(1, 0, 0, b"secret")
    result = world.copy(2, gmfn(0, domid=1), gmfn(0), 6)
    assert result == {"status": GNTST_permission_denied}
    assert world.frame_bytes(2, 0, 0, 6) == bytes(6)


def test_copy_by_gmfn_into_another_domain(world):
    world.write_frame(2, 0, 0, b"evil")
    result = world.copy(2, gmfn(0), gmfn(0, domid=1), 4)
    assert result == {"status": GNTST_permission_denied}
    assert world.frame_bytes(1, 0, 0, 4) == bytes(4)


def test_copy_into_readonly_grant(world):
    world.grant(1, 7, 2, 1, GTF_permit_access | GTF_readonly)
    world.write_frame(2, 0, 0, b"nope")
    result = world.copy(2, gmfn(0), gref(1, 7), 4, GNTCOPY_dest_gref)
    assert result == {"status": GNTST_general_error}
    assert world.frame_bytes(1, 1, 0, 4) == bytes(4)
    # Reading from it is fine.
    world.write_frame(1, 1, 0, b"read")
    result = world.copy(2, gref(1, 7), gmfn(0), 4, GNTCOPY_source_gref)
    assert result == {"status": GNTST_okay}
    assert world.frame_bytes(2, 0, 0, 4) == b"read"


def test_copy_grant_for_another_domain(world):
    world.grant(1, 7, 3, 1)
    world.write_frame(1, 1, 0, b"for d3")
    result = world.copy(2, gref(1, 7), gmfn(0), 6, GNTCOPY_source_gref)
    assert result == {"status": GNTST_general_error}
    assert world.frame_bytes(2, 0, 0, 6) == bytes(6)


def test_copy_bad_refs_and_domains(world):
    assert world.copy(2, gref(1, 1 << 20), gmfn(0), 1,
                      GNTCOPY_source_gref)["status"] == GNTST_bad_gntref
    assert world.copy(2, gref(1, 0), gmfn(0), 1,
                      GNTCOPY_source_gref)["status"] == GNTST_general_error
    assert world.copy(2, gref(99, 0), gmfn(0), 1,
                      GNTCOPY_source_gref)["status"] == GNTST_bad_domain
    assert world.copy(99, gmfn(0), gmfn(1), 1)["status"] == GNTST_bad_domain


@pytest.mark.parametrize("frame", [RAM_PAGES, 1 << 40, -1])
def test_copy_own_frame_in_hole(world, frame):
    assert world.copy(2, gmfn(frame), gmfn(0), 1)["status"] == GNTST_bad_page
    assert world.copy(2, gmfn(0), gmfn(frame), 1)["status"] == GNTST_bad_page


def test_copy_granted_frame_in_hole(world):
    world.grant(1, 7, 2, RAM_PAGES + 1)
    assert world.copy(2, gref(1, 7), gmfn(0), 1,
                      GNTCOPY_source_gref)["status"] == GNTST_bad_page


# -- fuzz -------------------------------------------------------------------------

SMALL = st.integers(min_value=-3, max_value=16)
HUGE = st.integers(min_value=-(1 << 80), max_value=1 << 80)
EDGES = st.sampled_from([0, 1, 2, 3, 511, 512, PAGE_SIZE - 1, PAGE_SIZE,
                         PAGE_SIZE + 1, 0xFFFF, 0x7FF0, 0x7FFF, 0xFFFFFFFF,
                         1 << 32, 1 << 63, -(1 << 63), -1])
ANY_INT = st.one_of(SMALL, EDGES, HUGE)


def mostly(plausible, *, wild=ANY_INT):
    """Values that usually make an op succeed, sometimes anything at all."""
    return st.sampled_from([True] * 7 + [False]).flatmap(
        lambda tame: plausible if tame else wild)


WILD_SIDES = st.fixed_dictionaries({
    "domid": ANY_INT, "ref": ANY_INT, "gmfn": ANY_INT, "offset": ANY_INT})
WILD_OPS = st.one_of(
    st.fixed_dictionaries({"op": st.just("map"), "caller": ANY_INT,
                           "dom": ANY_INT, "ref": ANY_INT, "flags": ANY_INT,
                           "host_addr": ANY_INT}),
    st.fixed_dictionaries({"op": st.just("unmap"), "caller": ANY_INT,
                           "handle": ANY_INT, "host_addr": ANY_INT,
                           "dev_bus_addr": ANY_INT}),
    st.fixed_dictionaries({"op": st.just("copy"), "caller": ANY_INT,
                           "source": WILD_SIDES, "dest": WILD_SIDES,
                           "len": ANY_INT, "flags": ANY_INT}),
)

# Coherent ops that often succeed, each field sometimes replaced by anything.
CALLERS = mostly(st.sampled_from([2, 3]))
GRANTERS = mostly(st.sampled_from([1, 1, 3]))
REFS = mostly(st.integers(min_value=0, max_value=7))
TAME_MAP = st.fixed_dictionaries({
    "op": st.just("map"), "caller": CALLERS, "dom": GRANTERS, "ref": REFS,
    "flags": mostly(st.sampled_from([RW, RO] * 4 + [
        GNTMAP_device_map, GNTMAP_device_map | RO, 0, GNTMAP_readonly])),
    "host_addr": ANY_INT})
TAME_UNMAP = st.fixed_dictionaries({
    "op": st.just("unmap"), "caller": CALLERS,
    "handle": mostly(st.integers(min_value=0, max_value=6)),
    "host_addr": ANY_INT, "dev_bus_addr": ANY_INT})
LENGTHS = mostly(st.sampled_from([0, 1, 8, 64, PAGE_SIZE]))
OFFSETS = mostly(st.sampled_from([0, 0, 100, PAGE_SIZE - 64, PAGE_SIZE - 1,
                                  PAGE_SIZE]))


@st.composite
def tame_copy(draw):
    caller = draw(CALLERS)
    flags = draw(mostly(st.integers(min_value=0, max_value=3)))

    def side(by_ref):
        if by_ref:
            return {"domid": draw(GRANTERS), "ref": draw(REFS),
                    "offset": draw(OFFSETS)}
        return {"domid": draw(mostly(st.sampled_from([DOMID_SELF, caller, 1]))),
                "gmfn": draw(mostly(st.integers(min_value=0, max_value=4))),
                "offset": draw(OFFSETS)}

    source = side(isinstance(flags, int) and flags & GNTCOPY_source_gref)
    dest = side(isinstance(flags, int) and flags & GNTCOPY_dest_gref)
    return {"op": "copy", "caller": caller, "source": source, "dest": dest,
            "len": draw(LENGTHS), "flags": flags}


RELEASE_OPS = st.fixed_dictionaries({"op": st.just("release"),
                                     "caller": CALLERS})
OPS = st.lists(st.one_of(TAME_MAP, TAME_MAP, TAME_UNMAP, tame_copy(),
                         RELEASE_OPS, WILD_OPS),
               min_size=4, max_size=40)

PA, RO_PA = GTF_permit_access, GTF_permit_access | GTF_readonly
# Grants in place before the fuzzed ops: (granter, ref, flags, domid, frame).
BASE_GRANTS = [
    (1, 0, PA, 2, WINDOW_GFN), (1, 1, PA, 2, WINDOW_GFN + 1),
    (1, 2, RO_PA, 2, WINDOW_GFN), (1, 3, PA, 3, W2_GFN),
    (1, 4, RO_PA, 3, W2_GFN + 1), (1, 5, PA, 2, 1),  # RAM: copy only
    (1, 6, RO_PA, 2, 2), (1, 7, PA, 2, W2_GFN),      # d3's window: bad_page
    (3, 0, PA, 2, WINDOW_GFN), (3, 1, RO_PA, 2, WINDOW_GFN + 1),
    (3, 2, PA, 2, 0),
]
# Entries the granters then write over them: some valid, some not.
ENTRIES = st.lists(
    st.tuples(
        st.sampled_from([1, 3]),                                   # granter
        st.integers(min_value=0, max_value=7),                     # ref
        mostly(st.sampled_from([GTF_permit_access,
                                GTF_permit_access | GTF_readonly]),
               wild=st.integers(min_value=0, max_value=0xFFFF)),   # flags
        mostly(st.sampled_from([2, 3]),
               wild=st.integers(min_value=0, max_value=0xFFFF)),   # domid
        mostly(st.sampled_from([8, 9, 10, 11] * 3 + [0, 3, 5, 12]),
               wild=st.integers(min_value=0, max_value=0xFFFFFFFF)),  # frame
    ),
    max_size=16)


def expected_pins(world):
    """The status words the granters should show, from every maptrack."""
    expected = {}
    for dom in world.doms.values():
        for mapping in dom.table.maptrack.values():
            key = (mapping.granter, mapping.ref)
            expected[key] = expected.get(key, 0) | GTF_reading | (
                0 if mapping.readonly else GTF_writing)
    return expected


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(entries=ENTRIES, ops=OPS)
def test_fuzz_ops_always_answer_a_status(entries, ops):
    with make_world() as world:
        # d3 also opens a window for d2, so maps between d2 and d3 can succeed.
        world.add_window(3, WINDOW_GFN, 2, peer=2, window_id=3)
        for granter, ref, flags, domid, frame in BASE_GRANTS + entries:
            world.grant(granter, ref, domid, frame, flags)
        for op in ops:
            op = dict(op)
            kind, caller = op.pop("op"), op.pop("caller")
            if kind == "map":
                result = world.grants.map_grant_ref(caller, op)
                assert result["status"] in ALL_GNTST
                if result["status"] == GNTST_okay:
                    assert result["handle"] in world.doms[caller].table.maptrack
                    assert result["window"] is not None
                    assert 0 <= result["offset"] < 2 * PAGE_SIZE
                    assert result["offset"] % PAGE_SIZE == 0
                else:
                    assert result["handle"] == -1
            elif kind == "unmap":
                result = world.grants.unmap_grant_ref(caller, op)
                assert result["status"] in (GNTST_okay, GNTST_bad_handle)
            elif kind == "copy":
                result = world.grants.copy(caller, op)
                assert result["status"] in ALL_GNTST
            elif caller in world.doms:
                world.grants.release_mapper(world.doms[caller].table)
            # Published pin state always matches the live mappings.
            expected = expected_pins(world)
            for granter in (1, 2, 3):
                for ref in range(8):
                    assert world.pin_flags(granter, ref) == expected.get(
                        (granter, ref), 0)
        for domid in (1, 2, 3):
            world.grants.release_mapper(world.doms[domid].table)
        for domid in (1, 2, 3):
            assert world.doms[domid].table.pins == {}
            assert world.doms[domid].table.maptrack == {}
            for ref in range(8):
                assert world.pin_flags(domid, ref) == 0
