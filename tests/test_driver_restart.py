"""A disk driver domain dies mid-write: it is restarted, the guest's
blkfront reconnects and reissues what had no response, nothing is lost."""

import hashlib
import os
import re
import signal
import threading

import pytest

from domains.kernel.xenbus.client import XenStoreClient, XsError
from domains.kernel.xenbus.transport import UnixTransport
from hypervisor.public.io.xenbus import XenbusState as S
from tests.harness import Fifo, follow_acks, last_ack

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


def free_memory(system) -> int:
    """`pyxen info`'s free_memory (MiB)."""
    found = re.search(r"^free_memory\s*:\s*(\d+)", system.cli("info").stdout, re.MULTILINE)
    assert found is not None
    return int(found.group(1))


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
    follow_acks(log, last_ack(log) + 60)  # writes go on through the new backend
    assert "reconnecting to the new backend" in log.read_text()
    assert system.list()["writer"]["state"][3:5] == "--"  # never crashed
    # The grant window of the old connection serves the new one: nothing leaked.
    assert free_memory(system) == free
    system.halt()
    check_image(system, log)


def check_image(system, log) -> None:
    """Every write the writer logged as acknowledged is on the image, once."""
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


def test_killed_during_the_xenbus_handshake(system):
    """The frontend has published its rings (Initialised) to a new backend
    that has not connected yet: that one dies too, and the next one serves.
    Up to six kills: more than the default budget allows."""
    system.boot(system.write_topology(TOPOLOGY.replace(
        'on_crash = "restart"', 'on_crash = "restart"\nrestart_limit = [10, 60]')))
    log = system.run_dir / "logs" / "writer.log"
    follow_acks(log, 30)
    writer = system.list()["writer"]["domid"]
    xs = XenStoreClient(UnixTransport(str(system.run_dir / "xenstored" / "socket")))
    front = f"/local/domain/{writer}/device/vbd/51712"
    try:
        for _ in range(3):  # until the stop lands before the backend connects
            system.cli("pause", "writer")  # so that we know the new backend first
            old = system.list()["disk-dd"]["domid"]
            os.kill(system.pid_of("disk-dd"), 9)
            new = int(system.wait("disk-dd", "running", not_domid=old))
            pid = system.pid_of("disk-dd")
            stopped = threading.Event()
            back = f"/local/domain/{new}/backend/vbd/{writer}/51712"

            def changed(_path: str, _token: str, pid: int = pid, new: int = new, back: str = back,
                        stopped: threading.Event = stopped) -> None:
                try:
                    fe = int(xs.read(f"{front}/state"))
                    be = int(xs.read(f"{back}/state"))
                    moved = xs.read(f"{front}/backend-id") == str(new).encode()
                except XsError:
                    return
                # Initialised: rings granted, the backend's next step is to
                # connect. Both Connected: too late (a stale Connected of
                # the frontend's, from before the kill, does not count).
                if moved and not stopped.is_set() and (
                        fe == S.Initialised or fe == be == S.Connected):
                    os.kill(pid, signal.SIGSTOP)
                    stopped.set()

            xs.watch(f"{front}/state", "handshake", changed)
            xs.watch(f"{back}/state", "handshake", changed)
            system.cli("unpause", "writer")
            assert stopped.wait(30), "the frontend never published its rings"
            xs.unwatch(f"{front}/state", "handshake")
            xs.unwatch(f"{back}/state", "handshake")
            be = int(xs.read(f"{back}/state"))
            os.kill(pid, 9)
            if be == S.InitWait:
                break  # killed mid-handshake: rings granted, never connected
            system.wait("disk-dd", "running", not_domid=new)  # too late: again
        else:
            raise AssertionError("the backend always connected before it was stopped")
        last = int(system.wait("disk-dd", "running", not_domid=new))
        follow_acks(log, last_ack(log) + 60)
        assert xs.read(f"{front}/backend-id") == str(last).encode()
        assert xs.read(f"{front}/state") == str(int(S.Connected)).encode()
    finally:
        xs.close()
    system.halt()
    check_image(system, log)


def test_killed_while_a_flush_is_in_flight(system):
    cue = Fifo(system.run_dir, "cue")
    topology = TOPOLOGY.replace("tests.workloads:disk_writer",
                                "tests.workloads:disk_flush_on_cue")
    system.boot(system.write_topology(topology + f'extra = "cue={cue.path}"\n'
                                                 + Fifo.binds(cue) + "\n"))
    log = system.run_dir / "logs" / "writer.log"
    follow_acks(log, 63)
    first = system.list()["disk-dd"]["domid"]
    system.cli("pause", "disk-dd")  # the flush will wait in the ring
    with open(cue.path, "w") as f:
        f.write("flush\n")
    system.wait_log("writer", "flush issued")
    os.kill(system.pid_of("disk-dd"), 9)
    system.wait("disk-dd", "running", not_domid=first)
    system.wait_log("writer", "flush acked")  # reissued to the new backend
    text = log.read_text()
    assert text.index("flush issued") < text.index("reconnecting to the new backend") \
        < text.index("flush acked")
    system.halt()
    image = (system.run_dir / "disks" / "w.img").read_bytes()
    for n in range(64):
        assert image[n * 4096:(n + 1) * 4096] == block(n), f"write {n} lost"


def test_two_kills_in_a_row(system):
    system.boot(system.write_topology(TOPOLOGY))
    log = system.run_dir / "logs" / "writer.log"
    follow_acks(log, 30)
    first = system.list()["disk-dd"]["domid"]
    os.kill(system.pid_of("disk-dd"), 9)
    second = int(system.wait("disk-dd", "running", not_domid=first))
    os.kill(system.pid_of("disk-dd"), 9)  # at once: before or while it reconnects
    system.wait("disk-dd", "running", not_domid=second)
    follow_acks(log, last_ack(log) + 60)
    assert system.list()["writer"]["state"][3:5] == "--"
    system.halt()
    check_image(system, log)


def test_a_successor_that_dies_booting_counts_as_a_crash_and_restart_brings_it_back(system):
    """Issue 14: a driver domain killed while it restarted was gone for good
    (absent from `pyxen list`) and its guest hung on a dead backend."""
    flag = system.run_dir / "flag"
    flag.write_text("live")
    flag.chmod(0o644)
    topology = TOPOLOGY.replace('on_crash = "restart"',
                                'on_crash = "restart"\nrestart_limit = [2, 60]\n'
                                'workload = "tests.workloads:driver_dies_booting"\n'
                                f'bind = ["{flag}"]')
    topology = topology.replace('extra = "watchdog=3"', f'extra = "watchdog=3 flag={flag}"')
    topology = topology.replace("tests.workloads:disk_writer",
                                "tests.workloads:disk_writer_reporting")
    system.boot(system.write_topology(topology))
    log = system.run_dir / "logs" / "writer.log"
    follow_acks(log, 10)
    flag.write_text("die")  # every successor now dies before it is up
    os.kill(system.pid_of("disk-dd"), 9)
    # Two restarts (its budget) die booting; then the toolstack says so.
    system.wait_log("hypervisor", "disk-dd crashed while restarting")
    assert system.list()["disk-dd"]["state"][3:5] == "sc"  # still listed, crashed
    listing = system.cli("list", "-v").stdout
    assert "disk-dd: crashed while restarting" in listing
    assert "failed to boot (exit status 3)" in listing
    assert "restart_limit" in listing
    # Past the budget its devices go: the guest fails its I/O clearly.
    system.wait_log("writer", "disk lost")
    assert system.cli("block-list", "writer").stdout.splitlines()[1:] == []
    # A command brings it back, and the guest's disk with it.
    flag.write_text("live")
    out = system.cli("restart", "disk-dd").stdout
    assert out.startswith("Restarted disk-dd (domid ")
    assert system.list()["disk-dd"]["state"][4] != "c"
    rows = [line for line in system.cli("block-list", "writer").stdout.splitlines()[1:]
            if not line.startswith(" ")]
    assert [r.split()[0] for r in rows] == ["51712"]
    writer = system.list()["writer"]["domid"]
    # The guest takes the device again (its frontend's old watches are gone).
    system.wait_device_state(f"/local/domain/{writer}/device/vbd/51712", int(S.Connected))
