"""`pyxen bench evtchn`, `xenstore`, `blk` and `net`: run end to end and leave
nothing behind.

No wall-clock assertions: the numbers depend on the machine. The tests check
the shape of the JSON report, that every measurement is positive, that the
ratios are their quotients, and that no pyxen process outlives the command.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # no stubs installed (types-psutil)
import pytest

from tests.harness import ours, title

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parent.parent
STATS = {"median", "p99", "mean"}



def test_bench_evtchn_json():
    proc = subprocess.run(
        [sys.executable, "-m", "domains.dom0.cli", "bench", "evtchn", "--json",
         "--iterations", "200"],
        cwd=REPO, capture_output=True, text=True, timeout=110, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # --json: no progress lines either

    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    report = json.loads(lines[0])
    assert report["iterations"] == 200
    assert report["goal_ratio"] == 1.5
    for key in ("pyxen_evtchn_rtt_us", "raw_zmq_rtt_us", "raw_unix_rtt_us"):
        stats = report[key]
        assert set(stats) >= STATS, stats
        for name in STATS:
            assert isinstance(stats[name], (int, float)) and stats[name] > 0, (key, stats)
        assert stats["median"] <= stats["p99"]
    pyxen = report["pyxen_evtchn_rtt_us"]["median"]
    raw = report["raw_zmq_rtt_us"]["median"]
    assert report["ratio_median"] == pytest.approx(pyxen / raw, rel=1e-3)
    unix = report["raw_unix_rtt_us"]["median"]
    assert report["ratio_unix_median"] == pytest.approx(pyxen / unix, rel=1e-3)
    assert report["goal_met"] == (report["ratio_median"] <= report["goal_ratio"])

    # Only this test's descendants: other systems on the host are not ours.
    assert not ours(), [title(p) for p in ours()]


XS_STATS = {"ops_per_s", "median_us", "p99_us"}


def test_bench_xenstore_json():
    proc = subprocess.run(
        [sys.executable, "-m", "domains.dom0.cli", "bench", "xenstore", "--json",
         "--iterations", "200"],
        cwd=REPO, capture_output=True, text=True, timeout=110, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # --json: no progress lines either

    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    report = json.loads(lines[0])
    assert report["iterations"] == 200
    for key in ("xenstore_read", "xenstore_write", "raw_unix_echo"):
        stats = report[key]
        assert set(stats) >= XS_STATS, (key, stats)
        for name in XS_STATS:
            assert isinstance(stats[name], (int, float)) and stats[name] > 0, (key, stats)
        assert stats["median_us"] <= stats["p99_us"]
    raw = report["raw_unix_echo"]["ops_per_s"]
    for ratio, key in (("ratio_read", "xenstore_read"), ("ratio_write", "xenstore_write")):
        assert isinstance(report[ratio], (int, float)) and report[ratio] > 0
        assert report[ratio] == pytest.approx(report[key]["ops_per_s"] / raw, rel=1e-3)

    # The bench reaps the machine (and its echo process) before it exits;
    # anything it left would have been re-parented to us, the subreaper.
    assert not ours(), [title(p) for p in ours()]
    strays = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "domains.dom0.cli" in " ".join(child.cmdline()):
                strays.append(child.pid)
        except psutil.Error:
            continue  # it just ended
    assert not strays, f"bench processes left behind: {strays}"
    # Only this test's descendants: other systems on the host are not ours.
    assert not ours(), [title(p) for p in ours()]


def test_bench_blk_json():
    proc = subprocess.run(
        [sys.executable, "-m", "domains.dom0.cli", "bench", "blk", "--json",
         "--iterations", "8"],
        cwd=REPO, capture_output=True, text=True, timeout=110, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # --json: no progress lines either

    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    report = json.loads(lines[0])
    assert report["iterations"] == 8
    assert report["goal_seq_ratio"] == 0.5
    for kind in ("seq_read", "seq_write"):
        stats = report[kind]
        assert set(stats) >= {"pyxen_mb_s", "raw_mb_s", "ratio"}, (kind, stats)
        for name in ("pyxen_mb_s", "raw_mb_s", "ratio"):
            assert isinstance(stats[name], (int, float)) and stats[name] > 0, (kind, stats)
        assert stats["ratio"] == pytest.approx(stats["pyxen_mb_s"] / stats["raw_mb_s"],
                                               rel=1e-3)
    rand = report["rand_read_4k"]
    for name in ("pyxen_iops", "raw_iops", "ratio"):
        assert isinstance(rand[name], (int, float)) and rand[name] > 0, rand
    assert rand["ratio"] == pytest.approx(rand["pyxen_iops"] / rand["raw_iops"], rel=1e-3)
    assert report["goal_met"] == (report["seq_read"]["ratio"] >= 0.5
                                  and report["seq_write"]["ratio"] >= 0.5)

    # Everything the bench started (the machine, re-parented to it as
    # subreaper, then to us) is gone. Only our own descendants are looked at:
    # other pyxen sessions on the host may come and go meanwhile.
    assert not ours(), [title(p) for p in ours()]
    strays = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "domains.dom0.cli" in " ".join(child.cmdline()):
                strays.append(child.pid)
        except psutil.Error:
            continue  # it just ended
    assert not strays, f"bench processes left behind: {strays}"


def bench_netns() -> list[str]:
    """Network namespaces named like the net bench's (it removes its own)."""
    try:
        names = os.listdir("/run/netns")
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith("pyxen-bench-"))


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, TAP)")
@pytest.mark.skipif(shutil.which("iperf3") is None,
                    reason="needs iperf3 (apt-get install iperf3)")
@pytest.mark.skipif(shutil.which("ip") is None,
                    reason="needs ip (apt-get install iproute2)")
def test_bench_net_json():
    proc = subprocess.Popen(
        [sys.executable, "-m", "domains.dom0.cli", "bench", "net", "--json",
         "--iterations", "2"],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        stdout, stderr = proc.communicate(timeout=110)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert stderr == ""  # --json: no progress lines either

    lines = stdout.strip().splitlines()
    assert len(lines) == 1, stdout
    report = json.loads(lines[0])
    assert set(report) == {"duration_s", "pyxen_mbit_s", "veth_mbit_s", "ratio",
                           "goal_ratio", "goal_met"}, report
    assert report["duration_s"] == 2
    assert report["goal_ratio"] == 0.3
    for name in ("pyxen_mbit_s", "veth_mbit_s", "ratio"):
        assert isinstance(report[name], (int, float)) and report[name] > 0, report
    assert report["ratio"] == pytest.approx(report["pyxen_mbit_s"] / report["veth_mbit_s"],
                                            rel=1e-3)
    assert report["goal_met"] is (report["ratio"] >= report["goal_ratio"])

    # The machine, the iperf3 processes (run through `pyxen exec` and
    # `ip netns exec`) and the veth baseline's namespaces are all gone. Only
    # our own descendants are looked at: other pyxen sessions on the host may
    # come and go meanwhile.
    assert not ours(), [title(p) for p in ours()]
    strays = []
    for child in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(child.cmdline())
        except psutil.Error:
            continue  # it just ended
        if "domains.dom0.cli" in cmdline or "iperf3" in cmdline:
            strays.append(child.pid)
    assert not strays, f"bench processes left behind: {strays}"
    # Its namespaces carry its pid (pyxen-bench-a-PID-..., pyxen-bench-b-PID-...).
    assert [n for n in bench_netns() if f"-{proc.pid}-" in n] == []
