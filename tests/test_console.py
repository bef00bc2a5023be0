"""PV console: guest output in <run-dir>/console, `pyxen console` both ways."""

import subprocess
import sys

import pytest

from tests.harness import REPO

pytestmark = pytest.mark.timeout(120)


def test_console_log_and_interactive_attach(system):
    system.boot()
    log = (system.run_dir / "console" / "guest1.log").read_text()
    assert "booted" in log and "domain=guest1" in log
    proc = subprocess.Popen([sys.executable, "-m", "domains.dom0.cli", "console", "guest1"],
                            env=system.env, cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        proc.stdin.write(b"are you there?\n")
        proc.stdin.flush()
        seen = b""
        while b"guest1 heard: are you there?" not in seen:
            line = proc.stdout.readline()  # blocks on the guest's answer
            assert line, f"console closed early: {seen!r} {proc.stderr.read()!r}"
            seen += line
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    # What the guest printed reached its console log too.
    assert "guest1 heard: are you there?" in (
        system.run_dir / "console" / "guest1.log").read_text()


def test_console_of_unknown_domain_is_a_clear_error(system):
    system.boot()
    proc = system.cli("console", "nosuch", check=False)
    assert proc.returncode == 1
    assert "no console for domain 'nosuch'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_console_nodes_are_in_xenstore(system):
    system.boot()
    import shutil
    if shutil.which("xenstore-read") is None:
        pytest.skip("needs Debian's xenstore-utils (apt-get install xenstore-utils)")
    domid = system.list()["guest1"]["domid"]
    env = dict(system.env, XENSTORED_PATH=str(system.run_dir / "xenstored" / "socket"))
    out = subprocess.run(["xenstore-ls", f"/local/domain/{domid}/console"], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert 'type = "xenconsoled"' in out and 'ring-ref = "0"' in out and "port = " in out
