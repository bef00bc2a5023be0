"""Hostile guests against the hypervisor's boundary, as real processes: each
attack fails for the attacker alone and the machine carries on."""

import os
import subprocess
import sys

import psutil  # type: ignore[import-untyped]  # no stubs installed (types-psutil)
import pytest

from tests.harness import SMALL, Fifo, pyxen_processes, title

pytestmark = pytest.mark.timeout(180)


def peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_a_burst_of_malformed_hypercalls_leaves_the_machine_serving(system):
    out, cue, other = (Fifo(system.run_dir, n) for n in ("out", "cue", "other"))
    system.boot(system.write_topology(SMALL + f"""
        [domain.attacker]
        memory = 64
        vcpus = 2
        workload = "tests.workloads:malformed_hypercalls"
        extra = "out={out.path}"
        {Fifo.binds(out)}

        [domain.bystander]
        memory = 64
        workload = "tests.workloads:timer_on_cue"
        extra = "cue={cue.path} out={other.path}"
        {Fifo.binds(cue, other)}
        """))
    report = out.read_json()
    assert report == {
        "ready_tid_2_40": "EINVAL",  # not pinned: sched_setaffinity(2**40) killed it
        "ready_announce_list": "EINVAL",  # never handed to Dom0's toolstack
        "status_none": "EFAULT",
        "map_op_int": "EFAULT",
        "vcpu_inf": "EINVAL",
        "garbage_answered": 300,
        "garbage_refused": 300,
        "still_served": 4,  # Xen 4.x: the hypervisor still answers it
    }
    rows = system.list()
    assert rows["attacker"]["state"][3:5] == "--" and rows["bystander"]["state"][3:5] == "--"
    with open(cue.path, "w") as f:
        f.write("{}\n")
    assert other.read_json() == {"slept": True}  # its timer still fires
    dmesg = system.cli("dmesg").stdout
    bad = [line for line in dmesg.splitlines()
           if f"d{rows['attacker']['domid']} " in line and ("bad arg" in line
                                                            or "malformed" in line)]
    assert 0 < len(bad) <= 10  # said, and rate-limited


def test_an_oversized_hypercall_is_dropped_unread(system):
    out, cue = Fifo(system.run_dir, "out"), Fifo(system.run_dir, "cue")
    system.boot(system.write_topology(SMALL + f"""
        [domain.big]
        memory = 128
        workload = "tests.workloads:oversized_hypercall"
        extra = "out={out.path} cue={cue.path}"
        {Fifo.binds(out, cue)}
        """))
    system.wait("big", "running")
    hv = system.hypervisor_pid()
    before = peak_rss_kib(hv)
    with open(cue.path, "w") as f:
        f.write("{}\n")
    report = out.read_json()
    assert report == {"outcome": "disconnected", "after": "ok"}
    assert peak_rss_kib(hv) - before < 16 * 1024  # it never held the 64 MiB
    assert "big" in system.list()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2,
                    reason="needs 2 host CPUs to see a thread pinned to one")
def test_a_guest_cannot_have_another_process_s_thread_pinned(system):
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        before = os.sched_getaffinity(victim.pid)
        out = Fifo(system.run_dir, "out")
        system.boot(system.write_topology(SMALL + f"""
            [domain.pinner]
            memory = 64
            vcpus = 2
            cpus = "1"
            workload = "tests.workloads:foreign_tids"
            extra = "out={out.path} victim={victim.pid}"
            {Fifo.binds(out)}
            """))
        assert out.read_json() == {"foreign": "EINVAL", "ready": "ok"}
        assert os.sched_getaffinity(victim.pid) == before
    finally:
        victim.kill()
        victim.wait()


def test_a_domain_that_never_reports_ready_is_destroyed_with_etimedout(system):
    system.boot(system.write_topology(SMALL))
    cfg = system.write_topology('name = "mute"\nmemory = 32\nboot_timeout = 2\n'
                                'workload = "tests.workloads:never_ready"\n', "mute.cfg")
    proc = system.cli("create", str(cfg), check=False)
    assert proc.returncode == 1 and "ETIMEDOUT" in proc.stderr, proc.stderr
    assert "mute" not in system.list()
    # This machine's (other machines on the host may run a "mute" too).
    assert not [p for p in pyxen_processes()
                if title(p).startswith(f"pyxen[{system.machine}]:") and title(p).endswith(" mute")]
    assert "mute: did not report ready within 2 s: destroyed" in system.cli("dmesg").stdout
    cfg = system.write_topology('name = "fine"\nmemory = 32\n', "fine.cfg")
    assert "Created fine" in system.cli("create", str(cfg)).stdout


def test_grant_windows_are_charged_to_the_domain_that_opens_them(system):
    hog, small = Fifo(system.run_dir, "hog"), Fifo(system.run_dir, "small")
    system.boot(system.write_topology(SMALL + f"""
        [domain.hog]
        memory = 64
        workload = "tests.workloads:window_hog"
        extra = "out={hog.path} frames=1024"
        {Fifo.binds(hog)}

        [domain.capped]
        memory = 64
        max_grant_window_memory = 16
        workload = "tests.workloads:window_hog"
        extra = "out={small.path} frames=1024"
        {Fifo.binds(small)}
        """))
    # Its console and xenstore windows take 2 pages of the 64 MiB default.
    assert hog.read_json() == {"opened": 15, "error": "ENOMEM"}
    assert small.read_json() == {"opened": 3, "error": "ENOMEM"}
    listing = system.cli("list", "-v").stdout.splitlines()
    assert listing[0].endswith("Windows(MiB)")
    windows = {line.split()[0]: line.split()[-1] for line in listing[1:]}
    assert windows["hog"] == "60/64" and windows["capped"] == "12/16"
    # The platform still has room: new domains are not refused for the hog.
    cfg = system.write_topology('name = "after"\nmemory = 256\n', "after.cfg")
    assert "Created after" in system.cli("create", str(cfg)).stdout


def test_a_guest_cannot_flood_or_forge_the_hypervisor_console(system):
    out = Fifo(system.run_dir, "out")
    system.boot(system.write_topology(SMALL + f"""
        [domain.noisy]
        memory = 64
        workload = "tests.workloads:console_flood"
        extra = "out={out.path}"
        {Fifo.binds(out)}
        """))
    assert out.read_json() == {"written": 500}
    domid = system.list()["noisy"]["domid"]
    dmesg = system.cli("dmesg").stdout
    assert "\x1b" not in dmesg and "\x07" not in dmesg and "\r" not in dmesg
    forged = [line for line in dmesg.splitlines() if "FORGED" in line]
    assert 1 <= len(forged) <= 10  # Xen's burst, then one per 5 s
    assert all(line.startswith(f"(d{domid}) [") for line in forged)
    log = (system.run_dir / "logs" / "hypervisor.log").read_text()
    assert "\x1b" not in log and log.count("FORGED") == len(forged)
    assert psutil.pid_exists(system.hypervisor_pid())


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_guest_cannot_hold_more_hypercall_connections_than_its_cap(system):
    """Each connection to a hypercall channel is an fd of the hypervisor's:
    a guest opening them without bound would take its RLIMIT_NOFILE and
    break every domain. Those past the domain's cap are refused."""
    out, cue, go, other = (Fifo(system.run_dir, n) for n in ("out", "cue", "go", "other"))
    n = 400
    system.boot(system.write_topology(SMALL + f"""
        [domain.attacker]
        memory = 64
        workload = "tests.workloads:connection_flood"
        extra = "n={n} out={out.path} cue={cue.path}"
        {Fifo.binds(out, cue)}

        [domain.bystander]
        memory = 64
        workload = "tests.workloads:timer_on_cue"
        extra = "cue={go.path} out={other.path}"
        {Fifo.binds(go, other)}
        """))
    report = out.read_json()
    hv = system.hypervisor_pid()
    assert _fds(hv) < n // 2, "the hypervisor holds an fd per connection asked"
    assert report["answered"] < 8  # its kernel's own connections hold the rest
    assert report["cap"] == 8  # one vCPU: 4 per vCPU and 4 more
    rows = system.list()
    assert rows["bystander"]["state"][3:5] == "--"
    with open(go.path, "w") as f:
        f.write("{}\n")
    assert other.read_json() == {"slept": True}
    dmesg = system.cli("dmesg").stdout
    assert f"d{rows['attacker']['domid']}: " in dmesg and "connection(s) refused" in dmesg
    with open(cue.path, "w") as f:
        f.write("{}\n")
    assert "version" in out.read_json()  # it is served again once it lets go
