"""The sandbox's parts without a machine: cgroup discovery and limits, the
environment allow-list, the root's plan, seccomp filters, capabilities and
namespaces (the last in throw-away child processes)."""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import sys
from pathlib import Path

import pytest

from hypervisor.jail import binds, capabilities, cgroups, namespaces, seccomp_policy
from hypervisor.jail.env import domain_environment
from hypervisor.jail.sandbox import LAYERS, Sandbox, memory_limit, sandbox_report, task_limit

pytestmark = pytest.mark.timeout(60)

# This machine kind: v1 memory, pids and cpu, a v2 tree with only hugetlb.
MOUNTINFO_V1 = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
CGROUP_V1 = "8:pids:/\n4:memory:/agents/a1\n1:cpu:/\n0::/\n"


def test_v1_controllers_are_found_under_our_own_cgroups(tmp_path):
    unified = tmp_path / "unified"
    unified.mkdir()
    (unified / "cgroup.controllers").write_text("hugetlb\n")
    found = cgroups.find_hierarchies(MOUNTINFO_V1.replace("/sys/fs/cgroup/unified",
                                                          str(unified)), CGROUP_V1)
    assert {c: (str(h.mount), h.v2, h.own) for c, h in found.items()} == {
        "memory": ("/sys/fs/cgroup/memory", False, "/agents/a1"),
        "pids": ("/sys/fs/cgroup/pids", False, "/"),
        "cpu": ("/sys/fs/cgroup/cpu", False, "/")}
    assert found["memory"].base == Path("/sys/fs/cgroup/memory/agents/a1")


def test_v2_is_preferred_where_it_offers_the_controller(tmp_path):
    v2 = tmp_path / "v2"
    (v2 / "user.slice").mkdir(parents=True)
    (v2 / "user.slice" / "cgroup.controllers").write_text("cpu memory pids io\n")
    mountinfo = f"41 31 0:38 / {v2} rw,relatime - cgroup2 cgroup2 rw\n"
    found = cgroups.find_hierarchies(mountinfo, "0::/user.slice\n")
    assert {c: (h.v2, str(h.base)) for c, h in found.items()} == {
        c: (True, str(v2 / "user.slice")) for c in ("memory", "pids", "cpu")}


def test_nothing_mounted_is_every_controller_missing():
    box = cgroups.Cgroups(cgroups.find_hierarchies("", ""), "pyxen-1")
    assert not box.parents
    assert set(box.missing) == {"memory", "pids", "cpu"}
    assert "not mounted" in box.missing["cpu"]


@pytest.mark.parametrize("weight,shares,cpu_weight", [
    (256, 1024, 100), (512, 2048, 200), (128, 512, 50), (1, 4, 1), (65535, 262140, 10000)])
def test_weight_becomes_a_share(weight, shares, cpu_weight):
    assert cgroups.weight_to_shares(weight) == shares
    assert cgroups.weight_to_cpu_weight(weight) == cpu_weight


def test_cap_becomes_a_quota():
    assert cgroups.cap_to_quota_us(0) is None
    assert cgroups.cap_to_quota_us(50) == 50_000
    assert cgroups.cap_to_quota_us(200) == 200_000


def _files(path: Path, *names: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name in names:
        (path / name).write_text("")
    return path


def test_a_domain_group_writes_v1_files(tmp_path):
    mem = _files(tmp_path / "memory", "memory.limit_in_bytes", "cgroup.procs")
    pids = _files(tmp_path / "pids", "pids.max", "cgroup.procs")
    cpu = _files(tmp_path / "cpu", "cpu.shares", "cpu.cfs_quota_us", "cpu.cfs_period_us",
                 "cgroup.procs")
    group = cgroups.DomainCgroup({"memory": mem, "pids": pids, "cpu": cpu})
    assert group.limit_memory(64 << 20) and group.limit_tasks(98)
    assert group.set_weight(512) and group.set_cap(25)
    group.add(4242)
    assert (mem / "memory.limit_in_bytes").read_text() == str(64 << 20)
    assert (pids / "pids.max").read_text() == "98"
    assert (cpu / "cpu.shares").read_text() == "2048"
    assert (cpu / "cpu.cfs_quota_us").read_text() == "25000"
    assert {(p / "cgroup.procs").read_text() for p in (mem, pids, cpu)} == {"4242"}


def test_a_domain_group_writes_v2_files(tmp_path):
    group_dir = _files(tmp_path / "g", "memory.max", "pids.max", "cpu.weight", "cpu.max",
                       "cgroup.procs")
    group = cgroups.DomainCgroup({c: group_dir for c in ("memory", "pids", "cpu")})
    group.limit_memory(1 << 30)
    group.set_weight(128)
    group.set_cap(0)
    assert (group_dir / "memory.max").read_text() == str(1 << 30)
    assert (group_dir / "cpu.weight").read_text() == "50"
    assert (group_dir / "cpu.max").read_text() == "max 100000"


def test_a_group_without_a_controller_says_so():
    group = cgroups.DomainCgroup({})
    assert not group.limit_memory(1) and not group.set_weight(256) and not group.set_cap(5)


def test_limits_leave_room_for_windows_and_the_interpreter_but_not_a_gib():
    assert memory_limit(64 << 20) < 1 << 30
    assert memory_limit(256 << 20) >= 2 * (256 << 20)
    assert task_limit(1) < 200 and task_limit(128) > 256


def test_the_environment_is_an_allow_list():
    env = domain_environment({"PATH": "/bin", "LANG": "C.UTF-8", "LC_ALL": "C",
                              "PYTHONPATH": "/src", "HOME": "/root",
                              "AWS_SECRET_ACCESS_KEY": "x", "GITHUB_TOKEN": "y",
                              "SSH_AUTH_SOCK": "/tmp/agent", "LD_PRELOAD": "/evil.so"},
                             PYXEN_STANDBY="3:1")
    assert env == {"PATH": "/bin", "LANG": "C.UTF-8", "LC_ALL": "C", "PYTHONPATH": "/src",
                   "PYXEN_STANDBY": "3:1"}


def test_the_root_holds_the_interpreter_the_code_and_the_workload_only(tmp_path):
    chan = tmp_path / "hv" / "j1"
    chan.mkdir(parents=True)
    fifo = tmp_path / "out"
    fifo.write_text("")
    plan, symlinks = binds.plan("tests.workloads:timer", str(chan), str(tmp_path),
                                [(str(fifo), False)])
    by_dst = {b.dst: b for b in plan}
    repo = Path(__file__).resolve().parent.parent
    for package in ("hypervisor", "domains", "backends", "frontends", "tests"):
        assert not by_dst[str(repo / package)].writable
    assert str(repo) not in by_dst  # its packages, not the checkout (.git ...)
    assert os.path.realpath(sys.prefix) in by_dst
    assert by_dst[str(tmp_path / "hv")] == binds.Bind(str(chan), str(tmp_path / "hv"), True)
    assert not by_dst[str(fifo)].writable
    writable = [b.dst for b in plan if b.writable]
    assert writable == [str(tmp_path / "hv")]
    etc = [b.dst for b in plan if b.dst.startswith("/etc")]
    assert etc == ["/etc/ld.so.cache"]
    assert not any(b.dst.startswith(("/home", "/root/.ssh", "/proc", "/sys", "/run"))
                   for b in plan)
    assert all(os.path.isabs(p) for p in symlinks)


def test_a_workload_on_a_pythonpath_of_its_own_is_bound(tmp_path, monkeypatch):
    pkg = tmp_path / "mywork"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("def main(kernel): pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    plan, _ = binds.plan("mywork:main", str(tmp_path), str(tmp_path))
    assert binds.Bind(str(pkg), str(pkg), False) in plan
    plan, _ = binds.plan("nosuchpackage.x:main", str(tmp_path), str(tmp_path))
    assert not [b for b in plan if "nosuchpackage" in b.dst]


def test_uids_are_one_per_domain_and_never_root():
    assert namespaces.domain_id(1) == 0x50001
    assert namespaces.domain_id(namespaces.MAX_DOMID) < 0x60000
    for bad in (0, -1, namespaces.MAX_DOMID + 1):
        with pytest.raises(ValueError):
            namespaces.domain_id(bad)


# --- seccomp and capabilities, in children -------------------------------------------


def _in_child(fn) -> int:
    """Run fn in a forked child; its exit status (negative: the signal)."""
    pid = os.fork()
    if pid == 0:
        try:
            os._exit(fn() or 0)
        except BaseException:  # noqa: BLE001 - a forked child must never return into pytest
            os._exit(99)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _raw(name: str, *args: int) -> int:
    import pyseccomp

    nr = pyseccomp.resolve_syscall(pyseccomp.system_arch(), name)
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.syscall(ctypes.c_long(nr), *(ctypes.c_long(a) for a in args))
    return -ctypes.get_errno() if rc == -1 else rc


needs_seccomp = pytest.mark.skipif(not seccomp_policy.available()[0],
                                   reason="needs seccomp and pyseccomp")


@needs_seccomp
@pytest.mark.parametrize("role", seccomp_policy.ROLES)
def test_every_role_has_a_filter_that_compiles(role):
    seccomp_policy.build(role)
    seccomp_policy.build(role, learn=True)
    assert not seccomp_policy.ALLOWED[role] & (
        seccomp_policy.KILLED_HYPERVISOR if role == "hypervisor" else seccomp_policy.KILLED)


@needs_seccomp
@pytest.mark.parametrize("call,args", [
    ("ptrace", (16, 1, 0, 0)), ("process_vm_readv", (1, 0, 0, 0, 0, 0)),
    ("pidfd_open", (1, 0)), ("pidfd_getfd", (0, 0, 0)), ("setns", (0, 0)),
    ("unshare", (0x10000000,)), ("mount", (0, 0, 0, 0, 0)), ("bpf", (0, 0, 0)),
    ("perf_event_open", (0, 0, -1, -1, 0)), ("keyctl", (0, 0, 0, 0, 0)),
    ("init_module", (0, 0, 0)), ("kill", (1, 0)), ("tgkill", (1, 1, 0)),
])
def test_a_guest_is_killed_for_calls_only_an_attacker_makes(call, args):
    def child():
        seccomp_policy.install_role("guest")
        _raw(call, *args)
        return 0  # survived

    assert _in_child(child) == -signal.SIGSYS


@needs_seccomp
def test_a_guest_may_signal_itself_and_gets_enosys_for_unlisted_calls():
    def child():
        seccomp_policy.install_role("guest")
        signal.signal(signal.SIGUSR1, lambda *a: None)
        os.kill(os.getpid(), signal.SIGUSR1)  # itself: allowed
        if _raw("syncfs", 0) != -errno.ENOSYS:  # not on the list
            return 2
        if _raw("clone3", 0, 0) != -errno.ENOSYS:  # so glibc uses clone
            return 3
        pid = os.fork()  # clone without namespace flags
        if pid == 0:
            os._exit(7)
        return 0 if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 7 else 4

    assert _in_child(child) == 0


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CAP_SETPCAP to clear the "
                                                 "bounding set)")
def test_dropping_capabilities_leaves_none_and_no_way_back():
    def child():
        capabilities.drop_all(capabilities.NET_CAPABILITIES)
        with open("/proc/self/status") as f:
            status = dict(line.split(":", 1) for line in f)
        ok = (int(status["CapEff"], 16) == (1 << 12) | (1 << 10)
              and int(status["CapBnd"], 16) == 0 and int(status["CapInh"], 16) == 0
              and int(status["CapAmb"], 16) == 0 and status["NoNewPrivs"].strip() == "1")
        dumpable = ctypes.CDLL(None).prctl(3, 0, 0, 0, 0)
        return 0 if ok and dumpable == 0 else 1

    assert _in_child(child) == 0


# --- what the machine gives --------------------------------------------------------


def test_without_root_the_namespace_layers_are_missing_and_said_why(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    box = Sandbox.probe(tmp_path)
    assert not box.jails
    for name in ("namespaces", "uid", "root"):
        assert not box.layers[name].active and "needs root" in box.layers[name].why
    lines = sandbox_report(box)
    assert lines[0].startswith("sandbox: active layers:")
    assert any(line.startswith("sandbox: MISSING namespaces: needs root") for line in lines)
    box.close()


def test_no_sandbox_is_every_layer_off(tmp_path):
    box = Sandbox.probe(tmp_path, enabled=False)
    assert box.active() == [] and [layer.name for layer in box.missing()] == list(LAYERS)
    assert "OFF" in sandbox_report(box)[0]


# --- the topology's keys -------------------------------------------------------------


def test_bind_and_cap_keys(tmp_path):
    from domains.dom0.topology import DomainConfig, TopologyError, load_topology

    path = tmp_path / "t.toml"
    path.write_text('[platform]\nmemory = 1024\n[dom0]\nmemory = 256\n[domain.g]\n'
                    'cap = 150\nbind = ["/tmp/x.fifo", "/tmp/out/:rw", "/srv/data:ro"]\n')
    g = load_topology(path).domain("g")
    assert g.cap == 150
    assert g.binds == (("/tmp/x.fifo", False), ("/tmp/out", True), ("/srv/data", False))
    assert DomainConfig.from_dict(g.to_dict()) == g
    for bad, words in (('bind = ["relative/path"]', "absolute path"),
                       ("bind = [3]", "path string"), ("cap = -1", "cap"),
                       ('bind = "/tmp"', "expected array")):
        path.write_text('[platform]\nmemory = 1024\n[dom0]\nmemory = 256\n[domain.g]\n'
                        f"{bad}\n")
        with pytest.raises(TopologyError) as e:
            load_topology(path)
        assert words in str(e.value), (bad, str(e.value))


def test_the_toolstack_asks_for_what_each_sandbox_holds(tmp_path):
    from types import SimpleNamespace

    from domains.dom0.toolstack import Toolstack
    from domains.dom0.topology import load_topology

    image = tmp_path / "abs.img"
    path = tmp_path / "t.toml"
    path.write_text(f"""[platform]
memory = 1024
[dom0]
memory = 256
[domain.disk-dd]
driver_domain = true
[domain.net-dd]
driver_domain = true
uplink = ["bridge=xenbr0, tap=pyxq0, ip=10.9.0.254/24"]
[domain.g]
bind = ["/tmp/f"]
disk = ["backend=disk-dd, vdev=xvda, size=1M, target=rel.img",
        "backend=disk-dd, vdev=xvdb, size=1M, target={image}"]
vif = ["backend=net-dd, bridge=xenbr0"]
""")
    topology = load_topology(path)
    xs = SimpleNamespace(write=lambda *a: None)
    ts = Toolstack(None, xs, topology.platform, None, disk_dir=tmp_path / "disks")
    dd, nd, g = (topology.domain(n) for n in ("disk-dd", "net-dd", "g"))
    # No image in any sandbox: the disk driver domain gets each one as an
    # fd when the disk is published (PYXEN_op_pass_fd), a guest its TAPs.
    assert ts.sandbox_for(dd) == {"role": "driver"}
    assert not image.exists() and not (tmp_path / "disks").exists()
    assert ts.sandbox_for(nd) == {"role": "driver",
                                  "uplinks": [{"tap": "pyxq0", "ip": ["10.9.0.254/24"],
                                               "mtu": None, "mac": None}]}
    assert ts.sandbox_for(g) == {"role": "guest", "binds": [["/tmp/f", False]]}
