"""XenStore end to end: Debian's xenstore-utils against pyxen's xenstored,
guests' rights, PV shutdown, @releaseDomain, malformed clients."""

import shutil
import socket
import struct
import subprocess

import pytest

from tests.harness import Fifo

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("xenstore-ls") is None,
                       reason="needs Debian's xenstore-utils (apt-get install xenstore-utils)"),
]


def xs(system, tool, *args, check=True):
    env = dict(system.env, XENSTORED_PATH=str(system.run_dir / "xenstored" / "socket"))
    proc = subprocess.run([tool, *args], env=env, capture_output=True, text=True, timeout=30,
                          check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{tool} {args}: {proc.stderr}")
    return proc


def test_xenstore_utils_see_every_domain_and_work(system):
    system.boot()
    rows = system.list()
    listing = xs(system, "xenstore-ls", "/local/domain").stdout
    for name, row in rows.items():
        assert f'{row["domid"]} = ""' in listing
        assert f'name = "{name}"' in listing
    guest = rows["guest2"]["domid"]
    base = f"/local/domain/{guest}/data"
    xs(system, "xenstore-write", f"{base}/greeting", "hello")
    assert xs(system, "xenstore-read", f"{base}/greeting").stdout == "hello\n"
    xs(system, "xenstore-chmod", f"{base}/greeting", f"r{guest}")
    perms = xs(system, "xenstore-ls", "-p", base).stdout
    assert f"(r{guest})" in perms
    xs(system, "xenstore-rm", f"{base}/greeting")
    assert xs(system, "xenstore-read", f"{base}/greeting", check=False).returncode != 0
    assert xs(system, "xenstore-read", f"/local/domain/{guest}/memory/target").stdout == (
        f"{256 * 1024}\n")


def test_xenstore_watch_sees_changes_and_release_domain(system):
    system.boot()
    env = dict(system.env, XENSTORED_PATH=str(system.run_dir / "xenstored" / "socket"))
    guest = system.list()["guest2"]["domid"]
    watch = subprocess.Popen(["xenstore-watch", "-n", "2", "@releaseDomain"], env=env,
                             stdout=subprocess.PIPE, text=True)
    data = subprocess.Popen(["xenstore-watch", "-n", "2", f"/local/domain/{guest}/data"],
                            env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert watch.stdout.readline().strip() == "@releaseDomain"  # fires when set
        assert data.stdout.readline().strip() == f"/local/domain/{guest}/data"
        xs(system, "xenstore-write", f"/local/domain/{guest}/data/x", "1")
        assert data.stdout.readline().strip() == f"/local/domain/{guest}/data/x"
        system.cli("destroy", "guest2")
        assert watch.stdout.readline().strip() == "@releaseDomain"
        assert watch.wait(timeout=30) == 0 and data.wait(timeout=30) == 0
    finally:
        for proc in (watch, data):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    # The destroyed domain's nodes are gone.
    assert xs(system, "xenstore-read", f"/local/domain/{guest}/name", check=False).returncode


def test_guest_rights_and_transactions(system):
    out = Fifo(system.run_dir, "out")
    system.boot(system.write_topology(f"""
        [platform]
        memory = 1024
        [dom0]
        memory = 256
        [domain.other]
        memory = 32
        [domain.probe]
        memory = 32
        workload = "tests.workloads:xenstore_rights"
        extra = "out={out.path} other=1"
        {Fifo.binds(out)}
        """))
    report = out.read_json()
    assert report["own_name"] == "probe"
    assert report["domain_path"] == "/local/domain/2"
    probe = 2
    for key in ("read_dom0", "write_dom0", "read_other", "write_other", "write_own_name",
                "introduce"):
        assert report[key] == "EACCES", key
    assert report["write_own_data"] == "ok"
    assert report["own_data_perms"][0] == f"n{probe}"
    assert report["conflict"] == "EAGAIN"
    assert report["retried"] == 2 and report["counter"] == "11"


def test_pv_shutdown_through_xenstore(system):
    system.boot()
    system.cli("shutdown", "guest1")  # on_poweroff = destroy
    system.wait("guest1", "gone")
    log = (system.run_dir / "logs" / "guest1.log").read_text()
    assert "shutdown requested through xenstore" in log
    assert "guest1" not in system.list()


def test_malformed_client_is_dropped_and_others_are_served(system):
    system.boot()
    path = str(system.run_dir / "xenstored" / "socket")
    bad = socket.socket(socket.AF_UNIX)
    bad.connect(path)
    bad.sendall(struct.pack("<IIII", 2, 1, 0, 100000))  # XS_READ, len > 4096
    assert bad.recv(100) == b""  # xenstored closed the connection
    bad.close()
    unknown = socket.socket(socket.AF_UNIX)
    unknown.connect(path)
    unknown.sendall(struct.pack("<IIII", 999, 7, 0, 2) + b"x\0")
    header = unknown.recv(16)
    rtype, req_id, _, length = struct.unpack("<IIII", header)
    assert (rtype, req_id) == (16, 7)  # XS_ERROR echoing the request id
    assert unknown.recv(length) == b"ENOSYS\0"  # as xenstored answers an unknown type
    unknown.close()
    assert xs(system, "xenstore-read", "/local/domain/0/name").stdout == "Domain-0\n"
