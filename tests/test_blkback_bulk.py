"""blkback's bulk paths: segments decoded and checked as columns, and the
I/O vector merged over contiguous pages; each must agree with the one
segment at a time reading of the same bytes."""

import ctypes
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.blkback.io import merge_extents, perform, perform_iov
from backends.blkback.validate import (
    DiskInfo,
    Limits,
    Request,
    Segment,
    Segments,
    check,
    parse_request,
    with_indirect_segments,
)
from hypervisor.public.io import blkif
from hypervisor.public.io.blkif import (
    BLKIF_OP_INDIRECT,
    BLKIF_OP_READ,
    BLKIF_OP_WRITE,
    BLKIF_RSP_ERROR,
    BLKIF_RSP_OKAY,
)

pytestmark = pytest.mark.timeout(60)

PAGE = 4096
SEG = ctypes.sizeof(blkif.blkif_request_segment)


def one_by_one(data: bytes) -> list[Segment]:
    """The reference decoding: one ctypes struct per record."""
    return [Segment(s.gref, s.first_sect, s.last_sect)
            for s in (blkif.blkif_request_segment.from_buffer_copy(data, i * SEG)
                      for i in range(len(data) // SEG))]


def records(specs) -> bytes:
    return b"".join(bytes(blkif.blkif_request_segment(*spec)) for spec in specs)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(min_size=0, max_size=64 * SEG).map(lambda b: b[:len(b) // SEG * SEG]))
def test_bulk_decoding_matches_one_by_one(data: bytes) -> None:
    segments = Segments.decode(data)
    assert list(segments) == one_by_one(data)
    assert len(segments) == len(data) // SEG
    assert segments.total_sectors == sum(s.last_sect - s.first_sect + 1
                                         for s in one_by_one(data))
    if segments:
        assert segments[-1] == one_by_one(data)[-1]
        assert segments[1:3] == tuple(one_by_one(data)[1:3])


def test_decoding_copies_and_is_shared_for_the_same_records() -> None:
    shared = bytearray(records([(7, 0, 7), (8, 1, 2)]))
    # The frontend's page itself, as netback hands it over; decode is typed
    # for the bytes it copies out of it.
    first = Segments.decode(memoryview(shared))  # type: ignore[arg-type]
    shared[0] = 99  # the frontend rewrites the page afterwards
    assert list(first) == [Segment(7, 0, 7), Segment(8, 1, 2)]
    assert Segments.decode(records([(7, 0, 7), (8, 1, 2)])) is first  # memoised
    with pytest.raises(ValueError):
        Segments.decode(bytes(16), 8, 2)


def test_segments_from_objects_equal_decoded_ones() -> None:
    specs = [(1, 0, 7), (2**32 - 1, 3, 3)]
    built = Segments.of([Segment(*s) for s in specs])
    decoded = Segments.decode(records(specs))
    assert built == decoded == tuple(Segment(*s) for s in specs)
    assert built.records == decoded.records
    assert hash(built) == hash(decoded)
    with pytest.raises(ValueError):
        Segments.of([Segment(1, 0, 300)])


segment_fields = st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 255), st.integers(0, 255))


@settings(max_examples=500, deadline=None)
@given(specs=st.lists(segment_fields, min_size=1, max_size=40),
       sector_size=st.sampled_from([512, 1024, 4096]),
       whole=st.booleans())
def test_bulk_checks_agree_with_per_segment_rules(specs, sector_size, whole) -> None:
    if whole:  # the common case: whole pages, bulk all the way
        specs = [(g, 0, 7) for g, _, _ in specs]
    ratio = sector_size // 512
    request = Request(BLKIF_OP_READ, 1, nr_segments=min(len(specs), 11),
                      segments=Segments.decode(records(specs[:11])))
    disk = DiskInfo(sectors=1 << 30, sector_size=sector_size)
    expected_fine = all(first <= last <= 7 and (last - first + 1) % ratio == 0
                        for _, first, last in specs[:11])
    problem = check(request, disk)
    assert (problem is None) == expected_fine, (problem, specs[:11])


def test_indirect_segments_are_read_in_bulk_and_checked() -> None:
    specs = [(1000 + i, 0, 7) for i in range(600)]
    raw = records(specs)
    pages = [raw[:PAGE], raw[PAGE:] + bytes(2 * PAGE - len(raw))]
    req = parse_request(_indirect(600))
    req = with_indirect_segments(req, pages)
    assert req.segments is not None
    assert list(req.segments) == [Segment(*s) for s in specs]
    disk = DiskInfo(sectors=8 * 600, max_indirect_segments=1024)
    assert check(req, disk) is None
    bad = bytearray(pages[1])
    bad[(599 - 512) * SEG + 5] = 8  # segment 599: last_sect 8, outside its page
    req = with_indirect_segments(parse_request(_indirect(600)), [pages[0], bytes(bad)])
    problem = check(req, disk)
    assert problem is not None and problem.status == BLKIF_RSP_ERROR
    assert "segment 599" in problem.reason


def _indirect(nr: int) -> bytes:
    req = blkif.blkif_request_indirect(operation=BLKIF_OP_INDIRECT,
                                       indirect_op=BLKIF_OP_READ, nr_segments=nr,
                                       id=3, sector_number=0, handle=0)
    req.indirect_grefs[0], req.indirect_grefs[1] = 100, 101
    data = bytes(req)
    return data + bytes(blkif.BLKIF_SRING_ENTRY_SIZE - len(data))


@settings(max_examples=1000, deadline=None)
@given(op=st.sampled_from(range(8)), rest=st.binary(min_size=111, max_size=111))
def test_header_decoding_matches_the_ctypes_layouts(op: int, rest: bytes) -> None:
    data = bytes([op]) + rest
    req = parse_request(data)
    if op == blkif.BLKIF_OP_DISCARD:
        ref = blkif.blkif_request_discard.from_buffer_copy(data)
        assert (req.id, req.handle, req.sector_number, req.nr_sectors, req.flag) == (
            ref.id, ref.handle, ref.sector_number, ref.nr_sectors, ref.flag)
    elif op == BLKIF_OP_INDIRECT:
        ind = blkif.blkif_request_indirect.from_buffer_copy(data)
        pages = min(blkif.indirect_pages(ind.nr_segments), 8)
        assert (req.id, req.handle, req.sector_number, req.nr_segments, req.indirect_op,
                req.indirect_grefs) == (ind.id, ind.handle, ind.sector_number,
                                        ind.nr_segments, ind.indirect_op,
                                        tuple(ind.indirect_grefs[:pages]))
    else:
        rw = blkif.blkif_request.from_buffer_copy(data)
        assert (req.id, req.handle, req.sector_number, req.nr_segments) == (
            rw.id, rw.handle, rw.sector_number, rw.nr_segments)
        if op in (BLKIF_OP_READ, BLKIF_OP_WRITE, blkif.BLKIF_OP_FLUSH_DISKCACHE):
            count = min(rw.nr_segments, 11)
            assert req.segments is not None
            assert list(req.segments) == [Segment(s.gref, s.first_sect, s.last_sect)
                                          for s in rw.seg[:count]]


# -- merging the I/O vector ------------------------------------------------------

def naive(addresses, segments) -> list[tuple[int, int]]:
    """One extent per segment, then adjacent ones joined."""
    out: list[list[int]] = []
    for address, seg in zip(addresses, segments):
        start, end = address + seg.first_sect * 512, address + (seg.last_sect + 1) * 512
        if out and out[-1][1] == start:
            out[-1][1] = end
        else:
            out.append([start, end])
    return [(s, e - s) for s, e in out]


def test_contiguous_whole_pages_become_one_extent() -> None:
    segments = Segments.of([Segment(g, 0, 7) for g in range(256)])
    addresses = [(5 << 32) + 40 * PAGE + i * PAGE for i in range(256)]
    assert merge_extents(addresses, segments) == [((5 << 32) + 40 * PAGE, 256 * PAGE)]


def test_partial_ends_and_holes_split_extents() -> None:
    segments = Segments.of([Segment(1, 2, 7), Segment(2, 0, 7), Segment(3, 0, 3),
                            Segment(4, 0, 7), Segment(5, 0, 7)])
    addresses = [0, PAGE, 2 * PAGE, 9 * PAGE, 10 * PAGE]
    assert merge_extents(addresses, segments) == [
        (1024, 2 * PAGE + 2048 - 1024), (9 * PAGE, 2 * PAGE)]
    assert merge_extents([], Segments.of([])) == []
    with pytest.raises(ValueError):
        merge_extents([0], Segments.of([]))


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_merging_matches_the_naive_plan(data) -> None:
    n = data.draw(st.integers(1, 40))
    segs = [Segment(i, *sorted(data.draw(st.tuples(st.integers(0, 7), st.integers(0, 7)))))
            for i in range(n)]
    # Pages mostly consecutive, sometimes jumping (another window: << 32).
    pages, page = [], data.draw(st.integers(0, 100))
    for _ in range(n):
        pages.append(page)
        page += data.draw(st.sampled_from([1, 1, 1, 2, 1 << 20]))
    addresses = [p * PAGE for p in pages]
    assert merge_extents(addresses, Segments.of(segs)) == naive(addresses, segs)


def test_perform_iov_moves_the_same_bytes_as_perform(tmp_path) -> None:
    path = tmp_path / "disk.img"
    path.write_bytes(os.urandom(64 * 512))
    fd = os.open(path, os.O_RDWR)
    try:
        segs = Segments.of((Segment(1, 1, 7), Segment(2, 0, 7), Segment(3, 0, 4)))
        req = Request(BLKIF_OP_READ, 1, sector_number=8, nr_segments=3, segments=segs)
        window = bytearray(3 * PAGE)
        view = memoryview(window)
        extents = merge_extents([0, PAGE, 2 * PAGE], segs)
        assert perform_iov(req, [view[s:s + n] for s, n in extents], fd) == BLKIF_RSP_OKAY
        pages = [bytearray(PAGE) for _ in range(3)]
        assert perform(req, [memoryview(p) for p in pages], fd) == BLKIF_RSP_OKAY
        assert bytes(window) == b"".join(pages)
        with pytest.raises(ValueError):  # a vector that does not hold the request
            perform_iov(req, [view[:PAGE]], fd)
        with pytest.raises(ValueError):  # a read into read-only memory
            perform_iov(req, [memoryview(bytes(window))[s:s + n] for s, n in extents], fd)
        write = Request(BLKIF_OP_WRITE, 2, sector_number=0, nr_segments=3, segments=segs)
        assert perform_iov(write, [view[s:s + n] for s, n in extents], fd) == BLKIF_RSP_OKAY
        size = req.total_sectors * 512
        assert os.pread(fd, size, 0) == bytes(window[512:512 + size])
    finally:
        os.close(fd)


def test_limits_page_size_applies_to_bulk_checks() -> None:
    limits = Limits(page_size=2048)  # 4 sectors a page
    req = Request(BLKIF_OP_READ, 1, nr_segments=1, segments=Segments.of([Segment(1, 0, 4)]))
    assert check(req, DiskInfo(sectors=1024), limits) is not None
    req = Request(BLKIF_OP_READ, 1, nr_segments=1, segments=Segments.of([Segment(1, 0, 3)]))
    assert check(req, DiskInfo(sectors=1024), limits) is None
