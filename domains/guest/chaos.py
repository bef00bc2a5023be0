"""The guests' side of `pyxen chaos`: verifying workloads that report, on a
named pipe, the moments the runner needs to time recoveries.

Kernel command line (set by the runner):
  report=FIFO   guest -> runner, JSON lines (opened first: EOF = the guest died)
  control=FIFO  runner -> guest: "stop" ends the run
  slots=N       disk slots of 4 KiB each disk cycles over
  peer=IP       (optional) the guest probed over the PV network

Per disk, one thread writes self-describing blocks (domains/guest/chaos_blocks)
to slot n % slots, n = 0, 1, 2 ..., flushes every 16 writes, and every 8
writes reads back a random written slot and checks it holds the last write
there. Each time a write completes through a backend other than the previous
one, it reports {"ev": "blk", "t": CLOCK_MONOTONIC, "backend": domid}.

Over the network, a probe datagram goes to the peer's echo port every 5 ms;
the first answer after a silence reports {"ev": "net", "t", "sent"}.

On "stop" each disk finishes, flushes, and reports {"ev": "done", "top": the
last acknowledged write}; the runner then checks every slot of the image.
Anything the block API raises is reported as {"ev": "error"}: the guest must
see pauses, never errors.
"""

from __future__ import annotations

import json
import random
import socket
import struct
import threading
import time

from domains.guest import chaos_blocks as blocks
from domains.guest.devices import start_frontends
from domains.guest.workloads import ECHO_PORT, udp_echo
from domains.kernel.kernel import Kernel

FLUSH_EVERY = 16
CHECK_EVERY = 8
PROBE_INTERVAL = 0.005  # seconds between network probes
SILENCE = 0.03  # no answer for this long: the next answer ends an outage
PROBE = struct.Struct("<Qd")  # sequence, CLOCK_MONOTONIC when sent


class Reporter:
    def __init__(self, path: str, guest: str) -> None:
        self.file = open(path, "w")
        self.guest = guest
        self.lock = threading.Lock()

    def __call__(self, **event) -> None:
        line = json.dumps({"guest": self.guest, **event}) + "\n"
        with self.lock:
            self.file.write(line)
            self.file.flush()


def verify(kernel: Kernel) -> None:
    args = kernel.args
    report = Reporter(args["report"], kernel.name)  # first: EOF tells the runner
    kernel.ready()
    disks, nets = start_frontends(kernel)
    stop = threading.Event()
    slots = int(args.get("slots", "2048"))
    names = [n for n in args.get("disks", "xvda").split("+") if n]
    workers = []
    for name in names:
        disk = disks.get(name)
        worker = threading.Thread(target=disk_worker, name=f"chaos-{name}",
                                  args=(disk, name, blocks.tag_of(kernel.name), slots,
                                        report, stop, random.Random(name)))
        worker.start()
        workers.append(worker)
    if "peer" in args and nets.wait_up(0, timeout=10):
        threading.Thread(target=udp_echo, name="udp-echo", daemon=True).start()
        threading.Thread(target=probe, name="chaos-probe", daemon=True,
                         args=(args["peer"], report, stop)).start()
    report(ev="ready", disks=names)
    with open(args["control"]) as control:
        for line in control:
            if line.strip() == "stop":
                break
    stop.set()
    for worker in workers:
        worker.join()
    report(ev="stopped")
    threading.Event().wait()


def disk_worker(disk, name: str, tag: int, slots: int, report: Reporter,
                stop: threading.Event, rng: random.Random) -> None:
    n, backend, reads, bad = 0, None, 0, 0
    try:
        while not stop.is_set():
            slot = n % slots
            before = disk.device.backend_id
            disk.write(slot * blocks.SECTORS, blocks.encode(tag, slot, n))
            now = time.monotonic()
            # Attributed to a backend only if no reconnect happened around
            # the write: the answer then surely came from that backend.
            if disk.device.backend_id == before != backend:
                report(ev="blk", disk=name, t=now, backend=before, seq=n)
                backend = before
            n += 1
            if n % FLUSH_EVERY == 0:
                disk.flush()
            if n % CHECK_EVERY == 0:
                check = rng.randrange(min(n, slots))
                found = blocks.decode(disk.read(check * blocks.SECTORS, blocks.SECTORS))
                reads += 1
                expected = blocks.latest(n - 1, check, slots)
                if not found.intact or found.tag != tag or found.seq != expected:
                    bad += 1
                    report(ev="bad-read", disk=name, slot=check, expected=expected,
                           found=found.seq if found.intact else "corrupt")
        disk.flush()
    except Exception as exc:  # the block API must never fail: say how it did
        report(ev="error", disk=name, error=f"{type(exc).__name__}: {exc}", top=n - 1)
        return
    report(ev="done", disk=name, top=n - 1, slots=slots, reads=reads, bad_reads=bad)


def probe(peer: str, report: Reporter, stop: threading.Event) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((peer, ECHO_PORT))

    def send() -> None:
        seq = 0
        while not stop.wait(PROBE_INTERVAL):
            try:
                sock.send(PROBE.pack(seq, time.monotonic()))
            except OSError:
                pass  # no route while the link is down: a lost probe
            seq += 1

    threading.Thread(target=send, name="chaos-send", daemon=True).start()
    last = None
    while not stop.is_set():
        try:
            data = sock.recv(64)
        except OSError:
            continue  # ICMP unreachable while the peer's link is down
        now = time.monotonic()
        if len(data) != PROBE.size:
            continue
        _, sent = PROBE.unpack(data)
        if last is None or now - last > SILENCE:
            report(ev="net", t=now, sent=sent, silent_since=last)
        last = now
