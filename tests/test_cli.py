"""The CLI's own surface: options anywhere, --version, help that explains,
machine names in process titles."""

import subprocess
import sys
from pathlib import Path

import pytest

from domains.dom0.cli import build_parser
from tests.harness import REPO, System, pyxen_processes, title

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("argv", [
    ["--run-dir", "/tmp/x", "list"],
    ["list", "--run-dir", "/tmp/x"],
    ["block-attach", "--run-dir", "/tmp/x", "g", "vdev=xvdb", "target=b.img"],
    ["block-list", "g", "--run-dir", "/tmp/x"],
    ["--run-dir", "/tmp/y", "list", "--run-dir", "/tmp/x"],  # the last one given
])
def test_run_dir_is_taken_before_or_after_the_command(argv):
    assert build_parser().parse_args(argv).run_dir == Path("/tmp/x")


def test_run_dir_defaults_when_not_given():
    assert build_parser().parse_args(["list"]).run_dir is None  # main() fills it in


def test_version():
    proc = subprocess.run([sys.executable, "-m", "domains.dom0.cli", "--version"],
                          capture_output=True, text=True, cwd=REPO, check=True)
    assert proc.stdout.startswith("pyxen ") and "Xen 4.17" in proc.stdout


@pytest.mark.parametrize("command, words", [
    ("boot", ["topology file", "file:line: key: message", "Ctrl-C", "--detach",
              "driver domain", "/run/pyxen", "--name"]),
    ("create", ["name = ", "disk = ", "disks/", "driver domains"]),
    ("destroy", ["as if it had", "on_crash", "reconnect"]),
])
def test_help_describes_what_a_command_takes_and_does(command, words, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for word in words:
        assert word in text, (command, word)


def test_machines_are_named_apart_in_process_titles(system):
    topology = system.write_topology("""
        [platform]
        memory = 512
        [dom0]
        memory = 128
        [domain.dd]
        driver_domain = true
        memory = 64
        """, "lab.toml")
    other = System()
    try:
        system.boot(topology)
        other.boot(topology)
        assert system.machine == "lab" or system.machine.startswith("lab-")
        assert other.machine.startswith("lab-") and other.machine != system.machine
        for sys_ in (system, other):
            hv = sys_.hypervisor_pid()
            titles = {title(p) for p in pyxen_processes() if hv in (p.pid, p.ppid())}
            assert {f"pyxen[{sys_.machine}]: hypervisor",
                    f"pyxen[{sys_.machine}]: dom1 dd"} <= titles, titles
        third = System()
        try:
            proc = third.cli("boot", "--detach", "--name", system.machine, str(topology),
                             check=False)
            assert proc.returncode == 1
            assert proc.stderr == (f"pyxen: a machine named '{system.machine}' is already "
                                   "running on this host; choose another --name\n")
            assert not (third.run_dir / "hypervisor.pid").exists()
        finally:
            third.close()
    finally:
        other.close()
