"""A whole machine through real processes: boot, list, crash, pause, halt."""

import os

import psutil  # type: ignore[import-untyped]  # no stubs installed (types-psutil)
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
    # Named after the topology (the default's), unique on the host.
    assert system.machine == "default" or system.machine.startswith("default-")
    assert f"pyxen[{system.machine}]: hypervisor" in titles
    for name, row in rows.items():
        assert f"pyxen[{system.machine}]: dom{row['domid']} {name}" in titles


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


def host_cpu(pcpu: int) -> set[int]:
    """The host CPU the machine maps platform pCPU `pcpu` to."""
    host = sorted(os.sched_getaffinity(0))
    return {host[pcpu % len(host)]}


def thread_affinities(pid: int) -> list[set[int]]:
    return [os.sched_getaffinity(t.id) for t in psutil.Process(pid).threads()]


def test_vcpu_pin_sets_the_thread_affinity(system):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 host CPUs to tell pCPU 0 from pCPU 1")
    system.boot()  # the default topology: guest1 (2 vCPUs) on pCPU 0
    pid = system.pid_of("guest1")
    assert all(a == host_cpu(0) for a in thread_affinities(pid))
    system.cli("vcpu-pin", "guest1", "1", "1")
    out = system.cli("vcpu-list", "guest1").stdout.splitlines()
    assert out[0].split()[:6] == ["Name", "ID", "VCPU", "CPU", "State", "Time(s)"]
    assert out[1].split()[-3:] == ["0", "/", "all"]
    assert out[2].split()[-3:] == ["1", "/", "all"]
    # vCPU 1's thread alone moved.
    assert sorted(map(sorted, thread_affinities(pid))).count(sorted(host_cpu(1))) == 1


def test_vcpu0_takes_the_kernels_threads_along(system):
    # Events are delivered to vCPU 0: the threads that run their handlers
    # (the upcall loop) and the kernel's others follow its affinity; only
    # the other vCPUs' threads keep their own.
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 host CPUs to tell pCPU 0 from pCPU 1")
    system.boot()
    pid = system.pid_of("guest1")
    system.cli("vcpu-pin", "guest1", "0", "1")
    affinities = thread_affinities(pid)
    assert len(affinities) > 2  # vCPU 0 (main), vCPU 1, the upcall loop, ...
    assert sum(a == host_cpu(1) for a in affinities) == len(affinities) - 1
    system.cli("vcpu-pin", "guest1", "0", "all")
    assert sum(a == host_cpu(0) for a in thread_affinities(pid)) == 1  # vCPU 1


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
