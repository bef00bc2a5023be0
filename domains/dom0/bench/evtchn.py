"""`pyxen bench evtchn`: event-channel round trip vs. a raw ZeroMQ round trip.

The pyxen side boots a throw-away machine (its own short run directory under
/tmp) with two domains running domains/guest/bench_workloads.py: ``ping``
notifies ``pong`` over an interdomain event channel, pong notifies back, and
ping times each round trip (domain -> other domain's upcall handler and
back: each send rings the peer's doorbell end, which the hypervisor handed
both when pong bound the channel, domains/kernel/doorbell.py).

The baseline is what the same hardware does without pyxen in the way: two
processes (the second a ``multiprocess.Process``) bouncing a 4-byte message
over a ZeroMQ ipc:// PAIR socket, the goal's reference. A second baseline
bounces it over a connected pair of Unix datagram sockets, what a doorbell
is, to show what pyxen adds to it. All sides use the same number of
round trips, the same warm-up and the same clock (time.perf_counter_ns), and
their statistics are computed by the same code.
"""

from __future__ import annotations

import json
import os
import select
import time
from pathlib import Path

from domains.dom0.bench.common import (
    BenchError,
    Progress,
    boot,
    execute,
    format_table,
    halt,
    reap_children,
    summarize,
)

GOAL_RATIO = 1.5


# -- the raw baseline -----------------------------------------------------------


class _ZmqPair:
    """One end of the ZeroMQ baseline: a PAIR socket over ipc://. Made
    after the fork: a context, with its I/O thread, must not cross one
    (the echo's connect waits for the bind by itself)."""

    before_fork = False

    def __init__(self, tmp: Path, server: bool) -> None:
        import zmq

        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PAIR)
        self.sock.setsockopt(zmq.LINGER, 0)
        endpoint = f"ipc://{tmp}/raw.sock"
        self.sock.bind(endpoint) if server else self.sock.connect(endpoint)
        self.send, self.recv = self.sock.send, self.sock.recv

    def poll(self, timeout_s: float) -> bool:
        return bool(self.sock.poll(int(timeout_s * 1000)))

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


class _UnixPair:
    """One end of the datagram baseline: a connected Unix datagram socket
    pair, as a doorbell's two ends are. Both ends are made before the fork
    (the echo inherits its own)."""

    before_fork = True
    _theirs = None  # the echo's end, made with the timed one

    def __init__(self, tmp: Path, server: bool) -> None:
        import socket

        self.server = server
        if server:
            self.sock, _UnixPair._theirs = socket.socketpair(socket.AF_UNIX,
                                                             socket.SOCK_DGRAM)
        else:
            self.sock = _UnixPair._theirs
        self.send, self.recv = self.sock.send, lambda: self.sock.recv(64)

    def poll(self, timeout_s: float) -> bool:
        return bool(select.select([self.sock], [], [], timeout_s)[0])

    def close(self) -> None:
        self.sock.close()
        if self.server and _UnixPair._theirs is not None:
            _UnixPair._theirs.close()
            _UnixPair._theirs = None


TRANSPORTS = {"zmq": _ZmqPair, "unix": _UnixPair}


def _echo(kind: str, tmp: Path, total: int) -> None:
    """The baseline's second process: send every message straight back."""
    end = TRANSPORTS[kind](tmp, server=False)
    try:
        end.send(b"hi")  # bound: the timed side may start
        for _ in range(total):
            end.send(end.recv())
    finally:
        end.close()


def raw_round_trips(kind: str, tmp: Path, n: int, warmup: int) -> list[int]:
    """Round trips of a 4-byte message to a second process and back over
    the `kind` transport, after `warmup` untimed ones."""
    import multiprocess

    total = warmup + n
    transport = TRANSPORTS[kind]
    end = transport(tmp, server=True) if transport.before_fork else None
    # "fork" rather than "spawn" starts no resource-tracker process.
    child = multiprocess.get_context("fork").Process(
        target=_echo, args=(kind, tmp, total), name="pyxen-bench-echo", daemon=True)
    try:
        child.start()
        if end is None:
            end = transport(tmp, server=True)
        # Bounded, so a dead child cannot hang us; the round trips after
        # it are plain blocking ones, timed like the pyxen ones.
        if not end.poll(60):
            raise BenchError("the baseline's echo process did not start")
        end.recv()
        clock = time.perf_counter_ns
        send, recv, msg = end.send, end.recv, b"ping"
        samples = []
        for _ in range(total):
            t0 = clock()
            send(msg)
            recv()
            samples.append(clock() - t0)
    finally:
        if end is not None:
            end.close()
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
            child.join()
    return samples[warmup:]


# -- the pyxen side --------------------------------------------------------------


TOPOLOGY = """\
# Generated by `pyxen bench evtchn`.
[platform]
name = "virt"
pcpus = 2
memory = 1024

[dom0]
memory = 256
vcpus = 1

[domain.bench-ping]
memory = 64
vcpus = 1
workload = "domains.guest.bench_workloads:ping"
extra = "{ping_extra}"
bind = {binds}

[domain.bench-pong]
memory = 64
vcpus = 1
workload = "domains.guest.bench_workloads:pong"
extra = "{pong_extra}"
bind = {binds}
"""


def _read_until_eof(fd: int, deadline: float) -> bytes:
    """Read a FIFO until its writer closes it; waits on the fd, never polls."""
    data = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BenchError("timed out waiting for the ping domain's results")
        readable, _, _ = select.select([fd], [], [], left)
        if not readable:
            continue  # the deadline check above ends it
        chunk = os.read(fd, 65536)
        if not chunk:
            return bytes(data)
        data += chunk


def pyxen_evtchn(tmp: Path, n: int, warmup: int, progress: Progress) -> list[int]:
    run_dir = tmp / "run"
    fifos = {name: tmp / f"{name}.fifo" for name in ("peer", "port", "go", "result")}
    for path in fifos.values():
        os.mkfifo(path)
        os.chmod(path, 0o666)  # the domains' own uids use them (tmp is 0700)
    ping_extra = (f"n={n} warmup={warmup} peer={fifos['peer']} port={fifos['port']} "
                  f"go={fifos['go']} result={fifos['result']}")
    pong_extra = f"peer={fifos['peer']} port={fifos['port']}"
    topology = tmp / "bench.toml"
    binds = "[" + ", ".join(f'"{p}"' for p in fifos.values()) + "]"
    topology.write_text(TOPOLOGY.format(ping_extra=ping_extra, pong_extra=pong_extra,
                                        binds=binds))

    # Both FIFO ends the runner owns are opened without blocking: the result
    # FIFO for reading (ping opens it for writing first thing, so its death
    # shows up here as EOF), the go FIFO read-write so that the "go" line
    # stays buffered in it until ping reads it.
    result_fd = os.open(fifos["result"], os.O_RDONLY | os.O_NONBLOCK)
    go_fd = os.open(fifos["go"], os.O_RDWR)
    try:
        boot(run_dir, topology, progress)
        progress(f"measuring {warmup} + {n} event-channel round trips ...")
        os.write(go_fd, b"go\n")
        raw = _read_until_eof(result_fd, time.monotonic() + 60 + n / 100)
    finally:
        os.close(go_fd)
        os.close(result_fd)
    if not raw:
        logs = run_dir / "logs"
        raise BenchError(f"the ping domain ended without results (see {logs})")
    samples = json.loads(raw)["samples_ns"]
    if len(samples) != n:
        raise BenchError(f"the ping domain returned {len(samples)} samples, expected {n}")
    return samples


# -- the command -------------------------------------------------------------------


def format_report(report: dict) -> str:
    rows = [("pyxen event channel", report["pyxen_evtchn_rtt_us"]),
            ("raw zmq ipc (PAIR)", report["raw_zmq_rtt_us"]),
            ("raw unix datagrams", report["raw_unix_rtt_us"])]
    lines = [(f"Round trip, {report['iterations']} iterations "
             f"(after {report['warmup']} warm-up), µs:"),
             *format_table(("median", "p99", "mean"),
                           [(name, (s["median"], s["p99"], s["mean"])) for name, s in rows])]
    ratio, goal = report["ratio_median"], report["goal_ratio"]
    verdict = "met" if report["goal_met"] else "NOT met"
    lines.append(f"  ratio pyxen / raw zmq (median): {ratio:.2f}x  "
                 f"(goal: at most {goal}x: {verdict})")
    lines.append(f"  ratio pyxen / raw unix datagrams (median): "
                 f"{report['ratio_unix_median']:.2f}x  (pyxen's doorbells are these)")
    return "\n".join(lines)


def measure(tmp: Path, n: int, warmup: int, progress: Progress) -> dict:
    try:
        pyxen_samples = pyxen_evtchn(tmp, n, warmup, progress)
    finally:
        halt(tmp / "run")
        reap_children()
    progress(f"measuring {warmup} + {n} raw zmq round trips ...")
    raw_stats = summarize(raw_round_trips("zmq", tmp, n, warmup))
    progress(f"measuring {warmup} + {n} raw unix datagram round trips ...")
    unix_stats = summarize(raw_round_trips("unix", tmp, n, warmup))

    pyxen_stats = summarize(pyxen_samples)
    ratio = round(pyxen_stats["median"] / raw_stats["median"], 4)
    return {"iterations": n, "warmup": warmup,
            "pyxen_evtchn_rtt_us": pyxen_stats, "raw_zmq_rtt_us": raw_stats,
            "raw_unix_rtt_us": unix_stats,
            "ratio_median": ratio,
            "ratio_unix_median": round(pyxen_stats["median"] / unix_stats["median"], 4),
            "goal_ratio": GOAL_RATIO, "goal_met": ratio <= GOAL_RATIO}


def run_bench(args) -> int:
    return execute("evtchn", args, measure, format_report)
