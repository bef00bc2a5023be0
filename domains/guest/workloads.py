"""Guest workloads: what a DomU runs once its kernel has booted."""

from __future__ import annotations

import threading

from domains.guest.devices import start_frontends
from domains.kernel.kernel import Kernel


def idle(kernel: Kernel) -> None:
    """Boot, bring up the PV devices, and wait until shut down or destroyed."""
    kernel.ready()
    start_frontends(kernel)
    threading.Event().wait()


def echo_console(kernel: Kernel) -> None:
    """Answer every line typed on the console (`pyxen console NAME`)."""
    while True:
        line = kernel.console.readline().decode(errors="replace").strip()
        if line:
            print(f"{kernel.name} heard: {line}", flush=True)


def demo(kernel: Kernel) -> None:
    """The default guests' show: verify the PV disk, reach the peer guest over
    the PV network (`peer=IP` on the kernel command line), answer what is
    typed on the console, and tick on the virtual timer (VIRQ_TIMER)."""
    kernel.ready()
    threading.Thread(target=echo_console, args=(kernel,), name="console-echo",
                     daemon=True).start()
    disks, nets = start_frontends(kernel)
    try:
        print(verify_disk(kernel, disks.get("xvda")), flush=True)
    except (OSError, ValueError) as exc:
        print(f"disk check failed: {exc}", flush=True)
    if nets.wait_up(0):
        threading.Thread(target=udp_echo, name="udp-echo", daemon=True).start()
        if "peer" in kernel.args:
            print(reach(kernel.args["peer"]), flush=True)
    period = float(kernel.args.get("tick", "5"))
    tick = 0
    while True:
        kernel.sleep(period)
        tick += 1
        kernel.log.info("tick", n=tick)


ECHO_PORT = 7  # the echo service


def udp_echo() -> None:
    """Answer every datagram on the echo port, in the guest's own netns."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", ECHO_PORT))
        while True:
            data, addr = sock.recvfrom(2048)
            sock.sendto(data, addr)


def reach(peer: str, attempts: int = 20) -> str:
    """Send a datagram to the peer's echo port until it answers."""
    import socket
    import time

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1.0)  # the peer may still be booting: ask again
        for _ in range(attempts):
            start = time.monotonic()
            sock.sendto(b"hello over the PV network", (peer, ECHO_PORT))
            try:
                data, _ = sock.recvfrom(2048)
            except (TimeoutError, OSError):
                continue
            rtt = (time.monotonic() - start) * 1000
            return f"reached {peer} over the PV network: {data.decode()!r}, {rtt:.1f} ms"
    return f"could not reach {peer} over the PV network"


def verify_disk(kernel: Kernel, disk, rounds: int = 8, chunk_sectors: int = 256) -> str:
    """Write patterned data with checksums, flush, read back and compare."""
    import hashlib
    import os

    written = {}
    for i in range(rounds):
        sector = (i * 7919 * chunk_sectors) % max(1, disk.sectors - chunk_sectors)
        data = os.urandom(chunk_sectors * 512)
        disk.write(sector, data)
        written[sector] = hashlib.sha256(data).hexdigest()
    disk.flush()
    bad = [s for s, digest in written.items()
           if hashlib.sha256(disk.read(s, chunk_sectors)).hexdigest() != digest]
    if bad:
        return f"disk {disk.name}: {len(bad)} of {rounds} chunks CORRUPT at sectors {bad}"
    return (f"disk {disk.name}: verified {rounds} chunks of {chunk_sectors * 512 // 1024} KiB "
            f"({disk.sectors * 512 >> 20} MiB disk)")
