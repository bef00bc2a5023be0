"""What every `pyxen bench` shares.

- statistics: the warm-up length and the per-round-trip summaries, computed by
  the same code for the pyxen side and for the raw baseline;
- a throw-away machine: its own short run directory under /tmp (unix socket
  paths must stay short), booted with `pyxen boot --detach`, halted with
  `pyxen halt`, and every pyxen process it leaves reaped by us as subreaper;
- `execute()`: the frame of a bench command (subreaper, temp dir, errors,
  cleanup, JSON or human output);
- `format_table()`: the aligned tables of the human reports.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
BOOT_TIMEOUT = 120  # seconds; the boot CLI waits for every domain's kernel
HALT_TIMEOUT = 90

Progress = Callable[[str], None]


class BenchError(Exception):
    pass


def warmup_for(n: int) -> int:
    """Round trips run (and discarded) before the measured ones, on both sides."""
    return min(500, max(50, n // 4))


# -- statistics ---------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def summarize(samples_ns: list[int]) -> dict[str, float]:
    """median, p99 (nearest rank) and mean, in µs rounded to 0.001."""
    if not samples_ns:
        raise BenchError("no samples")
    return {"median": round(statistics.median(samples_ns) / 1000, 3),
            "p99": round(percentile(samples_ns, 99) / 1000, 3),
            "mean": round(statistics.fmean(samples_ns) / 1000, 3)}


def ops_per_s(samples_ns: list[int]) -> float:
    """Sequential round trips per second: the count over the summed round trip
    times (each op starts when the previous one has been answered)."""
    total = sum(samples_ns)
    if not samples_ns or total <= 0:
        raise BenchError("no samples")
    return len(samples_ns) * 1e9 / total


# -- a throw-away machine ------------------------------------------------------------


def cli(run_dir: Path, *argv: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "domains.dom0.cli", "--run-dir",
                           str(run_dir), *argv],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout)


#: Extra `pyxen boot` arguments for every machine a benchmark boots: the
#: `--no-sandbox` of `pyxen bench/chaos --no-sandbox`, for comparing.
BOOT_ARGS: list[str] = []


def boot(run_dir: Path, topology: Path, progress: Progress) -> None:
    """`pyxen boot TOPOLOGY --detach`: returns once every domain runs."""
    progress(f"booting a pyxen machine in {run_dir} ...")
    try:
        proc = cli(run_dir, "boot", str(topology), "--detach", *BOOT_ARGS,
                   timeout=BOOT_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise BenchError(f"boot did not complete within {BOOT_TIMEOUT}s") from None
    if proc.returncode != 0:
        why = (proc.stderr.strip() or proc.stdout.strip()
               or f"boot exited with status {proc.returncode}")
        raise BenchError(why.removeprefix("pyxen: "))


def halt(run_dir: Path) -> None:
    if not (run_dir / "hypervisor.pid").exists():
        return
    try:
        cli(run_dir, "halt", timeout=HALT_TIMEOUT)
    except subprocess.TimeoutExpired:
        pass  # reap_children below kills what is left


def reap_children(timeout: float = 30.0) -> None:
    """Collect the pyxen processes we inherited as subreaper: the hypervisor,
    and any domain that outlived it. One still running (after a halt that
    failed) gets what is left of `timeout`, waited for on its pidfd, then
    SIGKILL. Zombies of any other child are collected too."""
    import psutil

    deadline = time.monotonic() + timeout
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid:
            continue
        waited = False
        for child in psutil.Process().children():
            try:
                if "pyxen:" not in " ".join(child.cmdline()):
                    continue
                fd = os.pidfd_open(child.pid)
            except psutil.ZombieProcess:
                waited = True  # it just ended: the next waitpid collects it
                continue
            except (psutil.Error, ProcessLookupError):
                continue
            try:
                left = max(0.0, deadline - time.monotonic())
                if not select.select([fd], [], [], left)[0]:
                    try:
                        signal.pidfd_send_signal(fd, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    select.select([fd], [], [])
                waited = True
            finally:
                os.close(fd)
        if not waited:
            return  # only children that are not pyxen's remain, still running


def become_subreaper() -> None:
    """The detached hypervisor is re-parented to us when the boot CLI exits, so
    that we can reap it (and anything it leaves) after the halt."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER): "
                      + os.strerror(ctypes.get_errno()))


# -- the command frame -----------------------------------------------------------------


def execute(what: str, args, measure: Callable[[Path, int, int, Progress], dict],
            format_report: Callable[[dict], str]) -> int:
    """Run one bench: `measure(tmp, n, warmup, progress)` returns the report.

    `tmp` is a fresh short directory under /tmp (the machine's run directory
    is `tmp / "run"`; --run-dir from the command line is ignored, as unix
    socket paths must stay short). It is removed afterwards unless the bench
    failed and the machine left logs that say why. Every pyxen process left is
    reaped before returning."""
    n = int(args.iterations)
    as_json = bool(args.json)
    if n < 1:
        print("pyxen: --iterations must be at least 1", file=sys.stderr)
        return 1

    def progress(msg: str) -> None:
        if not as_json:
            print(msg, file=sys.stderr, flush=True)

    warmup = warmup_for(n)
    try:
        become_subreaper()
    except OSError as exc:
        print(f"pyxen: {exc.strerror}", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="pyxen-bench-", dir="/tmp"))
    keep = False  # kept only when something failed: its logs say why
    try:
        report = measure(tmp, n, warmup, progress)
    except BenchError as exc:
        keep = (tmp / "run" / "logs").is_dir()
        print(f"pyxen: bench {what}: {exc}", file=sys.stderr)
        if keep:
            print(f"pyxen: bench {what}: logs kept in {tmp / 'run' / 'logs'}",
                  file=sys.stderr)
        return 1
    finally:
        reap_children()
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)

    if as_json:
        print(json.dumps(report))
    else:
        print(format_report(report))
    return 0


# -- report formatting ----------------------------------------------------------------


def format_table(columns: Sequence[str], rows: Sequence[tuple[str, Sequence[float]]],
                 name_width: int = 22, width: int = 10, precision: int = 1) -> list[str]:
    """A header line and one line per row: a left-aligned name, then
    right-aligned numbers, every line indented by two spaces."""
    lines = [f"  {'':<{name_width}}" + "".join(f"{c:>{width}}" for c in columns)]
    for name, values in rows:
        lines.append(f"  {name:<{name_width}}"
                     + "".join(f"{v:>{width}.{precision}f}" for v in values))
    return lines
