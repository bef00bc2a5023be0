"""Hostile guests against event delivery and the memory channel: no event
forged to another domain, no hypervisor stalled or killed by a domain that
does not read (or closed) its memory channel, and everyone else carries on."""

import os
import socket
import stat

import pytest

from tests.harness import Fifo
from tests.test_driver_restart import follow_acks, last_ack

pytestmark = pytest.mark.timeout(120)

SMALL = """
[platform]
pcpus = 2
memory = 1024

[dom0]
memory = 256
"""


def datagram_sockets(run_dir) -> list[str]:
    """Sockets in the run directory that take a datagram from anyone."""
    taken = []
    for root, _dirs, files in os.walk(run_dir):
        for name in files:
            path = os.path.join(root, name)
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                continue
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                try:
                    sock.sendto(b"\x01\x00\x00\x00", path)
                except OSError:
                    continue
            taken.append(path)
    return taken


def test_a_guest_cannot_raise_another_domains_ports(system):
    fifos = {name: Fifo(system.run_dir, name) for name in ("hello", "offer", "v", "f")}
    paths = {k: f.path for k, f in fifos.items()}
    system.boot(system.write_topology(SMALL + f"""
        [domain.victim]
        memory = 32
        workload = "tests.workloads:doorbell_victim"
        extra = "hello={paths['hello']} offer={paths['offer']} out={paths['v']}"
        {Fifo.binds(*fifos.values())}

        [domain.forger]
        memory = 32
        workload = "tests.workloads:doorbell_forger"
        extra = "hello={paths['hello']} offer={paths['offer']} out={paths['f']}"
        {Fifo.binds(*fifos.values())}
        """))
    forger = fifos["f"].read_json()
    victim = fifos["v"].read_json()
    # No doorbell has a path anyone may open...
    assert forger["accepted_paths"] == []
    assert datagram_sockets(system.run_dir) == []
    # ...and through the ends it holds, only the port bound to it was raised:
    # not the victim's unbound port, nor its VIRQ; every other ring dropped.
    assert forger["forged_victim"] == 4199
    assert victim == {"mine": 1, "unbound": 0, "virq": 0, "dropped": 4199}
    # Dom0 dropped the rings on its ports not bound to the forger (its
    # VIRQ_DOM_EXC among them), and serves on.
    assert forger["forged_dom0"] == 4096
    forger_id = system.list()["forger"]["domid"]
    system.wait_log("Domain-0", "doorbell rings dropped")
    dom0_log = (system.run_dir / "logs" / "Domain-0.log").read_text()
    assert f"sender={forger_id}" in dom0_log
    cfg = system.write_topology('name = "late"\nmemory = 32\n', "late.cfg")
    assert "Created late" in system.cli("create", str(cfg)).stdout
    system.wait_console("late", "booted")


WRITER_AND_HOG = """
[platform]
memory = 1024
[dom0]
memory = 256
[domain.disk-dd]
driver_domain = true
memory = 64
extra = "watchdog=3"  # seconds without a heartbeat before it counts as hung
[domain.writer]
memory = 64
workload = "tests.workloads:disk_writer"
disk = ["backend=disk-dd, vdev=xvda, size=16M, target=w.img"]
[domain.hog]
memory = 32
workload = "tests.workloads:memchan_hog"
extra = "out={out}"
bind = ["{out}"]
"""


def test_a_guest_not_reading_its_memory_channel_stalls_nobody(system):
    out = Fifo(system.run_dir, "out")
    system.boot(system.write_topology(WRITER_AND_HOG.format(out=out.path)))
    hog = out.read_json()
    # Its channel filled up: it got EBUSY, and the hypervisor answers it still.
    assert hog["opened"] > 0 and hog["error"] == "EBUSY" and hog["then"] == "ok"
    before = system.list()
    assert before["hog"]["state"][3:5] == "--"
    log = system.run_dir / "logs" / "writer.log"
    follow_acks(log, last_ack(log) + 100)  # the writer's disk carries on
    after = system.list()
    assert after["disk-dd"]["domid"] == before["disk-dd"]["domid"]  # never restarted
    assert "watchdog" not in system.cli("dmesg").stdout


def test_a_guest_that_closed_its_memory_channel_gets_an_errno(system):
    out = Fifo(system.run_dir, "out")
    system.boot(system.write_topology(SMALL + f"""
        [domain.closer]
        memory = 32
        workload = "tests.workloads:memchan_closer"
        extra = "out={out.path}"
        {Fifo.binds(out)}
        """))
    assert out.read_json() == {"grant_window": "ENOTCONN", "then": "ok"}
    assert system.list()["closer"]["state"][3:5] == "--"
