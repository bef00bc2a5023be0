"""credit2 weights and caps: the weight -> nice mapping (where there is no
cpu cgroup), the topology keys, the scheduler_op hypercall, and a booted
system whose weights and caps are its domains' cgroups' CPU shares and
quotas."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

import hypervisor.ops  # noqa: F401  (registers the hypercall handlers)
from domains.dom0.topology import (
    DomainConfig,
    TopologyError,
    load_domain_config,
    load_topology,
)
from domains.dom0.xlformat import format_sched_credit2
from hypervisor import machine as machine_mod
from hypervisor.credit2 import renice_threads, thread_nices, weight_to_nice
from hypervisor.dispatch import Call, dispatch
from hypervisor.domain import Domain
from hypervisor.jail.cgroups import DomainCgroup
from hypervisor.machine import Machine, Platform
from hypervisor.public.domctl import (
    XEN_SCHEDULER_CREDIT,
    XEN_SCHEDULER_CREDIT2,
    XEN_DOMCTL_SCHEDOP_getinfo,
    XEN_DOMCTL_SCHEDOP_putinfo,
    XEN_DOMCTL_scheduler_op,
)
from hypervisor.public.errno import EINVAL, EPERM
from hypervisor.public.xen import HYPERVISOR_domctl

pytestmark = pytest.mark.timeout(120)


# --- weight -> nice (pure) ---------------------------------------------------------


@pytest.mark.parametrize("weight,nice", [
    (256, 0), (512, -3), (128, 3), (1024, -6), (64, 6), (320, -1), (200, 1),
    (384, -2), (65535, -20), (1, 19), (2, 19), (8192, -16),
])
def test_weight_to_nice(weight, nice):
    assert weight_to_nice(weight) == nice


def test_more_weight_never_means_a_higher_nice():
    nices = [weight_to_nice(w) for w in range(1, 65536, 7)]
    assert nices == sorted(nices, reverse=True)
    assert (min(nices), max(nices)) == (-20, 19)


@pytest.mark.parametrize("weight", [0, -1, 65536])
def test_weight_out_of_range_has_no_nice(weight):
    with pytest.raises(ValueError):
        weight_to_nice(weight)


def test_renice_reaches_every_thread_of_a_process():
    # A process with a few threads, reniced from outside: positive nice
    # values need no privilege, so this runs as any user.
    code = ("import threading, sys, time\n"
            "for _ in range(3): threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
            "print('up', flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "up\n"
        assert renice_threads(proc.pid, 3) == 4
        assert set(thread_nices(proc.pid).values()) == {3}
    finally:
        proc.kill()
        proc.wait()
    with pytest.raises(ProcessLookupError):
        renice_threads(proc.pid, 3)


# --- the topology's weight key -------------------------------------------------------

HEAD = "[platform]\npcpus = 2\nmemory = 4096\n\n[dom0]\nmemory = 512\n"


def _load(tmp_path: Path, text: str):
    path = tmp_path / "t.toml"
    path.write_text(text)
    return path, load_topology(path)


def test_weight_defaults_to_256_and_is_taken_where_given(tmp_path):
    _, t = _load(tmp_path, HEAD + "weight = 384\n[domain.g]\n[domain.h]\nweight = 512\n")
    assert (t.dom0.weight, t.domain("g").weight, t.domain("h").weight) == (384, 256, 512)
    h = t.domain("h")
    assert DomainConfig.from_dict(h.to_dict()) == h
    with pytest.raises(ValueError):
        DomainConfig.from_dict({**h.to_dict(), "weight": "512"})


@pytest.mark.parametrize("value,words", [
    ("0", "between 1 and 65535, got 0"), ("65536", "between 1 and 65535"),
    ("-5", "between 1 and 65535"), ('"512"', "expected integer, got string"),
    ("true", "expected integer, got boolean"), ("2.5", "expected integer, got float"),
])
def test_bad_weight_is_one_error_naming_the_key(tmp_path, value, words):
    path = tmp_path / "t.toml"
    path.write_text(HEAD + f"[domain.g]\nmemory = 64\nweight = {value}\n")
    with pytest.raises(TopologyError) as e:
        load_topology(path)
    assert (e.value.line, e.value.key) == (9, "domain.g.weight")
    assert words in e.value.message
    path.write_text(HEAD + f"weight = {value}\n")
    with pytest.raises(TopologyError) as e:
        load_topology(path)
    assert (e.value.line, e.value.key) == (7, "dom0.weight")


def test_create_file_takes_a_weight(tmp_path):
    path = tmp_path / "g.cfg"
    path.write_text('name = "g"\nweight = 1024\n')
    assert load_domain_config(path).weight == 1024


def test_default_topology_weights_its_driver_domains():
    from deploy import DEFAULT_TOPOLOGY

    t = load_topology(DEFAULT_TOPOLOGY)
    assert {d.name: d.weight for d in t.all_domains} == {
        "Domain-0": 256, "disk-dd": 512, "net-dd": 512, "guest1": 256, "guest2": 256}


# --- xl's table ------------------------------------------------------------------------


def test_format_is_xls():
    rows = [{"name": "Domain-0", "domid": 0, "weight": 256, "cap": 0},
            {"name": "disk-dd", "domid": 1, "weight": 512, "cap": 0}]
    assert format_sched_credit2(rows) == textwrap.dedent("""\
        Cpupool Pool-0: [sched params unavailable]
        Name                                ID Weight  Cap
        Domain-0                             0    256    0
        disk-dd                              1    512    0
        """)
    assert format_sched_credit2(rows[1:], pool=False).splitlines()[0].startswith("Name ")


# --- the hypercall (a machine without processes) -------------------------------------


class _Transport:
    def endpoints(self, domid): return {}
    def attach(self, dom): pass
    def detach(self, dom): pass
    def upcall(self, domid, port): pass
    def reply(self, token, rc, result): pass


def _machine(tmp_path: Path) -> tuple[Machine, Domain, Domain]:
    m = Machine(Platform("virt", 2, 1024), tmp_path, _Transport())

    def dom(domid: int, privileged: bool) -> Domain:
        # No memory, grant table or physmap: the scheduler uses none of them.
        d = Domain(domid=domid, name=f"d{domid}", privileged=privileged, max_vcpus=1,
                   max_pages=1, ram=None, shared_info=None, gnttab=None,  # type: ignore[arg-type]
                   physmap=None)  # type: ignore[arg-type]
        m.domains[domid] = d
        return d

    return m, dom(0, True), dom(1, False)


def _sched(m: Machine, caller: Domain, domid: int, **args):
    return dispatch(Call(m, caller, 0, None), HYPERVISOR_domctl, XEN_DOMCTL_scheduler_op,
                    {"domain": domid, "sched_id": XEN_SCHEDULER_CREDIT2, **args})


def test_scheduler_op_put_and_get(tmp_path):
    m, dom0, guest = _machine(tmp_path)
    get = {"cmd": XEN_DOMCTL_SCHEDOP_getinfo}
    assert _sched(m, dom0, 1, **get) == (0, {"sched_id": XEN_SCHEDULER_CREDIT2,
                                            "cmd": XEN_DOMCTL_SCHEDOP_getinfo,
                                            "credit2": {"weight": 256, "cap": 0}})
    put = {"cmd": XEN_DOMCTL_SCHEDOP_putinfo}
    assert _sched(m, dom0, 1, **put, credit2={"weight": 512, "cap": 0}) == (0, None)
    assert guest.weight == 512
    # Weight 0 leaves it as it is, as in Xen.
    assert _sched(m, dom0, 1, **put, credit2={"weight": 0, "cap": 0}) == (0, None)
    assert _sched(m, dom0, 1, **get)[1]["credit2"] == {"weight": 512, "cap": 0}


@pytest.mark.parametrize("args,words", [
    ({"cmd": XEN_DOMCTL_SCHEDOP_putinfo, "credit2": {"weight": 65536, "cap": 0}},
     "between 1 and 65535"),
    ({"cmd": XEN_DOMCTL_SCHEDOP_putinfo, "credit2": {"weight": -1, "cap": 0}},
     "between 1 and 65535"),
    ({"cmd": XEN_DOMCTL_SCHEDOP_putinfo, "credit2": {"weight": 512, "cap": 101}},
     "between 0 (none) and 100"),
    ({"cmd": XEN_DOMCTL_SCHEDOP_putinfo, "credit2": {"weight": 512, "cap": -1}},
     "between 0 (none) and 100"),
    ({"cmd": XEN_DOMCTL_SCHEDOP_putinfo, "credit2": {"weight": 512},
      "sched_id": XEN_SCHEDULER_CREDIT}, "not this machine's"),
    ({"cmd": 7}, "no scheduler_op command 7"),
])
def test_scheduler_op_refuses_and_changes_nothing(tmp_path, args, words):
    m, dom0, guest = _machine(tmp_path)
    rc, message = _sched(m, dom0, 1, **args)
    assert rc == -EINVAL and words in message
    assert guest.weight == 256


def test_scheduler_op_is_privileged(tmp_path):
    m, _, guest = _machine(tmp_path)
    rc, _ = _sched(m, guest, 1, cmd=XEN_DOMCTL_SCHEDOP_putinfo,
                   credit2={"weight": 65535, "cap": 0})
    assert rc == -EPERM and guest.weight == 256


def test_a_host_that_refuses_keeps_the_weight_and_says_so(tmp_path, monkeypatch):
    m, dom0, guest = _machine(tmp_path)
    guest.process = SimpleNamespace(pid=os.getpid(), alive=True)

    def refuse(pid, nice):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(machine_mod, "renice_threads", refuse)
    assert _sched(m, dom0, 1, cmd=XEN_DOMCTL_SCHEDOP_putinfo,
                  credit2={"weight": 512, "cap": 0}) == (0, None)
    assert guest.weight == 512
    [line] = [line for line in m.console if "d1" in line]
    assert "host did not allow nice -3" in line and "weight 512" in line


def test_putinfo_renices_a_live_domain(tmp_path, monkeypatch):
    m, dom0, guest = _machine(tmp_path)
    guest.process = SimpleNamespace(pid=4242, alive=True)
    calls = []
    monkeypatch.setattr(machine_mod, "renice_threads", lambda pid, nice: calls.append((pid, nice)))
    _sched(m, dom0, 1, cmd=XEN_DOMCTL_SCHEDOP_putinfo, credit2={"weight": 128, "cap": 0})
    assert calls == [(4242, 3)]
    assert "d1 d1: credit2 weight 128 cap 0: its threads run at nice 3" in m.console[-1]


def test_a_cap_without_a_cpu_cgroup_is_refused_not_recorded(tmp_path):
    m, dom0, guest = _machine(tmp_path)
    guest.process = SimpleNamespace(pid=4242, alive=True)  # no cgroup: no jail
    rc, message = _sched(m, dom0, 1, cmd=XEN_DOMCTL_SCHEDOP_putinfo,
                         credit2={"weight": 0, "cap": 50})
    assert rc == -EINVAL and "no cpu cgroup" in message
    assert (guest.weight, guest.cap) == (256, 0)


def test_putinfo_sets_the_cgroups_share_and_quota(tmp_path):
    m, dom0, guest = _machine(tmp_path)
    cpu = tmp_path / "cg"
    cpu.mkdir()
    for name in ("cpu.shares", "cpu.cfs_quota_us", "cpu.cfs_period_us"):
        (cpu / name).write_text("0")
    guest.process = SimpleNamespace(pid=4242, alive=True,
                                    jail=SimpleNamespace(cgroup=DomainCgroup({"cpu": cpu})))
    assert _sched(m, dom0, 1, cmd=XEN_DOMCTL_SCHEDOP_putinfo,
                  credit2={"weight": 512, "cap": 50}) == (0, None)
    assert (cpu / "cpu.shares").read_text() == "2048"
    assert (cpu / "cpu.cfs_quota_us").read_text() == "50000"
    assert (cpu / "cpu.cfs_period_us").read_text() == "100000"
    assert "cgroup cpu share 2048/1024, quota 50% of a pCPU" in m.console[-1]
    # Weight 0 keeps the weight; cap 0 lifts the cap (Xen's putinfo).
    assert _sched(m, dom0, 1, cmd=XEN_DOMCTL_SCHEDOP_putinfo,
                  credit2={"weight": 0, "cap": 0}) == (0, None)
    assert (guest.weight, guest.cap) == (512, 0)
    assert (cpu / "cpu.cfs_quota_us").read_text() == "-1"


# --- a booted system -------------------------------------------------------------------

TOPOLOGY = """
[platform]
pcpus = 2
memory = 1024

[dom0]
memory = 256
weight = 384

[domain.worker]
memory = 32
vcpus = 2
weight = 512
cap = 150
on_crash = "restart"
"""


def _cpu_cgroup(pid: int) -> Path:
    """The cpu cgroup (v1 or v2) directory process `pid` is in."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _hid, names, path = line.split(":", 2)
        if "cpu" in names.split(","):
            return Path("/sys/fs/cgroup/cpu") / path.lstrip("/")
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return Path("/sys/fs/cgroup/unified") / line[3:].lstrip("/")
    raise AssertionError(f"process {pid} has no cpu cgroup")


def _share(pid: int) -> tuple[int, int | None]:
    """(cpu.shares, quota in us or None) of process `pid`'s cgroup."""
    group = _cpu_cgroup(pid)
    if (group / "cpu.shares").exists():
        quota = int((group / "cpu.cfs_quota_us").read_text())
        return int((group / "cpu.shares").read_text()), None if quota < 0 else quota
    weight = int((group / "cpu.weight").read_text())
    quota_text = (group / "cpu.max").read_text().split()[0]
    return weight * 1024 // 100, None if quota_text == "max" else int(quota_text)


def _table(system, *args: str) -> dict[str, tuple[int, int, int]]:
    lines = system.cli("sched-credit2", *args).stdout.splitlines()
    if not args:
        assert lines.pop(0) == "Cpupool Pool-0: [sched params unavailable]"
    assert lines[0].split() == ["Name", "ID", "Weight", "Cap"]
    return {name: (int(domid), int(w), int(cap))
            for name, domid, w, cap in (line.split() for line in lines[1:])}


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (cgroups)")
def test_weights_and_caps_are_the_domains_cgroups_shares_and_quotas(system):
    system.boot(system.write_topology(TOPOLOGY))
    worker = system.pid_of("worker")
    table = _table(system)
    assert table["worker"][1:] == (512, 150) and table["Domain-0"] == (0, 384, 0)
    assert _share(worker) == (2048, 150_000)
    # Dom0's weight comes from the loader and is applied when it is ready.
    assert _share(system.pid_of("Domain-0")) == (1536, None)
    # Each domain has a group of its own, under pyxen's, under ours.
    assert _cpu_cgroup(worker) != _cpu_cgroup(system.pid_of("Domain-0"))
    assert _cpu_cgroup(worker).parent.name == f"pyxen-{system.hypervisor_pid()}"

    system.cli("sched-credit2", "-d", "worker", "-w", "128")
    assert _table(system, "-d", "worker") == {"worker": (table["worker"][0], 128, 150)}
    assert _share(worker) == (512, 150_000)
    assert "worker: credit2 weight 128 cap 150: cgroup cpu share 512/1024" in \
        system.cli("dmesg").stdout
    system.cli("sched-credit2", "-d", "worker", "-c", "0")
    assert _share(worker) == (512, None)

    for args, words in ((["-d", "worker", "-w", "0"], "weight 0 is out of range (1 to 65535)"),
                        (["-d", "worker", "-w", "70000"], "out of range"),
                        (["-d", "worker", "-w", "lots"], "'lots' is not a number"),
                        (["-d", "worker", "-c", "201"], "between 0 (none) and 200"),
                        (["-d", "worker", "-c", "x"], "'x' is not a number"),
                        (["-d", "nosuch", "-w", "300"], "no domain named 'nosuch'"),
                        (["-d", "nosuch"], "no domain named 'nosuch'"),
                        (["-w", "300"], "-w needs a domain")):
        proc = system.cli("sched-credit2", *args, check=False)
        assert proc.returncode == 1 and words in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert _share(worker) == (512, None)

    # A restarted domain gets its configured weight and cap again, as libxl
    # sets them; its old group is gone.
    old_group = _cpu_cgroup(worker)
    os.kill(worker, 9)
    system.wait("worker", "running", not_domid=table["worker"][0])
    assert _table(system, "-d", "worker")["worker"][1:] == (512, 150)
    assert _share(system.pid_of("worker")) == (2048, 150_000)
    assert not old_group.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="a negative nice needs root")
def test_without_a_sandbox_weights_are_the_nice_values_of_the_domains_threads(system):
    system.cli("boot", "--detach", "--no-sandbox",
               str(system.write_topology(TOPOLOGY.replace("cap = 150\n", ""))))
    system.booted = True
    worker = system.pid_of("worker")
    assert set(thread_nices(worker).values()) == {-3}
    assert set(thread_nices(system.pid_of("Domain-0")).values()) == {-2}
    system.cli("sched-credit2", "-d", "worker", "-w", "128")
    assert set(thread_nices(worker).values()) == {3}
    proc = system.cli("sched-credit2", "-d", "worker", "-c", "50", check=False)
    assert proc.returncode == 1 and "no cpu cgroup" in proc.stderr
