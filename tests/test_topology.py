"""Topology and domain config loading (domains/dom0/topology.py)."""

import os
import textwrap

import msgpack
import pytest

from deploy import DEFAULT_TOPOLOGY
from domains.dom0.topology import (
    DomainConfig,
    Platform,
    TopologyError,
    load_domain_config,
    load_topology,
)

pytestmark = pytest.mark.timeout(30)

HEAD = """\
[platform]
pcpus = 2
memory = 4096

[dom0]
memory = 512
"""


def write(tmp_path, text, name="topo.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path, text, loader=load_topology, **kw):
    path = write(tmp_path, text)
    with pytest.raises(TopologyError) as e:
        loader(path, **kw)
    err = e.value
    assert "\n" not in str(err)
    if err.key:
        assert str(err) == f"{path}:{err.line}: {err.key}: {err.message}"
    return err


def check(err, line, key, *words):
    assert (err.line, err.key) == (line, key), str(err)
    for w in words:
        assert w in err.message, str(err)


# --- good files --------------------------------------------------------------


def test_default_topology_loads():
    t = load_topology(DEFAULT_TOPOLOGY)
    assert t.platform == Platform("virt", 2, 4096)
    assert (t.dom0.name, t.dom0.memory, t.dom0.vcpus) == ("Domain-0", 512, 1)
    assert [d.name for d in t.domains] == ["disk-dd", "net-dd", "guest1", "guest2"]
    dd = t.domain("disk-dd")
    assert dd.driver_domain and dd.on_crash == "restart" and dd.restart_limit == (5, 60.0)
    g1 = t.domain("guest1")
    assert (g1.memory, g1.vcpus, g1.workload) == (256, 2, "demo")
    (disk,) = g1.disks
    assert (disk.backend, disk.vdev, disk.target, disk.size) == ("disk-dd", "xvda", "guest1.img", 64 << 20)
    (vif,) = g1.vifs
    assert (vif.backend, vif.bridge, vif.mac, vif.ip) == ("net-dd", "xenbr0", "00:16:3e:00:00:01", ("10.0.0.1",))
    assert t.domain("guest2").vifs[0].mac == "00:16:3e:00:00:02"


def test_defaults(tmp_path):
    t = load_topology(write(tmp_path, "[domain.g]\n"))
    assert t.platform == Platform("virt", os.cpu_count() or 1, 4096)
    assert t.dom0.memory == 512
    (g,) = t.domains
    assert (g.memory, g.maxmem, g.vcpus, g.maxvcpus, g.cpus) == (128, 128, 1, 1, None)
    assert (g.on_poweroff, g.on_reboot, g.on_crash, g.on_watchdog) == ("destroy", "restart", "destroy", "destroy")
    assert (g.workload, g.extra, g.restart_limit, g.driver_domain) == ("idle", "", (5, 60.0), False)
    assert (g.source, g.line) == (str(tmp_path / "topo.toml"), 1)


def test_driver_domain_defaults_to_restart_on_crash(tmp_path):
    t = load_topology(write(tmp_path, "[domain.dd]\ndriver_domain = true\n"))
    assert t.domains[0].on_crash == "restart"


def test_boot_order_puts_driver_domains_first(tmp_path):
    t = load_topology(write(tmp_path, HEAD + """
        [domain.a]
        disk = ["backend=dd2, vdev=xvda, target=a.img"]
        [domain.dd1]
        driver_domain = true
        [domain.b]
        [domain.dd2]
        driver_domain = true
    """))
    assert [d.name for d in t.domains] == ["dd1", "dd2", "a", "b"]


def test_cpus_syntax(tmp_path):
    t = load_topology(write(tmp_path, HEAD + """
        [domain.a]
        cpus = "0-1"
        [domain.b]
        cpus = "^0"
        [domain.c]
        cpus = [1]
        [domain.d]
        cpus = "all"
    """))
    assert [d.cpus for d in t.domains] == [(0, 1), (1,), (1,), None]


def test_inline_dotted_keys(tmp_path):
    t = load_topology(write(tmp_path, HEAD + """
        [domain]
        g.memory = 64
        h = { memory = 32, vcpus = 2 }
    """))
    assert [(d.name, d.memory) for d in t.domains] == [("g", 64), ("h", 32)]


# --- one error per kind of bad file -----------------------------------------


def test_unknown_key(tmp_path):
    err = error_of(tmp_path, HEAD + "[domain.g]\nmemory = 64\nmemroy = 64\n")
    check(err, 9, "domain.g.memroy", "unknown key 'memroy'", "did you mean 'memory'")


def test_unknown_section(tmp_path):
    err = error_of(tmp_path, "[platfrom]\npcpus = 2\n")
    check(err, 1, "platfrom", "unknown key", "did you mean 'platform'")


def test_dom0_takes_few_keys(tmp_path):
    err = error_of(tmp_path, HEAD + "on_crash = 'restart'\n")
    check(err, 7, "dom0.on_crash", "not allowed in [dom0]", "cpus, extra, memory, vcpus")


def test_wrong_type(tmp_path):
    err = error_of(tmp_path, HEAD + "[domain.g]\nvcpus = 1\nmemory = \"256\"\n")
    check(err, 9, "domain.g.memory", "expected integer, got string")


def test_boolean_is_not_an_integer(tmp_path):
    err = error_of(tmp_path, HEAD + "[domain.g]\nmemory = true\n")
    check(err, 8, "domain.g.memory", "expected integer, got boolean")


def test_memory_too_small(tmp_path):
    err = error_of(tmp_path, HEAD + "[domain.g]\nmemory = 8\n")
    check(err, 8, "domain.g.memory", "at least 16", "8")


def test_maxmem_below_memory(tmp_path):
    err = error_of(tmp_path, HEAD + "[domain.g]\nmemory = 64\nmaxmem = 32\n")
    check(err, 9, "domain.g.maxmem", "32", "64")


def test_too_many_vcpus(tmp_path):
    err = error_of(tmp_path, HEAD + "[domain.g]\nvcpus = 129\n")
    check(err, 8, "domain.g.vcpus", "between 1 and 128")


def test_bad_domain_name(tmp_path):
    err = error_of(tmp_path, HEAD + '\n[domain."bad name"]\n')
    check(err, 8, 'domain."bad name"', "bad domain name")


def test_domain0_name_reserved(tmp_path):
    err = error_of(tmp_path, HEAD + "[domain.Domain-0]\n")
    check(err, 7, "domain.Domain-0", "reserved")


def test_domain_not_a_table(tmp_path):
    err = error_of(tmp_path, HEAD + "[domain]\ng = 5\n")
    check(err, 8, "domain.g", "expected table, got integer")


def test_unknown_backend_points_at_the_element(tmp_path):
    err = error_of(tmp_path, HEAD + """
        [domain.g]
        disk = [
            "vdev=xvda, target=a.img",
            "backend=nosuch, vdev=xvdb, target=b.img",
        ]
    """)
    check(err, 11, "domain.g.disk", "disk[1]", "unknown backend domain 'nosuch'")


def test_backend_must_be_a_driver_domain(tmp_path):
    err = error_of(tmp_path, HEAD + """
        [domain.a]
        [domain.g]
        vif = ["backend=a"]
    """)
    check(err, 10, "domain.g.vif", "vif[0]", "'a' is not a driver domain")


def test_backend_driver_domain_order(tmp_path):
    err = error_of(tmp_path, HEAD + """
        [domain.dd1]
        driver_domain = true
        disk = ["backend=dd2, vdev=xvda, target=x"]
        [domain.dd2]
        driver_domain = true
    """)
    check(err, 10, "domain.dd1.disk", "'dd2' must come before 'dd1'")


def test_own_backend(tmp_path):
    err = error_of(tmp_path, HEAD + '[domain.dd]\ndriver_domain = true\nvif = ["backend=dd"]\n')
    check(err, 9, "domain.dd.vif", "its own backend")


def test_bad_disk_spec(tmp_path):
    err = error_of(tmp_path, HEAD + '[domain.g]\ndisk = ["img,qcow2,xvda"]\n')
    check(err, 8, "domain.g.disk", "disk[0]", "qcow2", "not supported by pyxen")


def test_disk_spec_not_a_string(tmp_path):
    err = error_of(tmp_path, HEAD + '[domain.g]\ndisk = [1]\n')
    check(err, 8, "domain.g.disk", "disk[0]: expected string, got integer")


def test_bad_vif_spec(tmp_path):
    err = error_of(tmp_path, HEAD + '[domain.g]\nvif = ["mac=00:16:3e:00:00"]\n')
    check(err, 8, "domain.g.vif", "vif[0]", "00:16:3e:00:00")


def test_memory_overflow(tmp_path):
    err = error_of(tmp_path, HEAD + """
        [domain.a]
        memory = 2048
        [domain.b]
        memory = 1024
        [domain.c]
        vcpus = 1
        memory = 1024
    """)
    check(err, 14, "domain.c.memory", "4608 MiB", "4096 MiB")


def test_dom0_memory_overflow(tmp_path):
    err = error_of(tmp_path, "[platform]\nmemory = 256\n[dom0]\nmemory = 512\n")
    check(err, 4, "dom0.memory", "512", "256")


@pytest.mark.parametrize(
    "value, words",
    [
        ('"0-2"', ["CPU 2", "2 pCPUs"]),
        ('"nodes:0"', ["NUMA"]),
        ('"2-1"', ["2-1"]),
        ("[0, 5]", ["CPU 5"]),
        ("1", ["expected string or array, got integer"]),
    ],
)
def test_bad_cpus(tmp_path, value, words):
    err = error_of(tmp_path, HEAD + f"[domain.g]\ncpus = {value}\n")
    check(err, 8, "domain.g.cpus", *words)


@pytest.mark.parametrize(
    "value, words",
    [
        ('"coredump-destroy"', ["'coredump-destroy' is not supported by pyxen"]),
        ('"soft-reset"', ["not supported by pyxen"]),
        ('"explode"', ["expected one of destroy, restart, preserve, rename-restart", "'explode'"]),
    ],
)
def test_bad_action(tmp_path, value, words):
    err = error_of(tmp_path, HEAD + f"[domain.g]\non_crash = {value}\n")
    check(err, 8, "domain.g.on_crash", *words)


@pytest.mark.parametrize("value", ["[5]", "[5, 0]", '["5", 60]', "[-1, 60]", "[true, 60]"])
def test_bad_restart_limit(tmp_path, value):
    err = error_of(tmp_path, HEAD + f"[domain.g]\nrestart_limit = {value}\n")
    check(err, 8, "domain.g.restart_limit")


@pytest.mark.parametrize("value", ['"busy"', '"pkg.mod"', '"pkg.mod:"', '"1pkg:f"'])
def test_bad_workload(tmp_path, value):
    err = error_of(tmp_path, HEAD + f"[domain.g]\nworkload = {value}\n")
    check(err, 8, "domain.g.workload", "package.module:function")


def test_good_workloads(tmp_path, monkeypatch):
    (tmp_path / "my_pkg").mkdir()
    (tmp_path / "my_pkg" / "__init__.py").write_text("")
    (tmp_path / "my_pkg" / "sub.py").write_text("def main(kernel):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    t = load_topology(write(tmp_path, '[domain.a]\nworkload = "demo"\n[domain.b]\nworkload = "my_pkg.sub:main"\n'))
    assert [d.workload for d in t.domains] == ["demo", "my_pkg.sub:main"]


def test_bad_platform(tmp_path):
    err = error_of(tmp_path, "# machine\n[platform]\npcpus = 0\n")
    check(err, 3, "platform.pcpus", "at least 1")
    err = error_of(tmp_path, "[platform]\nmemory = 32\n")
    check(err, 2, "platform.memory", "at least 64")


def test_key_with_no_line_of_its_own_falls_back_to_its_table(tmp_path):
    err = error_of(tmp_path, HEAD + "[domain]\nh = { memory = 8 }\n")
    check(err, 8, "domain.h.memory", "at least 16")


def test_toml_syntax_error(tmp_path):
    path = write(tmp_path, "[platform]\npcpus = 2\nmemory = = 4\n")
    with pytest.raises(TopologyError) as e:
        load_topology(path)
    assert (e.value.line, e.value.key) == (3, "")
    assert str(e.value).startswith(f"{path}:3: TOML syntax error: ")
    assert "\n" not in str(e.value)


def test_toml_duplicate_table(tmp_path):
    err = error_of(tmp_path, "[domain.g]\nmemory = 64\n[domain.g]\n")
    assert err.line == 3 and "TOML syntax error" in err.message


def test_missing_file(tmp_path):
    with pytest.raises(TopologyError) as e:
        load_topology(tmp_path / "nope.toml")
    assert str(e.value).startswith(f"{tmp_path / 'nope.toml'}:0: cannot read file")


# --- pyxen create CFG --------------------------------------------------------


CFG = """\
name = "web"
memory = 64
vcpus = 2
cpus = "1"
disk = ["backend=disk-dd, vdev=xvda, target=web.img"]
vif = ['mac=00:16:3e:00:00:07']
"""


def test_domain_config_loads(tmp_path):
    d = load_domain_config(write(tmp_path, CFG, "web.cfg"), Platform(pcpus=2), {"Domain-0", "disk-dd"})
    assert (d.name, d.memory, d.vcpus, d.cpus) == ("web", 64, 2, (1,))
    # A vif without backend= goes to the one driver domain (Dom0 runs no netback).
    assert d.disks[0].backend == "disk-dd" and d.vifs[0].backend == "disk-dd"


def test_domain_config_unknown_backend(tmp_path):
    err = error_of(tmp_path, CFG, load_domain_config)
    check(err, 5, "disk", "unknown backend domain 'disk-dd'")


def test_domain_config_needs_name(tmp_path):
    err = error_of(tmp_path, "memory = 64\n", load_domain_config)
    check(err, 1, "name", "missing required key")


def test_domain_config_checks_platform(tmp_path):
    err = error_of(tmp_path, 'name = "x"\ncpus = "0-3"\n', load_domain_config, platform=Platform(pcpus=2))
    check(err, 2, "cpus", "CPU 3")
    err = error_of(tmp_path, 'name = "x"\nmemory = 8192\n', load_domain_config, platform=Platform(memory=4096))
    check(err, 2, "memory", "8192", "4096")


def test_domain_config_rejects_topology_tables(tmp_path):
    err = error_of(tmp_path, 'name = "x"\n[platform]\npcpus = 2\n', load_domain_config)
    check(err, 2, "platform", "unknown key 'platform'")


def test_domain_config_dict_round_trip(tmp_path):
    for dom in load_topology(DEFAULT_TOPOLOGY).all_domains:
        wire = msgpack.unpackb(msgpack.packb(dom.to_dict()))
        assert DomainConfig.from_dict(wire) == dom


def test_domain_config_from_dict_rejects_bad_shape():
    dom = load_topology(DEFAULT_TOPOLOGY).domain("guest1")
    d = dom.to_dict()
    with pytest.raises(ValueError):
        DomainConfig.from_dict({k: v for k, v in d.items() if k != "memory"})
    with pytest.raises(ValueError):
        DomainConfig.from_dict({**d, "memory": "256"})
    with pytest.raises(ValueError):
        DomainConfig.from_dict({**d, "disks": [{"vdev": "xvda"}]})


@pytest.mark.parametrize("value", ["[1]", "[-1, 2]", "[3, 1]", "[true, 1]", '"fast"'])
def test_bad_restart_backoff(tmp_path, value):
    err = error_of(tmp_path, HEAD + f"[domain.g]\nrestart_backoff = {value}\n")
    check(err, 8, "domain.g.restart_backoff")


def test_restart_backoff(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text(HEAD + "[domain.g]\nrestart_backoff = [0, 0]\n")
    assert load_topology(path).domain("g").restart_backoff == (0.0, 0.0)


# --- uplinks -------------------------------------------------------------------


def test_driver_domain_uplink(tmp_path):
    t = load_topology(write(tmp_path, HEAD + """
        [domain.net-dd]
        driver_domain = true
        uplink = ["bridge=xenbr0, tap=pyxtap0, ip=10.0.0.254/24"]
        [domain.g]
        vif = ["backend=net-dd, ip=10.0.0.1"]
    """))
    [uplink] = t.domain("net-dd").uplinks
    assert (uplink.bridge, uplink.tap, uplink.ip) == ("xenbr0", "pyxtap0", ("10.0.0.254/24",))
    assert t.domain("g").uplinks == ()
    d = t.domain("net-dd")
    assert DomainConfig.from_dict(msgpack.unpackb(msgpack.packb(d.to_dict()))) == d


def test_uplink_errors(tmp_path):
    err = error_of(tmp_path, HEAD + '[domain.g]\nuplink = ["tap=pyxtap0"]\n')
    check(err, 8, "domain.g.uplink", "driver_domain = true")
    err = error_of(tmp_path, HEAD + '[domain.d]\ndriver_domain = true\nuplink = ["tap=x/y"]\n')
    check(err, 9, "domain.d.uplink", "uplink[0]", "x/y")
    err = error_of(tmp_path, HEAD + '[domain.d]\ndriver_domain = true\n'
                   'uplink = ["tap=t0", "bridge=xenbr1, tap=t0"]\n')
    check(err, 9, "domain.d.uplink", "two uplinks", "t0")
    err = error_of(tmp_path, HEAD + '[domain.d]\ndriver_domain = true\nuplink = ["tap=t0"]\n'
                   '[domain.e]\ndriver_domain = true\nuplink = ["tap=t0"]\n')
    check(err, 12, "domain.e.uplink", "[domain.d]")
    err = error_of(tmp_path, HEAD.replace("memory = 512", 'memory = 512\nuplink = ["tap=t0"]'))
    check(err, 7, "dom0.uplink", "not allowed in [dom0]")


# --- checks across devices (topocheck.py): refused before anything starts ----

DD = HEAD + "[domain.dd]\ndriver_domain = true\nmemory = 64\n"


def test_two_disks_at_one_vdev_are_refused(tmp_path):
    err = error_of(tmp_path, DD + '[domain.g]\ndisk = ["backend=dd, vdev=xvda, size=1M, target=a.img",\n'
                   '        "backend=dd, vdev=xvda, size=1M, target=b.img"]\n')
    check(err, 12, "domain.g.disk", "disk[1]", "xvda", "one disk per vdev")


def test_one_image_is_shared_only_read_only(tmp_path):
    both_ro = DD + ''.join(
        f'[domain.g{i}]\ndisk = ["backend=dd, vdev=xvda, access=ro, size=1M, target=s.img"]\n'
        for i in range(2))
    assert len(load_topology(write(tmp_path, both_ro)).domains) == 3
    err = error_of(tmp_path, DD + '[domain.a]\ndisk = ["backend=dd, vdev=xvda, access=ro, target=/dev/null"]\n'
                   '[domain.b]\ndisk = ["backend=dd, vdev=xvdb, target=/dev/null"]\n')
    check(err, 13, "domain.b.disk", "already used by a", "read-only")
    # The same image under two spellings is still one image.
    image = tmp_path / "img"
    image.write_bytes(b"\0" * 512)
    err = error_of(tmp_path, DD + f'[domain.a]\ndisk = ["backend=dd, vdev=xvda, target={image}"]\n'
                   f'[domain.b]\ndisk = ["backend=dd, vdev=xvda, target={tmp_path}/./img"]\n')
    check(err, 13, "domain.b.disk", "already used by a")


def test_images_that_cannot_exist_are_refused(tmp_path):
    err = error_of(tmp_path, DD + f'[domain.g]\ndisk = ["backend=dd, vdev=xvda, target={tmp_path}/no.img"]\n')
    check(err, 11, "domain.g.disk", "does not exist", "size=")
    err = error_of(tmp_path, DD + '[domain.g]\ndisk = ["backend=dd, vdev=xvda, size=1M, '
                   'target=/nonexistent/dir/g.img"]\n')
    check(err, 11, "domain.g.disk", "directory /nonexistent/dir does not exist")
    err = error_of(tmp_path, DD + '[domain.g]\ndisk = ["backend=dd, vdev=xvda, size=1M, target=../../x.img"]\n')
    check(err, 11, "domain.g.disk", "leaves the run directory")
    # A relative image is looked for in the run directory's disks/ when it is known.
    disks = tmp_path / "disks"
    disks.mkdir()
    text = DD + '[domain.g]\ndisk = ["backend=dd, vdev=xvda, target=g.img"]\n'
    err = error_of(tmp_path, text, disk_dir=disks)
    check(err, 11, "domain.g.disk", f"{disks}/g.img does not exist")
    (disks / "g.img").write_bytes(b"\0" * 512)
    assert load_topology(write(tmp_path, text), disk_dir=disks).domains[1].disks[0].target == "g.img"


def test_one_mac_anywhere_and_one_ip_per_bridge(tmp_path):
    vif = 'vif = ["backend=dd, mac=00:16:3e:00:00:01, ip=10.0.0.{ip}, bridge={br}"]\n'
    err = error_of(tmp_path, DD + '[domain.a]\n' + vif.format(ip=1, br="xenbr0") +
                   '[domain.b]\n' + vif.format(ip=2, br="xenbr1"))
    check(err, 13, "domain.b.vif", "mac 00:16:3e:00:00:01", "a vif[0]")
    ip = 'vif = ["backend=dd, ip=10.0.0.9/24, bridge={br}"]\n'
    err = error_of(tmp_path, DD + '[domain.a]\n' + ip.format(br="xenbr0") +
                   '[domain.b]\n' + ip.format(br="xenbr0"))
    check(err, 13, "domain.b.vif", "ip 10.0.0.9", "bridge xenbr0")
    fine = DD + '[domain.a]\n' + ip.format(br="xenbr0") + '[domain.b]\n' + ip.format(br="xenbr1")
    assert len(load_topology(write(tmp_path, fine)).domains) == 3


def test_a_vif_without_backend_goes_to_the_one_net_driver_domain(tmp_path):
    t = load_topology(write(tmp_path, DD + '[domain.g]\nvif = ["mac=00:16:3e:00:00:05"]\n'))
    assert t.domain("g").vifs[0].backend == "dd"
    # Two driver domains, one of them serving vifs: that one.
    two = DD + "[domain.dd2]\ndriver_domain = true\nmemory = 64\n"
    t = load_topology(write(tmp_path, two + '[domain.a]\nvif = ["backend=dd2"]\n[domain.g]\nvif = [""]\n'))
    assert t.domain("g").vifs[0].backend == "dd2"
    err = error_of(tmp_path, two + '[domain.g]\nvif = ["mac=00:16:3e:00:00:05"]\n')
    check(err, 14, "domain.g.vif", "more than one driver domain", "dd, dd2", "backend=")
    err = error_of(tmp_path, HEAD + '[domain.g]\nvif = ["mac=00:16:3e:00:00:05"]\n')
    check(err, 8, "domain.g.vif", "Domain-0 runs no netback")
    err = error_of(tmp_path, DD + '[domain.g]\nvif = ["backend=Domain-0"]\n')
    check(err, 11, "domain.g.vif", "runs no netback")


def test_a_workload_must_exist_before_anything_starts(tmp_path):
    err = error_of(tmp_path, HEAD + '[domain.g]\nworkload = "no_such_pkg.mod:main"\n')
    check(err, 8, "domain.g.workload", "no module no_such_pkg.mod")
    err = error_of(tmp_path, HEAD + '[domain.g]\nworkload = "tests.workloads:no_such_function"\n')
    check(err, 8, "domain.g.workload", "defines no function no_such_function")
    assert load_topology(write(tmp_path, HEAD + '[domain.g]\nworkload = "tests.workloads:timer"\n'))
