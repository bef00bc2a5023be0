"""A driver domain's kernel: an unprivileged domain hosting backends.

It serves whatever devices the toolstack assigns to it: blkback for the
`backend/vbd` devices, netback and its bridges for `backend/vif`. If it
dies, only those devices pause.
"""

from __future__ import annotations

from backends.blkback.device import BlkbackDevice
from backends.netback.device import Switch, Vif
from domains.kernel.kernel import Kernel
from domains.kernel.xenbus.backend import BackendBus


def main(kernel: Kernel) -> None:
    kernel.ready()
    BackendBus(kernel.xenstore, kernel.domid, "vbd",
               lambda path, fe, devid: BlkbackDevice(kernel, path, fe, devid), kernel.log)
    switch = Switch(kernel.log)
    BackendBus(kernel.xenstore, kernel.domid, "vif",
               lambda path, fe, devid: Vif(kernel, switch, path, fe, devid), kernel.log)
    # A driver domain that stops running is detected and handled like a
    # crashed one (on_watchdog): its main thread is the heartbeat.
    kernel.heartbeat(timeout_s=int(kernel.args.get("watchdog", "10")))
