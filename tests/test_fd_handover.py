"""Images and TAPs are handed over as fds by the privileged spawner (issue 12,
"Who keeps privilege"): a driver domain's root holds no disk image, and a
guest's network namespace gets a TAP fd per vif, on demand. A hostile driver
domain and a hostile guest look for images by path and ask the hypervisor for
one themselves; everything they are meant to serve still works."""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
import threading
from pathlib import Path

import pytest

from tests.harness import Fifo

pytestmark = [pytest.mark.root, pytest.mark.timeout(240),
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the sandbox's "
                                 "namespaces, uid maps; TAP devices)")]


def _fds_to(pid: int, path: Path) -> int:
    """How many of process `pid`'s fds are open on `path`."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                count += 1
        except OSError:
            pass  # closed meanwhile
    return count


def _wait_lines(path: Path, *texts: str, timeout: float = 30.0) -> None:
    """Block until each of `texts` has appeared in the log, in that order, each
    on a line after the previous one's (tail -F: waits on inotify)."""
    proc = subprocess.Popen(["tail", "-n", "+1", "-F", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        wanted = list(texts)
        assert proc.stdout is not None
        for line in proc.stdout:
            if wanted[0] in line:
                wanted.pop(0)
                if not wanted:
                    return
        raise AssertionError(f"{wanted!r} never appeared in {path}")
    finally:
        timer.cancel()
        proc.kill()
        proc.wait()


def test_a_driver_domain_and_a_guest_find_no_image_and_hot_plug_works(system, tmp_path):
    out, dd_out, cue = (Fifo(system.run_dir, n) for n in ("out", "dd-out", "cue"))
    outside = tmp_path / "outside" / "hot.img"
    outside.parent.mkdir()
    outside.write_bytes(b"outside the run directory".ljust(1 << 20, b"\0"))
    images = f"images=user.img+other.img+{outside}"
    system.boot(system.write_topology(textwrap.dedent(f"""\
        [platform]
        memory = 2048
        [dom0]
        memory = 256
        [domain.disk-dd]
        driver_domain = true
        memory = 64
        workload = "tests.workloads:probing_driver"
        extra = "out={dd_out.path} {images}"
        {Fifo.binds(dd_out)}
        [domain.user]
        memory = 64
        workload = "tests.workloads:hotplug_disk"
        extra = "out={out.path} cue={cue.path} {images}"
        {Fifo.binds(out, cue)}
        disk = ["backend=disk-dd, vdev=xvda, size=8M, target=user.img"]
        [domain.other]
        memory = 64
        disk = ["vdev=xvda, size=8M, target=other.img"]
        """)))
    # Neither finds an image by path, the one it serves included, nor can
    # it have the hypervisor open one: that is Dom0's alone.
    for report in (dd_out.read_json(), out.read_json()):
        assert report["list_disks"] == "ENOENT", report
        assert set(report["images"].values()) == {"ENOENT"}, report
        assert report["pass_fd"] == "EPERM", report
    # The driver domain's root has no image, yet it serves user's disk
    # (and holds it open: the fd it was handed). Dom0 serves other's the
    # same way.
    system.wait_log("disk-dd", "waiting for the frontend")  # it took its fd
    system.wait_log("Domain-0", "waiting for the frontend")
    dd = system.pid_of("disk-dd")
    assert _fds_to(dd, system.run_dir / "disks" / "user.img") == 1
    assert _fds_to(dd, system.run_dir / "disks" / "other.img") == 0
    assert _fds_to(system.pid_of("Domain-0"), system.run_dir / "disks" / "other.img") == 1
    # An absolute image outside the run directory, hot-plugged after the
    # driver domain booted, goes to it as an fd too: the guest reads what
    # is there and writes through it.
    system.cli("block-attach", "user", "backend=disk-dd", "vdev=xvdb", f"target={outside}")
    with open(cue.path, "w") as f:
        f.write("xvdb\n")
    report = out.read_json()
    assert report["vdev"] == "xvdb" and report["sectors"] == 2048
    assert report["head"].startswith("outside the run directory")
    assert outside.read_bytes().startswith(b"written by user through xvdb", 4096)
    assert _fds_to(dd, outside) == 1
    # Detached: its fd is closed in the driver domain.
    system.cli("block-detach", "user", "xvdb")
    system.wait_log("disk-dd", "removed, image fd closed")
    assert _fds_to(dd, outside) == 0
    # Its own disk still works, and the rest of the machine carries on.
    rows = system.list()
    assert all(rows[n]["state"][3:5] == "--" for n in ("disk-dd", "user", "other")), rows


def test_a_restarted_driver_domain_gets_fresh_image_fds(system):
    system.boot(system.write_topology(textwrap.dedent("""\
        [platform]
        memory = 2048
        [dom0]
        memory = 256
        [domain.disk-dd]
        driver_domain = true
        memory = 64
        on_crash = "restart"
        [domain.g]
        memory = 64
        workload = "tests.workloads:disk_writer"
        disk = ["backend=disk-dd, vdev=xvda, size=8M, target=g.img"]
        """)))
    image = system.run_dir / "disks" / "g.img"
    log = system.run_dir / "logs" / "g.log"
    _wait_lines(log, "acked")
    old = system.list()["disk-dd"]["domid"]
    assert _fds_to(system.pid_of("disk-dd"), image) == 1
    os.kill(system.pid_of("disk-dd"), 9)
    system.wait("disk-dd", "running", not_domid=old)
    # Writes go on through the new driver domain: it was handed the image
    # anew (it could not open it by path).
    _wait_lines(log, "reconnecting to the new backend", "acked")
    assert _fds_to(system.pid_of("disk-dd"), image) == 1


@pytest.mark.skipif(shutil.which("ping") is None,
                    reason="needs ping (apt-get install iputils-ping)")
def test_network_attach_to_a_guest_booted_without_vifs_again_and_again(system):
    """The guest's TAP fds come on demand: no vif at boot, and more
    attach/detach cycles than the four TAP fds a guest used to get."""
    system.boot(system.write_topology(textwrap.dedent("""\
        [platform]
        memory = 2048
        [dom0]
        memory = 256
        [domain.net-dd]
        driver_domain = true
        memory = 64
        [domain.peer]
        memory = 64
        vif = ["backend=net-dd, bridge=xenbr0, ip=10.0.0.1"]
        [domain.lonely]
        memory = 64
        """)))
    system.wait_log("peer", "network interface up")
    for cycle in range(6):
        ip = f"10.0.0.{31 + cycle}"
        system.cli("network-attach", "lonely", "backend=net-dd", "bridge=xenbr0", f"ip={ip}")
        system.wait_log("lonely", f"ip=['{ip}']")  # its eth0 is up
        ping = system.cli("exec", "lonely", "--", "ping", "-c", "1", "-w", "30", "10.0.0.1")
        assert "1 received" in ping.stdout, (cycle, ping.stdout)
        system.cli("network-detach", "lonely", "0")
        links = system.cli("exec", "lonely", "--", "ip", "-o", "link").stdout
        assert "eth0" not in links, (cycle, links)
    rows = system.list()
    assert all(rows[n]["state"][3:5] == "--" for n in ("net-dd", "peer", "lonely")), rows
