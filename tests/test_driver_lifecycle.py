"""The four PV drivers and the kernel leave no thread behind: a guest
closes its blkfront and netfront, a driver domain its blkback and netback,
then each its kernel; close() waits for the handshakes it starts."""

import os
import shutil

import pytest

from tests.harness import Fifo

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, TAP)"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2"),
]


def test_closed_drivers_and_kernels_leave_no_thread(system):
    fifos = {name: Fifo(system.run_dir, name) for name in ("g", "gcue", "d", "dcue")}
    path = {name: fifo.path for name, fifo in fifos.items()}
    system.boot(system.write_topology(f"""
        [platform]
        memory = 1024
        [dom0]
        memory = 256
        [domain.dd]
        driver_domain = true
        memory = 64
        workload = "tests.workloads:lifecycle_backends"
        extra = "out={path['d']} cue={path['dcue']}"
        {Fifo.binds(fifos['d'], fifos['dcue'])}
        [domain.guest]
        memory = 64
        vcpus = 2
        workload = "tests.workloads:lifecycle_guest"
        extra = "out={path['g']} cue={path['gcue']}"
        {Fifo.binds(fifos['g'], fifos['gcue'])}
        disk = ["backend=dd, vdev=xvda, size=4M, target=l.img"]
        vif = ["backend=dd, bridge=xenbr0, ip=10.0.0.9"]
        """))

    def cue(name: str) -> None:
        with open(path[name], "w") as f:
            f.write("{}\n")

    up = fifos["g"].read_json()
    assert up["read"] == "lifecycle" and up["vif_up"]
    cue("dcue")
    serving = fifos["d"].read_json()
    assert any(name.startswith("blkback-") for name in serving["threads"])
    cue("gcue")
    guest = fifos["g"].read_json()
    # close() returned once the handshake was done: Closed, nothing queued.
    assert guest["states"] == {"vbd/51712": 6, "vif/0": 6}
    assert guest["busy"] == [] and guest["drivers_left"] == []
    assert guest["left"] == []  # the kernel's threads too, once it is closed
    cue("dcue")
    dd = fifos["d"].read_json()
    assert dd["states"] == {"vbd": ["Closed"], "vif": ["Closed"]}  # they followed the guest
    assert dd["drivers_left"] == [] and dd["left"] == []
    system.halt()
