"""The backend half of xenbus: find the devices the toolstack gives us.

The toolstack creates /local/domain/<us>/backend/<kind>/<frontend>/<devid>
for each device a driver domain must serve. `BackendBus` watches that
directory and calls the driver's factory for every new device directory,
and `remove()` on devices whose directory disappears (detach, or the guest
was destroyed). Callbacks run on the XenStore client's dispatcher thread,
one at a time; a device's xenbus lifecycle runs on the kernel's work queue
(see lifecycle.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from domains.kernel.xenbus.client import XenStoreClient, XsError


class BackendDevice(Protocol):
    def start(self) -> None: ...
    def remove(self) -> None: ...


class BackendBus:
    def __init__(self, xs: XenStoreClient, domid: int, kind: str,
                 factory: Callable[[str, int, int], BackendDevice], log) -> None:
        self.xs = xs
        self.root = f"/local/domain/{domid}/backend/{kind}"
        self.factory = factory
        self.log = log
        self.devices: dict[str, BackendDevice] = {}
        self.token = f"backend-{kind}"
        xs.watch(self.root, self.token, lambda path, token: self.rescan())

    def _listing(self) -> set[tuple[str, int, int]]:
        found = set()
        try:
            frontends = self.xs.directory(self.root)
        except XsError:
            return found
        for fe in frontends:
            try:
                for devid in self.xs.directory(f"{self.root}/{fe}"):
                    found.add((f"{self.root}/{fe}/{devid}", int(fe), int(devid)))
            except (XsError, ValueError):
                continue
        return found

    def rescan(self) -> None:
        listing = self._listing()
        present = {path for path, _, _ in listing}
        for path in list(self.devices):
            if path not in present:
                self.log.info("backend device gone", path=path)
                self.devices.pop(path).remove()
        for path, fe, devid in sorted(listing):
            if path in self.devices:
                continue
            try:
                # The toolstack writes a device's nodes in one transaction, so
                # a directory we see is complete.
                device = self.factory(path, fe, devid)
                device.start()
            except Exception as exc:  # one bad device must not stop the bus
                self.log.error("backend device failed", path=path, error=repr(exc))
                continue
            self.devices[path] = device

    def close(self) -> None:
        """Stop finding devices, and remove those we have (each waits for
        its teardown)."""
        try:
            self.xs.unwatch(self.root, self.token)
        except XsError:
            pass
        for device in self.devices.values():
            device.remove()
        self.devices.clear()
