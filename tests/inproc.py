"""A hypervisor and domain kernels in one process, for the doorbell and
memory-channel tests: the real Machine, dispatch table and EVTCHNOP/grant
handlers, the real kernel EventChannels, MemChannel and Windows, wired
together without processes (each domain's "process" is its memory
channel's far end and an in-process upcall socket). Hypercalls are
serialized by one lock, as the hypervisor's single thread would."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import zmq

from domains.kernel.doorbell import PORT
from domains.kernel.events import EventChannels
from domains.kernel.gnttab import GrantTable, Windows
from domains.kernel.hypercall import Hypercalls
from domains.kernel.memchan import MemChannel
from hypervisor import ops  # noqa: F401  (fills the dispatch table)
from hypervisor.dispatch import Call, dispatch
from hypervisor.machine import Machine, Platform
from hypervisor.memchan import MemChannel as HvMemChannel
from hypervisor.public.errno import XenError
from hypervisor.public.event_channel import EVTCHNOP_send
from hypervisor.public.xen import HYPERVISOR_event_channel_op


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple] = []

    def _note(self, *args, **kw) -> None:
        self.lines.append((args, kw))

    info = warning = _note

    def error(self, *args, **kw) -> None:
        self.lines.append((args, kw))
        raise AssertionError((args, kw))


class Transport:
    def __init__(self, ctx: zmq.Context) -> None:
        self.ctx = ctx
        self.pushes: dict[int, zmq.Socket] = {}

    def endpoints(self, domid: int) -> dict[str, str]:
        return {"upcall": f"inproc://up-{id(self)}-{domid}"}

    def attach(self, dom) -> None:
        push = self.ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.bind(self.endpoints(dom.domid)["upcall"])
        self.pushes[dom.domid] = push

    def detach(self, dom) -> None:
        push = self.pushes.pop(dom.domid, None)
        if push is not None:
            push.close()

    def upcall(self, domid: int, port: int) -> None:
        if domid in self.pushes:
            try:
                self.pushes[domid].send(PORT.pack(port), zmq.NOBLOCK)
            except zmq.Again:
                pass  # its kernel stopped listening

    def reply(self, token, rc: int, result) -> None:
        raise AssertionError("nothing here is deferred")


class NoProcess:
    """What the machine keeps of a domain's process: there is none."""

    pid = 0
    alive = False

    def close(self) -> None:
        pass


class InProcessMachine(Machine):
    """Domains without processes: the far end of each memory channel is
    kept for the test's kernel."""

    def __init__(self, tmp: Path, transport: Transport) -> None:
        super().__init__(Platform("virt", 2, 1024), tmp, transport)
        self.kernel_ends: dict[int, socket.socket] = {}

    def _spawn(self, dom, config: dict) -> None:
        hv_end, dom_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        dom.memchan = HvMemChannel(hv_end)
        self.kernel_ends[dom.domid] = dom_end
        dom.process = NoProcess()
        self.transport.attach(dom)


class DirectHypercalls(Hypercalls):
    """Hypercalls made by a plain call, not over a socket to the machine."""

    def __init__(self, call: Callable[..., Any]) -> None:
        self.call = call

    def __call__(self, nr: int, cmd: int = 0, args: Any = None, vcpu: int = 0) -> Any:
        return self.call(nr, cmd, args, vcpu)


class Guest:
    """One domain's kernel side: hypercalls, memory channel, event channels."""

    def __init__(self, system: System, domid: int) -> None:
        self.system = system
        self.domid = domid
        self.log = Log()
        self.sends = 0  # EVTCHNOP_send hypercalls: rings that took the slow path
        self.memchan = MemChannel(system.machine.kernel_ends.pop(domid), self.log)
        self.windows = Windows(self.memchan)
        dom = system.machine.domains[domid]
        calls = DirectHypercalls(self.hypercall)
        self.events = EventChannels(calls, system.ctx,
                                    system.transport.endpoints(domid),
                                    dom.shared_info.map, self.log, memchan=self.memchan)
        self.gnttab = GrantTable(calls, dom.gnttab.entries.map,
                                 dom.gnttab.status.map, dom.gnttab.max_frames, self.windows)

    def hypercall(self, nr: int, cmd: int = 0, args: Any = None, vcpu: int = 0) -> Any:
        if (nr, cmd) == (HYPERVISOR_event_channel_op, EVTCHNOP_send):
            self.sends += 1
        machine = self.system.machine
        with self.system.lock:
            # Through msgpack, as on the wire (tuples become lists...).
            args = msgpack.unpackb(msgpack.packb(args))
            outcome = dispatch(Call(machine, machine.domain(self.domid), vcpu, None),
                               nr, cmd, args)
        assert isinstance(outcome, tuple), "a deferred hypercall has no in-process answer"
        rc, result = outcome
        if rc < 0:
            raise XenError.from_rc(rc, result if isinstance(result, str) else "")
        return msgpack.unpackb(msgpack.packb(result))


class System:
    def __init__(self, tmp: Path) -> None:
        self.ctx = zmq.Context()
        self.lock = threading.Lock()
        self.transport = Transport(self.ctx)
        self.machine = InProcessMachine(tmp, self.transport)
        self.guests: dict[int, Guest] = {}

    def add(self, name: str) -> Guest:
        with self.lock:
            dom = self.machine.create_domain({"name": name, "max_memkb": 1024})
        guest = Guest(self, dom.domid)
        self.guests[dom.domid] = guest
        return guest

    def destroy(self, guest: Guest) -> None:
        guest.events.stop()
        with self.lock:
            self.machine.destroy(self.machine.domains[guest.domid])
        guest.memchan.close()
        del self.guests[guest.domid]

    def close(self) -> None:
        for guest in list(self.guests.values()):
            guest.events.stop()
        with self.lock:
            self.machine.halt("test over")
        for guest in self.guests.values():
            guest.memchan.close()
            for window in guest.windows.by_id.values():
                try:
                    window.map.close()
                except BufferError:
                    pass
        self.transport.pushes.clear()
        self.ctx.term()
