"""A bridge's uplink to the host: a TAP device the net driver domain creates
in its own network namespace, the host's, as a port of one of its bridges.

In Xen a driver domain's bridge usually has a physical NIC as a port; in
pyxen the "wire" out of the machine is a TAP device on the host, so the
host reaches the guests (``ping 10.0.0.2`` from the host, or routing and
NAT from there).  A topology asks for it on the driver domain:

    [domain.net-dd]
    driver_domain = true
    uplink = ["bridge=xenbr0, tap=pyxtap0, ip=10.0.0.254/24"]

The toolstack hands it over on the driver domain's command line
(``uplink=xenbr0,pyxtap0,10.0.0.254/24,,`` -- bridge, TAP, addresses
joined by ``+``, MTU, MAC; several joined by ``;``: see
:func:`parse_uplink_arg`).  The TAP lives exactly as long as the driver
domain's process: the kernel removes it when its file descriptor closes,
so ``pyxen halt``, a crash or a restart take it away (a restarted driver
domain makes a new one).  Creating it needs CAP_NET_ADMIN (root); without
it, or if the name is taken, the driver domain says why in its log and
serves its vifs without the uplink.

The TAP uses the same offloads as a guest's: the host's kernel hands
frames of up to 64 KiB with blank checksums and GSO metadata
(virtio_net_hdr), which become the frame's offload state in the bridge
(domains.kernel.vnet, then backends.netback.offload's checks), and frames
from the guests go to it whole, GSO and blank checksums included.
"""

from __future__ import annotations

import os
import select
import threading
from dataclasses import dataclass
from typing import Any

from backends.netback.device import GSO_TYPES, Frame, RateLimitedLog, Switch, split_head
from backends.netback.offload import Offload, Receiver, tx_offload
from domains.kernel import netpkt, vnet
from domains.kernel.netns import create_tap, given_uplinks
from domains.kernel.threads import OwnedThread
from hypervisor.public.io.netif import XEN_NETIF_MAX_TX_SIZE, NETRXF_data_validated
from hypervisor.public.pyxen.tap import (
    TUN_F_CSUM,
    TUN_F_TSO4,
    TUN_F_TSO6,
    VNET_HDR_LEN,
    NetnsError,
    Tap,
    parse_address,
)

#: Frames read from the TAP per turn on the switch: others' rings get
#: their turn in between.
READ_BATCH = 32


@dataclass(frozen=True)
class UplinkConfig:
    bridge: str
    tap: str
    ips: tuple[str, ...] = ()
    mtu: int = 1500
    mac: str | None = None


def parse_uplink_arg(text: str) -> list[UplinkConfig]:
    """The ``uplink=`` argument the toolstack wrote (UplinkSpec.to_arg):
    ``bridge,tap,ip+ip,mtu,mac`` entries joined by ``;``.  ValueError if
    it does not parse."""
    configs = []
    for entry in filter(None, text.split(";")):
        fields = entry.split(",")
        if len(fields) != 5 or not fields[0] or not fields[1]:
            raise ValueError(f"bad uplink {entry!r} (want bridge,tap,ip+ip,mtu,mac)")
        bridge, tap, ips, mtu, mac = fields
        if mtu and not mtu.isdigit():
            raise ValueError(f"bad uplink MTU {mtu!r}")
        configs.append(UplinkConfig(bridge, tap, tuple(filter(None, ips.split("+"))),
                                    int(mtu) if mtu else 1500, mac or None))
    return configs


def _given_tap(config: UplinkConfig, given: dict[str, tuple[int, dict]]) -> Tap:
    """The TAP the hypervisor made for this uplink (a sandboxed driver
    domain cannot make one on the host)."""
    fd, made = given.get(config.tap, (-1, {"error": "the hypervisor made no such TAP"}))
    if fd < 0:
        raise NetnsError(0, f"TAP {config.tap}: {made.get('error')}")
    return Tap(fd, config.tap, made["mac"], int(made["mtu"]),
               [parse_address(a) for a in made.get("ip", ())], vnet_hdr=True)


class Uplink:
    """A host TAP device as a port of a bridge."""

    #: What the host's end takes: everything (its kernel checks and
    #: segments as needed).
    receiver = Receiver(csum=True, ipv6_csum=True, gso_tcpv4=True, gso_tcpv6=True)

    def __init__(self, switch: Switch, config: UplinkConfig, log: Any) -> None:
        self.switch = switch
        self.config = config
        self.bridge_name = config.bridge
        self.port_id = f"uplink:{config.tap}"
        self.log = log.bind(uplink=config.tap, bridge=config.bridge)
        self.trouble = RateLimitedLog(self.log)
        self.tap: Tap | None = None
        self.hdr = memoryview(bytearray(VNET_HDR_LEN))
        self.body = memoryview(bytearray(XEN_NETIF_MAX_TX_SIZE + 1))
        self._stop_r, self._stop_w = os.pipe()
        self.reader: threading.Thread | None = None

    def start(self) -> None:
        """Create the TAP on the host and plug it into its bridge.  NetnsError
        (the message says why) if the TAP cannot be made."""
        config = self.config
        given = given_uplinks()
        if given is not None:
            tap = _given_tap(config, given)
        else:
            tap = create_tap(config.tap, mac=config.mac, mtu=config.mtu,
                             addresses=list(config.ips), vnet_hdr=True)
        try:
            if given is None:
                tap.set_offload(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
            tap.set_blocking(False)
        except (NetnsError, OSError):
            tap.close()
            raise
        self.tap = tap
        self.switch.call(lambda: self.switch.plug(self))
        self.reader = OwnedThread(f"uplink-{config.tap}", self._read_loop)  # close() joins it
        self.reader.start()
        self.log.info("uplink up", mac=tap.mac, ip=list(config.ips), mtu=config.mtu)

    def close(self) -> None:
        """Unplug and remove the TAP (it goes with its file descriptor)."""
        if self.tap is None:
            return
        os.write(self._stop_w, b"!")
        if self.reader is not None:
            self.reader.join(timeout=5)
        self.switch.call(lambda: self.switch.unplug(self))
        self.tap.close()
        self.tap = None

    # -- host -> bridge -------------------------------------------------------------

    def _read_loop(self) -> None:
        tap = self.tap
        assert tap is not None
        while True:
            readable, _, _ = select.select([tap, self._stop_r], [], [])
            if self._stop_r in readable:
                return
            self.switch.call(self._pump)

    def _pump(self) -> None:
        """Forward what the host sent, up to READ_BATCH frames (on the switch)."""
        for _ in range(READ_BATCH):
            try:
                n = self.tap.readv([self.hdr, self.body])
            except BlockingIOError:
                return
            except OSError as exc:
                self.trouble("uplink read failed", error=str(exc))
                return
            size = n - VNET_HDR_LEN
            if not 0 < size <= XEN_NETIF_MAX_TX_SIZE:
                self.trouble("uplink frame dropped", size=size)
                continue
            self._forward(size)

    def _forward(self, size: int) -> None:
        hdr = vnet.parse_vnet_hdr(self.hdr)
        body = self.body
        head, rest = split_head([body[:size]], size)
        decision = vnet.tx_offload(hdr, head, size, gso_types=GSO_TYPES, ipv6_csum=True)
        if decision.drop:
            self.trouble("uplink frame dropped", reason=decision.drop)
            return
        if decision.fill_csum or decision.segment:
            # What netif cannot describe: made plain here, as netfront does.
            data = bytes(body[:size])
            if decision.segment:
                try:
                    frames = netpkt.segment_tcp(data, decision.segment)
                except ValueError as exc:
                    self.trouble("uplink frame dropped", reason=str(exc))
                    return
            else:
                filled = bytearray(data)
                netpkt.complete_checksum(filled, hdr.csum_start, hdr.csum_offset)
                frames = [bytes(filled)]
            for frame in frames:
                self.switch.forward(self, Frame.of(frame, Offload(NETRXF_data_validated)))
            return
        offload = tx_offload(head, size, decision.flags, decision.gso,
                             gso_types=GSO_TYPES, ipv6_csum=True)
        if isinstance(offload, str):
            self.trouble("uplink frame dropped", reason=offload)
            return
        self.switch.forward(self, Frame(head, rest, size, offload))

    # -- bridge -> host ---------------------------------------------------------

    def deliver(self, frame: Frame) -> None:
        """Hand a frame from the bridge to the host's kernel, offload and all."""
        if self.tap is None:
            return
        off = frame.offload
        hdr = vnet.rx_vnet_header(off.flags, off.gso, frame.head)
        if hdr is None:
            self.trouble("uplink frame dropped", reason="offload on a frame whose checksum "
                                                        "cannot be found")
            return
        try:
            self.tap.writev([hdr, *frame.chunks()])
        except OSError as exc:
            self.trouble("uplink write failed", error=str(exc))

    def push(self) -> None:
        """Nothing queued: deliver() wrote the frame already."""
