"""Fault isolation between device classes: a disk driver domain dying does
not disturb the network, and a net driver domain dying (or hanging) does not
disturb the disks."""

import os
import shutil
import signal
import subprocess
import sys

import pytest

from tests.harness import REPO, follow_acks, last_ack

pytestmark = pytest.mark.timeout(120)

WRITER_AND_NET = """
[platform]
memory = 1024
[dom0]
memory = 256
[domain.disk-dd]
driver_domain = true
memory = 64
[domain.net-dd]
driver_domain = true
memory = 64
[domain.writer]
memory = 64
workload = "tests.workloads:disk_writer"
disk = ["backend=disk-dd, vdev=xvda, size=16M, target=w.img"]
vif = ["backend=net-dd, bridge=xenbr0, ip=10.0.0.9"]
"""


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, TAP)")
@pytest.mark.skipif(shutil.which("ping") is None,
                    reason="needs ping (apt-get install iputils-ping)")
def test_a_ping_carries_on_while_the_disk_driver_domain_dies(system):
    system.boot()
    system.wait_log("guest1", "network interface up")
    system.wait_log("guest2", "network interface up")
    old = system.list()["disk-dd"]["domid"]
    ping = subprocess.Popen([sys.executable, "-m", "domains.dom0.cli", "exec", "guest1", "--",
                             "ping", "-i", "0.02", "-c", "100", "-W", "2", "10.0.0.2"],
                            env=system.env, cwd=REPO, text=True, stdout=subprocess.PIPE)
    try:
        assert ping.stdout.readline().startswith("PING")  # it is running
        os.kill(system.pid_of("disk-dd"), 9)
        out, _ = ping.communicate(timeout=60)
    finally:
        if ping.poll() is None:
            ping.kill()
            ping.wait()
    assert " 0% packet loss" in out, out
    system.wait("disk-dd", "running", not_domid=old)


def test_disks_carry_on_while_the_net_driver_domain_hangs_and_dies(system):
    system.boot(system.write_topology(WRITER_AND_NET))
    log = system.run_dir / "logs" / "writer.log"
    follow_acks(log, 30)
    old = system.list()["net-dd"]["domid"]
    os.kill(system.pid_of("net-dd"), signal.SIGSTOP)  # the network is gone...
    follow_acks(log, last_ack(log) + 200)  # ...and the writes go on
    os.kill(system.pid_of("net-dd"), 9)
    follow_acks(log, last_ack(log) + 200)
    system.wait("net-dd", "running", not_domid=old)
    disk_lines = [line for line in log.read_text().splitlines() if "device=51712" in line]
    assert not [line for line in disk_lines if "backend gone" in line or
                "reconnecting" in line]  # the disk never noticed
    assert system.list()["writer"]["state"][3:5] == "--"
