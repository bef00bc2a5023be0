"""Every domain in its own sandbox: a booted machine seen from the host, and
hostile guests trying each OS-level attack of issue 12. Each attack must
fail, and the rest of the machine must carry on: the victim guest keeps
running and `pyxen list` answers."""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path

import pytest

from tests.harness import Fifo
from tests.hostile import ATTACKS

pytestmark = [pytest.mark.root, pytest.mark.timeout(240),
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the sandbox's "
                                 "namespaces, uid maps and cgroups)")]

MACHINE = """
[platform]
memory = 2048
[dom0]
memory = 256
[domain.disk-dd]
driver_domain = true
memory = 64
[domain.victim]
memory = 64
disk = ["backend=disk-dd, vdev=xvda, size=8M, target=victim.img"]
"""


def _status(pid: int) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in
                Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)


def _pids(system) -> dict[str, int]:
    return {"victim": system.pid_of("victim"), "hv": system.hypervisor_pid(),
            "dom0": system.pid_of("Domain-0")}


def _still_fine(system) -> None:
    rows = system.list()  # Dom0 and the hypervisor answer...
    assert rows["victim"]["state"][3:5] == "--", rows  # ...and the victim runs
    assert rows["disk-dd"]["state"][3:5] == "--", rows
    assert os.path.exists(f"/proc/{system.pid_of('victim')}")


def test_a_domain_runs_unprivileged_in_namespaces_of_its_own(system):
    system.boot(system.write_topology(MACHINE))
    hv = system.hypervisor_pid()
    domid = system.list()["victim"]["domid"]
    pid = system.pid_of("victim")
    status = _status(pid)
    assert status["PPid"] == str(hv)  # still the hypervisor's own child
    assert status["Uid"].split() == [str(0x50000 + domid)] * 4
    assert status["Gid"].split() == [str(0x50000 + domid)] * 4
    assert status["Groups"].strip() == ""
    # A guest keeps only what configuring a TAP in its own (empty) network
    # namespace takes; nothing it could gain again, nothing in the bounding set.
    net = (1 << 10) | (1 << 12)  # CAP_NET_BIND_SERVICE, CAP_NET_ADMIN
    for key in ("CapInh", "CapBnd", "CapAmb"):
        assert int(status[key], 16) == 0, key
    assert int(status["CapPrm"], 16) == int(status["CapEff"], 16) == net
    # A driver domain keeps nothing at all, and no image is in its root.
    dd = system.pid_of("disk-dd")
    dd_status = _status(dd)
    for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(dd_status[key], 16) == 0, key
    dd_mounts = {m.split()[1] for m in Path(f"/proc/{dd}/mounts").read_text().splitlines()}
    assert {m for m in dd_mounts if m.startswith(str(system.run_dir))} \
        == {f"{system.run_dir}/hv"}, dd_mounts
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
    assert status["NSpid"].split() == [str(pid), "1"]  # pid 1 of its own namespace
    for ns in ("user", "pid", "mnt", "net", "ipc", "uts"):
        assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns
    # Its root: a tmpfs of read-only binds; the run dir shows only its channels.
    mounts = Path(f"/proc/{pid}/mounts").read_text().splitlines()
    root = next(m.split() for m in mounts if m.split()[1] == "/")
    assert root[2] == "tmpfs" and "ro" in root[3].split(",")
    run_dir = str(system.run_dir)
    under_run = {m.split()[1] for m in mounts if m.split()[1].startswith(run_dir)}
    assert under_run == {f"{run_dir}/hv"}, under_run
    assert not [m for m in mounts if m.split()[1] in ("/proc", "/sys", "/etc", "/home")]
    # The code and the interpreter are there read-only.
    repo = str(Path(__file__).resolve().parent.parent)
    code = [m.split() for m in mounts if m.split()[1].startswith(repo + "/")]
    assert {m[1].removeprefix(repo + "/") for m in code} >= {"hypervisor", "domains",
                                                             "backends", "frontends"}
    assert all("ro" in m[3].split(",") for m in code)
    # Dom0 is trusted (as in Xen) but still filtered and without new privileges.
    dom0 = _status(system.pid_of("Domain-0"))
    assert dom0["NoNewPrivs"] == "1" and dom0["Seccomp"] == "2"
    assert _status(hv)["Seccomp"] == "2"
    assert oct(system.run_dir.stat().st_mode & 0o777) == "0o700"


def test_info_lists_every_layer_and_the_boot_log_says_so(system):
    system.boot(system.write_topology(MACHINE))
    info = dict(re.split(r"\s*: ", line, maxsplit=1)
                for line in system.cli("info").stdout.splitlines())
    assert info["sandbox"].split() == ["namespaces", "uid", "root", "caps", "nnp", "nodump",
                                       "seccomp", "cgroup-memory", "cgroup-pids",
                                       "cgroup-cpu", "env"]
    assert info["sandbox_missing"] == "none"
    log = (system.run_dir / "logs" / "hypervisor.log").read_text()
    assert "sandbox: active layers: namespaces uid root" in log and "MISSING" not in log


def test_no_sandbox_says_so_everywhere(system):
    proc = system.cli("boot", "--detach", "--no-sandbox",
                      str(system.write_topology(MACHINE)))
    system.booted = True
    assert "--no-sandbox" in proc.stderr and "benchmark" in proc.stderr
    info = system.cli("info").stdout
    assert re.search(r"^sandbox\s+: off", info, re.MULTILINE)
    assert "namespaces (off (pyxen boot --no-sandbox))" in info
    assert _status(system.pid_of("victim"))["Uid"].split()[0] == "0"


def test_help_says_no_sandbox_is_for_benchmarks_only(system):
    out = system.cli("boot", "--help").stdout
    assert "--no-sandbox" in out and "BENCHMARK COMPARISONS ONLY" in out


def test_os_attacks_from_a_guest_fail_and_the_machine_carries_on(system):
    out = Fifo(system.run_dir, "out")
    system.env["PYXEN_TEST_SECRET_TOKEN"] = "hunter2"  # what must not reach a domain
    system.boot(system.write_topology(MACHINE))
    pids = _pids(system)
    cfg = system.write_topology(textwrap.dedent(f"""\
        name = "hostile"
        memory = 64
        workload = "tests.hostile:probe"
        extra = "out={out.path} victim={pids['victim']} hv={pids['hv']} image=victim.img"
        {Fifo.binds(out)}
        """), "hostile.cfg")
    system.cli("create", str(cfg))
    report = out.read_json()
    # Other domains' memory, the hypervisor's fds and the host's network
    # namespace are out of sight: there is no /proc at all.
    for key in ("proc_mem", "hv_fds", "map_files", "host_netns"):
        assert report[key] == "ENOENT", (key, report[key])
    # Dom0's control socket, xenstored's, other guests' images, host files:
    # not in its root.
    for key in ("control_socket", "xenstored_socket", "other_image", "shadow"):
        assert report[key] == "ENOENT", (key, report[key])
    assert report["run_dir"] == ["hv", "out"]  # its channels, and what it binds
    domid = system.list()["hostile"]["domid"]
    assert report["hv_dir"] == [f"{domid}.hc", f"{domid}.up"]  # doorbells have no path
    # pyxen's source is read-only (its files are root's anyway: EACCES
    # comes first; a new file meets the read-only mount).
    assert report["source_write"] in ("EACCES", "EROFS")
    assert report["source_create"] == "EROFS"
    # Root of nothing: no capabilities but those over its own empty network
    # namespace, no new privileges, not dumpable, filtered.
    assert (report["caps"], report["no_new_privs"], report["dumpable"],
            report["seccomp"]) == ((1 << 10) | (1 << 12), 1, 0, 2)
    assert report["pid"] == 1
    # The launcher's environment stayed outside (the test's own has HOME,
    # PYXEN_RUN_DIR ... and a token would be there too).
    assert set(report["environ"]) <= {"PATH", "LANG", "PYTHONPATH", "PYTHONHASHSEED",
                                      "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE",
                                      "PYXEN_MACHINE"} \
        | {k for k in report["environ"] if k.startswith("LC_")}, report["environ"]
    # The fork bomb stops at its task limit, far below 200.
    assert report["fork_bomb"]["forked"] < 150 and report["fork_bomb"]["error"] == "EAGAIN"
    _still_fine(system)
    assert system.list()["hostile"]["state"][3:5] == "--"


def test_calls_only_an_attacker_makes_kill_the_attacker(system):
    """ptrace, process_vm_*, pidfd_*, signals to others, setns, unshare,
    mount, bpf, perf_event_open, keys, modules: the seccomp filter kills the
    guest (SIGSYS) on the spot; its victims never notice."""
    system.boot(system.write_topology(MACHINE))
    pids = _pids(system)
    for attack in ATTACKS:
        out = Fifo(system.run_dir, f"out-{attack}")
        name = f"x-{attack}".replace("_", "-")
        cfg = system.write_topology(textwrap.dedent(f"""\
            name = "{name}"
            memory = 32
            on_crash = "preserve"
            workload = "tests.hostile:attack"
            extra = "out={out.path} attack={attack} victim={pids['victim']} \\
            hv={pids['hv']} dom0={pids['dom0']}"
            {Fifo.binds(out)}
            """).replace("\\\n", ""), f"{name}.cfg")
        system.cli("create", str(cfg))
        assert out.read_json() == {"ready": attack}
        system.wait(name, "crashed")
        assert re.search(rf"{name}: crashed \(exit status -31\)", system.cli("dmesg").stdout), \
            attack  # SIGSYS: the filter killed it
        system.cli("destroy", name)
        _still_fine(system)
        assert _pids(system) == pids  # nobody else died or restarted


def test_a_guest_cannot_take_more_memory_than_its_own(system):
    """1 GiB in a 64 MiB guest: its memory cgroup stops it (the kernel's OOM
    killer ends it), nobody else is touched."""
    out = Fifo(system.run_dir, "out")
    system.boot(system.write_topology(MACHINE))
    pids = _pids(system)
    cfg = system.write_topology(textwrap.dedent(f"""\
        name = "hog"
        memory = 64
        on_crash = "preserve"
        workload = "tests.hostile:hog"
        extra = "out={out.path}"
        {Fifo.binds(out)}
        """), "hog.cfg")
    system.cli("create", str(cfg))
    assert out.read_json() == {"ready": True}
    system.wait("hog", "crashed")
    assert "hog: crashed (exit status -9)" in system.cli("dmesg").stdout
    _still_fine(system)
    assert _pids(system) == pids
