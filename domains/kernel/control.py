"""PV control: the toolstack asks a domain to shut down through XenStore.

The toolstack writes `control/shutdown` (poweroff, reboot, halt, crash,
suspend); the kernel watches it, acknowledges by clearing the node (as
Linux's xenbus shutdown handler does) and shuts down with that reason.
"""

from __future__ import annotations

from hypervisor.public.sched import (
    SHUTDOWN_crash,
    SHUTDOWN_poweroff,
    SHUTDOWN_reboot,
    SHUTDOWN_suspend,
)

REQUESTS = {
    "poweroff": SHUTDOWN_poweroff,
    "halt": SHUTDOWN_poweroff,
    "reboot": SHUTDOWN_reboot,
    "crash": SHUTDOWN_crash,
    "suspend": SHUTDOWN_suspend,
}
FEATURES = ("feature-poweroff", "feature-reboot")


def parse_request(value: bytes) -> int | None:
    """The shutdown reason a control/shutdown value asks for, if any."""
    return REQUESTS.get(value.decode(errors="replace").strip("\0 "))


def watch_shutdown(kernel) -> None:
    store = kernel.xenstore
    for feature in FEATURES:
        store.write(f"control/{feature}", "1")

    def on_change(path: str, token: str) -> None:
        try:
            value = store.read("control/shutdown")
        except Exception:  # not there yet: the watch fires when it is written
            return
        reason = parse_request(value)
        if reason is None:
            return
        store.write("control/shutdown", "")
        kernel.log.info("shutdown requested through xenstore", request=value.decode())
        kernel.shutdown(reason)

    store.watch("control/shutdown", "shutdown", on_change)
