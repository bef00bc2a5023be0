"""PV network end to end: real Linux tools in the guests' namespaces, over
netfront -> netback (in the net driver domain) -> bridge -> netback -> netfront."""

import hashlib
import os
import shutil
import socket
import subprocess
import sys

import pytest

from tests.harness import REPO

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, TAP)"),
    pytest.mark.skipif(shutil.which("ping") is None,
                       reason="needs ping (apt-get install iputils-ping)"),
]


def pyxen(system, *args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "domains.dom0.cli", *args],
                            env=system.env, cwd=REPO, text=True, **kwargs)


def test_guests_ping_each_other_and_frames_show_on_eth0(system):
    system.boot()
    system.wait_log("guest2", "network interface up")
    system.wait_log("guest1", "network interface up")
    capture = None
    if shutil.which("tcpdump"):
        capture = pyxen(system, "exec", "guest2", "--", "tcpdump", "-l", "-n", "-i", "eth0",
                        "-c", "2", "icmp", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        # tcpdump says "listening on eth0" on stderr once it captures.
        while "listening on" not in capture.stderr.readline():
            pass
    try:
        ping = system.cli("exec", "guest1", "--", "ping", "-c", "3", "-W", "5", "10.0.0.2")
        assert "3 received" in ping.stdout
        # The default demo reaches its peer too, and says so on its console.
        system.wait_console("guest1", "reached 10.0.0.2 over the PV network")
        system.wait_console("guest2", "reached 10.0.0.1 over the PV network")
        if capture is not None:
            out, _ = capture.communicate(timeout=30)
            assert "10.0.0.1 > 10.0.0.2: ICMP echo request" in out
    finally:
        if capture is not None and capture.poll() is None:
            capture.kill()
            capture.wait()


def test_vif_attach_gets_traffic_and_detach_removes_the_interface(system):
    system.boot()
    system.wait_log("guest2", "network interface up")
    # No backend=: it goes to the one net driver domain (Dom0 runs no netback).
    system.cli("network-attach", "guest1", "bridge=xenbr0", "ip=10.0.0.11")
    system.wait_log("guest1", "interface=eth1")
    links = system.cli("exec", "guest1", "--", "ip", "-o", "link").stdout
    assert "eth1:" in links
    ping = system.cli("exec", "guest1", "--", "ping", "-c", "2", "-W", "5", "-I", "eth1",
                      "10.0.0.2")
    assert "2 received" in ping.stdout
    rows = {line.split()[0]: line.split()[1]
            for line in system.cli("network-list", "guest1").stdout.splitlines()[1:]}
    assert rows["1"] == str(system.list()["net-dd"]["domid"])
    system.cli("network-detach", "guest1", "1")
    assert "eth1:" not in system.cli("exec", "guest1", "--", "ip", "-o", "link").stdout
    listing = system.cli("network-list", "guest1").stdout.splitlines()
    assert [line.split()[0] for line in listing[1:]] == ["0"]


def test_net_driver_domain_restart_keeps_the_interface_and_traffic_resumes(system):
    system.boot()
    system.wait_log("guest1", "network interface up")
    system.wait_log("guest2", "network interface up")
    assert "1 received" in system.cli("exec", "guest1", "--", "ping", "-c", "1", "-W", "5",
                                      "10.0.0.2").stdout
    old = system.list()["net-dd"]["domid"]
    os.kill(system.pid_of("net-dd"), 9)
    system.wait("net-dd", "running", not_domid=old)
    system.wait_log("guest1", "reconnecting to the new backend")
    # ping's own deadline: it waits for the first reply, for up to 30 s.
    ping = system.cli("exec", "guest1", "--", "ping", "-c", "1", "-w", "30", "10.0.0.2")
    assert "1 received" in ping.stdout
    assert "eth0:" in system.cli("exec", "guest1", "--", "ip", "-o", "link").stdout


SERVER = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 5001)); s.listen(1); print("listening", flush=True)
c, _ = s.accept()
f = c.makefile("rwb", buffering=0)
for line in f:
    f.write(b"echo " + line)
"""

CLIENT = """
import socket, sys
c = socket.create_connection(("10.0.0.2", 5001), timeout=60)
f = c.makefile("rwb", buffering=0)
for line in sys.stdin.buffer:
    f.write(line)
    sys.stdout.buffer.write(f.readline()); sys.stdout.flush()
"""


def test_tcp_connection_survives_a_net_driver_domain_restart(system):
    system.boot()
    system.wait_log("guest1", "network interface up")
    system.wait_log("guest2", "network interface up")
    server = pyxen(system, "exec", "guest2", "--", sys.executable, "-c", SERVER,
                   stdout=subprocess.PIPE)
    client = None
    try:
        assert server.stdout.readline().strip() == "listening"
        client = pyxen(system, "exec", "guest1", "--", sys.executable, "-c", CLIENT,
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        client.stdin.write("before\n")
        client.stdin.flush()
        assert client.stdout.readline() == "echo before\n"
        old = system.list()["net-dd"]["domid"]
        os.kill(system.pid_of("net-dd"), 9)
        system.wait("net-dd", "running", not_domid=old)
        client.stdin.write("after\n")  # same connection: TCP retransmits
        client.stdin.flush()
        assert client.stdout.readline() == "echo after\n"
    finally:
        for proc in (client, server):
            if proc is not None:
                proc.kill()
                proc.wait()


OFFLOAD_TOPOLOGY = """
[platform]
memory = 1536
[dom0]
memory = 256
[domain.net-dd]
driver_domain = true
memory = 128
[domain.guest1]
memory = 128
workload = "idle"
vif = ["backend=net-dd, bridge=xenbr0, mac=00:16:3e:00:00:01, ip=10.0.0.1"]
[domain.guest2]
memory = 128
workload = "idle"
extra = "netfront.offload=0"  # no virtio_net_hdr, no GSO, no blank checksums
vif = ["backend=net-dd, bridge=xenbr0, mac=00:16:3e:00:00:02, ip=10.0.0.2"]
[domain.guest3]
memory = 128
workload = "idle"
vif = ["backend=net-dd, bridge=xenbr0, mac=00:16:3e:00:00:03, ip=10.0.0.3"]
"""

# Both sides watch eth0 with an AF_PACKET socket and report the largest
# frame that crossed it (MSG_TRUNC: the real length), received (receiver)
# or sent (sender), while a TCP stream and a UDP datagram go through.
SNIFFER = """
import socket, sys, threading
def sniff(direction, biggest):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    s.bind(("eth0", 0))
    buf = bytearray(128)
    while True:
        n, addr = s.recvfrom_into(buf, 0, socket.MSG_TRUNC)
        if (addr[2] == 4) == (direction == "out"):  # PACKET_OUTGOING
            biggest[0] = max(biggest[0], n)
"""

RECEIVER = SNIFFER + """
import hashlib
biggest = [0]
threading.Thread(target=sniff, args=("in", biggest), daemon=True).start()
family = socket.AF_INET6 if sys.argv[1:] == ["6"] else socket.AF_INET
anywhere = "::" if family == socket.AF_INET6 else "0.0.0.0"
udp = socket.socket(family, socket.SOCK_DGRAM); udp.bind((anywhere, 5003))
srv = socket.socket(family); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((anywhere, 5002)); srv.listen(1)
print("listening", flush=True)
conn, _ = srv.accept()
digest, total = hashlib.sha256(), 0
while chunk := conn.recv(1 << 16):
    digest.update(chunk); total += len(chunk)
datagram, _ = udp.recvfrom(4096)  # sent after the stream
print(total, digest.hexdigest(), hashlib.sha256(datagram).hexdigest(), biggest[0], flush=True)
"""

SENDER = SNIFFER + """
import hashlib
biggest = [0]
threading.Thread(target=sniff, args=("out", biggest), daemon=True).start()
block = hashlib.sha256(b"pyxen").digest() * 2048  # 64 KiB
data = b"".join(hashlib.sha256(bytes([i])).digest()[:1] + block[1:] for i in range(64))
c = socket.create_connection((sys.argv[1], 5002), timeout=60)
c.sendall(data); c.shutdown(socket.SHUT_WR)
datagram = bytes(range(256)) * 5
socket.socket(c.family, socket.SOCK_DGRAM).sendto(datagram, (sys.argv[1], 5003))
c.recv(1)  # the receiver closes once it has it all
print(len(data), hashlib.sha256(data).hexdigest(), hashlib.sha256(datagram).hexdigest(),
      biggest[0], flush=True)
"""


def transfer(system, receiver: str, address: str) -> tuple[list[str], list[str]]:
    family = "6" if ":" in address else "4"
    server = pyxen(system, "exec", receiver, "--", sys.executable, "-c", RECEIVER, family,
                   stdout=subprocess.PIPE)
    try:
        assert server.stdout.readline().strip() == "listening"
        sent = system.cli("exec", "guest1", "--", sys.executable, "-c", SENDER, address)
        received, _ = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    return sent.stdout.split(), received.split()


def test_offload_gso_between_gso_vifs_and_segments_for_a_vif_without_it(system):
    """guest1 sends 4 MiB of TCP with TSO (frames of up to 64 KiB leave its
    eth0) and a UDP datagram with a blank checksum.  guest3 negotiated GSO
    and checksum offload: the frames arrive whole.  guest2 did not
    (netfront.offload=0): netback cuts the TCP frames into MTU-sized
    segments with full checksums and fills in the UDP checksum, so guest2's
    kernel, which checks every checksum itself, accepts all of it."""
    system.boot(system.write_topology(OFFLOAD_TOPOLOGY))
    for guest in ("guest1", "guest2", "guest3"):
        system.wait_log(guest, "network interface up")
    sent, got = transfer(system, "guest3", "10.0.0.3")
    assert got[:3] == sent[:3]                     # every byte, and the datagram
    assert int(sent[3]) > 1514 and int(got[3]) > 1514  # GSO frames went whole
    sent, got = transfer(system, "guest2", "10.0.0.2")
    assert got[:3] == sent[:3]
    assert int(sent[3]) > 1514                     # guest1 still sent GSO frames...
    assert int(got[3]) <= 1514                     # ...guest2 got MTU-sized ones
    log = (system.run_dir / "logs" / "net-dd.log").read_text()
    assert "rx frame dropped" not in log


def test_ipv6_tcp_goes_as_tcpv6_gso_frames_or_is_segmented(system):
    """The same over IPv6 (feature-gso-tcpv6, feature-ipv6-csum-offload):
    guest1's TCPv6 frames of up to 64 KiB reach guest3 whole, and reach
    guest2 (no offload) cut into MTU-sized segments with their checksums
    filled in, as is the UDPv6 datagram's."""
    system.boot(system.write_topology(OFFLOAD_TOPOLOGY))
    for n, guest in enumerate(("guest1", "guest2", "guest3"), 1):
        system.wait_log(guest, "network interface up")
        system.cli("exec", guest, "--", "ip", "-6", "addr", "add", f"fd00::{n}/64",
                   "dev", "eth0", "nodad")
    sent, got = transfer(system, "guest3", "fd00::3")
    assert got[:3] == sent[:3]
    assert int(sent[3]) > 1514 and int(got[3]) > 1514
    sent, got = transfer(system, "guest2", "fd00::2")
    assert got[:3] == sent[:3]
    assert int(sent[3]) > 1514 and int(got[3]) <= 1514
    log = (system.run_dir / "logs" / "net-dd.log").read_text()
    assert "rx frame dropped" not in log and "bad tx" not in log


def test_uplink_lets_the_host_reach_the_guests_and_goes_away_on_halt(system):
    """net-dd's bridge gets a port to a TAP on the host (the topology's
    `uplink`): the host pings a guest and streams TCP to it (GSO frames
    from the host's kernel), and the TAP is gone once the machine halts."""
    n = os.getpid()
    tap = f"pyxt{n % 100000}"               # unique on this host
    net = f"10.{200 + n % 50}.{n // 50 % 250}"  # a subnet no other test uses
    system.boot(system.write_topology(f"""
        [platform]
        memory = 1024
        [dom0]
        memory = 256
        [domain.net-dd]
        driver_domain = true
        memory = 128
        uplink = ["bridge=xenbr0, tap={tap}, ip={net}.254/24"]
        [domain.guest1]
        memory = 128
        vif = ["backend=net-dd, bridge=xenbr0, mac=00:16:3e:00:00:01, ip={net}.1"]
        """))
    system.wait_log("guest1", "network interface up")
    system.wait_log("net-dd", "uplink up")
    addr = subprocess.run(["ip", "-o", "addr", "show", "dev", tap], capture_output=True,
                          text=True, check=True).stdout
    assert f"{net}.254/24" in addr
    ping = subprocess.run(["ping", "-c", "1", "-w", "30", f"{net}.1"], capture_output=True,
                          text=True, check=False)
    assert "1 received" in ping.stdout, ping.stdout + ping.stderr
    server = pyxen(system, "exec", "guest1", "--", sys.executable, "-c", STREAM_SINK,
                   stdout=subprocess.PIPE)
    try:
        assert server.stdout.readline().strip() == "listening"
        data = os.urandom(4 << 20)
        with socket.create_connection((f"{net}.1", 5002), timeout=60) as conn:
            conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)
            conn.recv(1)
        out, _ = server.communicate(timeout=60)
        assert out.split() == [str(len(data)), hashlib.sha256(data).hexdigest()]
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    system.halt()
    assert not os.path.exists(f"/sys/class/net/{tap}")


STREAM_SINK = """
import hashlib, socket
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 5002)); srv.listen(1)
print("listening", flush=True)
conn, _ = srv.accept()
digest, total = hashlib.sha256(), 0
while chunk := conn.recv(1 << 16):
    digest.update(chunk); total += len(chunk)
print(total, digest.hexdigest(), flush=True)
"""
