"""Bad topology files: one clear error naming file, line and key; nothing starts."""

import os

import pytest

from tests.harness import ours

pytestmark = pytest.mark.timeout(60)

CASES = {
    "unknown key": (('[platform]\nmemory = 1024\n[dom0]\nmemory = 256\n'
                    '[domain.g]\nmemroy = 64\n'), 6, "domain.g.memroy"),
    "wrong type": (('[platform]\nmemory = 1024\n[dom0]\nmemory = 256\n'
                   '[domain.g]\nmemory = "lots"\n'), 6, "domain.g.memory"),
    "unknown backend": (('[platform]\nmemory = 1024\n[dom0]\nmemory = 256\n'
                        '[domain.g]\nmemory = 64\n'
                        'disk = ["backend=nosuch-dd, vdev=xvda, target=g.img"]\n'),
                        7, "domain.g.disk"),
    "memory over the platform": (('[platform]\nmemory = 512\n[dom0]\nmemory = 256\n'
                                 '[domain.g]\nmemory = 300\n'), 6, "domain.g.memory"),
    # Each of these used to start several domains before failing.
    "missing image without size=": (
        ('[platform]\nmemory = 1024\n[dom0]\nmemory = 256\n'
        '[domain.dd]\ndriver_domain = true\nmemory = 64\n'
        '[domain.g]\nmemory = 64\n'
        'disk = ["backend=dd, vdev=xvda, target=absent.img"]\n'), 10, "domain.g.disk"),
    "workload module that does not exist": (
        ('[platform]\nmemory = 1024\n[dom0]\nmemory = 256\n'
        '[domain.dd]\ndriver_domain = true\nmemory = 64\n'
        '[domain.g]\nmemory = 64\nworkload = "no_such_pkg.mod:main"\n'), 10,
        "domain.g.workload"),
    "disk in a directory that does not exist": (
        ('[platform]\nmemory = 1024\n[dom0]\nmemory = 256\n'
        '[domain.dd]\ndriver_domain = true\nmemory = 64\n'
        '[domain.g]\nmemory = 64\n'
        'disk = ["backend=dd, vdev=xvda, size=1M, target=/nonexistent/dir/g.img"]\n'), 10,
        "domain.g.disk"),
    "one image writable twice": (
        ('[platform]\nmemory = 1024\n[dom0]\nmemory = 256\n'
        '[domain.dd]\ndriver_domain = true\nmemory = 64\n'
        '[domain.a]\nmemory = 64\ndisk = ["backend=dd, vdev=xvda, size=1M, target=s.img"]\n'
        '[domain.b]\nmemory = 64\ndisk = ["backend=dd, vdev=xvda, size=1M, target=s.img"]\n'),
        13, "domain.b.disk"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_topology_is_one_clear_error(system, case):
    text, line, key = CASES[case]
    path = system.write_topology(text, "bad.toml")
    proc = system.cli("boot", "--detach", str(path), check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"pyxen: {path}:{line}: {key}: ")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr
    assert not ours()
    assert not (system.run_dir / "hypervisor.pid").exists()
    assert not os.path.exists("/nonexistent/dir")  # nothing made outside the run dir


def test_toml_syntax_error_names_the_line(system):
    path = system.write_topology("[platform]\nmemory = \n", "bad.toml")
    proc = system.cli("boot", "--detach", str(path), check=False)
    assert proc.returncode == 1 and f"{path}:2:" in proc.stderr


def test_a_run_dir_too_long_for_its_sockets_is_refused(system):
    # Its longest socket, hv/65535.hc, would not fit in sockaddr_un.
    long_dir = system.run_dir / ("d" * (100 - len(str(system.run_dir)) - len("/hv/65535.hc")
                                        + 1))
    proc = system.cli("--run-dir", str(long_dir), "boot", "--detach", check=False)
    assert proc.returncode == 1
    assert "too long for unix sockets" in proc.stderr and "Traceback" not in proc.stderr
    assert not ours()
