"""Dom0's kernel entry: the toolstack and the control socket.

Boot order follows Xen: the hypervisor built Dom0; Dom0 now builds every
other domain of the topology (driver domains first) through hypercalls,
reporting progress on the loader's pipe, then serves the CLI.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import unquote

import msgpack
import zmq

from backends.blkback.device import BlkbackDevice
from domains.dom0.client import CONTROL_SOCKET
from domains.dom0.control import Waiters, handle
from domains.dom0.toolstack import Toolstack
from domains.dom0.topology import Platform, TopologyError, load_topology
from domains.dom0.xc import XenCtrl
from domains.dom0.xenconsoled import Xenconsoled
from domains.dom0.xenstored.daemon import Xenstored
from domains.kernel.xenbus.backend import BackendBus
from domains.kernel.xenbus.client import XenStoreClient
from domains.kernel.xenbus.transport import UnixTransport
from domains.kernel.kernel import Kernel
from hypervisor.public.errno import XenError
from hypervisor.public.xen import VIRQ_DOM_EXC



class Progress:
    """JSON lines to `pyxen boot`, which waits on the other end of the pipe."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def __call__(self, **event) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, (json.dumps(event) + "\n").encode())
        except OSError:
            self.close()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def main(kernel: Kernel) -> None:
    run_dir = Path(kernel.start_info["run_dir"])
    extra = kernel.start_info["fds"].get("extra", [])
    progress = Progress(extra[0] if extra else None)
    xc = XenCtrl(kernel.hypercall)
    topology = None
    if "topology" in kernel.args:
        topology = load_topology(unquote(kernel.args["topology"]))
        platform = topology.platform
    else:
        phys = xc.physinfo()
        platform = Platform(phys["platform"], phys["nr_cpus"], phys["total_pages"] // 256)
    xenstored = Xenstored(kernel, run_dir)
    xenstored.start()
    xenstored.ready.wait()
    kernel.xenstore = XenStoreClient(UnixTransport(str(xenstored.path)))
    xenconsoled = Xenconsoled(kernel, run_dir, kernel.xenstore)
    xenconsoled.start()
    toolstack = Toolstack(xc, kernel.xenstore, platform, kernel.log, announce=progress,
                          disk_dir=run_dir / "disks")
    if topology is not None:
        toolstack.known = list(topology.domains)

    # Dom0 can serve disks too (backend=Domain-0, xl's default).
    BackendBus(kernel.xenstore, 0, "vbd",
               lambda path, fe, devid: BlkbackDevice(kernel, path, fe, devid), kernel.log)

    ctx = kernel.ctx
    control = ctx.socket(zmq.ROUTER)
    control.setsockopt(zmq.LINGER, 1000)
    control.bind(f"ipc://{run_dir / CONTROL_SOCKET}")
    wake = ctx.socket(zmq.PULL)
    wake.bind("inproc://dom-exc")
    notifier = ctx.socket(zmq.PUSH)  # used by the upcall thread only
    notifier.connect("inproc://dom-exc")

    def domain_exception(port: int) -> None:
        xenstored.domain_exception()
        notifier.send(b"", zmq.NOBLOCK)

    kernel.events.bind_virq(VIRQ_DOM_EXC, domain_exception)
    kernel.ready()
    progress(event="created", name="Domain-0", domid=0)

    if topology is not None:
        try:
            for config in topology.domains:
                toolstack.create(config)
        except (XenError, TopologyError) as exc:
            kernel.log.error("boot failed", error=str(exc))
            progress(event="error", message=str(exc))
            progress.close()
            toolstack.halt()
            xenconsoled.stop()
            xenstored.stop()
            return  # Dom0 powers off: the machine halts
    progress(event="ready")
    progress.close()
    serve(toolstack, control, wake, kernel)
    xenconsoled.stop()
    kernel.xenstore.close()
    xenstored.stop()
    (run_dir / CONTROL_SOCKET).unlink(missing_ok=True)


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else max(0, int(seconds * 1000) + 1)


def serve(toolstack: Toolstack, control: zmq.Socket, wake: zmq.Socket,
          kernel: Kernel) -> None:
    """Answer the CLI; `wait` requests are answered when their state comes."""
    waiters = Waiters()
    poller = zmq.Poller()
    poller.register(control, zmq.POLLIN)
    poller.register(wake, zmq.POLLIN)

    def answer(address: list[bytes], reply: dict) -> None:
        control.send_multipart([*address, msgpack.packb(reply)])

    while True:
        restart_in = toolstack.run_due()  # restarts whose back-off is over run now
        # Before sleeping: a restart just made, or a request just handled,
        # may be what a `wait` waits for.
        for address, reply in waiters.settle(toolstack):
            answer(address, reply)
        timeouts = [t for t in (waiters.timeout_ms(), _ms(restart_in)) if t is not None]
        ready = dict(poller.poll(min(timeouts) if timeouts else None))
        if wake in ready:
            while wake.poll(0):
                wake.recv()
            toolstack.domain_exceptions()
        if control in ready:
            *address, _, payload = control.recv_multipart()
            address.append(b"")
            try:
                request = msgpack.unpackb(payload)
            except (ValueError, msgpack.UnpackException):
                request = None
            if isinstance(request, dict) and request.get("cmd") == "wait":
                waiters.add(address, request.get("args") or {})
            else:
                reply, halt = handle(toolstack, request)
                answer(address, reply)
                if halt:
                    kernel.log.info("halting the machine")
                    toolstack.halt()
                    control.close()
                    return
