"""blkfront's xenbus side: the guest's virtual block devices.

Watches device/vbd in the guest's own directory: every device the
toolstack adds (at boot or with `pyxen block-attach`) is connected (on the
kernel's work queue, under the device's path: its handshake waits for the
backend), every device whose directory goes away is closed.  close()
closes them all and waits for their handshakes.
"""

from __future__ import annotations

import functools
import threading

from domains.kernel.api import DriverKernel
from domains.kernel.xenbus.client import XsError
from frontends.blkfront.api import BlockDevice
from frontends.blkfront.device import BlkfrontDevice, DeviceGone
from hypervisor.public.errno import XenError


class BlockBus:
    def __init__(self, kernel: DriverKernel) -> None:
        self.kernel = kernel
        self.xs = kernel.xenstore
        self.root = f"/local/domain/{kernel.domid}/device/vbd"
        self.devices: dict[int, BlockDevice] = {}
        self.failed: dict[int, str] = {}
        self.cond = threading.Condition()
        self.closed = False
        self.unusable: list[BlkfrontDevice] = []  # made, but never connected
        self.xs.watch(self.root, "blkfront", lambda path, token: self._rescan())
        self._rescan()  # now, so that get() knows what is coming

    def _rescan(self) -> None:
        if self.closed:
            return
        try:
            present = {int(d) for d in self.xs.directory(self.root)}
        except (XsError, ValueError):
            present = set()
        with self.cond:
            for devid in [d for d in self.failed if d not in present]:
                del self.failed[devid]  # gone: the next one at that devid is new
            # A device closed for good whose devid is present again was
            # detached and attached again before we looked: a new device.
            gone = [d for d in self.devices
                    if d not in present or _replaced(self.devices[d])]
            new = [d for d in present if (d not in self.devices or d in gone)
                   and d not in self.failed]
            for devid in new:
                self.failed[devid] = "connecting"
        for devid in gone:
            self.kernel.log.info("block device removed", devid=devid)
            with self.cond:
                disk = self.devices.pop(devid)
            disk.device.close()
        for devid in new:
            self.kernel.work.submit(functools.partial(self._connect, devid),
                                    f"{self.root}/{devid}")

    def _connect(self, devid: int) -> None:
        path = f"{self.root}/{devid}"
        if self.closed:
            with self.cond:
                self.failed[devid] = "bus closed"
                self.cond.notify_all()
            return
        device = None
        try:
            device = BlkfrontDevice(self.kernel, path)
            device.connect()
            name = self.xs.read(f"{device.backend}/dev").decode()
        except (XsError, XenError, DeviceGone, OSError, ValueError) as exc:
            if device is not None and device.life.moved_on():
                # Its reconnect to the newer backend is queued: kept.
                self.kernel.log.info("backend moved while connecting", devid=devid)
                try:  # its name, as the newer backend has it
                    moved_to = self.xs.read(f"{path}/backend").decode()
                    name = self.xs.read(f"{moved_to}/dev").decode()
                except (XsError, ValueError):
                    name = str(devid)
                with self.cond:
                    self.failed.pop(devid, None)
                    self.devices[devid] = BlockDevice(device, name)
                    self.cond.notify_all()
                return
            self.kernel.log.error("block device failed", devid=devid, error=str(exc))
            with self.cond:
                self.failed[devid] = str(exc)
                if device is not None:
                    self.unusable.append(device)  # still closed by close()
                self.cond.notify_all()
            return
        with self.cond:
            self.failed.pop(devid, None)
            self.devices[devid] = BlockDevice(device, name)
            self.cond.notify_all()
        if self.closed:  # closed while this one connected: it goes too
            self._close_device(devid)

    def get(self, vdev: str, timeout: float = 30.0) -> BlockDevice:
        """The connected device `vdev` (e.g. "xvda", the backend's `dev`),
        waiting while any device is still connecting."""
        def found() -> BlockDevice | None:
            return next((d for d in self.devices.values() if d.name == vdev), None)

        with self.cond:
            self.cond.wait_for(lambda: found() is not None or
                               "connecting" not in self.failed.values(), timeout)
            disk = found()
        if disk is None:
            raise DeviceGone(f"no block device {vdev} (failed: {self.failed or 'none'})")
        return disk

    def _close_device(self, devid: int) -> None:
        with self.cond:
            disk = self.devices.pop(devid, None)
        if disk is not None:
            disk.device.close()

    def close(self) -> None:
        """Close every device and wait for their close handshakes (and for
        connects under way)."""
        self.closed = True
        try:
            self.xs.unwatch(self.root, "blkfront")
        except XsError:
            pass
        for devid in list(self.devices):
            self._close_device(devid)
        for device in self.unusable:
            device.close()
        work = self.kernel.work
        for devid in list(self.failed):
            work.drain(f"{self.root}/{devid}")
        for devid in list(self.devices):
            self._close_device(devid)
        for device in self.unusable:
            device.close()




def _replaced(disk) -> bool:
    life = getattr(disk.device, "life", None)
    return bool(life is not None and life.replaced())
