"""A disk driver domain dies mid-write: it is restarted, the guest's
blkfront reconnects and reissues what had no response, nothing is lost."""

import hashlib
import os
import signal
import re
import subprocess
import threading

import pytest

pytestmark = pytest.mark.timeout(120)

TOPOLOGY = """
[platform]
memory = 1024
[dom0]
memory = 256
[domain.disk-dd]
driver_domain = true
memory = 64
on_crash = "restart"
on_watchdog = "restart"
extra = "watchdog=3"  # seconds without a heartbeat before it counts as hung
[domain.writer]
memory = 64
workload = "tests.workloads:disk_writer"
disk = ["backend=disk-dd, vdev=xvda, size=16M, target=w.img"]
"""


SLOTS = 2048  # the writer cycles over 2048 blocks of 4 KiB


def block(n: int) -> bytes:
    return hashlib.sha256(str(n).encode()).digest() * 128


def follow_acks(path, until, timeout=60.0) -> int:
    """Follow the writer's log until an ack numbered at least `until`."""
    proc = subprocess.Popen(["tail", "-n", "+1", "-F", str(path)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        for line in proc.stdout:
            match = re.search(r"acked\s+.*n=(\d+)", line)
            if match and int(match.group(1)) >= until:
                return int(match.group(1))
        raise AssertionError(f"the writer never acknowledged write {until}")
    finally:
        timer.cancel()
        proc.kill()
        proc.wait()


def free_memory(system) -> int:
    """`pyxen info`'s free_memory (MiB)."""
    return int(re.search(r"^free_memory\s*:\s*(\d+)", system.cli("info").stdout,
                         re.M).group(1))


@pytest.mark.parametrize("how", ["kill -9", "pyxen reboot", "pyxen destroy",
                                 "hang (SIGSTOP)"])
def test_disk_driver_domain_gone_during_writes_loses_nothing(system, how):
    system.boot(system.write_topology(TOPOLOGY))
    log = system.run_dir / "logs" / "writer.log"
    follow_acks(log, 30)
    old = system.list()["disk-dd"]["domid"]
    free = free_memory(system)
    if how == "kill -9":
        os.kill(system.pid_of("disk-dd"), 9)
    elif how == "pyxen reboot":
        system.cli("reboot", "disk-dd")  # on_reboot defaults to restart
    elif how == "pyxen destroy":  # as if it crashed: on_crash applies
        assert "restarting it" in system.cli("destroy", "disk-dd").stdout
    else:  # it stops answering: its watchdog expires, on_watchdog restarts it
        os.kill(system.pid_of("disk-dd"), signal.SIGSTOP)
    system.wait("disk-dd", "running", not_domid=old)
    last = follow_acks(log, 0)
    follow_acks(log, last + 60)  # writes go on through the new backend
    assert "reconnecting to the new backend" in log.read_text()
    assert system.list()["writer"]["state"][3:5] == "--"  # never crashed
    # The grant window of the old connection was given back, not leaked.
    assert free_memory(system) == free
    system.halt()
    acked = [int(n) for n in re.findall(r"acked\s+.*n=(\d+)", log.read_text())]
    image = (system.run_dir / "disks" / "w.img").read_bytes()
    top = max(acked)
    assert acked == list(range(top + 1))
    for slot in range(min(top + 1, SLOTS)):
        latest = top - (top - slot) % SLOTS  # the last acknowledged write there
        found = image[slot * 4096:(slot + 1) * 4096]
        # ...or the one after it, written but not yet acknowledged at halt
        assert found in (block(latest), block(latest + SLOTS)), f"write {latest} lost"


def test_past_the_restart_budget_the_driver_stays_down_and_says_why(system):
    topology = TOPOLOGY.replace('on_crash = "restart"',
                                'on_crash = "restart"\nrestart_limit = [1, 60]')
    topology = topology.replace("tests.workloads:disk_writer",
                                "tests.workloads:disk_writer_reporting")
    system.boot(system.write_topology(topology))
    log = system.run_dir / "logs" / "writer.log"
    follow_acks(log, 10)
    first = system.list()["disk-dd"]["domid"]
    os.kill(system.pid_of("disk-dd"), 9)
    second = int(system.wait("disk-dd", "running", not_domid=first))
    system.wait_log("writer", "reconnecting to the new backend")
    os.kill(system.pid_of("disk-dd"), 9)
    system.wait("disk-dd", "crashed")
    system.wait_log("writer", "disk lost")  # pending I/O failed with a clear error
    listing = system.cli("list", "-v").stdout
    assert "not restarted, 1 restarts in 60s already (restart_limit)" in listing
    assert system.list()["disk-dd"]["domid"] == second
    assert "restart_limit" in system.cli("dmesg").stdout
    assert "was removed" in log.read_text()


def test_guest_killed_mid_io_leaves_nothing_mapped_in_the_backend(system):
    system.boot(system.write_topology(TOPOLOGY))
    log = system.run_dir / "logs" / "writer.log"
    follow_acks(log, 30)
    backend = system.pid_of("disk-dd")

    def writer_pages() -> list[str]:
        with open(f"/proc/{backend}/maps") as maps:
            return [line for line in maps if "pyxen-writer" in line]

    assert writer_pages(), "blkback maps the writer's grant window while it runs"
    os.kill(system.pid_of("writer"), 9)  # on_crash defaults to destroy
    system.wait("writer", "gone")
    system.wait_log("disk-dd", "disconnected")
    assert writer_pages() == []  # grants unmapped, the window let go
    assert system.list()["disk-dd"]["state"][3:5] == "--"
