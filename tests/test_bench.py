"""`pyxen bench evtchn`: runs end to end and leaves nothing behind.

No wall-clock assertions: the numbers depend on the machine. The test checks
the shape of the JSON report, that both measurements are positive, that the
ratio is their quotient, and that no pyxen process outlives the command.
"""

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parent.parent
STATS = {"median", "p99", "mean"}


def pyxen_processes() -> set[tuple[int, float]]:
    """(pid, start time) of every process whose cmdline carries "pyxen:"."""
    found = set()
    for proc in psutil.process_iter(["cmdline", "create_time"]):
        try:
            if "pyxen:" in " ".join(proc.info["cmdline"] or ()):
                found.add((proc.pid, proc.info["create_time"]))
        except psutil.Error:
            continue
    return found


def test_bench_evtchn_json():
    # Processes of some other pyxen system already running are not ours.
    before = pyxen_processes()
    proc = subprocess.run(
        [sys.executable, "-m", "domains.dom0.cli", "bench", "evtchn", "--json",
         "--iterations", "200"],
        cwd=REPO, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # --json: no progress lines either

    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    report = json.loads(lines[0])
    assert report["iterations"] == 200
    assert report["goal_ratio"] == 1.5
    for key in ("pyxen_evtchn_rtt_us", "raw_zmq_rtt_us"):
        stats = report[key]
        assert set(stats) >= STATS, stats
        for name in STATS:
            assert isinstance(stats[name], (int, float)) and stats[name] > 0, (key, stats)
        assert stats["median"] <= stats["p99"]
    pyxen = report["pyxen_evtchn_rtt_us"]["median"]
    raw = report["raw_zmq_rtt_us"]["median"]
    assert report["ratio_median"] == pytest.approx(pyxen / raw, rel=1e-3)
    assert report["goal_met"] == (report["ratio_median"] <= report["goal_ratio"])

    left = pyxen_processes() - before
    assert not left, f"pyxen processes left behind: {sorted(left)}"
