"""hypervisor.public.io.ring against Xen's C macros (io/ring.h, io/blkif.h).

A small C program (compiled here, natively: the ring ABI is the host's
layout as Xen's headers give it) runs one end of a ring, or both, with
ring.h's macros, driven line by line over a pipe; the ring lives in a file
in tmp_path that C and Python both map. Each command answers one line, and
the Python twin of the program (:class:`PyPeer`) answers the same lines
with FrontRing/BackRing, so:

* the same script run by C on a file and by Python on a bytearray must give
  the same transcript and the same bytes, header and entries;
* a C frontend and a Python backend (and the other way round) share one
  ring: each side checks that every entry the other wrote is byte for byte
  what it would have written itself.

Three ring types: ``test`` (req {uint64_t id; uint8_t data[40];}, rsp
{uint64_t id; int16_t status;}), blkif, and ``odd``, whose union is padded
(req {uint8_t b[5];}, rsp {uint32_t v;}: 8-byte entries).

Commands: init START, front, back, put N, push, take, bfinal, respond N,
rpush, collect, ffinal, free, hdr, info, quit.
"""

import ctypes
import mmap
import shutil
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from hypervisor.public.io.ring import (
    RING_IDX,
    SRING_HEADER_SIZE,
    BackRing,
    FrontRing,
    ring_size,
    shared_ring_init,
)

pytestmark = pytest.mark.timeout(60)

XEN_INCLUDE = Path("/usr/include/xen")
PAGE = 4096
M32 = 2**32

C_SOURCE = r"""
#include <stdint.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#define xen_mb()  __sync_synchronize()
#define xen_rmb() __sync_synchronize()
#define xen_wmb() __sync_synchronize()
#include <xen/io/ring.h>
#include <xen/io/blkif.h>

#if KIND == 1
struct test_req { uint64_t id; uint8_t data[40]; };
struct test_rsp { uint64_t id; int16_t status; };
DEFINE_RING_TYPES(test, struct test_req, struct test_rsp);
#define TAG test
typedef struct test_req req_t;
typedef struct test_rsp rsp_t;
static void make_req(req_t *r, uint64_t seq)
{
    r->id = seq;
    for (int j = 0; j < 40; j++)
        r->data[j] = (uint8_t)(seq * 31 + j);
}
static void make_rsp(rsp_t *r, uint64_t seq)
{
    r->id = seq;
    r->status = (int16_t)((int)(seq % 3) - 1);
}
static uint64_t req_seq(const req_t *r) { return r->id; }
static uint64_t rsp_seq(const rsp_t *r) { return r->id; }

#elif KIND == 2
#define TAG blkif
typedef blkif_request_t req_t;
typedef blkif_response_t rsp_t;
static void make_req(req_t *r, uint64_t seq)
{
    r->operation = (seq & 1) ? BLKIF_OP_WRITE : BLKIF_OP_READ;
    r->nr_segments = 1 + seq % BLKIF_MAX_SEGMENTS_PER_REQUEST;
    r->handle = 0x51;
    r->id = seq;
    r->sector_number = seq * 8;
    for (int i = 0; i < r->nr_segments; i++) {
        r->seg[i].gref = (grant_ref_t)(seq * 100 + i);
        r->seg[i].first_sect = i % 8;
        r->seg[i].last_sect = 7;
    }
}
static void make_rsp(rsp_t *r, uint64_t seq)
{
    r->id = seq;
    r->operation = (seq & 1) ? BLKIF_OP_WRITE : BLKIF_OP_READ;
    r->status = seq % 3 == 0 ? BLKIF_RSP_ERROR : BLKIF_RSP_OKAY;
}
static uint64_t req_seq(const req_t *r) { return r->id; }
static uint64_t rsp_seq(const rsp_t *r) { return r->id; }

#elif KIND == 3
struct odd_req { uint8_t b[5]; };
struct odd_rsp { uint32_t v; };
DEFINE_RING_TYPES(odd, struct odd_req, struct odd_rsp);
#define TAG odd
typedef struct odd_req req_t;
typedef struct odd_rsp rsp_t;
static void make_req(req_t *r, uint64_t seq)
{
    for (int j = 0; j < 4; j++)
        r->b[j] = (uint8_t)(seq >> (8 * j));
    r->b[4] = (uint8_t)(seq * 7);
}
static void make_rsp(rsp_t *r, uint64_t seq) { r->v = (uint32_t)seq ^ 0xA5A5A5A5u; }
static uint64_t req_seq(const req_t *r)
{
    return r->b[0] | r->b[1] << 8 | r->b[2] << 16 | (uint32_t)r->b[3] << 24;
}
static uint64_t rsp_seq(const rsp_t *r) { return r->v ^ 0xA5A5A5A5u; }
#endif

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
typedef CAT(TAG, _sring_t) sring_t;
typedef CAT(TAG, _front_ring_t) front_t;
typedef CAT(TAG, _back_ring_t) back_t;
#define CONST_RING_SIZE(tag, sz) __CONST_RING_SIZE(tag, sz) /* expands TAG */

static void fail(const char *what, unsigned long long got, unsigned long long want)
{
    printf("bad %s: got %llu, want %llu\n", what, got, want);
    exit(1);
}

/* Entries are built in zeroed locals and copied whole into the ring, so
 * that padding bytes are zero on both sides. */
static void expect_req(const void *slot, uint64_t seq)
{
    req_t want, copy;
    memset(&want, 0, sizeof(want));
    make_req(&want, seq);
    memcpy(&copy, slot, sizeof(copy));
    if (req_seq(&copy) != seq)
        fail("request", req_seq(&copy), seq);
    if (memcmp(slot, &want, sizeof(want)))
        fail("request bytes of", seq, seq);
}

static void expect_rsp(const void *slot, uint64_t seq)
{
    rsp_t want, copy;
    memset(&want, 0, sizeof(want));
    make_rsp(&want, seq);
    memcpy(&copy, slot, sizeof(copy));
    if (rsp_seq(&copy) != seq)
        fail("response", rsp_seq(&copy), seq);
    if (memcmp(slot, &want, sizeof(want)))
        fail("response bytes of", seq, seq);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s FILE PAGES\n", argv[0]);
        return 2;
    }
    size_t size = (size_t)atoi(argv[2]) * 4096;
    int fd = open(argv[1], O_RDWR);
    if (fd < 0 || ftruncate(fd, size)) {
        perror(argv[1]);
        return 2;
    }
    sring_t *s = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (s == MAP_FAILED) {
        perror("mmap");
        return 2;
    }
    front_t f;
    back_t b;
    uint64_t put_seq = 0, take_seq = 0, answer_seq = 0, got_seq = 0;
    char line[256];
    unsigned long long arg;

    while (fgets(line, sizeof(line), stdin)) {
        if (sscanf(line, "init %llu", &arg) == 1) {
            SHARED_RING_INIT(s);
            s->req_prod = s->rsp_prod = (RING_IDX)arg;
            s->req_event = s->rsp_event = (RING_IDX)arg + 1;
            printf("ok\n");
        } else if (!strcmp(line, "front\n")) {
            FRONT_RING_ATTACH(&f, s, s->req_prod, size);
            printf("size %u\n", RING_SIZE(&f));
        } else if (!strcmp(line, "back\n")) {
            BACK_RING_ATTACH(&b, s, s->rsp_prod, size);
            printf("size %u\n", RING_SIZE(&b));
        } else if (sscanf(line, "put %llu", &arg) == 1) {
            printf("put");
            for (; arg; arg--) {
                if (RING_FULL(&f)) {
                    printf(" full");
                    break;
                }
                req_t req;
                memset(&req, 0, sizeof(req));
                make_req(&req, put_seq++);
                memcpy(RING_GET_REQUEST(&f, f.req_prod_pvt), &req, sizeof(req));
                printf(" %u", f.req_prod_pvt++);
            }
            printf("\n");
        } else if (!strcmp(line, "push\n")) {
            int notify;
            RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&f, notify);
            printf("notify %d\n", notify);
        } else if (!strcmp(line, "take\n")) {
            if (RING_REQUEST_PROD_OVERFLOW(&b, s->req_prod))
                fail("req_prod overflow", s->req_prod, b.rsp_prod_pvt);
            printf("took");
            while (RING_HAS_UNCONSUMED_REQUESTS(&b)) {
                req_t req;
                expect_req(RING_GET_REQUEST(&b, b.req_cons), take_seq);
                RING_COPY_REQUEST(&b, b.req_cons, &req);
                printf(" %llu", (unsigned long long)req_seq(&req));
                b.req_cons++;
                take_seq++;
            }
            printf("\n");
        } else if (!strcmp(line, "bfinal\n")) {
            int work;
            RING_FINAL_CHECK_FOR_REQUESTS(&b, work);
            printf("work %d\n", !!work);
        } else if (sscanf(line, "respond %llu", &arg) == 1) {
            printf("responded");
            for (; arg && answer_seq < take_seq; arg--) {
                rsp_t rsp;
                memset(&rsp, 0, sizeof(rsp));
                make_rsp(&rsp, answer_seq);
                memcpy(RING_GET_RESPONSE(&b, b.rsp_prod_pvt), &rsp, sizeof(rsp));
                printf(" %u", b.rsp_prod_pvt++);
                answer_seq++;
            }
            printf("\n");
        } else if (!strcmp(line, "rpush\n")) {
            int notify;
            RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(&b, notify);
            printf("notify %d\n", notify);
        } else if (!strcmp(line, "collect\n")) {
            if (RING_RESPONSE_PROD_OVERFLOW(&f, s->rsp_prod))
                fail("rsp_prod overflow", s->rsp_prod, f.rsp_cons);
            printf("got");
            while (RING_HAS_UNCONSUMED_RESPONSES(&f)) {
                rsp_t rsp;
                expect_rsp(RING_GET_RESPONSE(&f, f.rsp_cons), got_seq);
                RING_COPY_RESPONSE(&f, f.rsp_cons, &rsp);
                printf(" %llu", (unsigned long long)rsp_seq(&rsp));
                f.rsp_cons++;
                got_seq++;
            }
            printf("\n");
        } else if (!strcmp(line, "ffinal\n")) {
            int work;
            RING_FINAL_CHECK_FOR_RESPONSES(&f, work);
            printf("work %d\n", !!work);
        } else if (!strcmp(line, "free\n")) {
            printf("free %u\n", RING_FREE_REQUESTS(&f));
        } else if (!strcmp(line, "hdr\n")) {
            printf("hdr %u %u %u %u\n", s->req_prod, s->req_event,
                   s->rsp_prod, s->rsp_event);
        } else if (!strcmp(line, "info\n")) {
            printf("info %zu %zu %zu %zu %zu %zu %u %u %u\n",
                   offsetof(sring_t, ring), sizeof(s->ring[0]),
                   _Alignof(union CAT(TAG, _sring_entry)),
                   sizeof(req_t), sizeof(rsp_t), sizeof(RING_IDX),
                   (unsigned)__RING_SIZE(s, 4096),
                   (unsigned)__RING_SIZE(s, 2 * 4096),
                   (unsigned)CONST_RING_SIZE(TAG, 4 * 4096));
        } else if (!strcmp(line, "quit\n")) {
            break;
        } else {
            printf("unknown command %s", line);
            return 2;
        }
        fflush(stdout);
    }
    return 0;
}
"""


# --- the three ring types, as Python sees them ----------------------------

@dataclass(frozen=True)
class Kind:
    name: str
    number: int             # -DKIND=
    req_size: int
    rsp_size: int
    entry_size: int
    make_req: Callable[[int], bytes]
    make_rsp: Callable[[int], bytes]


def _test_req(seq: int) -> bytes:
    return struct.pack("<Q", seq) + bytes((seq * 31 + j) & 0xFF for j in range(40))


def _test_rsp(seq: int) -> bytes:
    return struct.pack("<Qh6x", seq, seq % 3 - 1)


def _blkif_req(seq: int) -> bytes:
    nseg = 1 + seq % 11
    head = struct.pack("<BBH4xQQ", seq & 1, nseg, 0x51, seq, seq * 8)
    segs = b"".join(struct.pack("<IBB2x", (seq * 100 + i) % M32, i % 8, 7)
                    for i in range(nseg))
    return (head + segs).ljust(112, b"\0")


def _blkif_rsp(seq: int) -> bytes:
    return struct.pack("<QBxh4x", seq, seq & 1, -1 if seq % 3 == 0 else 0)


def _odd_req(seq: int) -> bytes:
    return struct.pack("<IB", seq % M32, (seq * 7) & 0xFF)


def _odd_rsp(seq: int) -> bytes:
    return struct.pack("<I", (seq ^ 0xA5A5A5A5) % M32)


KINDS = {
    "test": Kind("test", 1, 48, 16, 48, _test_req, _test_rsp),
    "blkif": Kind("blkif", 2, 112, 16, 112, _blkif_req, _blkif_rsp),
    "odd": Kind("odd", 3, 5, 4, 8, _odd_req, _odd_rsp),
}


# --- the C program and its Python twin -------------------------------------

@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if not XEN_INCLUDE.is_dir():
        pytest.skip(f"needs Debian's libxen-dev ({XEN_INCLUDE})")
    if shutil.which("cc") is None:
        pytest.skip("needs a C compiler (cc) to compile against libxen-dev")
    workdir = tmp_path_factory.mktemp("ring_c")
    source = workdir / "ringc.c"
    source.write_text(C_SOURCE)
    built = {}
    for kind in KINDS.values():
        binary = workdir / f"ring_{kind.name}"
        cc = subprocess.run(
            ["cc", "-std=gnu11", "-Wall", "-Werror", "-D__XEN_TOOLS__",
             f"-DKIND={kind.number}", "-o", str(binary), str(source)],
            capture_output=True, text=True, timeout=50, check=False)
        assert cc.returncode == 0, f"cc failed:\n{cc.stderr}"
        built[kind.name] = binary
    return built


class CPeer:
    """The C program on `path`, one command line in, one line out."""

    def __init__(self, binary: Path, path: Path, pages: int) -> None:
        self.proc = subprocess.Popen(
            [str(binary), str(path), str(pages)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True)

    def __call__(self, command: str) -> str:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline().rstrip("\n")
        assert reply and not reply.startswith(("bad", "unknown")), (
            f"C {command!r}: {reply or f'exited {self.proc.wait()}'}")
        return reply

    def close(self) -> int:
        """End the program (EOF on its stdin); its exit status."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        return self.proc.returncode


class PyPeer:
    """The same commands, answered with FrontRing and BackRing."""

    def __init__(self, kind: Kind, buf) -> None:
        self.kind, self.buf = kind, buf
        self.front: FrontRing | None = None
        self.back: BackRing | None = None
        self.put_seq = self.take_seq = self.answer_seq = self.got_seq = 0

    def _ring(self, cls):
        k = self.kind
        return cls(self.buf, k.req_size, k.rsp_size, k.entry_size)

    @property
    def front_ring(self) -> FrontRing:
        assert self.front is not None, "no front ring yet"
        return self.front

    @property
    def back_ring(self) -> BackRing:
        assert self.back is not None, "no back ring yet"
        return self.back

    def __call__(self, command: str) -> str:
        word, _, arg = command.partition(" ")
        if word == "init":
            shared_ring_init(self.buf)
            start = int(arg)
            struct.pack_into("=4I", self.buf, 0, start, (start + 1) % M32,
                             start, (start + 1) % M32)
            return "ok"
        if word == "front":
            self.front = self._ring(FrontRing)
            return f"size {self.front.size}"
        if word == "back":
            self.back = self._ring(BackRing)
            return f"size {self.back.size}"
        if word == "put":
            out = ["put"]
            for _ in range(int(arg)):
                if self.front_ring.full():
                    out.append("full")
                    break
                out.append(str(self.front_ring.put_request(self.kind.make_req(self.put_seq))))
                self.put_seq += 1
            return " ".join(out)
        if word == "push":
            return f"notify {int(self.front_ring.push_requests_and_check_notify())}"
        if word == "take":
            out = ["took"]
            while self.back_ring.has_unconsumed_requests():
                assert self.back_ring.get_request() == self.kind.make_req(self.take_seq)
                out.append(str(self.take_seq))
                self.take_seq += 1
            return " ".join(out)
        if word == "bfinal":
            return f"work {int(self.back_ring.final_check_for_requests())}"
        if word == "respond":
            out = ["responded"]
            for _ in range(int(arg)):
                if self.answer_seq == self.take_seq:
                    break
                out.append(str(self.back_ring.put_response(self.kind.make_rsp(self.answer_seq))))
                self.answer_seq += 1
            return " ".join(out)
        if word == "rpush":
            return f"notify {int(self.back_ring.push_responses_and_check_notify())}"
        if word == "collect":
            out = ["got"]
            while self.front_ring.has_unconsumed_responses():
                assert self.front_ring.get_response() == self.kind.make_rsp(self.got_seq)
                out.append(str(self.got_seq))
                self.got_seq += 1
            return " ".join(out)
        if word == "ffinal":
            return f"work {int(self.front_ring.final_check_for_responses())}"
        if word == "free":
            return f"free {self.front_ring.free_requests()}"
        if word == "hdr":
            return "hdr " + " ".join(map(str, struct.unpack_from("=4I", self.buf, 0)))
        raise AssertionError(f"unknown command {command!r}")

    def close(self) -> None:
        for ring in (self.front, self.back):
            if ring is not None:
                ring.close()


def zero_file(tmp_path: Path, pages: int) -> Path:
    path = tmp_path / "ring.page"
    path.write_bytes(bytes(pages * PAGE))
    return path


# --- layout ----------------------------------------------------------------

@pytest.mark.parametrize("name", KINDS)
def test_layout_matches_ring_h(programs, tmp_path: Path, name: str) -> None:
    kind = KINDS[name]
    c = CPeer(programs[name], zero_file(tmp_path, 4), 4)
    try:
        info = [int(x) for x in c("info").split()[1:]]
        assert c.close() == 0
    finally:
        c.close()
    offset, entry, align, req, rsp, idx, one, two, four = info
    assert offset == SRING_HEADER_SIZE == 64
    assert (req, rsp, entry) == (kind.req_size, kind.rsp_size, kind.entry_size)
    assert entry % align == 0
    assert idx == ctypes.sizeof(RING_IDX)
    assert [one, two, four] == [ring_size(n * PAGE, entry) for n in (1, 2, 4)]
    if name == "blkif":
        assert [one, two, four] == [32, 64, 128]


# --- the same script on both sides -----------------------------------------

def script(start: int) -> list[str]:
    return [
        f"init {start}", "front", "back", "hdr", "free",
        "put 3", "push", "hdr", "take", "bfinal", "hdr",
        "put 2", "push", "push", "take", "bfinal", "bfinal", "hdr",
        "respond 2", "rpush", "collect", "ffinal", "hdr",
        "respond 1", "rpush", "collect", "collect", "ffinal",
        "respond 9", "rpush", "free", "hdr", "collect", "ffinal", "hdr",
        "put 1000", "put 1", "free", "push", "take", "respond 5", "rpush",
        "put 1000", "push", "bfinal", "take", "respond 1000", "respond 1000",
        "rpush", "ffinal", "collect", "ffinal", "bfinal", "free", "hdr",
    ]


@pytest.mark.parametrize("start", [0, 2**32 - 2, 2**31 - 1])
@pytest.mark.parametrize("pages", [1, 2])
@pytest.mark.parametrize("name", KINDS)
def test_same_script_same_bytes(programs, tmp_path: Path, name: str,
                                pages: int, start: int) -> None:
    """C (macros) on a file and Python on a bytearray, one script: the
    same answers, and the same bytes in the end."""
    path = zero_file(tmp_path, pages)
    c = CPeer(programs[name], path, pages)
    try:
        c_lines = [c(command) for command in script(start)]
        assert c.close() == 0
    finally:
        c.close()
    buf = bytearray(pages * PAGE)
    py = PyPeer(KINDS[name], buf)
    py_lines = [py(command) for command in script(start)]
    py.close()
    assert py_lines == c_lines
    assert any("full" in line for line in c_lines)
    c_buf = path.read_bytes()
    assert c_buf[:16] == buf[:16], "header indexes differ"
    assert c_buf[16:64] == buf[16:64] == bytes(48)
    entry = KINDS[name].entry_size
    for slot in range(ring_size(pages * PAGE, entry)):
        at = 64 + slot * entry
        assert c_buf[at:at + entry] == buf[at:at + entry], f"slot {slot} differs"
    assert c_buf == bytes(buf)


# --- one end in C, the other in Python, sharing the ring ---------------------

def shared(tmp_path: Path, pages: int):
    path = zero_file(tmp_path, pages)
    with open(path, "r+b") as fd:
        shm = mmap.mmap(fd.fileno(), pages * PAGE)
    return path, shm


def header(shm) -> tuple[int, ...]:
    return struct.unpack_from("=4I", shm, 0)


@pytest.mark.parametrize("start", [0, 2**32 - 3])
@pytest.mark.parametrize("pages", [1, 2])
@pytest.mark.parametrize("name", KINDS)
def test_c_front_python_back(programs, tmp_path: Path, name: str, pages: int,
                             start: int) -> None:
    kind = KINDS[name]
    path, shm = shared(tmp_path, pages)
    c = CPeer(programs[name], path, pages)
    back = None
    try:
        assert c(f"init {start}") == "ok"
        size = int(c("front").split()[1])
        back = BackRing(shm, kind.req_size, kind.rsp_size, kind.entry_size)
        assert back.size == size == ring_size(pages * PAGE, kind.entry_size)
        assert (back.req_cons, back.rsp_prod_pvt) == (start, start)
        seq = 0
        batches = [1, 3, size, 2, size - 1, 5, size, 1]
        for rnd, batch in enumerate(batches):
            batch = min(batch, size)
            put = c(f"put {batch}").split()[1:]
            assert put == [str((start + seq + i) % M32) for i in range(batch)]
            # The backend armed req_event (initially, or by its final
            # check at the end of the previous round): C must notify.
            assert c("push") == "notify 1"
            assert c("hdr") == "hdr " + " ".join(map(str, header(shm)))
            assert header(shm)[0] == (start + seq + batch) % M32
            assert back.has_unconsumed_requests() == batch
            for i in range(batch):
                idx = back.req_cons
                at = 64 + (idx & (size - 1)) * kind.entry_size
                assert shm[at:at + kind.req_size] == kind.make_req(seq + i)
                assert back.get_request() == kind.make_req(seq + i)
            if rnd % 2:
                # Respond in two pushes; the front has not armed rsp_event
                # since its last final check, so only the first notifies.
                half = batch // 2
                for i in range(half):
                    back.put_response(kind.make_rsp(seq + i))
                assert back.push_responses_and_check_notify() == (half > 0)
                for i in range(half, batch):
                    back.put_response(kind.make_rsp(seq + i))
                assert back.push_responses_and_check_notify() == (half == 0)
            else:
                for i in range(batch):
                    assert back.put_response(kind.make_rsp(seq + i)) == (
                        start + seq + i) % M32
                assert back.push_responses_and_check_notify()
            assert not back.final_check_for_requests()
            assert header(shm)[1] == (start + seq + batch + 1) % M32
            got = c("collect").split()[1:]
            assert got == [str(seq + i) for i in range(batch)]
            assert c("ffinal") == "work 0"
            assert header(shm)[3] == (start + seq + batch + 1) % M32
            assert c("free") == f"free {size}"
            seq += batch
        # The free-running indexes went past 2**32 for the high start.
        assert header(shm) == ((start + seq) % M32, (start + seq + 1) % M32,
                               (start + seq) % M32, (start + seq + 1) % M32)
        assert c.close() == 0
    finally:
        if back is not None:
            back.close()
        c.close()
        shm.close()


@pytest.mark.parametrize("start", [0, 2**32 - 3])
@pytest.mark.parametrize("pages", [1, 4])
@pytest.mark.parametrize("name", KINDS)
def test_python_front_c_back(programs, tmp_path: Path, name: str, pages: int,
                             start: int) -> None:
    kind = KINDS[name]
    path, shm = shared(tmp_path, pages)
    shared_ring_init(shm)
    struct.pack_into("=4I", shm, 0, start, (start + 1) % M32, start,
                     (start + 1) % M32)
    front = FrontRing(shm, kind.req_size, kind.rsp_size, kind.entry_size)
    c = CPeer(programs[name], path, pages)
    try:
        size = int(c("back").split()[1])
        assert size == front.size
        seq = 0
        for rnd, batch in enumerate([2, size, 1, size - 1, 7, size]):
            batch = min(batch, size)
            for i in range(batch):
                assert front.put_request(kind.make_req(seq + i)) == (
                    start + seq + i) % M32
            assert front.full() == (batch == size)
            assert front.push_requests_and_check_notify()   # back armed
            assert c("take").split()[1:] == [str(seq + i) for i in range(batch)]
            assert c("bfinal") == "work 0"
            assert header(shm)[1] == (start + seq + batch + 1) % M32
            assert c(f"respond {batch}").split()[1:] == [
                str((start + seq + i) % M32) for i in range(batch)]
            assert c("rpush") == "notify 1"                  # front armed
            if rnd == 2:
                # A second push with nothing new never notifies.
                assert c("rpush") == "notify 0"
            assert front.has_unconsumed_responses() == batch
            for i in range(batch):
                idx = front.rsp_cons
                at = 64 + (idx & (size - 1)) * kind.entry_size
                assert shm[at:at + kind.rsp_size] == kind.make_rsp(seq + i)
                assert front.get_response() == kind.make_rsp(seq + i)
            assert not front.final_check_for_responses()
            assert c("hdr") == "hdr " + " ".join(map(str, header(shm)))
            seq += batch
        assert front.req_prod_pvt == front.rsp_cons == (start + seq) % M32
        assert c.close() == 0
    finally:
        front.close()
        c.close()
        shm.close()
