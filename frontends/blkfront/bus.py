"""blkfront's xenbus side: the guest's virtual block devices.

Watches device/vbd in the guest's own directory: every device the
toolstack adds (at boot or with `pyxen block-attach`) is connected, every
device whose directory goes away is closed.
"""

from __future__ import annotations

import threading
from typing import Any

from domains.kernel.xenbus.client import XsError
from frontends.blkfront.api import BlockDevice
from frontends.blkfront.device import BlkfrontDevice, DeviceGone


class BlockBus:
    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        self.xs = kernel.xenstore
        self.root = f"/local/domain/{kernel.domid}/device/vbd"
        self.devices: dict[int, BlockDevice] = {}
        self.failed: dict[int, str] = {}
        self.cond = threading.Condition()
        self.xs.watch(self.root, "blkfront", lambda path, token: self._rescan())
        self._rescan()  # now, so that get() knows what is coming

    def _rescan(self) -> None:
        try:
            present = {int(d) for d in self.xs.directory(self.root)}
        except (XsError, ValueError):
            present = set()
        with self.cond:
            gone = [d for d in self.devices if d not in present]
            new = [d for d in present if d not in self.devices and d not in self.failed]
            for devid in new:
                self.failed[devid] = "connecting"
        for devid in gone:
            self.kernel.log.info("block device removed", devid=devid)
            with self.cond:
                disk = self.devices.pop(devid)
            disk.device.close()
        for devid in new:
            threading.Thread(target=self._connect, args=(devid,), daemon=True).start()

    def _connect(self, devid: int) -> None:
        path = f"{self.root}/{devid}"
        try:
            device = BlkfrontDevice(self.kernel, path)
            device.connect()
            name = self.xs.read(f"{device.backend}/dev").decode()
        except (XsError, DeviceGone, OSError, ValueError) as exc:
            self.kernel.log.error("block device failed", devid=devid, error=str(exc))
            with self.cond:
                self.failed[devid] = str(exc)
                self.cond.notify_all()
            return
        with self.cond:
            self.failed.pop(devid, None)
            self.devices[devid] = BlockDevice(device, name)
            self.cond.notify_all()

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
