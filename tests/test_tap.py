"""A guest's own network namespace and TAP eth0 (domains/kernel/netns.py,
hypervisor/public/pyxen/tap.py),
and `pyxen exec`, which runs a command inside a domain's namespace.

Every namespace here belongs to a child process: it and its interfaces die
with that process, so nothing outlives a test.
"""

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from domains.kernel import netns
from hypervisor.public.pyxen import tap
from tests.harness import REPO

pytestmark = [pytest.mark.timeout(60)]



def needs_root(test):
    test = pytest.mark.skipif(shutil.which("ip") is None,
                              reason="needs iproute2's ip to look inside")(test)
    test = pytest.mark.skipif(os.geteuid() != 0,
                              reason="needs root (network namespaces, TAP)")(test)
    return pytest.mark.root(test)

MAC = "02:00:00:00:00:01"
PEER_MAC = "02:00:00:00:00:02"
SMALL = """
[platform]
pcpus = 2
memory = 1024

[dom0]
memory = 256
"""


def python(script: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=REPO,
                          capture_output=True, text=True, timeout=30, **kwargs, check=False)


def host_links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True,
                          check=True).stdout


# -- no privileges needed --

def test_netns_path():
    assert netns.netns_path(1234) == "/proc/1234/ns/net"


def test_can_use_netns_gives_a_reason_when_it_cannot():
    ok, reason = netns.can_use_netns()
    if ok:
        assert reason == ""
    else:
        assert reason.startswith("pyxen's guest networking needs root: network namespaces "
                                 "and TAP devices; ")
    if os.geteuid() != 0:
        assert not ok


def test_can_use_netns_says_no_without_capabilities():
    # Drop every capability (as an unprivileged user would have none).
    out = python("""
        import json
        from domains.kernel import netns
        netns._effective_caps = lambda: 0
        print(json.dumps(netns.can_use_netns()))
        """)
    assert out.returncode == 0, out.stderr
    ok, reason = json.loads(out.stdout)
    assert not ok
    assert "needs root" in reason and "CAP_NET_ADMIN" in reason and "CAP_SYS_ADMIN" in reason


def test_mac_and_address_parsing():
    assert tap.parse_mac("02:00:00:0a:0B:ff") == bytes([2, 0, 0, 10, 11, 255])
    assert tap.format_mac(bytes([2, 0, 0, 10, 11, 255])) == "02:00:00:0a:0b:ff"
    for bad in ("02:00:00:00:00", "02:00:00:00:00:0g", "x", "01:00:5e:00:00:01"):
        with pytest.raises(ValueError):
            tap.parse_mac(bad)
    assert str(tap.parse_address("10.0.0.1")) == "10.0.0.1/24"
    assert str(tap.parse_address("10.0.0.1/16")) == "10.0.0.1/16"
    assert str(tap.parse_address("fd00::1")) == "fd00::1/64"
    with pytest.raises(ValueError):
        tap.parse_address("10.0.0.300")


def test_a_sandboxed_guest_makes_its_taps_only_on_fds_handed_to_it(monkeypatch):
    # No TAP is made here: what is checked is which fd create_tap takes.
    monkeypatch.setattr(netns, "_sandboxed", True)
    with pytest.raises(OSError) as exc:
        netns.create_tap("eth0")
    assert exc.value.errno == errno.EPERM and "fds handed to it" in str(exc.value)
    r, w = os.pipe()
    os.close(w)
    with pytest.raises(ValueError):  # refused: the TAP takes the fd all the same
        netns.create_tap("eth0", mtu=10, fd=r)
    with pytest.raises(OSError):
        os.fstat(r)


def test_enter_new_netns_refuses_once_threads_exist():
    # In a child: were it to succeed it would move the test runner itself.
    out = python("""
        import threading
        from domains.kernel import netns
        stop = threading.Event()
        threading.Thread(target=stop.wait, daemon=True).start()
        try:
            netns.enter_new_netns()
        except RuntimeError as exc:
            print("refused:", exc)
        stop.set()
        """)
    assert out.returncode == 0, out.stderr
    assert "refused:" in out.stdout and "threads" in out.stdout


# -- root: real namespaces and TAP devices --

TAP_SCRIPT = f"""
    import json, os, socket, subprocess
    from domains.kernel import netns
    from hypervisor.public.pyxen import tap

    host_ns = os.stat("/proc/self/ns/net").st_ino
    netns.enter_new_netns()
    t = tap.Tap.create("eth0", mac="{MAC}", mtu=1400, addresses=["10.0.0.1"])
    result = {{"host_ns": host_ns, "ns": os.stat("/proc/self/ns/net").st_ino,
               "tap": repr(t), "name": t.name, "mac": t.mac,
               "addr": subprocess.run(["ip", "-o", "addr", "show", "dev", "eth0"],
                                      capture_output=True, text=True).stdout,
               "link": subprocess.run(["ip", "-o", "link"],
                                      capture_output=True, text=True).stdout}}

    # Sending to a neighbour on the subnet makes the kernel ARP for it: the
    # request comes out of the TAP as a raw Ethernet frame.
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.sendto(b"hello tap", ("10.0.0.2", 9))
    while True:
        arp = t.read()
        if arp[12:14] == b"\\x08\\x06":
            break
    result["arp"] = arp.hex()

    # Answer it as 10.0.0.2 would: the kernel then sends the queued datagram,
    # addressed to the MAC we claimed.
    peer = bytes.fromhex("{PEER_MAC.replace(':', '')}")
    reply = (arp[6:12] + peer + b"\\x08\\x06" + bytes.fromhex("0001080006040002")
             + peer + bytes([10, 0, 0, 2]) + arp[22:28] + arp[28:32])
    t.write(reply)
    while True:
        frame = t.read()
        if frame[12:14] == b"\\x08\\x00":
            break
    result["ip"] = frame.hex()
    t.close()
    result["after_close"] = subprocess.run(["ip", "-o", "link"],
                                           capture_output=True, text=True).stdout
    print(json.dumps(result))
    """


@needs_root
def test_tap_in_a_new_netns_carries_real_frames():
    out = python(TAP_SCRIPT)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["ns"] != r["host_ns"]
    assert r["name"] == "eth0" and r["mac"] == MAC
    assert "inet 10.0.0.1/24" in r["addr"]
    eth0 = next(line for line in r["link"].splitlines() if ": eth0:" in line)
    assert f"link/ether {MAC}" in eth0 and "mtu 1400" in eth0
    assert ",UP" in eth0 or "<UP" in eth0
    lo = next(line for line in r["link"].splitlines() if ": lo:" in line)
    assert "UP" in lo
    assert len(r["link"].splitlines()) == 2  # a fresh namespace: lo and eth0 only

    arp = bytes.fromhex(r["arp"])
    assert arp[0:6] == b"\xff" * 6                      # broadcast
    assert arp[6:12] == tap.parse_mac(MAC)              # from eth0
    assert arp[12:14] == b"\x08\x06"                    # ethertype ARP
    assert arp[20:22] == b"\x00\x01"                    # request
    assert arp[22:28] == tap.parse_mac(MAC)             # sender MAC
    assert arp[28:32] == bytes([10, 0, 0, 1])           # sender IP
    assert arp[38:42] == bytes([10, 0, 0, 2])           # who has 10.0.0.2

    ip = bytes.fromhex(r["ip"])
    assert ip[0:6] == tap.parse_mac(PEER_MAC) and ip[6:12] == tap.parse_mac(MAC)
    assert ip[23] == 17                                 # UDP
    assert ip[26:30] == bytes([10, 0, 0, 1]) and ip[30:34] == bytes([10, 0, 0, 2])
    assert ip[42:] == b"hello tap"

    assert ": eth0:" not in r["after_close"]            # close() removes it
    assert MAC not in host_links()                      # never on the host


@needs_root
def test_tap_errors_are_clear():
    out = python("""
        from domains.kernel import netns
        from hypervisor.public.pyxen import tap
        netns.enter_new_netns()
        first = tap.Tap.create("eth0", mac="02:00:00:00:00:01")
        try:
            tap.Tap.create("eth0", mac="02:00:00:00:00:02")
        except OSError as exc:
            print("error:", exc)
        try:
            tap.Tap.create("eth1", addresses=["10.0.0.1/24", "10.0.0.1/24"])
        except OSError as exc:
            print("error:", exc)
        """)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "create TAP eth0: an interface by that name exists already" in lines[0]
    assert "add address 10.0.0.1/24" in lines[1]


@pytest.fixture
def netns_holder():
    """A process (standing in for a guest domain) in its own netns with eth0."""
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from domains.kernel import netns
            from hypervisor.public.pyxen import tap
            netns.enter_new_netns()
            t = tap.Tap.create("eth0", mac="{MAC}", addresses=["10.0.0.1/24"])
            print("ready", flush=True)
            sys.stdin.read()   # hold the namespace until the test closes stdin
            """)],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        yield holder.pid
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=10) == 0
    assert MAC not in host_links()


@needs_root
def test_join_netns_runs_a_command_in_another_process_namespace(netns_holder):
    out = python(f"""
        import os
        from domains.kernel import netns
        netns.join_netns(netns.netns_path({netns_holder}))
        os.execvp("ip", ["ip", "-o", "addr", "show", "dev", "eth0"])
        """)
    assert out.returncode == 0, out.stderr
    assert "inet 10.0.0.1/24" in out.stdout


def pyxen_exec(pid: int, *argv: str, stdin: str = "") -> subprocess.CompletedProcess:
    """`pyxen exec guest1 -- ARGV` with the toolstack's answer faked: its
    "list" row for guest1 names `pid`."""
    return python(f"""
        import sys
        from domains.dom0 import cli
        def call(self, cmd, **args):
            assert cmd == "list" and args == {{"domain": "guest1"}}
            return [{{"name": "guest1", "domid": 1, "pid": {pid}}}]
        cli.ControlClient.call = call
        sys.exit(cli.main(["exec", "guest1", "--", *{list(argv)!r}]))
        """, input=stdin)


@needs_root
def test_pyxen_exec_runs_in_the_domain_netns(netns_holder):
    out = pyxen_exec(netns_holder, "ip", "-o", "link", "show", "dev", "eth0")
    assert out.returncode == 0, out.stderr
    assert f"link/ether {MAC}" in out.stdout
    # The command's exit status and stdin/stdout are pyxen exec's own.
    out = pyxen_exec(netns_holder, "sh", "-c", "cat; exit 7", stdin="through stdin\n")
    assert (out.returncode, out.stdout, out.stderr) == (7, "through stdin\n", "")
    out = pyxen_exec(netns_holder, "no-such-command-xyz")
    assert (out.returncode, out.stderr) == (
        1, "pyxen: exec: no-such-command-xyz: no such command\n")


# -- pyxen exec --

def test_exec_without_a_running_system_is_a_clear_error(system):
    proc = system.cli("exec", "guest1", "--", "true", check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("pyxen: no pyxen system is running in ")
    assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_exec_without_a_command_is_a_clear_error(system):
    proc = system.cli("exec", "guest1", "--", check=False)
    assert proc.returncode == 1
    assert "no command given" in proc.stderr and "Traceback" not in proc.stderr


def test_exec_errors_on_a_running_system(system):
    system.boot(system.write_topology(SMALL))
    for args, message in (
            (("nosuch", "--", "true"), "no domain named 'nosuch'"),
            (("Domain-0", "--", "no-such-command-xyz"),
             "pyxen: exec: no-such-command-xyz: no such command"),
            # Dom0 stays in the host's namespace: say so, run nothing on the host.
            (("Domain-0", "--", "true"), ("pyxen: exec: Domain-0 has no network namespace "
                                         "of its own"))):
        proc = system.cli("exec", *args, check=False)
        assert proc.returncode == 1, (args, proc.stdout, proc.stderr)
        assert proc.stderr.startswith("pyxen: ") and message in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr
