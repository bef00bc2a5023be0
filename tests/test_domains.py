"""Hypercalls, grants and event channels between real domain processes."""

import pytest

from hypervisor.public.grant_table import (
    GNTST_bad_domain,
    GNTST_bad_gntref,
    GNTST_bad_page,
    GNTST_general_error,
    GNTST_okay,
)
from tests.harness import SMALL, Fifo, what

pytestmark = pytest.mark.timeout(120)



def test_unprivileged_domain_gets_eperm_for_privileged_hypercalls(system):
    out = Fifo(system.run_dir, "out")
    system.boot(system.write_topology(SMALL + f"""
        [domain.intruder]
        memory = 32
        workload = "tests.workloads:privileged_ops"
        extra = "out={out.path}"
        {Fifo.binds(out)}
        """))
    results = out.read_json()
    assert results.pop("xen_version") == "ok"
    assert results == {key: "EPERM" for key in results}
    assert len(results) == 12


def test_grants_and_events_between_two_domains(system):
    fifos = {name: Fifo(system.run_dir, name) for name in ("hello", "offer", "g", "m")}
    paths = {k: f.path for k, f in fifos.items()}
    system.boot(system.write_topology(SMALL + f"""
        [domain.granter]
        memory = 32
        workload = "tests.workloads:granter"
        extra = "hello={paths['hello']} offer={paths['offer']} out={paths['g']}"
        {Fifo.binds(*fifos.values())}

        [domain.mapper]
        memory = 32
        workload = "tests.workloads:mapper"
        extra = "hello={paths['hello']} offer={paths['offer']} out={paths['m']}"
        {Fifo.binds(*fifos.values())}
        """))
    mapper = fifos["m"].read_json()
    granter = fifos["g"].read_json()
    assert mapper["rw_data"] == "granted-page-0!!"
    assert mapper["ro_data"] == "readonly" and mapper["ro_view_readonly"]
    assert mapper["ro_for_writing"] == GNTST_general_error
    assert mapper["other_domain"] == GNTST_general_error
    assert mapper["out_of_range"] == GNTST_bad_gntref
    assert mapper["bad_domain"] == GNTST_bad_domain
    assert mapper["ram_frame"] == GNTST_bad_page
    assert mapper["copy_status"] == GNTST_okay and mapper["copy_data"] == "by-copy-ok"
    assert mapper["send_on_closed"] == "EINVAL"
    # The mapper's write went to the granter's own page, and the granter
    # could not take the page back while it was still mapped.
    # Nor give the window back while anything in it was mapped; after, it could.
    assert granter == {"seen": "pong", "end_while_mapped": "EBUSY",
                       "close_while_mapped": "EBUSY", "end_after_unmap": "ok",
                       "closed_after_unmap": True, "close_twice": "EINVAL"}


def test_virtual_timer_fires_virq_timer(system):
    out = Fifo(system.run_dir, "out")
    system.boot(system.write_topology(SMALL + f"""
        [domain.sleeper]
        memory = 32
        workload = "tests.workloads:timer"
        extra = "out={out.path}"
        {Fifo.binds(out)}
        """))
    assert out.read_json()["elapsed"] >= 0.2


def test_domain_that_fails_to_boot_is_reported_and_leaves_nothing(system):
    proc = system.cli("boot", "--detach", str(system.write_topology(SMALL + """
        [domain.broken]
        memory = 32
        workload = "tests.workloads:boot_fails"
        """)), check=False)
    assert proc.returncode == 1
    assert "broken failed to boot" in proc.stderr
    assert "disk controller on fire" in proc.stderr


def test_create_that_does_not_fit_gets_enomem_and_leaves_nothing(system):
    system.boot(system.write_topology(SMALL))
    free_before = system.cli("info").stdout
    cfg = system.write_topology('name = "huge"\nmemory = 900\n', "huge.cfg")
    proc = system.cli("create", str(cfg), check=False)
    assert proc.returncode == 1
    # One errno name, the domain by its name, no internal segment name.
    assert proc.stderr.startswith("pyxen: ENOMEM: huge's RAM: needs 900 MiB, ")
    assert proc.stderr.count("ENOMEM") == 1 and "pyxen-huge" not in proc.stderr
    assert system.cli("info").stdout == free_before
    assert list(system.list()) == ["Domain-0"]
    cfg = system.write_topology('name = "small"\nmemory = 64\n', "small.cfg")
    assert "Created small" in system.cli("create", str(cfg)).stdout
    assert system.list()["small"]["mem"] == 64


def test_domains_start_from_a_standby_process_and_a_dead_one_is_replaced(system):
    import os

    import psutil  # type: ignore[import-untyped]  # no stubs installed (types-psutil)

    def standbys() -> list:
        # The hypervisor's children that are no domain (yet): a spare just
        # started has not named itself "pyxen[...]: standby" yet.
        children = psutil.Process(system.hypervisor_pid()).children()
        return [p for p in children if not what(" ".join(p.cmdline())).startswith("dom")]

    system.boot(system.write_topology(SMALL))
    [spare] = standbys()  # ready for the next domain
    cfg = system.write_topology('name = "warm"\nmemory = 32\n', "warm.cfg")
    system.cli("create", str(cfg))
    assert system.pid_of("warm") == spare.pid  # the spare became the domain
    [spare] = standbys()  # and a new one waits
    os.kill(spare.pid, 9)  # a spare that died is not used: a cold start instead
    cfg = system.write_topology('name = "cold"\nmemory = 32\n', "cold.cfg")
    system.cli("create", str(cfg))
    assert system.list()["cold"]["state"][3:5] == "--"
    assert system.pid_of("cold") != spare.pid
