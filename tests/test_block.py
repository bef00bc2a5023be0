"""PV block end to end: blkfront in a guest, blkback in a driver domain."""

import os
import shutil
import subprocess
import sys

import pytest

from tests.harness import REPO, Fifo

pytestmark = pytest.mark.timeout(120)

FEATURES = ("feature-flush-cache", "feature-discard", "feature-persistent",
            "feature-max-indirect-segments", "max-ring-page-order",
            "multi-queue-max-queues", "sectors", "sector-size")


def xs(system, *args):
    if shutil.which(args[0]) is None:
        pytest.skip("needs Debian's xenstore-utils (apt-get install xenstore-utils)")
    env = dict(system.env, XENSTORED_PATH=str(system.run_dir / "xenstored" / "socket"))
    return subprocess.run(args, env=env, capture_output=True, text=True, check=True).stdout


def test_default_guests_connect_their_disks_and_verify_them(system):
    system.boot()
    system.wait_console("guest1", "disk xvda: verified")  # connected and used
    system.wait_console("guest2", "disk xvda: verified")
    rows = system.list()
    guest, backend = rows["guest1"]["domid"], rows["disk-dd"]["domid"]
    front = f"/local/domain/{guest}/device/vbd/51712"
    assert xs(system, "xenstore-read", f"{front}/state").strip() == "4"
    back = xs(system, "xenstore-read", f"{front}/backend").strip()
    assert back == f"/local/domain/{backend}/backend/vbd/{guest}/51712"
    listing = xs(system, "xenstore-ls", back)
    for feature in FEATURES:
        assert f"{feature} = " in listing, feature
    assert 'state = "4"' in listing


def test_block_attach_list_detach(system):
    system.boot()
    system.cli("block-attach", "guest1", "backend=disk-dd", "vdev=xvdb", "size=8M",
               "target=hot.img")
    assert (system.run_dir / "disks" / "hot.img").stat().st_size == 8 << 20
    listing = system.cli("block-list", "guest1").stdout.splitlines()
    assert listing[0].split()[:4] == ["Vdev", "BE", "handle", "state"]
    # The attach returned once the guest had connected it (state 4).
    assert [line.split()[3] for line in listing[1:] if line.split()[0] == "51728"] == ["4"]
    system.cli("block-detach", "guest1", "xvdb")
    system.wait_log("guest1", "block device removed")
    listing = system.cli("block-list", "guest1").stdout
    assert "51728" not in listing
    proc = system.cli("block-detach", "guest1", "xvdz", check=False)
    assert proc.returncode == 1 and "has no disk xvdz" in proc.stderr
    # guest1's disk is writable: nobody else may have it, even read-only.
    for access in ("rw", "ro"):
        proc = system.cli("block-attach", "guest2", "backend=disk-dd", "vdev=xvdc",
                          f"access={access}", "target=guest1.img", check=False)
        assert proc.returncode == 1 and "already used by guest1 (xvda)" in proc.stderr
    assert "51744" not in system.cli("block-list", "guest2").stdout
    proc = system.cli("block-attach", "guest2", "backend=disk-dd", "vdev=xvdd", "size=1M",
                      "target=/nonexistent/dir/x.img", check=False)
    assert proc.returncode == 1 and "/nonexistent/dir/x.img" in proc.stderr
    assert not os.path.exists("/nonexistent")  # Dom0 makes no directory outside the run dir


def test_io_features_readonly_and_bad_requests(system):
    out = Fifo(system.run_dir, "out")
    (system.run_dir / "disks").mkdir()
    (system.run_dir / "disks" / "ro.img").write_bytes(b"R" * (1 << 20))
    system.boot(system.write_topology(f"""
        [platform]
        memory = 1024
        [dom0]
        memory = 256
        [domain.disk-dd]
        driver_domain = true
        memory = 64
        [domain.probe]
        memory = 64
        workload = "tests.workloads:disk_probe"
        extra = "out={out.path}"
        {Fifo.binds(out)}
        disk = ["backend=disk-dd, vdev=xvda, size=16M, target=probe.img",
                "backend=disk-dd, vdev=xvdb, access=ro, target=ro.img"]
        """))
    report = out.read_json()
    assert report["sectors"] == 16 << 11 and report["ro_sectors"] == 2048
    assert report["big_roundtrip"] and report["discarded_zero"]
    assert report["file_like"] == "unaligned hello"
    assert report["ro_read"] == 4096
    assert report["ro_write_api"] == "PermissionError"
    assert report["ro_write_backend"] == "BLKIF_RSP_ERROR"
    assert report["past_end_backend"] == "BLKIF_RSP_ERROR"
    assert report["still_serving"]
    assert (system.run_dir / "disks" / "ro.img").read_bytes() == b"R" * (1 << 20)


def test_a_detach_waiting_on_a_deaf_guest_does_not_hold_the_control_loop(system):
    """The toolstack waits up to DETACH_TIMEOUT for a frontend to close; a
    guest that never does must not stall every other `pyxen` command."""
    system.boot(system.write_topology("""
        [platform]
        memory = 1024
        [dom0]
        memory = 256
        [domain.disk-dd]
        driver_domain = true
        memory = 64
        [domain.deaf]
        memory = 32
        workload = "tests.workloads:deaf_to_devices"
        """))
    system.cli("block-attach", "deaf", "backend=disk-dd", "vdev=xvdb", "size=1M",
               "target=deaf.img", "--timeout", "0")
    detach = subprocess.Popen(
        [sys.executable, "-m", "domains.dom0.cli", "block-detach", "deaf", "xvdb"],
        env=system.env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        system.wait_log("Domain-0", "detaching: waiting for the frontend to close")
        rows = system.list()  # served while the detach waits
        assert detach.poll() is None, "the list came only after the detach gave up"
        assert rows["deaf"]["state"] != "-"
        _out, err = detach.communicate(timeout=60)
    finally:
        if detach.poll() is None:
            detach.kill()
            detach.wait()
    assert detach.returncode == 0, err  # it still hears when the detach is done
    system.wait_log("Domain-0", "frontend did not close, removing anyway")
    assert "51728" not in system.cli("block-list", "deaf").stdout
