"""pyxen without root: it boots, serves its guests' disks, and says which
sandbox layers it could not give (issue 12, "where the machine cannot give
a layer")."""

import os
import shutil
import sys

import pytest

from tests.harness import REPO

NOBODY = 65534

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (to become another uid in a "
                       "private mount namespace)"),
    pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux's unshare"),
]


@pytest.fixture
def unprivileged(system):
    os.chown(system.run_dir, NOBODY, NOBODY)
    system.prefix = ["unshare", "--mount", "--propagation", "private",
                     sys.executable, str(REPO / "tests" / "asuser.py"), str(NOBODY)]
    return system


def test_boots_without_root_and_names_the_missing_layers(unprivileged):
    system = unprivileged
    system.boot()
    assert os.stat(system.run_dir / "hypervisor.pid").st_uid == NOBODY
    assert system.list()["guest1"]["state"] != "c"
    system.wait_console("guest1", "disk xvda: verified")  # blkfront -> blkback -> image
    info = {key.strip(): value.strip() for key, _, value in
            (line.partition(" : ") for line in system.cli("info").stdout.splitlines())}
    active = info["sandbox"].split()
    assert {"caps", "nnp", "nodump", "env"} <= set(active)
    assert "namespaces" not in active
    missing = info["sandbox_missing"]
    for layer in ("namespaces", "uid", "root"):
        assert f"{layer} (needs root" in missing
    dmesg = system.cli("dmesg").stdout
    assert "sandbox: MISSING namespaces: needs root" in dmesg
    system.halt()
    assert not (system.run_dir / "hypervisor.pid").exists()
