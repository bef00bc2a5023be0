"""blkfront's requests and shadow table, against blkback's decoder."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.blkback.response import make_response
from backends.blkback.validate import (
    DiskInfo,
    Segment,
    check,
    parse_request,
    with_indirect_segments,
)
from frontends.blkfront import requests
from frontends.blkfront.requests import Response, parse_response
from frontends.blkfront.shadow import BlkfrontProtocolError, Shadow, ShadowFull
from hypervisor.public.io import blkif
from hypervisor.public.io.blkif import (
    BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE,
    BLKIF_OP_INDIRECT,
    BLKIF_OP_READ,
    BLKIF_OP_WRITE,
    BLKIF_RSP_ERROR,
    BLKIF_RSP_OKAY,
)

pytestmark = pytest.mark.timeout(60)

DISK = DiskInfo(sectors=1 << 20, discard=True, flush=True,
                max_indirect_segments=4096)

segment_specs = st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 7),
                          st.integers(0, 7)).map(
    lambda t: (t[0], min(t[1], t[2]), max(t[1], t[2])))


# -- requests ---------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(op=st.sampled_from([BLKIF_OP_READ, BLKIF_OP_WRITE]),
       id=st.integers(0, 2**64 - 1), sector=st.integers(0, 2**64 - 1),
       handle=st.integers(0, 0xFFFF),
       segs=st.lists(segment_specs, min_size=1, max_size=11))
def test_rw_round_trip(op, id, sector, handle, segs) -> None:
    raw = requests.rw(op, id, sector, segs, handle)
    assert len(raw) == blkif.BLKIF_SRING_ENTRY_SIZE
    req = parse_request(raw)
    assert (req.operation, req.id, req.sector_number, req.handle,
            req.nr_segments) == (op, id, sector, handle, len(segs))
    assert req.segments == tuple(Segment(*s) for s in segs)
    assert req.total_sectors == requests.segment_sectors(segs)


def test_read_write_flush_helpers() -> None:
    segs = [(7, 0, 7), (8, 1, 2)]
    assert requests.read(1, 16, segs) == requests.rw(BLKIF_OP_READ, 1, 16, segs)
    assert requests.write(1, 16, segs, handle=51712) == requests.rw(
        BLKIF_OP_WRITE, 1, 16, segs, 51712)
    req = parse_request(requests.flush(3, handle=5))
    assert (req.operation, req.id, req.handle, req.nr_segments, req.segments) == (
        BLKIF_OP_FLUSH_DISKCACHE, 3, 5, 0, ())
    assert check(req, DISK) is None
    fua = parse_request(requests.flush(4, sector=8, segments=[(9, 0, 7)]))
    assert fua.segments == (Segment(9, 0, 7),) and fua.sector_number == 8


def test_discard_round_trip() -> None:
    req = parse_request(requests.discard(11, 4096, 2048, handle=2, secure=True))
    assert (req.operation, req.id, req.sector_number, req.nr_sectors,
            req.handle, req.flag) == (BLKIF_OP_DISCARD, 11, 4096, 2048, 2,
                                       blkif.BLKIF_DISCARD_SECURE)
    assert check(req, DISK) is None
    assert parse_request(requests.discard(1, 0, 8)).flag == 0


@settings(max_examples=50, deadline=None)
@given(segs=st.lists(segment_specs, min_size=1, max_size=1100),
       op=st.sampled_from([BLKIF_OP_READ, BLKIF_OP_WRITE]))
def test_indirect_round_trip(segs, op) -> None:
    pages = requests.indirect_pages(segs)
    assert len(pages) == blkif.indirect_pages(len(segs))
    assert all(len(p) == 4096 for p in pages)
    grefs = list(range(900, 900 + len(pages)))
    req = parse_request(requests.indirect(77, op, 64, len(segs), grefs, handle=9))
    assert (req.operation, req.io_operation, req.id, req.sector_number,
            req.handle, req.nr_segments, req.indirect_grefs) == (
        BLKIF_OP_INDIRECT, op, 77, 64, 9, len(segs), tuple(grefs))
    assert check(req, DISK) is None
    req = with_indirect_segments(req, pages)
    assert req.segments == tuple(Segment(*s) for s in segs)
    assert check(req, DISK) is None


@pytest.mark.parametrize("call", [
    lambda: requests.read(1, 0, []),
    lambda: requests.read(1, 0, [(1, 0, 7)] * 12),
    lambda: requests.read(1, 0, [(1, 3, 2)]),
    lambda: requests.read(1, 0, [(1, 0, 8)]),
    lambda: requests.read(1, 0, [(2**32, 0, 7)]),
    lambda: requests.read(2**64, 0, [(1, 0, 7)]),
    lambda: requests.read(1, -1, [(1, 0, 7)]),
    lambda: requests.write(1, 0, [(1, 0, 7)], handle=0x10000),
    lambda: requests.rw(BLKIF_OP_DISCARD, 1, 0, [(1, 0, 7)]),
    lambda: requests.flush(1, segments=[(1, 0, 7)] * 12),
    lambda: requests.discard(1, 0, -1),
    lambda: requests.indirect(1, BLKIF_OP_FLUSH_DISKCACHE, 0, 1, [1]),
    lambda: requests.indirect(1, BLKIF_OP_READ, 0, 0, []),
    lambda: requests.indirect(1, BLKIF_OP_READ, 0, 513, [1]),
    lambda: requests.indirect(1, BLKIF_OP_READ, 0, 4097, list(range(9))),
    lambda: requests.indirect_pages([]),
])
def test_builders_refuse_out_of_protocol_requests(call) -> None:
    with pytest.raises(ValueError):
        call()


def test_parse_response() -> None:
    raw = make_response(2**64 - 2, BLKIF_OP_WRITE, BLKIF_RSP_ERROR)
    assert parse_response(raw) == Response(2**64 - 2, BLKIF_OP_WRITE, -1)
    assert parse_response(raw + bytes(96)) == parse_response(raw)  # a whole slot
    with pytest.raises(ValueError):
        parse_response(raw[:15])


# -- shadow -------------------------------------------------------------------------

def test_shadow_allocates_and_reuses_ids() -> None:
    shadow = Shadow(4)
    a = shadow.add(BLKIF_OP_READ, 0, segments=[(1, 0, 7)], grants=[1])
    b = shadow.add(BLKIF_OP_WRITE, 8, segments=[(2, 0, 7)], grants=[2])
    assert (a.id, b.id) == (0, 1) and len(shadow) == 2
    assert parse_request(a.request).id == 0 and parse_request(b.request).id == 1
    done = shadow.complete(make_response(0, BLKIF_OP_READ, BLKIF_RSP_OKAY))
    assert done is a and done.status == BLKIF_RSP_OKAY and done.grants == (1,)
    c = shadow.add(BLKIF_OP_READ, 16, segments=[(3, 0, 7)])
    assert c.id == 0  # the id freed last is reused first
    assert parse_request(c.request).sector_number == 16


def test_shadow_full() -> None:
    shadow = Shadow(2)
    shadow.add(BLKIF_OP_FLUSH_DISKCACHE)
    shadow.add(BLKIF_OP_FLUSH_DISKCACHE)
    assert shadow.full
    with pytest.raises(ShadowFull):
        shadow.add(BLKIF_OP_FLUSH_DISKCACHE)
    shadow.complete(Response(1, BLKIF_OP_FLUSH_DISKCACHE, 0))
    assert shadow.add(BLKIF_OP_FLUSH_DISKCACHE).id == 1


def test_malformed_add_records_nothing() -> None:
    shadow = Shadow(2)
    with pytest.raises(ValueError):
        shadow.add(BLKIF_OP_READ, 0, segments=[])
    with pytest.raises(ValueError):
        shadow.add(99)
    assert len(shadow) == 0 and shadow.add(BLKIF_OP_READ, 0, segments=[(1, 0, 0)]).id == 0


@pytest.mark.parametrize("bad_id", [1, 5, 31, 32, 2**63, 2**64 - 1])
def test_unknown_response_id_is_a_protocol_error(bad_id) -> None:
    shadow = Shadow(32)
    shadow.add(BLKIF_OP_READ, 0, segments=[(1, 0, 7)])
    with pytest.raises(BlkfrontProtocolError):
        shadow.complete(make_response(bad_id, BLKIF_OP_READ, BLKIF_RSP_OKAY))
    assert len(shadow) == 1  # nothing was completed


def test_duplicate_response_is_a_protocol_error() -> None:
    shadow = Shadow(8)
    shadow.add(BLKIF_OP_READ, 0, segments=[(1, 0, 7)])
    shadow.complete(make_response(0, BLKIF_OP_READ, BLKIF_RSP_OKAY))
    with pytest.raises(BlkfrontProtocolError):
        shadow.complete(make_response(0, BLKIF_OP_READ, BLKIF_RSP_OKAY))


def test_response_with_another_operation_is_a_protocol_error() -> None:
    shadow = Shadow(8)
    shadow.add(BLKIF_OP_READ, 0, segments=[(1, 0, 7)])
    with pytest.raises(BlkfrontProtocolError):
        shadow.complete(make_response(0, BLKIF_OP_WRITE, BLKIF_RSP_OKAY))
    assert len(shadow) == 1


def test_indirect_response_carries_the_indirect_op() -> None:
    shadow = Shadow(8)
    segs = [(i, 0, 7) for i in range(20)]
    entry = shadow.add(BLKIF_OP_INDIRECT, 32, segments=segs,
                       indirect_op=BLKIF_OP_WRITE, indirect_grefs=[500])
    req = with_indirect_segments(parse_request(entry.request), entry.indirect_pages())
    assert req.segments == tuple(Segment(*s) for s in segs)
    with pytest.raises(BlkfrontProtocolError):
        shadow.complete(Response(entry.id, BLKIF_OP_INDIRECT, 0))
    assert shadow.complete(Response(entry.id, BLKIF_OP_WRITE, 0)) is entry


def test_inflight_for_reissue_after_reconnect() -> None:
    shadow = Shadow(8)
    entries = [shadow.add(BLKIF_OP_WRITE, 8 * i, segments=[(10 + i, 0, 7)],
                          buffers=[f"page{i}"], grants=[10 + i]) for i in range(5)]
    shadow.complete(Response(1, BLKIF_OP_WRITE, 0))
    shadow.complete(Response(3, BLKIF_OP_WRITE, 0))
    late = shadow.add(BLKIF_OP_DISCARD, 100, nr_sectors=8)  # reuses id 3
    assert late.id == 3
    pending = shadow.inflight()
    assert [e.sector_number for e in pending] == [0, 16, 32, 100]  # issue order
    assert pending == [entries[0], entries[2], entries[4], late]
    # Reconnect to a new backend, possibly with another ring size: reissue.
    old = shadow.reset(size=16)
    assert old == pending and len(shadow) == 0 and shadow.size == 16
    for entry in old:
        again = shadow.add(entry.operation, entry.sector_number,
                           segments=[(g + 100, f, l) for g, f, l in entry.segments],
                           nr_sectors=entry.nr_sectors, buffers=entry.buffers,
                           grants=[g + 100 for g in entry.grants])
        req = parse_request(again.request)
        assert req.operation == entry.operation
        assert req.sector_number == entry.sector_number
    assert len(shadow.inflight()) == 4


def test_requests_pass_the_backend_checks() -> None:
    shadow = Shadow(32)
    for entry in [
        shadow.add(BLKIF_OP_READ, 0, segments=[(1, 0, 7)] * 11),
        shadow.add(BLKIF_OP_WRITE, 2000, segments=[(1, 2, 5)]),
        shadow.add(BLKIF_OP_FLUSH_DISKCACHE),
        shadow.add(BLKIF_OP_DISCARD, 64, nr_sectors=64),
    ]:
        assert check(parse_request(entry.request), DISK) is None
