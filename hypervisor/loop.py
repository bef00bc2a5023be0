"""The hypervisor's event loop: hypercall channels, upcalls, deaths, timers.

Each domain gets two ZeroMQ IPC endpoints of its own, created after its
process exists so that both can be restricted to that process's pid
(ZMQ_IPC_FILTER_PID checks SO_PEERCRED at connect): the hypercall channel
(ROUTER here, one REQ per vCPU thread there) and the upcall channel (PUSH
here, PULL there). The channel a request arrives on names the caller.
A pidfd per domain process tells the loop at once when a domain dies.

What arrives on a hypercall channel is the guest's: a message is at most
MAX_HYPERCALL_BYTES (ZeroMQ drops the connection of a peer that sends more,
before buffering it), decoded with msgpack's limits, its envelope checked
(`hypervisor.args.check_envelope`), and whatever fails is an errno to that
caller. Each poll round serves at most REQUESTS_PER_TURN requests of each
domain, so a domain that floods its channel waits its turn like the others.
A domain's connections to its channel are capped (each is one of our fds):
a ZeroMQ monitor reports each one accepted, and those past the cap are
shut (hypervisor/connections.py).
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path
from typing import Any

import msgpack
import zmq
from zmq.utils.monitor import parse_monitor_message

from hypervisor import ops  # noqa: F401  (fills the dispatch table)
from hypervisor.args import check_envelope
from hypervisor.connections import ConnectionCap, cap_for
from hypervisor.dispatch import DEFERRED, Call, dispatch
from hypervisor.domain import Domain
from hypervisor.machine import Machine
from hypervisor.public.errno import EINVAL, XenError
from hypervisor.public.event_channel import PYXEN_EVTCHN_PORT
from hypervisor.public.grant_table import PYXEN_GNTTAB_MAX_BATCH

PORT = PYXEN_EVTCHN_PORT
PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid

# The largest legitimate hypercall is a full batch of grant copies
# (PYXEN_GNTTAB_MAX_BATCH ops with every field at its widest: ~46 KiB);
# tests/test_hypercall_limits.py checks it fits.
MAX_HYPERCALL_BYTES = 64 * 1024
UNPACK_LIMITS = {
    "max_str_len": 16 * 1024,  # CONSOLEIO_write's buffer
    "max_bin_len": 4 * 1024,
    "max_array_len": PYXEN_GNTTAB_MAX_BATCH,
    "max_map_len": 64,
    "max_ext_len": 0,
}
# Messages queued per connection before ZeroMQ stops reading from it: a
# kernel has one request in flight per thread.
RCVHWM = 8
REQUESTS_PER_TURN = 8
#: Connection events read per domain per round (each is cheap).
EVENTS_PER_TURN = 64
CONNECTION_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED


class ZmqTransport:
    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir / "hv"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ctx = zmq.Context()
        self.poller = zmq.Poller()
        self.routers: dict[int, zmq.Socket] = {}
        self.pushes: dict[int, zmq.Socket] = {}
        self.by_socket: dict[zmq.Socket, int] = {}
        self.by_pidfd: dict[int, int] = {}
        # Upcalls held while a domain's upcall socket is not connected yet
        # (zmq connects in the background); its PUSH is polled for POLLOUT
        # meanwhile, which zmq raises once the peer is attached.
        self.held: dict[int, list[int]] = {}
        self.by_push: dict[zmq.Socket, int] = {}
        # Each hypercall channel's connections, as ZeroMQ's monitor reports
        # them, against the domain's cap (hypervisor/connections.py).
        self.monitors: dict[zmq.Socket, int] = {}
        self.monitor_of: dict[int, zmq.Socket] = {}
        self.caps: dict[int, ConnectionCap] = {}
        self.pids: dict[int, int] = {}

    def endpoints(self, domid: int) -> dict[str, str]:
        """The domain's channels. Doorbells are not among them: they have no
        name, the hypervisor hands their ends over at bind time
        (hypervisor/doorbell.py)."""
        return {"hypercall": f"ipc://{self.dir}/{domid}.hc",
                "upcall": f"ipc://{self.dir}/{domid}.up"}

    def _host_dir(self, dom: Domain) -> tuple[Path, int | None]:
        """Where the domain's channel sockets are on the host, and the uid
        that must be able to connect to them: a jailed domain's own
        directory (hv/j<n>/, which it sees as <run-dir>/hv), or hv/ itself."""
        jail = getattr(dom.process, "jail", None)
        if jail is not None and jail.chan_dir is not None:
            return jail.chan_dir, jail.uid
        return self.dir, None

    def attach(self, dom: Domain) -> None:
        ends = self.endpoints(dom.domid)
        where, uid = self._host_dir(dom)
        cap = ConnectionCap(cap_for(dom.max_vcpus, dom.privileged))
        router = self.ctx.socket(zmq.ROUTER)
        push = self.ctx.socket(zmq.PUSH)
        router.setsockopt(zmq.MAXMSGSIZE, MAX_HYPERCALL_BYTES)
        router.setsockopt(zmq.RCVHWM, RCVHWM)
        for sock, key in ((router, "hypercall"), (push, "upcall")):
            path = where / Path(ends[key].removeprefix("ipc://")).name
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IPC_FILTER_PID, dom.process.pid)
            sock.bind(f"ipc://{path}")
            if uid is not None:
                os.chown(path, uid, uid)
        # Pending bits coalesce upcalls to at most one per port in flight,
        # so an unbounded queue here is bounded in practice.
        push.setsockopt(zmq.SNDHWM, 0)
        address = f"inproc://hc-monitor-{dom.domid}-{id(router)}"
        router.monitor(address, CONNECTION_EVENTS)
        monitor = self.ctx.socket(zmq.PAIR)
        monitor.setsockopt(zmq.LINGER, 0)
        # Unbounded: a dropped event would leave the count wrong for good.
        monitor.setsockopt(zmq.RCVHWM, 0)
        monitor.connect(address)
        self.monitors[monitor] = dom.domid
        self.monitor_of[dom.domid] = monitor
        self.caps[dom.domid] = cap
        self.pids[dom.domid] = dom.process.pid
        self.poller.register(monitor, zmq.POLLIN)
        self.routers[dom.domid] = router
        self.pushes[dom.domid] = push
        self.by_socket[router] = dom.domid
        self.by_pidfd[dom.process.pidfd] = dom.domid
        self.poller.register(router, zmq.POLLIN)
        self.poller.register(dom.process.pidfd, zmq.POLLIN)
        self.by_push[push] = dom.domid

    def detach(self, dom: Domain) -> None:
        if dom.process is not None and dom.process.pidfd in self.by_pidfd:
            self.poller.unregister(dom.process.pidfd)
            del self.by_pidfd[dom.process.pidfd]
        router = self.routers.pop(dom.domid, None)
        if router is not None:
            # Its monitor first: ZeroMQ's I/O thread sends a monitor event
            # blocking, holding a lock that disable_monitor and close take,
            # and with our end of the monitor closed that send never ends.
            router.disable_monitor()
        for monitor, domid in list(self.monitors.items()):
            if domid == dom.domid:
                self.poller.unregister(monitor)
                del self.monitors[monitor]
                monitor.close()
        self.caps.pop(dom.domid, None)
        self.pids.pop(dom.domid, None)
        self.monitor_of.pop(dom.domid, None)
        if router is not None:
            self.poller.unregister(router)
            del self.by_socket[router]
            router.close()
        push = self.pushes.pop(dom.domid, None)
        if push is not None:
            if self.held.pop(dom.domid, None) is not None:
                self.poller.unregister(push)
            del self.by_push[push]
            push.close()
        ends = self.endpoints(dom.domid)
        where, _ = self._host_dir(dom)
        for end in ends.values():
            path = Path(end.removeprefix("ipc://"))
            (where / path.name).unlink(missing_ok=True)

    def upcall(self, domid: int, port: int) -> None:
        push = self.pushes.get(domid)
        if push is None:
            return
        if domid in self.held:
            self.held[domid].append(port)  # after those already waiting
            return
        try:
            push.send(PORT.pack(port), zmq.NOBLOCK)
        except zmq.Again:
            # No peer: the domain's upcall socket has not connected yet (it
            # gets the upcall once it does), or its process just died (its
            # pidfd is handled next and the held upcalls go with it).
            self.held[domid] = [port]
            self.poller.register(push, zmq.POLLOUT)

    def flush_held(self, push: zmq.Socket) -> None:
        """A domain's upcall socket can take messages: deliver what was held."""
        domid = self.by_push[push]
        held = self.held.get(domid, [])
        while held:
            try:
                push.send(PORT.pack(held[0]), zmq.NOBLOCK)
            except zmq.Again:
                return
            held.pop(0)
        self.held.pop(domid, None)
        self.poller.unregister(push)

    def connection_events(self, monitor: zmq.Socket,
                          budget: int = EVENTS_PER_TURN) -> tuple[int, int]:
        """Read a domain's connection events; shut the connections past its
        cap. Returns (domid, connections refused now)."""
        domid = self.monitors[monitor]
        cap = self.caps[domid]
        refused = 0
        for _ in range(budget):
            try:
                event = parse_monitor_message(monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                break
            fd = int(event["value"])
            if event["event"] == zmq.EVENT_DISCONNECTED:
                cap.closed(fd)
            elif event["event"] == zmq.EVENT_ACCEPTED and not cap.accepted(fd):
                refused += refuse(fd, self.pids.get(domid))
        cap.unlogged += refused
        return domid, refused

    def admitted(self, domid: int, frame: zmq.Frame) -> bool:
        """Did this request come on a connection within the domain's cap?
        One past it may have sent before its monitor event was read: the
        events are read now, and its request dropped (it is being shut)."""
        cap = self.caps.get(domid)
        if cap is None or cap.cap is None:
            return True
        fd = frame.get(zmq.SRCFD)
        if fd in cap.open:
            return True
        monitor = self.monitor_of.get(domid)
        if monitor is not None:
            self.connection_events(monitor, budget=1 << 16)
        return fd in cap.open

    def reply(self, token: Any, rc: int, result: Any) -> None:
        domid, identity = token
        router = self.routers.get(domid)
        if router is not None:
            router.send_multipart([identity, b"", pack_reply(rc, result)])

    def close(self) -> None:
        for router in self.routers.values():
            router.disable_monitor()  # before its monitor's end goes (see detach)
        for sock in [*self.monitors, *self.routers.values(), *self.pushes.values()]:
            sock.close()
        self.ctx.term()


def refuse(fd: int, pid: int | None) -> int:
    """Shut a connection ZeroMQ accepted on `fd` (it sees the hang-up and
    closes it: the fd stays its own). The fd is checked to still be a
    connection of the domain's process first: between the event and now it
    may have been closed and its number reused. 1 if shut, else 0."""
    if pid is None:
        return 0
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return 0
    try:
        cred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, PEERCRED.size)
        if PEERCRED.unpack(cred)[0] != pid:
            return 0
        sock.shutdown(socket.SHUT_RDWR)
        return 1
    except OSError:
        return 0
    finally:
        sock.close()


def pack_reply(rc: int, result: Any) -> bytes:
    try:
        return msgpack.packb([rc, result])
    except (TypeError, ValueError, OverflowError) as exc:
        # A handler answered something msgpack cannot carry: the caller
        # still gets an answer.
        return msgpack.packb([-EINVAL, f"unanswerable result: {exc}"[:200]])


def serve(machine: Machine, domid: int, token: Any, payload: bytes
          ) -> tuple[int, Any] | object:
    """One hypercall from domain `domid`, its raw message as received:
    (rc, result) for the caller, or DEFERRED. Never raises."""
    dom = machine.domains.get(domid)
    if dom is None:
        return -EINVAL, "no such domain"
    try:
        if len(payload) > MAX_HYPERCALL_BYTES:
            raise XenError(EINVAL, f"a hypercall of {len(payload)} bytes")
        message = msgpack.unpackb(payload, **UNPACK_LIMITS)
        nr, cmd, args, vcpu = check_envelope(message, dom.max_vcpus)
    except XenError as exc:
        machine.log_about(dom, f"d{domid} malformed hypercall: {exc}")
        return exc.rc, exc.message
    except Exception as exc:  # noqa: BLE001  (msgpack's errors: not one family)
        machine.log_about(dom, f"d{domid} malformed hypercall: {exc!r}"[:300])
        return -EINVAL, f"malformed hypercall: {exc}"[:200]
    return dispatch(Call(machine, dom, vcpu, token), nr, cmd, args)


def handle_requests(machine: Machine, transport: ZmqTransport, router: zmq.Socket,
                    budget: int = REQUESTS_PER_TURN) -> None:
    """Serve up to `budget` requests waiting on one domain's channel; the
    rest wait for the next round (the poll is level-triggered)."""
    domid = transport.by_socket[router]
    for _ in range(budget):
        if domid not in transport.routers:
            return  # the domain went away while we served it
        try:
            frames = router.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return
        if len(frames) != 3 or not transport.admitted(domid, frames[2]):
            continue  # a connection past the domain's cap: being shut
        identity, empty, payload = (f if isinstance(f, bytes) else f.bytes for f in frames)
        if empty != b"":
            continue  # not a REQ envelope: nobody to answer
        token = (domid, identity)
        outcome = serve(machine, domid, token, payload)
        if outcome is not DEFERRED:
            transport.reply(token, *outcome)


def run(machine: Machine, transport: ZmqTransport) -> None:
    """Serve until the machine halts (Dom0 shut down, died, or SIGTERM)."""
    next_deadline: int | None = None
    while not machine.halted:
        timeout = None
        if next_deadline is not None:
            timeout = max(0, (next_deadline - time.monotonic_ns()) // 1_000_000 + 1)
        for item, _ in transport.poller.poll(timeout):
            if isinstance(item, int):
                domid = transport.by_pidfd.get(item)
                if domid is not None and domid in machine.domains:
                    machine.process_exited(machine.domains[domid])
            elif item in transport.by_socket:
                domid = transport.by_socket[item]
                handle_requests(machine, transport, item)
                log_refusals(machine, transport, domid)
            elif item in transport.by_push:
                transport.flush_held(item)
            elif item in transport.monitors:
                domid, _ = transport.connection_events(item)
                log_refusals(machine, transport, domid)
            if machine.halted:
                break
        next_deadline = machine.fire_timers(time.monotonic_ns())


def log_refusals(machine: Machine, transport: ZmqTransport, domid: int) -> None:
    cap, dom = transport.caps.get(domid), machine.domains.get(domid)
    if cap is not None and cap.unlogged and dom is not None:
        machine.log_about(dom, f"d{domid}: {cap.unlogged} hypercall connection(s) "
                          f"refused: it holds its cap of {cap.cap} "
                          f"({cap.refused} refused in all)")
        cap.unlogged = 0


def remove_dir(path: Path) -> None:
    if path.is_dir():
        for child in path.iterdir():
            if child.is_dir() and not child.is_symlink():
                remove_dir(child)  # a jailed domain's channel directory
            else:
                child.unlink(missing_ok=True)
        os.rmdir(path)
