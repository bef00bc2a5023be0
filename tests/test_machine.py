"""A whole machine through real processes: boot, list, crash, pause, halt."""

import os

import psutil
import pytest

from tests.harness import memfd_segments, ours, pyxen_processes, title

pytestmark = pytest.mark.timeout(120)

DEFAULT_DOMAINS = ["Domain-0", "disk-dd", "net-dd", "guest1", "guest2"]


def test_default_topology_boots_and_lists_like_xl(system):
    system.boot()
    rows = system.list()
    assert list(rows) == DEFAULT_DOMAINS
    assert rows["Domain-0"]["domid"] == 0
    assert rows["guest1"] == {**rows["guest1"], "mem": 256, "vcpus": 2}
    for row in rows.values():
        assert len(row["state"]) == 6 and set(row["state"]) <= set("rbpscd-")
        assert row["state"][2:] == "----"
    titles = {title(p) for p in pyxen_processes()
              if p.pid == system.hypervisor_pid() or p.ppid() == system.hypervisor_pid()}
    assert "pyxen: hypervisor" in titles
    for name, row in rows.items():
        assert f"pyxen: dom{row['domid']} {name}" in titles


def test_killed_driver_domain_restarts_and_others_carry_on(system):
    system.boot()
    before = system.list()
    hv = system.hypervisor_pid()
    os.kill(system.pid_of("disk-dd"), 9)
    new_domid = int(system.wait("disk-dd", "running", not_domid=before["disk-dd"]["domid"]))
    after = system.list()
    assert after["disk-dd"]["domid"] == new_domid != before["disk-dd"]["domid"]
    for name in ("Domain-0", "net-dd", "guest1", "guest2"):
        assert after[name]["domid"] == before[name]["domid"]
    assert psutil.pid_exists(hv)
    assert f"d{before['disk-dd']['domid']} disk-dd: crashed" in system.cli("dmesg").stdout


def test_killed_guest_with_preserve_shows_crashed(system):
    system.boot()
    os.kill(system.pid_of("guest2"), 9)
    system.wait("guest2", "crashed")
    rows = system.list()
    assert rows["guest2"]["state"][3:5] == "sc"
    assert rows["net-dd"]["state"][3:] == "---"
    system.cli("destroy", "guest2")
    assert "guest2" not in system.list()


def test_pause_really_stops_the_process(system):
    system.boot()
    pid = system.pid_of("guest1")
    system.cli("pause", "guest1")
    assert psutil.Process(pid).status() == psutil.STATUS_STOPPED
    assert system.list()["guest1"]["state"][2] == "p"
    system.cli("unpause", "guest1")
    assert psutil.Process(pid).status() != psutil.STATUS_STOPPED
    assert system.list()["guest1"]["state"][2] == "-"


def test_vcpu_pin_sets_the_thread_affinity(system):
    system.boot()
    system.cli("vcpu-pin", "guest1", "1", "1")
    out = system.cli("vcpu-list", "guest1").stdout.splitlines()
    assert out[0].split()[:6] == ["Name", "ID", "VCPU", "CPU", "State", "Time(s)"]
    assert out[2].split()[-3:] == ["1", "/", "all"]
    pid = system.pid_of("guest1")
    affinities = {len(os.sched_getaffinity(t.id)) for t in psutil.Process(pid).threads()}
    assert 1 in affinities


def test_halt_leaves_nothing_behind(system):
    system.boot()
    pids = [system.hypervisor_pid()] + [p.pid for p in pyxen_processes()]
    assert memfd_segments(pids), "domain memory should be memfd segments"
    system.halt()
    assert not ours()
    assert not [n for n in os.listdir("/dev/shm") if "pyxen" in n]
    assert not (system.run_dir / "control.sock").exists()
    assert not (system.run_dir / "hv").exists()


def test_shutdown_and_reboot_apply_xl_actions(system):
    system.boot()
    before = system.list()
    system.cli("reboot", "guest1")  # on_reboot defaults to restart
    system.wait("guest1", "running", not_domid=before["guest1"]["domid"])
    system.cli("shutdown", "guest2")  # on_poweroff defaults to destroy
    system.wait("guest2", "gone")
    assert "guest2" not in system.list()


def test_commands_on_unknown_domains_are_clear_errors(system):
    system.boot()
    proc = system.cli("pause", "nosuch", check=False)
    assert proc.returncode == 1
    assert "no domain named 'nosuch'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_without_a_system_says_so(system):
    proc = system.cli("list", check=False)
    assert proc.returncode == 1
    assert "no pyxen system is running" in proc.stderr


def test_dom0_crash_halts_the_machine(system):
    system.boot()
    hv = psutil.Process(system.hypervisor_pid())
    os.kill(system.pid_of("Domain-0"), 9)
    hv.wait(timeout=30)  # the hypervisor halts and exits: an event, not a sleep
    assert not ours()
    assert "Domain 0 crashed: halting the machine" in (
        system.run_dir / "logs" / "hypervisor.log").read_text()


def test_foreground_boot_shows_status_and_ctrl_c_halts(system):
    import signal
    import subprocess
    import sys

    from tests.harness import REPO

    proc = subprocess.Popen([sys.executable, "-m", "domains.dom0.cli", "boot"],
                            env=system.env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    system.booted = True
    try:
        lines = []
        for line in proc.stdout:  # blocks on the boot's own output
            lines.append(line)
            if line.startswith("guest2 "):
                break
        assert any(line.startswith("Name ") for line in lines)
        proc.send_signal(signal.SIGINT)
        rest = proc.stdout.read()
        assert proc.wait(timeout=60) == 0
        assert "The machine has halted." in rest
        assert not ours()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
