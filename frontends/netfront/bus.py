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

import functools
import threading

from domains.kernel.api import DriverKernel
from domains.kernel.fdtable import TAKE_TIMEOUT, vif_key
from domains.kernel.netns import can_use_netns, create_tap, sandboxed
from domains.kernel.xenbus.client import XsError
from frontends.netfront.device import NetfrontDevice, NetfrontError
from hypervisor.public.errno import XenError


class NetBus:
    def __init__(self, kernel: DriverKernel) -> None:
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
        self.closed = False
        self.unusable: list[NetfrontDevice] = []  # made, but never connected
        self.xs.watch(self.root, "netfront", lambda path, token: self._rescan())

    def _rescan(self) -> None:
        if self.closed:
            return
        try:
            present = sorted(int(d) for d in self.xs.directory(self.root))
        except (XsError, ValueError):
            present = []
        with self.lock:
            # A vif closed for good whose devid is present again was
            # detached and attached again before we looked: a new vif.
            gone = [d for d in self.devices
                    if d not in present or _replaced(self.devices[d])]
            new = [d for d in present if d not in self.devices or d in gone]
            closing = [self.devices.pop(devid) for devid in gone]
            for devid in new:
                self.devices[devid] = None  # connecting
        for device in closing:
            if device is not None:
                device.close()  # on the watch thread: its handshake runs on the queue
        for devid in new:
            if self.reason is not None:
                self.kernel.log.warning("no guest networking", vif=devid, reason=self.reason)
                continue
            # Not on the watch thread: connecting waits on watches itself.
            self.kernel.work.submit(functools.partial(self._connect, devid),
                                    f"{self.root}/{devid}")

    def _connect(self, devid: int) -> None:
        path = f"{self.root}/{devid}"
        device = None
        try:
            if self.closed:
                raise NetfrontError("the bus is closed")
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
                             vnet_hdr=self.offload, fd=self._tun_fd(devid))
            device = NetfrontDevice(self.kernel, path, tap)
            device.connect()
        except (XsError, XenError, NetfrontError, OSError, ValueError) as exc:
            if device is not None and device.life.moved_on():
                # Its reconnect to the newer backend is queued, on its TAP: kept.
                self.kernel.log.info("backend moved while connecting", vif=devid)
                with self.lock:
                    self.devices[devid] = device
                    self.changed.notify_all()
                return
            self.kernel.log.error("vif failed", vif=devid, error=str(exc))
            with self.lock:
                self.devices.pop(devid, None)
                if device is not None:
                    self.unusable.append(device)  # still closed by close()
                self.changed.notify_all()
            return
        with self.lock:
            self.devices[devid] = device
            self.changed.notify_all()
        self.kernel.log.info("network interface up", interface=f"eth{devid}", mac=mac, ip=ips)
        if self.closed:  # closed while this one connected: it goes too
            self._close_device(devid)

    def _tun_fd(self, devid: int) -> int | None:
        """The /dev/net/tun fd Dom0 had the hypervisor open in our network
        namespace for this vif (before it wrote the vif's nodes). A
        sandboxed guest has no other way to a TAP; an unsandboxed one opens
        its own if none came (None)."""
        fds = getattr(self.kernel, "fds", None)
        if fds is None:
            return None
        try:
            fd, _ = fds.take(vif_key(devid), timeout=TAKE_TIMEOUT if sandboxed() else 0)
        except TimeoutError:
            if sandboxed():
                raise NetfrontError(f"vif {devid}: no TAP fd was handed over") from None
            return None
        return fd

    def wait_up(self, devid: int = 0, timeout: float = 30.0) -> bool:
        """Block until eth<devid> is connected (False on timeout or failure)."""
        with self.lock:
            return self.changed.wait_for(
                lambda: self.devices.get(devid) is not None or devid not in self.devices,
                timeout) and self.devices.get(devid) is not None

    def _close_device(self, devid: int) -> None:
        with self.lock:
            device = self.devices.pop(devid, None)
        if device is not None:
            device.close()

    def close(self) -> None:
        """Close every vif and wait for their close handshakes (and for
        connects under way)."""
        self.closed = True
        try:
            self.xs.unwatch(self.root, "netfront")
        except XsError:
            pass
        with self.lock:
            connecting = [d for d, device in self.devices.items() if device is None]
        for devid in list(self.devices):
            self._close_device(devid)
        for devid in connecting:
            self.kernel.work.drain(f"{self.root}/{devid}")
        for devid in list(self.devices):
            self._close_device(devid)
        for device in self.unusable:
            device.close()




def _replaced(device) -> bool:
    life = getattr(device, "life", None)
    return bool(life is not None and life.replaced())
