"""netfront's xenbus side: one TAP interface per vif, eth0 first.

The guest kernel entered its own network namespace at boot (the toolstack
asked for it with `netns` on the kernel command line), so these interfaces
are the guest's alone; `pyxen exec NAME -- CMD` runs CMD in there.

``netfront.offload=0`` on the guest's command line (a topology's
``extra``) turns checksum and segmentation offload off for its vifs: the
TAPs carry no virtio_net_hdr and the frontends say feature-no-csum-offload
and no GSO (see device.py).
"""

from __future__ import annotations

import threading
from typing import Any

from domains.kernel.netns import can_use_netns, create_tap
from domains.kernel.xenbus.client import XsError
from frontends.netfront.device import NetfrontDevice, NetfrontError


class NetBus:
    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        self.xs = kernel.xenstore
        self.root = f"/local/domain/{kernel.domid}/device/vif"
        self.devices: dict[int, NetfrontDevice | None] = {}  # None: connecting
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        ok, reason = can_use_netns()
        self.reason = None if ok else reason
        args = getattr(kernel, "args", {}) or {}
        self.offload = args.get("netfront.offload", "1") not in ("0", "off", "no")
        self.xs.watch(self.root, "netfront", lambda path, token: self._rescan())

    def _rescan(self) -> None:
        try:
            present = sorted(int(d) for d in self.xs.directory(self.root))
        except (XsError, ValueError):
            present = []
        with self.lock:
            gone = [d for d in self.devices if d not in present]
            new = [d for d in present if d not in self.devices]
            closing = [self.devices.pop(devid) for devid in gone]
            for devid in new:
                self.devices[devid] = None  # connecting
        for device in closing:
            if device is not None:
                device.close()
        for devid in new:
            if self.reason is not None:
                self.kernel.log.warning("no guest networking", vif=devid, reason=self.reason)
                continue
            # Not on the watch thread: connecting waits on watches itself.
            threading.Thread(target=self._connect, args=(devid,), daemon=True).start()

    def _connect(self, devid: int) -> None:
        path = f"{self.root}/{devid}"
        try:
            mac = self.xs.read(f"{path}/mac").decode()
            backend = self.xs.read(f"{path}/backend").decode()
            try:
                ips = self.xs.read(f"{backend}/ip").decode().split()
            except XsError:
                ips = []
            try:
                mtu = int(self.xs.read(f"{backend}/mtu"))
            except (XsError, ValueError):
                mtu = 1500
            tap = create_tap(f"eth{devid}", mac=mac, mtu=mtu, addresses=ips,
                             vnet_hdr=self.offload)
            device = NetfrontDevice(self.kernel, path, tap)
            device.connect()
        except (XsError, NetfrontError, OSError, ValueError) as exc:
            self.kernel.log.error("vif failed", vif=devid, error=str(exc))
            with self.lock:
                self.devices.pop(devid, None)
                self.changed.notify_all()
            return
        with self.lock:
            self.devices[devid] = device
            self.changed.notify_all()
        self.kernel.log.info("network interface up", interface=f"eth{devid}", mac=mac, ip=ips)

    def wait_up(self, devid: int = 0, timeout: float = 30.0) -> bool:
        """Block until eth<devid> is connected (False on timeout or failure)."""
        with self.lock:
            return self.changed.wait_for(
                lambda: self.devices.get(devid) is not None or devid not in self.devices,
                timeout) and self.devices.get(devid) is not None
