"""Workloads of `pyxen bench evtchn` (an event-channel ping-pong between two
domains) and `pyxen bench blk` (PV block I/O through blkfront, see blk()
at the end).

The bench runner (domains/dom0/bench/evtchn.py) boots a topology with two domains,
``ping`` first and ``pong`` second, and hands them named pipes (FIFOs) on the
kernel command line. Blocking FIFO opens and reads are the only
synchronisation; nothing here sleeps or polls.

  peer=FIFO    pong -> ping: pong's domid
  port=FIFO    ping -> pong: {"domid": ping's domid, "port": the unbound port}
  go=FIFO      runner -> ping: start measuring (the runner writes it once boot
               has completed, so boot work does not disturb the measurement)
  result=FIFO  ping -> runner: JSON {"samples_ns": [...]} (ping opens it first
               thing, so the runner sees EOF at once if ping dies)

Pong binds its end of the channel *before* it reports ready, so when the boot
completes the channel is connected. The ping-pong itself runs entirely on the
upcall threads: ping's handler times the round trip and sends the next ping,
pong's handler sends the notification straight back. No thread switch is
measured inside either domain.
"""

from __future__ import annotations

import json
import random
import threading
import time
import zlib

from domains.kernel.kernel import Kernel


def ping(kernel: Kernel) -> None:
    args = kernel.args
    n = int(args["n"])
    warmup = int(args.get("warmup", "0"))
    total = warmup + n
    # Opened before anything else: if this domain dies, the runner reads EOF.
    result = open(args["result"], "w")
    kernel.ready()  # lets the toolstack create pong

    with open(args["peer"]) as f:  # blocks until pong writes its domid
        pong_domid = int(f.readline())
    port = kernel.events.alloc_unbound(pong_domid)

    samples: list[int] = []
    done = threading.Event()
    send = kernel.events.send
    clock = time.perf_counter_ns
    t0 = [0]

    def on_pong(p: int) -> None:
        now = clock()
        samples.append(now - t0[0])
        if len(samples) >= total:
            done.set()
            return
        t0[0] = clock()
        send(p)

    kernel.events.bind(port, on_pong)
    with open(args["port"], "w") as f:
        f.write(json.dumps({"domid": kernel.domid, "port": port}) + "\n")
    kernel.log.info("bench: channel offered", peer=pong_domid, port=port)

    with open(args["go"]) as f:  # blocks until the runner says go
        f.readline()
    kernel.log.info("bench: measuring", iterations=n, warmup=warmup)
    t0[0] = clock()
    send(port)  # the first ping; every later one is sent by on_pong
    done.wait()
    kernel.log.info("bench: done", round_trips=len(samples))
    result.write(json.dumps({"samples_ns": samples[warmup:]}) + "\n")
    result.close()
    threading.Event().wait()  # stay up until the runner halts the machine


def pong(kernel: Kernel) -> None:
    args = kernel.args
    with open(args["peer"], "w") as f:  # ping is blocked reading it
        f.write(f"{kernel.domid}\n")
    with open(args["port"]) as f:
        offer = json.loads(f.readline())
    send = kernel.events.send
    local = kernel.events.bind_interdomain(offer["domid"], offer["port"],
                                           lambda p: send(p))
    kernel.log.info("bench: channel bound", peer=offer["domid"], port=local)
    kernel.ready()  # the boot completes with the channel connected
    threading.Event().wait()


# -- pyxen bench blk ------------------------------------------------------------------
#
# What the guest (blk() below) and the runner's raw baseline
# (domains/dom0/bench/blk.py) share, so that both sides do exactly the same
# operations: the sizes, the offsets of each operation, the data written.

BLK_SEQ_SIZE = 1 << 20  # bytes per sequential read / write
BLK_RAND_SIZE = 4096    # bytes per random read
BLK_KINDS = ("seq_write", "seq_read", "rand_read")


def blk_offsets(kind: str, start: int, count: int, disk_bytes: int, seed: int) -> list[int]:
    """Byte offsets of operations start..start+count-1 of `kind`.

    Sequential: operation i covers MiB (i mod disk size in MiB), so the disk
    is swept front to back, wrapping around. Random: 4 KiB-aligned offsets
    drawn uniformly over the whole disk by random.Random(seed), the same
    sequence on both sides."""
    if kind in ("seq_read", "seq_write"):
        chunks = disk_bytes // BLK_SEQ_SIZE
        return [(i % chunks) * BLK_SEQ_SIZE for i in range(start, start + count)]
    if kind == "rand_read":
        rng = random.Random(seed)
        blocks = disk_bytes // BLK_RAND_SIZE
        offsets = [rng.randrange(blocks) * BLK_RAND_SIZE for _ in range(start + count)]
        return offsets[start:]
    raise ValueError(f"unknown operation kind {kind!r}")


def blk_pattern(tag: bytes) -> bytes:
    """1 MiB of data to write, different per side (`tag`) so that the runner
    can tell whose write it reads back."""
    unit = (tag + b"-" + bytes(range(256)))[:256].ljust(256, b".")
    return unit * (BLK_SEQ_SIZE // 256)


BLK_GUEST_TAG = b"pyxen-guest"


def blk(kernel: Kernel) -> None:
    """`pyxen bench blk`: time block I/O on xvda through blkfront -> blkback.

    extra: ``result=FIFO go=FIFO seed=N [qd=N] [vdev=xvda]``.

      result=FIFO  guest -> runner, JSON lines: first {"sectors": ...} once
                   the disk is connected, then one reply per command (opened
                   first thing, so the runner sees EOF at once if we die)
      go=FIFO      runner -> guest, JSON lines: {"kind": one of BLK_KINDS,
                   "start": i, "count": n} runs operations start..start+n-1
                   of that kind and replies {"kind", "ns", "offset", "crc"}:
                   the time of the whole batch (time.perf_counter_ns, taken
                   around the loop only: offsets and data are prepared
                   before) and, computed after the clock stopped, the CRC32
                   of the last block read or written and its offset, which
                   the runner checks against the image file. {"kind":
                   "done"} ends the session.
      qd=N         queue depth (default 1): up to N operations in flight, as
                   fio's iodepth: each is submitted with submit_read /
                   submit_write, and once N are in flight the oldest is
                   waited for before the next is submitted; the batch's
                   time ends when the last one is answered.

    Each operation is one request (1 MiB: one indirect request of 256
    segments; 4 KiB: one direct request of one segment).  Its data lives in
    DMA buffers, BlockDevice.buffer(): bytes in the grant window shared with
    the backend, allocated once before any measurement, one per operation
    in flight, so reads land in them and writes leave from them without a
    copy in the guest (random reads use the first 4 KiB of one).  Before a
    batch of writes every buffer is filled with the pattern (outside the
    clock).  Nothing is flushed: the raw side does not fdatasync either, so
    both complete into the host's page cache."""
    from collections import deque

    from frontends.blkfront.bus import BlockBus

    args = kernel.args
    result = open(args["result"], "w")
    kernel.ready()
    disk = BlockBus(kernel).get(args.get("vdev", "xvda"))
    disk_bytes = disk.sectors * 512
    seed = int(args["seed"])
    depth = max(1, int(args.get("qd", "1")))
    pattern = blk_pattern(BLK_GUEST_TAG)
    buffers = [disk.buffer(BLK_SEQ_SIZE) for _ in range(depth)]
    small = [buf.part(0, BLK_RAND_SIZE) for buf in buffers]
    clock = time.perf_counter_ns

    def reply(msg: dict) -> None:
        result.write(json.dumps(msg) + "\n")
        result.flush()

    def run(submit, sectors: list[int], bufs: list) -> int:
        """Time `submit(sector, buffer)` over `sectors`, `depth` in flight;
        returns the index of the buffer of the last operation."""
        inflight: deque = deque()
        slot = 0
        for i, sector in enumerate(sectors):
            if len(inflight) == depth:
                inflight.popleft().wait()
            slot = i % depth
            inflight.append(submit(sector, bufs[slot]))
        while inflight:
            inflight.popleft().wait()
        return slot

    reply({"sectors": disk.sectors})
    kernel.log.info("bench: disk ready", sectors=disk.sectors, queue_depth=depth)
    with open(args["go"]) as go:
        while line := go.readline():
            cmd = json.loads(line)
            kind = cmd["kind"]
            if kind == "done":
                break
            sectors = [off // 512 for off in blk_offsets(kind, cmd["start"], cmd["count"],
                                                         disk_bytes, seed)]
            if kind == "seq_write":
                for buf in buffers:
                    buf.view[:] = pattern
                t0 = clock()
                last = run(disk.submit_write, sectors, buffers)
                ns = clock() - t0
                data = buffers[last].view
            elif kind == "seq_read":
                t0 = clock()
                last = run(disk.submit_read, sectors, buffers)
                ns = clock() - t0
                data = buffers[last].view
            elif kind == "rand_read":
                t0 = clock()
                last = run(disk.submit_read, sectors, small)
                ns = clock() - t0
                data = small[last].view
            else:
                raise ValueError(f"unknown command {cmd!r}")
            reply({"kind": kind, "ns": ns, "offset": sectors[-1] * 512 if sectors else 0,
                   "crc": zlib.crc32(data) if sectors else 0})
    kernel.log.info("bench: done")
    result.close()
    threading.Event().wait()  # stay up until the runner halts the machine
