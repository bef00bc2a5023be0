"""Guest workloads: what a DomU runs once its kernel has booted."""

from __future__ import annotations

import threading

from domains.kernel.kernel import Kernel


def idle(kernel: Kernel) -> None:
    """Boot and wait: the domain lives until it is shut down or destroyed."""
    kernel.ready()
    threading.Event().wait()


def demo(kernel: Kernel) -> None:
    """A heartbeat driven by the virtual timer (VIRQ_TIMER).

    Devices (disk, network) join the demo as their drivers arrive.
    """
    kernel.ready()
    period = float(kernel.args.get("tick", "5"))
    tick = 0
    while True:
        kernel.sleep(period)
        tick += 1
        kernel.log.info("tick", n=tick)
