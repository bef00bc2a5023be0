"""Devices across detach, re-attach, reboots and driver domains that stop
(issue 14): nothing reported done that is not, nothing left behind."""

import os

import pytest

from hypervisor.public.io.xenbus import XenbusState as S

pytestmark = pytest.mark.timeout(120)

CONNECTED = int(S.Connected)


def vbd(system, guest: str, devid: int) -> str:
    return f"/local/domain/{system.list()[guest]['domid']}/device/vbd/{devid}"


def test_the_same_vdev_attaches_again_and_hot_plugged_disks_survive_a_reboot(system):
    system.boot()
    for _ in range(2):  # the second attach used to fail: the old watch stayed
        system.cli("block-attach", "guest1", "backend=disk-dd", "vdev=xvdb", "size=8M",
                   "target=hot.img")
        system.wait_device_state(vbd(system, "guest1", 51728), CONNECTED)
        system.cli("block-detach", "guest1", "xvdb")
        assert "51728" not in system.cli("block-list", "guest1").stdout
    system.cli("block-attach", "guest1", "backend=disk-dd", "vdev=xvdb", "target=hot.img")
    system.wait_device_state(vbd(system, "guest1", 51728), CONNECTED)
    # A boot disk detached stays detached across the reboot.
    system.cli("block-detach", "guest2", "xvda")
    old = {name: row["domid"] for name, row in system.list().items()}
    for guest in ("guest1", "guest2"):
        system.cli("reboot", guest)
        system.wait(guest, "running", not_domid=old[guest])
    devids = [line.split()[0] for line in
              system.cli("block-list", "guest1").stdout.splitlines()[1:]
              if not line.startswith(" ")]  # not a "why not connected" line
    assert sorted(devids) == ["51712", "51728"]  # libxl keeps hot-plugged devices
    system.wait_device_state(vbd(system, "guest1", 51728), CONNECTED)
    assert system.cli("block-list", "guest2").stdout.splitlines()[1:] == []


def test_a_driver_domain_serving_devices_is_not_shut_down_by_mistake(system):
    system.boot()
    proc = system.cli("shutdown", "disk-dd", check=False)
    assert proc.returncode == 1
    assert "EBUSY" in proc.stderr and "guest1:xvda" in proc.stderr and "--force" in proc.stderr
    assert system.list()["disk-dd"]["state"][3] == "-"  # not shutting down
    system.cli("shutdown", "disk-dd", "--force")
    system.wait("disk-dd", "gone")  # on_poweroff = destroy
    for guest in ("guest1", "guest2"):  # their disks were removed, not left dead
        assert system.cli("block-list", guest).stdout.splitlines()[1:] == []


def test_reboot_restarts_a_crashed_preserved_driver_domain(system):
    topology = system.write_topology("""
        [platform]
        memory = 1024
        [dom0]
        memory = 256
        [domain.disk-dd]
        driver_domain = true
        memory = 64
        on_crash = "preserve"
        [domain.g]
        memory = 64
        disk = ["backend=disk-dd, vdev=xvda, size=8M, target=g.img"]
        """)
    system.boot(topology)
    front = vbd(system, "g", 51712)
    system.wait_device_state(front, CONNECTED)
    first = system.list()["disk-dd"]["domid"]
    os.kill(system.pid_of("disk-dd"), 9)
    system.wait("disk-dd", "crashed")
    assert "preserved" in system.cli("list", "-v").stdout
    out = system.cli("reboot", "disk-dd").stdout  # used to print "Rebooting" and do nothing
    assert out.startswith("Restarted disk-dd (domid ")
    row = system.list()["disk-dd"]
    assert row["domid"] != first and row["state"][3:5] == "--"
    system.wait_device_state(front, CONNECTED)  # the guest's disk moved to it
    proc = system.cli("restart", "disk-dd", check=False)
    assert proc.returncode == 1 and "is running" in proc.stderr


def test_a_device_that_cannot_connect_says_why(system):
    """Never silent: a paused guest, and a driver domain out of XenStore
    quota (28 of 64 vbds used to stay Initialising with nothing said)."""
    system.boot()
    system.cli("pause", "guest2")
    proc = system.cli("block-attach", "guest2", "backend=disk-dd", "vdev=xvdb", "size=1M",
                      "target=p.img", "--timeout", "1", check=False)
    assert proc.returncode == 1
    assert proc.stderr == ("pyxen: ETIMEDOUT: guest2: xvdb attached but not connected after "
                           "1 s (state Initialising): the guest is paused\n")
    assert "  xvdb: the guest is paused" in system.cli("block-list", "guest2").stdout
    system.cli("unpause", "guest2")
    system.wait_device_state(vbd(system, "guest2", 51728), CONNECTED)
    assert "xvdb:" not in system.cli("block-list", "guest2").stdout
    # guest1's node quota, squeezed to what it holds: its frontend cannot
    # write the next device's nodes.
    guest = system.list()["guest1"]["domid"]
    used = system.cli("xenstore-control", "quota", str(guest)).stdout
    nodes = int(used.split("nodes           :")[1].split()[0])
    system.cli("xenstore-control", "quota", "set", str(guest), "nodes", str(nodes))
    proc = system.cli("block-attach", "guest1", "backend=disk-dd", "vdev=xvdc", "size=1M",
                      "target=q.img", "--timeout", "5", check=False)
    assert proc.returncode == 1
    assert "xvdc attached but not connected" in proc.stderr
    assert "the guest hit its XenStore quota: ENOSPC" in proc.stderr, proc.stderr
    listing = system.cli("block-list", "guest1").stdout
    assert "  xvdc: the guest hit its XenStore quota: ENOSPC" in listing, listing
    assert "guest1: XenStore quota: ENOSPC" in system.cli("list", "-v").stdout
    assert "xenstored: guest1" in system.cli("dmesg").stdout


@pytest.mark.parametrize("states, facts, words", [
    ((4, 4), {}, ""),
    ((1, 2), {"guest_paused": True}, "the guest is paused"),
    ((1, 2), {"backend_down": "crashed"}, "backend dd is down (crashed)"),
    ((1, 1), {"backend_quota": "ENOSPC (x) on WRITE /p"}, "backend dd hit its XenStore quota"),
    ((3, 2), {"frontend_quota": "E2BIG (x) on WATCH /p"}, "the guest hit its XenStore quota"),
    ((1, None), {}, "no backend directory in dd"),
    ((1, 1), {}, "backend dd has not picked the device up"),
    ((1, 2), {}, "the guest has not started its frontend"),
    ((3, 2), {}, "handshake: frontend Initialised, backend InitWait"),
])
def test_why_a_device_is_not_connected(states, facts, words):
    from domains.dom0.devices import device_cause

    cause = device_cause(*states, backend_name="dd", **facts)
    assert cause.startswith(words) if words else cause == ""
