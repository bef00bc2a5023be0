"""blkback's I/O on a real (temporary) file, with bytearray pages as grants."""

import errno
import os

import pytest

from backends.blkback import io as blkio
from backends.blkback.io import perform
from backends.blkback.validate import DiskInfo, Request, Segment, Segments, check
from hypervisor.public.io.blkif import (
    BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE,
    BLKIF_OP_INDIRECT,
    BLKIF_OP_READ,
    BLKIF_OP_WRITE,
    BLKIF_OP_WRITE_BARRIER,
    BLKIF_RSP_EOPNOTSUPP,
    BLKIF_RSP_ERROR,
    BLKIF_RSP_OKAY,
)

pytestmark = pytest.mark.timeout(60)

SECTORS = 256
PAGE = 4096


@pytest.fixture
def disk_fd(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(range(256)) * (SECTORS * 2))  # 512 * SECTORS bytes
    fd = os.open(path, os.O_RDWR)
    yield fd
    os.close(fd)


def contents(fd: int) -> bytes:
    return os.pread(fd, SECTORS * 512 + 1, 0)


def rw(op, sector, segs, id=1) -> Request:
    segments = Segments.of([Segment(g, f, l) for g, f, l in segs])
    return Request(op, id, sector_number=sector, nr_segments=len(segments),
                   segments=segments)


def pages(n: int, fill: int | None = None) -> list[bytearray]:
    return [bytearray([fill if fill is not None else (i + 1)] * PAGE) for i in range(n)]


def views(bufs) -> list[memoryview]:
    return [memoryview(b) for b in bufs]


def test_read_whole_pages(disk_fd) -> None:
    bufs = pages(2, 0)
    req = rw(BLKIF_OP_READ, 8, [(1, 0, 7), (2, 0, 7)])
    assert check(req, DiskInfo(sectors=SECTORS)) is None
    assert perform(req, views(bufs), disk_fd) == BLKIF_RSP_OKAY
    assert bytes(bufs[0] + bufs[1]) == contents(disk_fd)[8 * 512:24 * 512]


def test_write_partial_pages(disk_fd) -> None:
    before = contents(disk_fd)
    bufs = pages(3)
    # 2 sectors from the middle of page 0, 1 from the end of page 1, 3 from page 2
    req = rw(BLKIF_OP_WRITE, 100, [(1, 3, 4), (2, 7, 7), (3, 0, 2)])
    assert perform(req, views(bufs), disk_fd) == BLKIF_RSP_OKAY
    after = contents(disk_fd)
    expected = bytes([1] * 1024 + [2] * 512 + [3] * 1536)
    assert after[100 * 512:106 * 512] == expected
    assert after[:100 * 512] == before[:100 * 512]
    assert after[106 * 512:] == before[106 * 512:]


def test_read_partial_pages_leaves_the_rest_of_the_page(disk_fd) -> None:
    bufs = pages(1, 0xEE)
    assert perform(rw(BLKIF_OP_READ, 3, [(1, 2, 5)]), views(bufs), disk_fd) == BLKIF_RSP_OKAY
    data = contents(disk_fd)
    assert bufs[0][:1024] == bytes([0xEE] * 1024)
    assert bufs[0][1024:3072] == data[3 * 512:7 * 512]
    assert bufs[0][3072:] == bytes([0xEE] * 1024)


def test_write_then_read_back(disk_fd) -> None:
    src = [bytearray(os.urandom(PAGE)) for _ in range(11)]
    segs = [(i, 0, 7) for i in range(11)]
    assert perform(rw(BLKIF_OP_WRITE, 40, segs), views(src), disk_fd) == BLKIF_RSP_OKAY
    dst = pages(11, 0)
    assert perform(rw(BLKIF_OP_READ, 40, segs), views(dst), disk_fd) == BLKIF_RSP_OKAY
    assert dst == src


def test_indirect_with_more_segments_than_iov_max(tmp_path) -> None:
    count = 1500  # > IOV_MAX (1024): the transfer is split
    path = tmp_path / "big.img"
    path.write_bytes(bytes(count * 512))
    fd = os.open(path, os.O_RDWR)
    try:
        src = [bytearray([i % 251] * PAGE) for i in range(count)]
        segs = Segments.of([Segment(i, i % 8, i % 8) for i in range(count)])
        write = Request(BLKIF_OP_INDIRECT, 5, nr_segments=count,
                        segments=segs, indirect_op=BLKIF_OP_WRITE)
        assert perform(write, views(src), fd) == BLKIF_RSP_OKAY
        data = os.pread(fd, count * 512, 0)
        assert all(data[i * 512:(i + 1) * 512] == bytes([i % 251] * 512)
                   for i in range(count))
        dst = [bytearray(PAGE) for _ in range(count)]
        read = Request(BLKIF_OP_INDIRECT, 6, nr_segments=count, segments=segs,
                       indirect_op=BLKIF_OP_READ)
        assert perform(read, views(dst), fd) == BLKIF_RSP_OKAY
        assert all(dst[i][(i % 8) * 512:(i % 8 + 1) * 512] == bytes([i % 251] * 512)
                   for i in range(count))
    finally:
        os.close(fd)


def test_short_transfers_are_continued(disk_fd, monkeypatch) -> None:
    real_preadv, real_pwritev = os.preadv, os.pwritev

    def short(real):
        def call(fd, buffers, offset):
            budget, clipped = 700, []
            for b in buffers:
                if budget <= 0:
                    break
                clipped.append(b[:budget])
                budget -= len(clipped[-1])
            return real(fd, clipped, offset)
        return call

    monkeypatch.setattr(os, "preadv", short(real_preadv))
    monkeypatch.setattr(os, "pwritev", short(real_pwritev))
    src = [bytearray(os.urandom(PAGE)) for _ in range(3)]
    segs = [(1, 1, 7), (2, 0, 7), (3, 0, 4)]
    assert perform(rw(BLKIF_OP_WRITE, 10, segs), views(src), disk_fd) == BLKIF_RSP_OKAY
    dst = pages(3, 0)
    assert perform(rw(BLKIF_OP_READ, 10, segs), views(dst), disk_fd) == BLKIF_RSP_OKAY
    assert dst[0][512:] == src[0][512:] and dst[1] == src[1]
    assert dst[2][:2560] == src[2][:2560]


def test_flush_is_durable_before_acknowledged(disk_fd, monkeypatch) -> None:
    calls: list[int] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    flush = Request(BLKIF_OP_FLUSH_DISKCACHE, 3)
    assert perform(flush, [], disk_fd) == BLKIF_RSP_OKAY
    assert calls == [disk_fd]
    # A flush with data (Linux's FUA write) writes then syncs.
    bufs = pages(1, 0x5A)
    fua = rw(BLKIF_OP_FLUSH_DISKCACHE, 2, [(1, 0, 1)])
    assert perform(fua, views(bufs), disk_fd) == BLKIF_RSP_OKAY
    assert calls == [disk_fd, disk_fd]
    assert contents(disk_fd)[1024:2048] == bytes([0x5A] * 1024)
    # Plain writes are not synced unless asked for.
    assert perform(rw(BLKIF_OP_WRITE, 0, [(1, 0, 0)]), views(bufs), disk_fd) == BLKIF_RSP_OKAY
    assert len(calls) == 2
    assert perform(rw(BLKIF_OP_WRITE, 0, [(1, 0, 0)]), views(bufs), disk_fd,
                   durable=True) == BLKIF_RSP_OKAY
    assert len(calls) == 3


def test_failed_flush_is_an_error(disk_fd, monkeypatch) -> None:
    def fail(fd):
        raise OSError(errno.EIO, "disk gone")
    monkeypatch.setattr(os, "fdatasync", fail)
    assert perform(Request(BLKIF_OP_FLUSH_DISKCACHE, 3), [], disk_fd) == BLKIF_RSP_ERROR


def _discard_and_check(fd) -> None:
    before = contents(fd)
    req = Request(BLKIF_OP_DISCARD, 4, sector_number=16, nr_sectors=24)
    assert perform(req, [], fd) == BLKIF_RSP_OKAY
    after = contents(fd)
    assert len(after) == len(before)  # KEEP_SIZE
    assert after[16 * 512:40 * 512] == bytes(24 * 512)
    assert after[:16 * 512] == before[:16 * 512]
    assert after[40 * 512:] == before[40 * 512:]


def test_discard_punches_a_hole(disk_fd) -> None:
    _discard_and_check(disk_fd)


def test_discard_without_fallocate_writes_zeros(disk_fd, monkeypatch) -> None:
    monkeypatch.setattr(blkio, "_fallocate", None)
    _discard_and_check(disk_fd)


def test_discard_when_punching_unsupported_writes_zeros(disk_fd, monkeypatch) -> None:
    import ctypes

    def unsupported(fd, mode, offset, length):
        ctypes.set_errno(errno.EOPNOTSUPP)
        return -1
    monkeypatch.setattr(blkio, "_fallocate", unsupported)
    _discard_and_check(disk_fd)


def test_empty_discard_is_okay(disk_fd) -> None:
    before = contents(disk_fd)
    assert perform(Request(BLKIF_OP_DISCARD, 4, sector_number=3), [], disk_fd) == BLKIF_RSP_OKAY
    assert contents(disk_fd) == before


def test_bad_fd_is_an_error(tmp_path) -> None:
    fd = os.open(tmp_path / "gone", os.O_RDWR | os.O_CREAT)
    os.close(fd)  # fd is now closed: EBADF
    bufs = views(pages(1))
    assert perform(rw(BLKIF_OP_READ, 0, [(1, 0, 7)]), bufs, fd) == BLKIF_RSP_ERROR
    assert perform(rw(BLKIF_OP_WRITE, 0, [(1, 0, 7)]), bufs, fd) == BLKIF_RSP_ERROR
    assert perform(Request(BLKIF_OP_FLUSH_DISKCACHE, 1), [], fd) == BLKIF_RSP_ERROR
    assert perform(Request(BLKIF_OP_DISCARD, 1, nr_sectors=8), [], fd) == BLKIF_RSP_ERROR


def test_read_only_fd_refuses_writes(tmp_path) -> None:
    path = tmp_path / "ro.img"
    path.write_bytes(bytes(4096))
    fd = os.open(path, os.O_RDONLY)
    try:
        bufs = views(pages(1))
        assert perform(rw(BLKIF_OP_WRITE, 0, [(1, 0, 7)]), bufs, fd) == BLKIF_RSP_ERROR
        assert perform(rw(BLKIF_OP_READ, 0, [(1, 0, 7)]), bufs, fd) == BLKIF_RSP_OKAY
    finally:
        os.close(fd)


def test_read_past_end_of_file_is_an_error(tmp_path) -> None:
    path = tmp_path / "short.img"
    path.write_bytes(bytes(1024))
    fd = os.open(path, os.O_RDWR)
    try:
        assert perform(rw(BLKIF_OP_READ, 0, [(1, 0, 7)]), views(pages(1)), fd) == BLKIF_RSP_ERROR
    finally:
        os.close(fd)


def test_page_problems(disk_fd) -> None:
    readonly = [memoryview(bytes(PAGE))]
    assert perform(rw(BLKIF_OP_READ, 0, [(1, 0, 7)]), readonly, disk_fd) == BLKIF_RSP_ERROR
    assert perform(rw(BLKIF_OP_WRITE, 0, [(1, 0, 7)]), readonly, disk_fd) == BLKIF_RSP_OKAY
    small = [memoryview(bytearray(1024))]
    assert perform(rw(BLKIF_OP_READ, 0, [(1, 0, 7)]), small, disk_fd) == BLKIF_RSP_ERROR
    with pytest.raises(ValueError):
        perform(rw(BLKIF_OP_READ, 0, [(1, 0, 7)]), [], disk_fd)
    with pytest.raises(ValueError):
        perform(Request(BLKIF_OP_INDIRECT, 1, nr_segments=1, segments=None,
                        indirect_op=BLKIF_OP_READ), [], disk_fd)


def test_unperformed_operations(disk_fd) -> None:
    assert perform(Request(BLKIF_OP_WRITE_BARRIER, 1), [], disk_fd) == BLKIF_RSP_EOPNOTSUPP
    assert perform(Request(200, 1), [], disk_fd) == BLKIF_RSP_EOPNOTSUPP
