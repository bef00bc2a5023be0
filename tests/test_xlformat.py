"""xl's output formats (domains/dom0/xlformat.py): exact strings.

The expected lines were produced with the printf formats of tools/xl/xl_info.c
and tools/xl/xl_vcpu.c (run through the shell's printf).
"""

import pytest

from domains.dom0.xlformat import (
    LIST_HEADER,
    format_cpumap,
    format_info,
    format_list,
    format_top,
    format_vcpu_list,
    state_letters,
)

pytestmark = pytest.mark.timeout(30)


def row(name, domid, mem, vcpus, cpu_time, **flags):
    return {"name": name, "domid": domid, "mem_mib": mem, "vcpus": vcpus, "cpu_time": cpu_time, **flags}


def test_list():
    out = format_list(
        [
            row("Domain-0", 0, 512, 1, 12.34, running=True),
            row("guest1", 3, 256, 2, 0.05, blocked=True),
            row("disk-dd", 1, 128, 1, 1234567.25, paused=True, shutdown=True, crashed=True, dying=True),
        ]
    )
    assert out == (
        "Name                                        ID   Mem VCPUs\tState\tTime(s)\n"
        "Domain-0                                     0   512     1     r-----      12.3\n"
        "guest1                                       3   256     2     -b----       0.1\n"
        "disk-dd                                      1   128     1     --pscd  1234567.2\n"
    )


def test_list_empty_and_long_name():
    assert format_list([]) == LIST_HEADER + "\n"
    name = "x" * 45
    assert format_list([row(name, 7, 64, 1, 0.0)]).splitlines()[1] == name + "     7    64     1     ------       0.0"


def test_state_letters():
    assert state_letters({}) == "------"
    assert state_letters({"running": True, "blocked": True}) == "rb----"
    assert state_letters({"shutdown": True, "crashed": True}) == "---sc-"
    # xl's fifth column is the shutdown reason.
    assert state_letters({"shutdown": True, "shutdown_reason": "reboot"}) == "---sr-"
    assert state_letters({"shutdown": True, "shutdown_reason": "watchdog"}) == "---sw-"
    assert state_letters({"shutdown": True, "shutdown_reason": "poweroff"}) == "---s--"
    assert state_letters({"dying": True}) == "-----d"


@pytest.mark.parametrize(
    "cpus, nr, text",
    [
        (None, 4, "all"),
        ((0, 1, 2, 3), 4, "all"),
        ((0, 1), 4, "0-1"),
        ((1, 2, 3), 4, "1-3"),
        ((0, 2, 3, 5), 8, "0,2-3,5"),
        ((3,), 4, "3"),
        ((), 4, "none"),
        ((5,), 4, "none"),  # beyond the host's CPUs: not shown, as in xl
        ((0, 1), None, "0-1"),
    ],
)
def test_cpumap(cpus, nr, text):
    assert format_cpumap(cpus, nr) == text


def test_vcpu_list():
    rows = [
        {"name": "Domain-0", "domid": 0, "vcpu": 0, "cpu": 1, "online": True, "running": True,
         "cpu_time": 3.14, "hard_affinity": None, "soft_affinity": None},
        {"name": "guest1", "domid": 3, "vcpu": 0, "cpu": 0, "blocked": True, "cpu_time": 10.0,
         "hard_affinity": (0, 1), "soft_affinity": None},
        {"name": "guest1", "domid": 3, "vcpu": 1, "cpu": 0, "online": False, "cpu_time": 0.0,
         "hard_affinity": (1,), "soft_affinity": (0,)},
    ]
    assert format_vcpu_list(rows, nr_cpus=4) == (
        "Name                                ID  VCPU   CPU State   Time(s) Affinity (Hard / Soft)\n"
        "Domain-0                             0     0    1   r--       3.1  all / all\n"
        "guest1                               3     0    0   -b-      10.0  0-1 / all\n"
        "guest1                               3     1    -   --p       0.0  1 / 0\n"
    )


def test_info():
    physinfo = {
        "host": "node1",
        "release": "6.1.0",
        "version": "#1 SMP",
        "machine": "aarch64",
        "nr_cpus": 2,
        "max_cpu_id": 1,
        "nr_nodes": 1,
        "cores_per_socket": 2,
        "threads_per_core": 1,
        "cpu_khz": 2400000,
        "hw_caps": [0, 1],
        "virt_caps": ["hvm", "hvm_directio"],
        "total_memory": 4096,
        "free_memory": 2816,
        "free_cpus": 0,
    }
    versions = {
        "xen_major": 4,
        "xen_minor": 19,
        "xen_extra": "-pyxen",
        "xen_caps": "xen-3.0-aarch64 xen-3.0-armv7l",
        "xen_scheduler": "credit2",
        "xen_pagesize": 4096,
        "virt_start": 0x200000,
        "xen_commandline": "dom0_mem=512M",
    }
    assert format_info(physinfo, versions) == (
        "host                   : node1\n"
        "release                : 6.1.0\n"
        "version                : #1 SMP\n"
        "machine                : aarch64\n"
        "nr_cpus                : 2\n"
        "max_cpu_id             : 1\n"
        "nr_nodes               : 1\n"
        "cores_per_socket       : 2\n"
        "threads_per_core       : 1\n"
        "cpu_mhz                : 2400.000\n"
        "hw_caps                : 00000000:00000001:00000000:00000000:00000000:00000000:00000000:00000000\n"
        "virt_caps              : hvm hvm_directio\n"
        "total_memory           : 4096\n"
        "free_memory            : 2816\n"
        "free_cpus              : 0\n"
        "xen_major              : 4\n"
        "xen_minor              : 19\n"
        "xen_extra              : -pyxen\n"
        "xen_version            : 4.19-pyxen\n"
        "xen_caps               : xen-3.0-aarch64 xen-3.0-armv7l\n"
        "xen_scheduler          : credit2\n"
        "xen_pagesize           : 4096\n"
        "platform_params        : virt_start=0x200000\n"
        "xen_commandline        : dom0_mem=512M\n"
        "xend_config_format     : 4\n"
    )


def test_info_virt_caps_empty_has_no_space():
    assert format_info({"virt_caps": ""}, {}).splitlines()[0] == "virt_caps              :"


def test_info_single_key_is_a_prefix_match():
    physinfo = {"nr_cpus": 2, "nr_nodes": 1, "total_memory": 4096}
    assert format_info(physinfo, {}, name="total_memory") == "4096\n"
    assert format_info(physinfo, {}, name="nr_") == "2\n1\n"
    assert format_info(physinfo, {}, name="nosuch") == ""


def test_top_shows_cpu_percent_since_the_previous_screen():
    rows = [{"name": "Domain-0", "domid": 0, "mem_mib": 512, "vcpus": 1, "running": True,
             "cpu_time": 12.5, "window_mib": 0, "max_window_mib": 512, "note": ""},
            {"name": "disk-dd", "domid": 1, "mem_mib": 128, "vcpus": 1, "crashed": True,
             "shutdown": True, "cpu_time": 3.0, "note": "gave up"}]
    text = format_top(rows, {"Domain-0": 12.0, "disk-dd": 3.0}, 2.0, 1024, "10:00:00", "lab")
    lines = text.splitlines()
    assert lines[0] == "pyxen top - 10:00:00   machine lab"
    assert lines[1] == ("2 domains: 1 running, 0 blocked, 0 paused, 1 crashed, 0 dying, "
                        "1 shutdown")
    assert lines[2].split() == ["NAME", "STATE", "CPU(sec)", "CPU(%)", "MEM(k)", "MEM(%)",
                                "VCPUS", "WIN(MiB)", "NOTE"]
    assert lines[3].split() == ["Domain-0", "r-----", "12", "25.0", "524288", "50.0", "1",
                                "0/512"]
    assert lines[4].split() == ["disk-dd", "---sc-", "3", "0.0", "131072", "12.5", "1",
                                "0/0", "gave", "up"]
    # The first screen has no previous one: 0 %.
    assert format_top(rows, None, 0.0, 1024, "t").splitlines()[3].split()[3] == "0.0"
