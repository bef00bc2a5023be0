"""Guest workloads: what a DomU runs once its kernel has booted."""

from __future__ import annotations

import threading

from domains.kernel.kernel import Kernel


def idle(kernel: Kernel) -> None:
    """Boot and wait: the domain lives until it is shut down or destroyed."""
    kernel.ready()
    threading.Event().wait()


def echo_console(kernel: Kernel) -> None:
    """Answer every line typed on the console (`pyxen console NAME`)."""
    while True:
        line = kernel.console.readline().decode(errors="replace").strip()
        if line:
            print(f"{kernel.name} heard: {line}", flush=True)


def demo(kernel: Kernel) -> None:
    """A heartbeat driven by the virtual timer (VIRQ_TIMER), and an answer to
    whatever is typed on the console.

    Devices (disk, network) join the demo as their drivers arrive.
    """
    kernel.ready()
    threading.Thread(target=echo_console, args=(kernel,), name="console-echo",
                     daemon=True).start()
    period = float(kernel.args.get("tick", "5"))
    tick = 0
    while True:
        kernel.sleep(period)
        tick += 1
        kernel.log.info("tick", n=tick)
