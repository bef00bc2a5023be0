"""Platform memory accounting, physmaps and memfd segments (hypervisor/memory.py)."""

import mmap
import os

import pytest

from hypervisor.memory import (
    PAGES_PER_MIB,
    MiB,
    Physmap,
    PlatformMemory,
    Region,
    Segment,
)
from hypervisor.public.errno import ENOMEM, XenError
from hypervisor.public.xen import PAGE_SIZE

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def memory():
    """A 4 MiB machine; every segment a test allocates is freed afterwards."""
    mem = PlatformMemory(4)
    allocated = []
    real_allocate = mem.allocate

    def allocate(name, nr_pages):
        seg = real_allocate(name, nr_pages)
        allocated.append(seg)
        return seg

    mem.allocate = allocate
    yield mem
    for seg in allocated:
        mem.free(seg)
    assert mem.used_pages == 0


@pytest.fixture
def segments():
    """Segments made directly (not through accounting), closed afterwards."""
    made = []

    def make(name, nr_pages):
        seg = Segment(name, nr_pages)
        made.append(seg)
        return seg

    yield make
    for seg in made:
        seg.close()


# -- accounting ---------------------------------------------------------------


def test_pages_per_mib():
    assert PAGES_PER_MIB * PAGE_SIZE == MiB


def test_total_and_free(memory):
    assert memory.total_pages == 4 * PAGES_PER_MIB
    assert memory.used_pages == 0
    assert memory.free_pages == memory.total_pages


def test_claim_and_release():
    mem = PlatformMemory(2)
    mem.claim(100, "a")
    mem.claim(200, "b")
    assert mem.used_pages == 300
    assert mem.free_pages == mem.total_pages - 300
    mem.release(100)
    assert mem.used_pages == 200
    mem.release(200)
    assert mem.used_pages == 0
    assert mem.free_pages == mem.total_pages


def test_claim_everything_then_one_more():
    mem = PlatformMemory(1)
    mem.claim(mem.total_pages, "all")
    assert mem.free_pages == 0
    with pytest.raises(XenError) as e:
        mem.claim(1, "one more")
    assert e.value.errno == ENOMEM
    assert mem.used_pages == mem.total_pages


def test_claim_too_much_is_enomem_and_claims_nothing():
    mem = PlatformMemory(2)
    mem.claim(10, "some")
    with pytest.raises(XenError) as e:
        mem.claim(mem.total_pages, "too much")
    assert e.value.errno == ENOMEM
    assert e.value.rc == -ENOMEM
    assert "too much" in str(e.value)
    assert mem.used_pages == 10


def test_release_twice_is_caught():
    mem = PlatformMemory(1)
    mem.claim(5, "x")
    mem.release(5)
    with pytest.raises(AssertionError):
        mem.release(5)


def test_allocate_claims_pages(memory):
    seg = memory.allocate("pyxen-test-a", 16)
    assert isinstance(seg, Segment)
    assert seg.nr_pages == 16
    assert seg.size == 16 * PAGE_SIZE
    assert len(seg.map) == seg.size
    assert memory.used_pages == 16
    assert os.fstat(seg.fd).st_size == seg.size


def test_allocate_beyond_free_is_enomem_and_claims_nothing(memory):
    memory.allocate("pyxen-test-a", 100)
    with pytest.raises(XenError) as e:
        memory.allocate("pyxen-test-big", memory.total_pages)
    assert e.value.errno == ENOMEM
    assert memory.used_pages == 100


def test_allocate_host_failure_is_enomem_and_claims_nothing(memory, monkeypatch):
    def no_memory(fd, length):
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(os, "ftruncate", no_memory)
    with pytest.raises(XenError) as e:
        memory.allocate("pyxen-test-fail", 8)
    assert e.value.errno == ENOMEM
    assert memory.used_pages == 0


@pytest.mark.parametrize("nr_pages", [0, -1, -100])
def test_allocate_no_pages_claims_nothing(memory, nr_pages):
    with pytest.raises(ValueError):
        memory.allocate("pyxen-test-empty", nr_pages)
    assert memory.used_pages == 0
    assert memory.free_pages == memory.total_pages


def test_allocate_oversized_segment_claims_nothing():
    # A machine "bigger" than any off_t: the claim passes, the segment cannot
    # be created, and the claim must be given back.
    mem = PlatformMemory(2**60)
    # Whichever error the OS gives: the point is the claim given back.
    with pytest.raises(Exception):  # noqa: B017
        mem.allocate("pyxen-test-huge", 2**60)
    assert mem.used_pages == 0


def test_free_returns_pages(memory):
    a = memory.allocate("pyxen-test-a", 10)
    b = memory.allocate("pyxen-test-b", 20)
    assert memory.used_pages == 30
    memory.free(a)
    assert memory.used_pages == 20
    assert a.fd == -1
    memory.free(b)
    assert memory.used_pages == 0
    assert memory.free_pages == memory.total_pages


def test_free_twice_releases_once(memory):
    a = memory.allocate("pyxen-test-a", 10)
    memory.allocate("pyxen-test-b", 5)
    memory.free(a)
    memory.free(a)
    assert memory.used_pages == 5


def test_freed_pages_can_be_reallocated(memory):
    big = memory.allocate("pyxen-test-big", memory.total_pages)
    with pytest.raises(XenError):
        memory.allocate("pyxen-test-more", 1)
    memory.free(big)
    again = memory.allocate("pyxen-test-again", memory.total_pages)
    assert again.nr_pages == memory.total_pages


# -- segments -----------------------------------------------------------------


def test_segment_needs_a_page():
    with pytest.raises(ValueError):
        Segment("pyxen-test-none", 0)


def test_segment_starts_zeroed(segments):
    seg = segments("pyxen-test-zero", 3)
    assert seg.map[:] == bytes(seg.size)


def test_segment_is_shared_memory(segments):
    """A write through the hypervisor's mapping is seen through another
    mapping of the same fd (what a domain does), and back."""
    seg = segments("pyxen-test-shared", 2)
    other = mmap.mmap(seg.fd, seg.size)
    try:
        seg.map[10:15] = b"hello"
        seg.map[PAGE_SIZE:PAGE_SIZE + 5] = b"page1"
        assert other[10:15] == b"hello"
        assert other[PAGE_SIZE:PAGE_SIZE + 5] == b"page1"
        other[seg.size - 3:] = b"end"
        assert seg.map[seg.size - 3:] == b"end"
    finally:
        other.close()


def test_segment_shared_through_a_dup_fd(segments):
    """The fd handed to a domain is a dup; it refers to the same memory."""
    seg = segments("pyxen-test-dup", 1)
    fd = os.dup(seg.fd)
    try:
        other = mmap.mmap(fd, seg.size)
        try:
            other[0:4] = b"abcd"
            assert seg.map[0:4] == b"abcd"
        finally:
            other.close()
        assert os.pread(fd, 4, 0) == b"abcd"
    finally:
        os.close(fd)


def test_segments_are_distinct(segments):
    a = segments("pyxen-test-a", 1)
    b = segments("pyxen-test-b", 1)
    a.map[0:3] = b"aaa"
    assert b.map[0:3] == b"\0\0\0"


def test_segment_close_is_idempotent(segments):
    seg = segments("pyxen-test-close", 1)
    fd = seg.fd
    seg.close()
    assert seg.fd == -1
    assert seg.map.closed
    with pytest.raises(OSError):
        os.fstat(fd)
    seg.close()


def test_segment_close_with_exported_view(segments):
    seg = segments("pyxen-test-view", 1)
    view = memoryview(seg.map)
    try:
        seg.close()  # must not raise although the mapping is still exported
        assert seg.fd == -1
        view[0] = 7
        assert view[0] == 7
    finally:
        view.release()


def test_memory_outlives_hypervisor_mapping_only_while_mapped(segments):
    """Closing the hypervisor's side leaves another mapping intact."""
    seg = segments("pyxen-test-outlive", 1)
    other = mmap.mmap(seg.fd, seg.size)
    try:
        seg.map[0:2] = b"ok"
        seg.close()
        assert other[0:2] == b"ok"
    finally:
        other.close()


# -- physmap ------------------------------------------------------------------


@pytest.fixture
def physmap(segments):
    """RAM at gfn 0..7, a hole at 8..9, a window at 10..11, another at 12..14."""
    pm = Physmap()
    ram = Region(0, segments("pyxen-test-ram", 8))
    w1 = Region(10, segments("pyxen-test-w1", 2), peer=2, window_id=1)
    w2 = Region(12, segments("pyxen-test-w2", 3), peer=3, window_id=2)
    # Added out of order: the physmap keeps them sorted by gfn.
    pm.add(w2)
    pm.add(ram)
    pm.add(w1)
    return pm, ram, w1, w2


def test_empty_physmap():
    pm = Physmap()
    assert pm.next_free_gfn() == 0
    assert pm.lookup(0) is None


def test_region_end():
    seg = Segment("pyxen-test-end", 4)
    try:
        assert Region(6, seg).end == 10
    finally:
        seg.close()


def test_physmap_sorted(physmap):
    pm, ram, w1, w2 = physmap
    assert pm.regions == [ram, w1, w2]
    assert pm.next_free_gfn() == 15


def test_lookup_ram(physmap):
    pm, ram, _, _ = physmap
    assert pm.lookup(0) == (ram, 0)
    assert pm.lookup(3) == (ram, 3 * PAGE_SIZE)
    assert pm.lookup(7) == (ram, 7 * PAGE_SIZE)
    assert ram.peer is None and ram.window_id is None


def test_lookup_windows(physmap):
    pm, _, w1, w2 = physmap
    assert pm.lookup(10) == (w1, 0)
    assert pm.lookup(11) == (w1, PAGE_SIZE)
    assert pm.lookup(12) == (w2, 0)
    assert pm.lookup(14) == (w2, 2 * PAGE_SIZE)
    assert pm.lookup(11)[0].peer == 2
    assert pm.lookup(13)[0].window_id == 2


@pytest.mark.parametrize("gfn", [8, 9, 15, 16, 1 << 40, -1, -(1 << 40)])
def test_lookup_holes(physmap, gfn):
    pm, *_ = physmap
    assert pm.lookup(gfn) is None


def test_lookup_addresses_the_right_bytes(physmap):
    pm, _, w1, _ = physmap
    region, offset = pm.lookup(11)
    region.segment.map[offset:offset + 4] = b"gfn!"
    assert w1.segment.map[PAGE_SIZE:PAGE_SIZE + 4] == b"gfn!"


def test_remove_makes_a_hole(physmap):
    pm, ram, w1, w2 = physmap
    pm.remove(w1)
    assert pm.lookup(10) is None
    assert pm.lookup(11) is None
    assert pm.lookup(12) == (w2, 0)
    pm.remove(w2)
    assert pm.next_free_gfn() == ram.end == 8


def test_next_free_gfn_stacks_windows(segments):
    pm = Physmap()
    pm.add(Region(0, segments("pyxen-test-ram", 4)))
    for window_id in (1, 2, 3):
        gfn = pm.next_free_gfn()
        pm.add(Region(gfn, segments(f"pyxen-test-w{window_id}", window_id),
                      peer=9, window_id=window_id))
    assert [r.gfn for r in pm.regions] == [0, 4, 5, 7]
    assert pm.next_free_gfn() == 10
