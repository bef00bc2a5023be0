"""blkback's request decoding and checks: every bad request gets a status."""

import ctypes
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.blkback.response import make_response, response_for
from backends.blkback.validate import (
    DiskInfo,
    Limits,
    Problem,
    Request,
    Segment,
    Segments,
    check,
    parse_request,
    with_indirect_segments,
)
from hypervisor.public.io import blkif
from hypervisor.public.io.blkif import (
    BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE,
    BLKIF_OP_INDIRECT,
    BLKIF_OP_READ,
    BLKIF_OP_RESERVED_1,
    BLKIF_OP_WRITE,
    BLKIF_OP_WRITE_BARRIER,
    BLKIF_RSP_EOPNOTSUPP,
    BLKIF_RSP_ERROR,
)

pytestmark = pytest.mark.timeout(60)

DISK = DiskInfo(sectors=1024, sector_size=512, readonly=False, discard=True,
                flush=True, max_indirect_segments=256)
OK = None


def slot(struct: ctypes.Structure) -> bytes:
    data = bytes(struct)
    return data + bytes(blkif.BLKIF_SRING_ENTRY_SIZE - len(data))


def rw(op=BLKIF_OP_READ, sector=0, segs=((5, 0, 7),), nr=None, id=42,
       handle=0) -> bytes:
    req = blkif.blkif_request(operation=op, handle=handle, id=id,
                              sector_number=sector,
                              nr_segments=len(segs) if nr is None else nr)
    for i, (gref, first, last) in enumerate(segs):
        req.seg[i] = blkif.blkif_request_segment(gref, first, last)
    return slot(req)


def discard(sector=0, nr_sectors=8, flag=0, id=7) -> bytes:
    return slot(blkif.blkif_request_discard(
        operation=BLKIF_OP_DISCARD, flag=flag, handle=3, id=id,
        sector_number=sector, nr_sectors=nr_sectors))


def indirect(nr, op=BLKIF_OP_READ, sector=0, grefs=(100, 101), id=9) -> bytes:
    req = blkif.blkif_request_indirect(operation=BLKIF_OP_INDIRECT,
                                       indirect_op=op, nr_segments=nr, id=id,
                                       sector_number=sector, handle=2)
    for i, gref in enumerate(grefs):
        req.indirect_grefs[i] = gref
    return slot(req)


def problem(req: Request, disk: DiskInfo, limits: Limits | None = None) -> Problem:
    """check, of a request it must refuse."""
    found = check(req, disk) if limits is None else check(req, disk, limits)
    assert found is not None
    return found


def status(raw: bytes, disk: DiskInfo = DISK) -> int | None:
    problem = check(parse_request(raw), disk)
    return None if problem is None else problem.status


# -- decoding -----------------------------------------------------------------

def test_parse_read_write() -> None:
    req = parse_request(rw(BLKIF_OP_WRITE, sector=16, segs=((5, 0, 7), (6, 2, 3)),
                           id=2**64 - 1, handle=0x1234))
    assert req == Request(BLKIF_OP_WRITE, 2**64 - 1, handle=0x1234,
                          sector_number=16, nr_segments=2,
                          segments=Segments.of((Segment(5, 0, 7), Segment(6, 2, 3))))
    assert req.total_sectors == 10 and req.writes
    assert req.segments is not None
    assert req.segments[1].offset == 1024 and req.segments[1].length == 1024


def test_parse_discard_and_indirect() -> None:
    req = parse_request(discard(sector=8, nr_sectors=16,
                                flag=blkif.BLKIF_DISCARD_SECURE))
    assert (req.operation, req.id, req.handle, req.sector_number,
            req.nr_sectors, req.flag) == (BLKIF_OP_DISCARD, 7, 3, 8, 16, 1)
    req = parse_request(indirect(600, op=BLKIF_OP_WRITE, sector=24))
    assert (req.io_operation, req.nr_segments, req.sector_number,
            req.handle, req.indirect_grefs, req.segments) == (
        BLKIF_OP_WRITE, 600, 24, 2, (100, 101), None)


def test_parse_copies_the_slot() -> None:
    shared = bytearray(rw(segs=((5, 0, 7),)))
    req = parse_request(memoryview(shared))
    shared[:] = bytes(len(shared))  # the frontend rewrites the slot
    assert req.segments == (Segment(5, 0, 7),) and req.id == 42


def test_parse_rejects_wrong_length() -> None:
    with pytest.raises(ValueError):
        parse_request(bytes(111))


def test_indirect_segments_from_pages() -> None:
    segs = [blkif.blkif_request_segment(1000 + i, 0, 7) for i in range(600)]
    raw = b"".join(bytes(s) for s in segs)
    pages = [raw[:4096], raw[4096:] + bytes(8192 - len(raw))]
    req = with_indirect_segments(parse_request(indirect(600)), pages)
    assert req.segments is not None
    assert len(req.segments) == 600 and req.segments[599] == Segment(1599, 0, 7)
    assert check(req, DiskInfo(sectors=8 * 600, max_indirect_segments=1024)) is None
    with pytest.raises(ValueError):
        with_indirect_segments(parse_request(indirect(600)), pages[:1])


# -- checks -------------------------------------------------------------------

def test_good_requests_pass() -> None:
    assert status(rw(BLKIF_OP_READ, sector=1016)) is OK
    assert status(rw(BLKIF_OP_WRITE, segs=[(i, 0, 7) for i in range(11)])) is OK
    assert status(rw(BLKIF_OP_FLUSH_DISKCACHE, segs=())) is OK
    assert status(rw(BLKIF_OP_FLUSH_DISKCACHE, segs=((1, 0, 0),))) is OK
    assert status(discard(sector=1000, nr_sectors=24)) is OK
    assert status(indirect(256)) is OK  # segments read later


@pytest.mark.parametrize("op", [BLKIF_OP_WRITE_BARRIER, BLKIF_OP_RESERVED_1,
                                7, 0x80, 255])
def test_unknown_or_unoffered_operation_is_eopnotsupp(op) -> None:
    assert status(rw(op)) == BLKIF_RSP_EOPNOTSUPP


def test_unoffered_features_are_eopnotsupp() -> None:
    bare = DiskInfo(sectors=1024, discard=False, flush=False,
                    max_indirect_segments=0)
    assert status(discard(), bare) == BLKIF_RSP_EOPNOTSUPP
    assert status(rw(BLKIF_OP_FLUSH_DISKCACHE, segs=()), bare) == BLKIF_RSP_EOPNOTSUPP
    assert status(indirect(16), bare) == BLKIF_RSP_EOPNOTSUPP
    assert status(rw(BLKIF_OP_READ), bare) is OK


@pytest.mark.parametrize("nr", [0, 12, 255])
def test_bad_segment_count_is_error(nr) -> None:
    segs = [(1, 0, 7)] * min(nr, 11)
    assert status(rw(BLKIF_OP_READ, segs=segs, nr=nr)) == BLKIF_RSP_ERROR
    assert status(rw(BLKIF_OP_WRITE, segs=segs, nr=nr)) == BLKIF_RSP_ERROR


def test_flush_with_too_many_segments_is_error() -> None:
    assert status(rw(BLKIF_OP_FLUSH_DISKCACHE, segs=[(1, 0, 7)] * 11,
                     nr=12)) == BLKIF_RSP_ERROR


@pytest.mark.parametrize("first,last", [(1, 0), (0, 8), (8, 8), (255, 255), (7, 3)])
def test_segment_outside_its_page_is_error(first, last) -> None:
    assert status(rw(segs=((1, 0, 7), (2, first, last)))) == BLKIF_RSP_ERROR


@pytest.mark.parametrize("sector,segs", [
    (1017, ((1, 0, 7),)),                 # one sector past the end
    (1024, ((1, 0, 0),)),
    (2**64 - 1, ((1, 0, 7),)),            # would wrap in 64-bit arithmetic
    (1000, [(1, 0, 7)] * 4),
])
def test_range_beyond_the_disk_is_error(sector, segs) -> None:
    assert status(rw(BLKIF_OP_READ, sector=sector, segs=segs)) == BLKIF_RSP_ERROR


def test_discard_range_is_checked() -> None:
    assert status(discard(sector=1020, nr_sectors=8)) == BLKIF_RSP_ERROR
    assert status(discard(sector=2**64 - 1, nr_sectors=2)) == BLKIF_RSP_ERROR
    assert status(discard(sector=0, nr_sectors=1024)) is OK


def test_readonly_disk_refuses_changes() -> None:
    ro = DiskInfo(sectors=1024, readonly=True, discard=True, flush=True,
                  max_indirect_segments=256)
    assert status(rw(BLKIF_OP_READ), ro) is OK
    assert status(rw(BLKIF_OP_WRITE), ro) == BLKIF_RSP_ERROR
    assert status(discard(), ro) == BLKIF_RSP_ERROR
    assert status(indirect(8, op=BLKIF_OP_WRITE), ro) == BLKIF_RSP_ERROR
    assert status(indirect(8, op=BLKIF_OP_READ), ro) is OK
    assert status(rw(BLKIF_OP_FLUSH_DISKCACHE, segs=((1, 0, 7),)), ro) == BLKIF_RSP_ERROR
    assert status(rw(BLKIF_OP_FLUSH_DISKCACHE, segs=()), ro) is OK


def test_indirect_checks() -> None:
    assert status(indirect(0)) == BLKIF_RSP_ERROR
    assert status(indirect(257)) == BLKIF_RSP_ERROR     # above the advertised max
    assert status(indirect(8, op=BLKIF_OP_FLUSH_DISKCACHE)) == BLKIF_RSP_ERROR
    assert status(indirect(8, op=BLKIF_OP_INDIRECT)) == BLKIF_RSP_ERROR
    # More segments than 8 pages hold, even if the backend claimed more.
    huge = DiskInfo(sectors=1 << 30, max_indirect_segments=65535)
    assert status(indirect(4096), huge) is OK
    assert status(indirect(4097), huge) == BLKIF_RSP_ERROR
    assert status(indirect(65535), huge) == BLKIF_RSP_ERROR


def test_indirect_segments_are_checked() -> None:
    req = parse_request(indirect(3, sector=1000))
    good = [Segment(1, 0, 7)] * 3
    assert check(replace(req, segments=Segments.of(good)), DISK) is None
    bad_sect = replace(req, segments=Segments.of((Segment(1, 0, 7), Segment(2, 3, 2),
                                                  Segment(3, 0, 7))))
    assert problem(bad_sect, DISK).status == BLKIF_RSP_ERROR
    too_far = replace(req, sector_number=1010, segments=Segments.of(good))
    assert problem(too_far, DISK).status == BLKIF_RSP_ERROR
    short = replace(req, segments=Segments.of(good[:2]))
    assert problem(short, DISK).status == BLKIF_RSP_ERROR


def test_large_sector_disk_needs_alignment() -> None:
    disk = DiskInfo(sectors=128, sector_size=4096, discard=True)
    assert disk.size_in_512 == 1024
    assert status(rw(sector=8, segs=((1, 0, 7),)), disk) is OK
    assert status(rw(sector=4, segs=((1, 0, 7),)), disk) == BLKIF_RSP_ERROR
    assert status(rw(sector=8, segs=((1, 0, 3),)), disk) == BLKIF_RSP_ERROR
    assert status(discard(sector=8, nr_sectors=4), disk) == BLKIF_RSP_ERROR


def test_limits_page_size() -> None:
    small = Limits(page_size=2048)
    assert check(parse_request(rw(segs=((1, 0, 3),))), DISK, small) is None
    assert problem(parse_request(rw(segs=((1, 0, 4),))), DISK, small).status == BLKIF_RSP_ERROR


def test_bad_disk_info() -> None:
    with pytest.raises(ValueError):
        DiskInfo(sectors=8, sector_size=1000)
    with pytest.raises(ValueError):
        DiskInfo(sectors=-1)


def test_problem_becomes_a_response() -> None:
    req = parse_request(indirect(8, op=BLKIF_OP_WRITE, id=77))
    rsp = blkif.blkif_response.from_buffer_copy(response_for(req, BLKIF_RSP_ERROR))
    assert (rsp.id, rsp.operation, rsp.status) == (77, BLKIF_OP_WRITE, -1)
    raw = make_response(2**64 - 1, BLKIF_OP_DISCARD, BLKIF_RSP_EOPNOTSUPP)
    assert len(raw) == 16 and raw[9] == 0 and raw[12:] == bytes(4)
    rsp = blkif.blkif_response.from_buffer_copy(raw)
    assert (rsp.id, rsp.operation, rsp.status) == (2**64 - 1, 5, -2)


# -- fuzz -----------------------------------------------------------------------

STATUSES = {None, BLKIF_RSP_ERROR, BLKIF_RSP_EOPNOTSUPP}


def _handle_untrusted(raw: bytes, disk: DiskInfo) -> int:
    """What a backend does with one slot: always ends in a status."""
    req = parse_request(raw)
    problem = check(req, disk)
    if problem is None and req.operation == BLKIF_OP_INDIRECT:
        pages = [bytes(raw * 37)[:4096]] * len(req.indirect_grefs)
        req = with_indirect_segments(req, pages)
        problem = check(req, disk)
    assert problem is None or isinstance(problem, Problem)
    status = 0 if problem is None else problem.status
    response = response_for(req, status)
    assert len(response) == 16
    if problem is None:  # a request that passes really fits the disk
        assert req.operation in (BLKIF_OP_READ, BLKIF_OP_WRITE,
                                 BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_DISCARD,
                                 BLKIF_OP_INDIRECT)
        if req.total_sectors:  # a bare flush's sector number means nothing
            assert req.sector_number + req.total_sectors <= disk.size_in_512
        assert all(0 <= s.first_sect <= s.last_sect <= 7 for s in req.segments or ())
    return status


disks = st.builds(DiskInfo, sectors=st.integers(0, 1 << 40),
                  sector_size=st.sampled_from([512, 4096]),
                  readonly=st.booleans(), discard=st.booleans(),
                  flush=st.booleans(),
                  max_indirect_segments=st.sampled_from([0, 32, 256, 4096, 65535]))


@settings(max_examples=2000, deadline=None)
@given(raw=st.binary(min_size=112, max_size=112), disk=disks)
def test_fuzz_random_entries_never_raise(raw: bytes, disk: DiskInfo) -> None:
    assert _handle_untrusted(raw, disk) in {0, BLKIF_RSP_ERROR, BLKIF_RSP_EOPNOTSUPP}


@settings(max_examples=1000, deadline=None)
@given(op=st.sampled_from(range(8)), data=st.binary(min_size=111, max_size=111),
       disk=disks)
def test_fuzz_known_operations_never_raise(op: int, data: bytes,
                                           disk: DiskInfo) -> None:
    assert _handle_untrusted(bytes([op]) + data, disk) in {
        0, BLKIF_RSP_ERROR, BLKIF_RSP_EOPNOTSUPP}
