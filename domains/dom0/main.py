"""Dom0's kernel entry: the toolstack and the control socket.

Boot order follows Xen: the hypervisor built Dom0; Dom0 now builds every
other domain of the topology (driver domains first) through hypercalls,
reporting progress on the loader's pipe, then serves the CLI.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import msgpack
import zmq

from backends.blkback.device import BlkbackDevice
from domains.dom0.client import CONTROL_SOCKET
from domains.dom0.control import MAX_REQUEST, Control
from domains.dom0.mailbox import Mailbox
from domains.dom0.peercred import owner_uid
from domains.dom0.toolstack import Toolstack
from domains.dom0.topology import Platform, TopologyError, load_topology
from domains.dom0.xc import XenCtrl
from domains.dom0.xenconsoled import Xenconsoled
from domains.dom0.xenstored.daemon import Xenstored
from domains.kernel.kernel import Kernel
from domains.kernel.xenbus.backend import BackendBus
from domains.kernel.xenbus.client import XenStoreClient
from domains.kernel.xenbus.transport import UnixTransport
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
    kernel.xenstore = XenStoreClient(UnixTransport(str(xenstored.path)), log=kernel.log)
    xenconsoled = Xenconsoled(kernel, run_dir, kernel.xenstore)
    xenconsoled.start()
    toolstack = Toolstack(xc, kernel.xenstore, platform, kernel.log, announce=progress,
                          disk_dir=run_dir / "disks")
    xenstored.store.on_quota_error = toolstack.quota_error

    # Dom0 can serve disks too (backend=Domain-0, xl's default).
    BackendBus(kernel.xenstore, 0, "vbd",
               lambda path, fe, devid: BlkbackDevice(kernel, path, fe, devid), kernel.log)

    ctx = kernel.ctx
    control = ctx.socket(zmq.ROUTER)
    control.setsockopt(zmq.LINGER, 1000)
    # Whoever reaches the control socket acts as Dom0: only our uid's
    # processes may connect, and a request is small.
    control.setsockopt(zmq.IPC_FILTER_UID, owner_uid())
    control.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST)
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


def unpack_request(payload: bytes) -> Any:
    """A request's msgpack, within the size of a request; None if it is not."""
    try:
        return msgpack.unpackb(payload, raw=False, max_str_len=MAX_REQUEST,
                               max_bin_len=MAX_REQUEST, max_array_len=1024,
                               max_map_len=64, max_ext_len=MAX_REQUEST)
    except Exception:  # any malformed, oversized or hostile encoding
        return None


def serve(toolstack: Toolstack, control: zmq.Socket, wake: zmq.Socket,
          kernel: Kernel) -> None:
    """Answer the CLI. `create` and `wait` are answered when their domain
    has booted or reached the state; other requests are served meanwhile."""
    ctl = Control(toolstack)
    later = Mailbox()  # replies from workers, and their "I am done"
    toolstack.wake = lambda: later.post(None)
    loop_thread = threading.get_ident()
    poller = zmq.Poller()
    poller.register(control, zmq.POLLIN)
    poller.register(wake, zmq.POLLIN)
    poller.register(later.fileno(), zmq.POLLIN)

    def answer(address: list[bytes], reply: dict) -> None:
        try:
            packed = msgpack.packb(reply)
        except Exception as exc:
            packed = msgpack.packb({"ok": False, "error": f"unanswerable reply: {exc!r}"})
        control.send_multipart([*address, packed])

    def responder(address: list[bytes]) -> Callable[[dict], None]:
        def respond(reply: dict) -> None:
            if threading.get_ident() == loop_thread:
                answer(address, reply)
            else:
                later.post((address, reply))  # zmq sockets stay on this thread
        return respond

    def guarded(what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception:
            kernel.log.exception("toolstack error", during=what)
            return None

    try:
        while True:
            with toolstack.lock:
                restart_in = guarded("restarts", toolstack.run_due)
            # Before sleeping: a restart just made, or a request just handled,
            # may be what a `wait` waits for.
            guarded("wait", lambda: ctl.waiters.settle(toolstack))
            timeouts = [t for t in (ctl.waiters.timeout_ms(), _ms(restart_in))
                        if t is not None]
            ready = dict(poller.poll(min(timeouts) if timeouts else None))
            exceptions = wake in ready
            if wake in ready:
                while wake.poll(0):
                    wake.recv()
            if later.fileno() in ready:
                for item in later.take_all():
                    if item is not None:
                        answer(*item)
                exceptions = True  # a domain built meanwhile may have stopped already
            if exceptions:
                with toolstack.lock:
                    guarded("domain exceptions", toolstack.domain_exceptions)
            if control in ready:
                frames = control.recv_multipart()
                if len(frames) < 3 or frames[-2] != b"":
                    continue  # not a REQ envelope: nobody to answer
                address = frames[:-1]
                reply, halt = ctl.handle(unpack_request(frames[-1]), responder(address))
                if reply is not None:
                    answer(address, reply)
                if halt:
                    kernel.log.info("halting the machine")
                    guarded("halt", toolstack.halt)
                    ctl.waiters.cancel("the machine is halting")
                    for item in later.take_all():
                        if item is not None:
                            answer(*item)
                    control.close()
                    return
    finally:
        later.close()
