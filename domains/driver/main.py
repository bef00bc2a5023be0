"""A driver domain's kernel: an unprivileged domain hosting backends.

It serves whatever devices the toolstack assigns to it: blkback for the
`backend/vbd` devices, netback and its bridges for `backend/vif`. If it
dies, only those devices pause.
"""

from __future__ import annotations

from backends.blkback.device import BlkbackDevice
from backends.netback.device import Switch, Vif
from backends.netback.uplink import Uplink, parse_uplink_arg
from domains.kernel.kernel import Kernel
from domains.kernel.xenbus.backend import BackendBus


def main(kernel: Kernel) -> None:
    kernel.ready()
    BackendBus(kernel.xenstore, kernel.domid, "vbd",
               lambda path, fe, devid: BlkbackDevice(kernel, path, fe, devid), kernel.log)
    switch = Switch(kernel.log)
    uplinks = start_uplinks(kernel, switch)  # noqa: F841 -- they live as long as we do
    BackendBus(kernel.xenstore, kernel.domid, "vif",
               lambda path, fe, devid: Vif(kernel, switch, path, fe, devid), kernel.log)
    # A driver domain that stops running is detected and handled like a
    # crashed one (on_watchdog): its main thread is the heartbeat.
    kernel.heartbeat(timeout_s=int(kernel.args.get("watchdog", "10")))


def start_uplinks(kernel: Kernel, switch: Switch) -> list[Uplink]:
    """The bridges' host TAPs the topology asked for (``uplink=`` on the
    command line); one that cannot be made is logged and skipped, the
    vifs are served either way."""
    try:
        configs = parse_uplink_arg(kernel.args.get("uplink", ""))
    except ValueError as exc:
        kernel.log.error("uplink not created", error=str(exc))
        return []
    uplinks = []
    for config in configs:
        uplink = Uplink(switch, config, kernel.log)
        try:
            uplink.start()
        except (OSError, ValueError) as exc:
            kernel.log.error("uplink not created", uplink=config.tap, error=str(exc))
            continue
        uplinks.append(uplink)
    return uplinks
