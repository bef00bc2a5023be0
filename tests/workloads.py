"""Workloads the tests run inside domain processes.

Each reports JSON on a named pipe the test created (kernel.args["out"]);
pipes are also how two test domains exchange domids, ports and refs, since
XenStore is not part of this layer.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from domains.dom0.xc import XenCtrl
from domains.kernel.gnttab import GrantStatusError
from domains.kernel.xenbus.client import XsError
from hypervisor.public.errno import XenError
from hypervisor.public.grant_table import GNTST_okay
from hypervisor.public.xen import (
    PAGE_SIZE,
    HYPERVISOR_pyxen_op,
    HYPERVISOR_xen_version,
    PYXEN_op_close_window,
)


def _send(path: str, obj) -> None:
    with open(path, "w") as f:
        f.write(json.dumps(obj) + "\n")


def _recv(path: str):
    with open(path) as f:
        return json.loads(f.readline())


def _errno_name(fn) -> str:
    try:
        fn()
    except XenError as exc:
        return exc.name
    return "ok"


def privileged_ops(kernel) -> None:
    """An unprivileged domain tries every privileged operation."""
    kernel.ready()
    xc = XenCtrl(kernel.hypercall)
    results = {
        "createdomain": _errno_name(lambda: xc.domain_create(
            "evil", 16, 1, "domains.guest.workloads:idle", "", None)),
        "destroydomain": _errno_name(lambda: xc.domain_destroy(0)),
        "pausedomain": _errno_name(lambda: xc.domain_pause(0)),
        "unpausedomain": _errno_name(lambda: xc.domain_unpause(0)),
        "getdomaininfo": _errno_name(lambda: xc.domain_getinfo(0)),
        "setvcpuaffinity": _errno_name(lambda: xc.vcpu_setaffinity(0, 0, (0,))),
        "scheduler_op": _errno_name(lambda: xc.sched_credit2_domain_set(0, 65535)),
        "physinfo": _errno_name(xc.physinfo),
        "getdomaininfolist": _errno_name(xc.domain_getinfolist),
        "readconsole": _errno_name(xc.readconsole),
        "remote_shutdown": _errno_name(lambda: xc.domain_shutdown(0, 0)),
        "alloc_unbound_for_other": _errno_name(
            lambda: kernel.events.alloc_unbound(kernel.domid, dom=0)),
        "xen_version": _errno_name(lambda: xc.version()),
    }
    _send(kernel.args["out"], results)


def granter(kernel) -> None:
    """Opens a grant window for the mapper and grants pages of it."""
    kernel.ready()
    mapper = _recv(kernel.args["hello"])["domid"]
    window = kernel.gnttab.open_window(mapper, 4)
    window.map[0:16] = b"granted-page-0!!"
    window.map[PAGE_SIZE:PAGE_SIZE + 8] = b"readonly"
    refs = {
        "rw": kernel.gnttab.grant_access(mapper, window.gfn),
        "ro": kernel.gnttab.grant_access(mapper, window.gfn + 1, readonly=True),
        "other": kernel.gnttab.grant_access(0, window.gfn + 2),
        "ram": kernel.gnttab.grant_access(mapper, 5),  # a RAM frame: not shareable
        "copy_ram": kernel.gnttab.grant_access(mapper, 6),
    }
    kernel.ram[6 * PAGE_SIZE:6 * PAGE_SIZE + 10] = b"by-copy-ok"
    events = []
    got = threading.Semaphore(0)

    def on_event(port):
        events.append(bytes(window.map[0:4]))
        got.release()

    port = kernel.events.alloc_unbound(mapper)
    kernel.events.bind(port, on_event)
    _send(kernel.args["offer"], {"domid": kernel.domid, "port": port, "refs": refs})
    got.acquire()  # mapper wrote through its mapping and notified us
    close = {"window": window.window_id}
    report: dict[str, Any] = {"seen": events[0].decode(errors="replace"),
              "end_while_mapped": _errno_name(lambda: kernel.gnttab.end_access(refs["rw"])),
              "close_while_mapped": _errno_name(lambda: kernel.hypercall(
                  HYPERVISOR_pyxen_op, PYXEN_op_close_window, close))}
    kernel.events.send(port)  # tell the mapper it may unmap now
    got.acquire()  # mapper unmapped
    report["end_after_unmap"] = _errno_name(lambda: kernel.gnttab.end_access(refs["rw"]))
    report["closed_after_unmap"] = kernel.gnttab.close_window(
        window, [refs["ro"], refs["other"]])
    report["close_twice"] = _errno_name(lambda: kernel.hypercall(
        HYPERVISOR_pyxen_op, PYXEN_op_close_window, close))
    _send(kernel.args["out"], report)


def mapper(kernel) -> None:
    kernel.ready()
    _send(kernel.args["hello"], {"domid": kernel.domid})
    offer = _recv(kernel.args["offer"])
    dom, refs = offer["domid"], offer["refs"]
    gt = kernel.gnttab
    report: dict[str, Any] = {}

    def status(fn) -> int:
        try:
            fn()
        except GrantStatusError as exc:
            return exc.status
        return GNTST_okay

    rw = gt.map_grant_ref(dom, refs["rw"])
    report["rw_data"] = bytes(rw.page[0:16]).decode()
    ro = gt.map_grant_ref(dom, refs["ro"], readonly=True)
    report["ro_data"] = bytes(ro.page[0:8]).decode()
    report["ro_view_readonly"] = ro.page.readonly
    report["ro_for_writing"] = status(lambda: gt.map_grant_ref(dom, refs["ro"]))
    report["other_domain"] = status(lambda: gt.map_grant_ref(dom, refs["other"]))
    report["out_of_range"] = status(lambda: gt.map_grant_ref(dom, 1 << 20))
    report["ram_frame"] = status(lambda: gt.map_grant_ref(dom, refs["ram"]))
    report["bad_domain"] = status(lambda: gt.map_grant_ref(4000, refs["rw"]))
    # Grant copy reaches a granted RAM frame: the hypervisor copies it.
    kernel.ram[0:10] = b"\0" * 10
    report["copy_status"] = gt.copy([{
        "source": {"ref": refs["copy_ram"], "domid": dom, "offset": 0},
        "dest": {"gmfn": 0, "domid": kernel.domid, "offset": 0},
        "len": 10, "flags": 1}])[0]  # GNTCOPY_source_gref
    report["copy_data"] = bytes(kernel.ram[0:10]).decode(errors="replace")
    rw.page[0:4] = b"pong"
    answered = threading.Semaphore(0)
    port = kernel.events.bind_interdomain(dom, offer["port"],
                                          lambda port: answered.release())
    kernel.events.send(port)
    answered.acquire()  # the granter has tried to end access while we map
    gt.unmap(ro)
    gt.unmap(rw)
    kernel.events.send(port)
    kernel.events.close(port)
    report["send_on_closed"] = _errno_name(lambda: kernel.events.send(port))
    _send(kernel.args["out"], report)


def timer(kernel) -> None:
    kernel.ready()
    start = time.monotonic()
    kernel.sleep(0.2)
    _send(kernel.args["out"], {"elapsed": time.monotonic() - start})


def boot_fails(kernel) -> None:
    raise RuntimeError("disk controller on fire")


def xenstore_rights(kernel) -> None:
    """What a guest may and may not do in XenStore, and a conflicting transaction."""
    kernel.ready()  # returns once the toolstack has introduced us
    xs = kernel.xenstore
    other = kernel.args["other"]

    def outcome(fn) -> str:
        try:
            fn()
        except XsError as exc:
            return exc.name
        return "ok"

    report: dict[str, Any] = {
        "own_name": xs.read("name").decode(),
        "domain_path": xs.get_domain_path(kernel.domid),
        "read_dom0": outcome(lambda: xs.read("/local/domain/0/name")),
        "write_dom0": outcome(lambda: xs.write("/local/domain/0/data/x", "1")),
        "read_other": outcome(lambda: xs.read(f"/local/domain/{other}/name")),
        "write_other": outcome(lambda: xs.write(f"/local/domain/{other}/data/x", "1")),
        "write_own_name": outcome(lambda: xs.write("name", "evil")),
        "write_own_data": outcome(lambda: xs.write("data/x", "1")),
        "own_data_perms": xs.get_perms("data/x"),
        "introduce": outcome(lambda: xs.introduce(kernel.domid, 1, 1)),
    }
    # Two transactions touch the same node: the second commit gets EAGAIN,
    # and transaction() retries it to success.
    xs.write("data/counter", "0")
    t1, t2 = xs.transaction_start(), xs.transaction_start()
    xs.write("data/counter", "1", t1)
    xs.write("data/counter", "2", t2)
    xs.transaction_end(t1)
    report["conflict"] = outcome(lambda: xs.transaction_end(t2))
    attempts = []

    def bump(tx: int) -> None:
        attempts.append(tx)
        value = int(xs.read("data/counter", tx))
        if len(attempts) == 1:
            xs.write("data/counter", "10")  # a change outside the transaction
        xs.write("data/counter", str(value + 1), tx)

    xs.transaction(bump)
    report["retried"] = len(attempts)
    report["counter"] = xs.read("data/counter").decode()
    _send(kernel.args["out"], report)


def disk_probe(kernel) -> None:
    """PV block from inside a guest: big I/O, flush, discard, a read-only
    disk, and requests no honest frontend sends."""
    from frontends.blkfront.bus import BlockBus
    from frontends.blkfront.device import BlockIOError
    from hypervisor.public.io import blkif

    kernel.ready()
    bus = BlockBus(kernel)
    disk, ro = bus.get("xvda"), bus.get("xvdb")
    report: dict[str, Any] = {"sectors": disk.sectors, "ro_sectors": ro.sectors}
    big = bytes(range(256)) * 4096 * 3  # 3 MiB: indirect requests, several of them
    disk.write(2048, big)
    disk.flush()
    report["big_roundtrip"] = disk.read(2048, len(big) // 512) == big
    disk.discard(2048, 8)
    report["discarded_zero"] = disk.read(2048, 8) == bytes(4096)
    with disk.open() as f:
        f.seek(1000)
        f.write(b"unaligned hello")
        f.seek(1000)
        report["file_like"] = f.read(15).decode()
    report["ro_read"] = len(ro.read(0, 8))

    def outcome(fn) -> str:
        try:
            fn()
        except BlockIOError:
            return "BLKIF_RSP_ERROR"
        except (PermissionError, ValueError) as exc:
            return type(exc).__name__
        return "ok"

    report["ro_write_api"] = outcome(lambda: ro.write(0, bytes(512)))
    # Bypass the API's checks: the backend itself must refuse.
    report["ro_write_backend"] = outcome(
        lambda: ro.device.io(blkif.BLKIF_OP_WRITE, 0, 8, data=bytes(4096)))
    report["past_end_backend"] = outcome(
        lambda: disk.device.io(blkif.BLKIF_OP_READ, disk.sectors, 8, out=bytearray(4096)))
    report["still_serving"] = disk.read(2048 + 8, 8) == big[8 * 512:16 * 512]
    _send(kernel.args["out"], report)


def disk_writer(kernel) -> None:
    """Write numbered blocks without end, recording each acknowledged write in
    the domain log; a test kills the disk driver domain meanwhile."""
    import hashlib

    from frontends.blkfront.bus import BlockBus

    kernel.ready()
    disk = BlockBus(kernel).get("xvda")
    n = 0
    while True:
        block = hashlib.sha256(str(n).encode()).digest() * 128  # 4 KiB
        disk.write((n % 2048) * 8, block)
        if n % 16 == 15:
            disk.flush()
        kernel.log.info("acked", n=n)
        n += 1


def disk_writer_reporting(kernel) -> None:
    """disk_writer that reports how its disk ended, on the console log."""
    from frontends.blkfront.device import DeviceGone

    try:
        disk_writer(kernel)
    except DeviceGone as exc:
        kernel.log.error("disk lost", error=str(exc))
        import threading
        threading.Event().wait()


def disk_flush_on_cue(kernel) -> None:
    """Write 64 numbered blocks (acknowledged, not yet flushed), then on the
    test's cue (it has paused the disk driver domain) flush: the flush sits in
    the ring unanswered while the test kills the driver domain."""
    import hashlib

    from frontends.blkfront.bus import BlockBus

    kernel.ready()
    disk = BlockBus(kernel).get("xvda")
    for n in range(64):
        disk.write(n * 8, hashlib.sha256(str(n).encode()).digest() * 128)
        kernel.log.info("acked", n=n)
    with open(kernel.args["cue"]) as cue:
        cue.readline()
    kernel.log.info("flush issued")
    disk.flush()
    kernel.log.info("flush acked")
    threading.Event().wait()


# -- hostile guests: the hypervisor's boundary ---------------------------------


def _raw_hypercall(kernel, payload: bytes):
    """Send bytes on our hypercall channel as they are; the decoded answer."""
    import msgpack
    import zmq

    sock = kernel.ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(kernel.start_info["hypercall"])
    try:
        sock.send(payload)
        return msgpack.unpackb(sock.recv())
    finally:
        sock.close()


def _rc_name(fn) -> str:
    try:
        fn()
    except XenError as exc:
        return exc.name
    except Exception as exc:  # noqa: BLE001  (reported, for the test to see)
        return type(exc).__name__
    return "ok"


def malformed_hypercalls(kernel) -> None:
    """A burst of hypercalls that each killed the hypervisor once, and then
    some; it reports what each got. Run with vcpus = 2."""
    import math
    import random

    import msgpack

    from hypervisor.public.event_channel import EVTCHNOP_status
    from hypervisor.public.grant_table import GNTTABOP_map_grant_ref
    from hypervisor.public.xen import (
        HYPERVISOR_event_channel_op,
        HYPERVISOR_grant_table_op,
        HYPERVISOR_xen_version,
        PYXEN_op_ready,
    )

    hc = kernel.hypercall
    me = threading.get_native_id()
    # Before the real ready: one that would pin thread 2**40, one whose
    # announce is a list (passed on to Dom0's toolstack).
    report: dict[str, Any] = {
        "ready_tid_2_40": _rc_name(lambda: hc(HYPERVISOR_pyxen_op, PYXEN_op_ready,
                                              {"vcpu_tids": [me, 2**40]})),
        "ready_announce_list": _rc_name(lambda: hc(
            HYPERVISOR_pyxen_op, PYXEN_op_ready,
            {"vcpu_tids": [me, kernel.vcpus[0].native_id], "announce": [1, 2]})),
    }
    kernel.ready()
    report.update({
        "status_none": _rc_name(lambda: hc(HYPERVISOR_event_channel_op, EVTCHNOP_status,
                                           None)),
        "map_op_int": _rc_name(lambda: hc(HYPERVISOR_grant_table_op,
                                          GNTTABOP_map_grant_ref, [5])),
        "vcpu_inf": _rc_name(lambda: hc(HYPERVISOR_xen_version, 0, None, math.inf)),
    })
    rng = random.Random(12)
    answered = refused = 0
    for i in range(300):
        choice = i % 4
        if choice == 0:
            payload = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
        elif choice == 1:
            payload = b"\xdd\xff\xff\xff\xff" + b"\x00" * rng.randrange(16)
        elif choice == 2:
            payload = msgpack.packb([rng.randrange(70), rng.randrange(40),
                                     rng.choice([None, 1, "x", [1], {"port": -1}, 2.5]),
                                     rng.choice([0, -1, 7, 1e300])])
        else:
            payload = b"\x91" * 4000 + b"\xc0"
        rc, _ = _raw_hypercall(kernel, payload)
        answered += 1
        refused += rc < 0
    report["garbage_answered"] = answered
    report["garbage_refused"] = refused
    report["still_served"] = hc(HYPERVISOR_xen_version, 0) >> 16
    _send(kernel.args["out"], report)
    threading.Event().wait()


# -- hostile guests: doorbells and the memory channel --------------------------------


def doorbell_victim(kernel) -> None:
    """Offers the forger one port, and has others it must not be able to
    raise: a port unbound (for Dom0) and a VIRQ. Counts what each handler
    saw; the forger's ring on its own port, last, ends the count."""
    from hypervisor.public.xen import VIRQ_DEBUG

    kernel.ready()
    forger = _recv(kernel.args["hello"])["domid"]
    counts = {"mine": 0, "unbound": 0, "virq": 0}
    done = threading.Event()

    def count(what: str, last: bool = False):
        def handler(port: int) -> None:
            counts[what] += 1
            if last:
                done.set()
        return handler

    mine = kernel.events.alloc_unbound(forger)
    kernel.events.bind(mine, count("mine", last=True))
    unbound = kernel.events.alloc_unbound(0)
    kernel.events.bind(unbound, count("unbound"))
    kernel.events.bind_virq(VIRQ_DEBUG, count("virq"))
    _send(kernel.args["offer"], {"domid": kernel.domid, "port": mine})
    done.wait()
    drops = getattr(kernel.events, "drops", None)
    _send(kernel.args["out"], {**counts, "dropped": drops.total if drops else None})
    threading.Event().wait()


def _forge_by_path(run_dir: str, ports: range) -> list[str]:
    """Every socket in the run directory that takes a datagram: ring each
    port of it (a doorbell at a path anyone may open)."""
    import os
    import select
    import socket
    import stat
    import struct

    taken = []
    for root, _dirs, files in os.walk(run_dir):
        for name in files:
            path = os.path.join(root, name)
            try:
                if not stat.S_ISSOCK(os.lstat(path).st_mode):
                    continue
            except OSError:
                continue
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                try:
                    sock.connect(path)
                    sock.send(struct.pack("<I", ports[0]))
                except OSError:
                    continue  # not a datagram socket, or nobody there
                taken.append(path)
                for port in ports[1:]:
                    try:
                        sock.send(struct.pack("<I", port))
                    except BlockingIOError:
                        if not select.select([], [sock], [], 1)[1]:
                            break  # it does not read: enough
                    except OSError:
                        break
    return taken


def doorbell_forger(kernel) -> None:
    """Tries to raise events it has no right to: at any doorbell path in the
    run directory, then through the doorbell ends it legitimately holds
    (to the victim, which offered it one port, and to Dom0, whose console
    and xenstore channels are bound to it) on every port but its own."""
    import select

    kernel.ready()
    # (Inside a sandbox the run directory may not even be there.)
    run_dir = kernel.start_info.get("run_dir", "/nonexistent")
    report: dict[str, Any] = {"accepted_paths": _forge_by_path(run_dir, range(1, 4096))}
    _send(kernel.args["hello"], {"domid": kernel.domid})
    offer = _recv(kernel.args["offer"])
    victim = offer["domid"]
    local = kernel.events.bind_interdomain(victim, offer["port"])
    bells = kernel.events.doorbells

    def forge(domid: int, ports) -> int:
        sent = 0
        for port in ports:
            while not bells.ring(domid, port):
                end = getattr(bells, "ends", {}).get(domid)
                if end is None:
                    break  # no way to it at all
                select.select([], [end], [], 1)  # its queue is full
            else:
                sent += 1
        return sent

    report["forged_dom0"] = forge(0, range(4096))
    report["forged_victim"] = forge(victim, [p for p in range(4200) if p != offer["port"]])
    kernel.events.send(local)  # the one ring it may make, after the others
    _send(kernel.args["out"], report)
    threading.Event().wait()


def timer_on_cue(kernel) -> None:
    """Once cued: sleep on the virtual timer and report (the hypervisor serves it)."""
    kernel.ready()
    _recv(kernel.args["cue"])
    start = time.monotonic()
    kernel.sleep(0.05)
    _send(kernel.args["out"], {"slept": time.monotonic() - start >= 0.05})
    threading.Event().wait()


def oversized_hypercall(kernel) -> None:
    """One hypercall of 64 MiB: the hypervisor must drop it unread."""
    import zmq
    from zmq.utils.monitor import recv_monitor_message

    from hypervisor.public.xen import HYPERVISOR_xen_version

    kernel.ready()
    _recv(kernel.args["cue"])  # the test has read the hypervisor's peak memory
    sock = kernel.ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    sock.connect(kernel.start_info["hypercall"])
    size = 64 << 20
    payload = bytearray(size + 16)  # zero pages: costs us nothing until touched
    header = b"\x94\x11\x00\xc6" + size.to_bytes(4, "big")  # [17, 0, bin32 ..., 0]
    payload[:len(header)] = header  # then the bin's bytes, then vcpu 0: all zeros
    sock.send(memoryview(payload)[:len(header) + size + 1], copy=False)
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(monitor, zmq.POLLIN)
    outcome = "nothing"
    for ready, _ in poller.poll(60_000):  # one of the two happens first
        if ready is monitor and recv_monitor_message(monitor)["event"] == \
                zmq.EVENT_DISCONNECTED:
            outcome = "disconnected"
        elif ready is sock:
            outcome = "answered"
    sock.disable_monitor()
    monitor.close()
    sock.close()
    _send(kernel.args["out"], {"outcome": outcome,
                               "after": _rc_name(lambda: kernel.hypercall(
                                   HYPERVISOR_xen_version, 0))})
    threading.Event().wait()


def foreign_tids(kernel) -> None:
    """Report another process's thread as our vCPU 1 (run with vcpus = 2)."""
    from hypervisor.public.xen import PYXEN_op_ready

    victim = int(kernel.args["victim"])
    report: dict[str, Any] = {"foreign": _rc_name(lambda: kernel.hypercall(
        HYPERVISOR_pyxen_op, PYXEN_op_ready,
        {"vcpu_tids": [threading.get_native_id(), victim]}))}
    report["ready"] = _rc_name(kernel.ready)
    _send(kernel.args["out"], report)
    threading.Event().wait()


# -- hostile guests against Dom0's boundary (issue 12) ---------------------------------


def bad_announce(kernel) -> None:
    """Reports ready with an announce Dom0 must not trust: args kind=list
    (a list, not a map) or kind=bool (a bool where the port goes)."""
    from hypervisor.public.xen import PYXEN_op_ready

    kind = kernel.args.get("kind", "list")
    announce: object
    if kind == "list":
        announce = ["store", {"mfn": 1, "port": 1}]
    else:
        announce = {"store": {"ring-ref": 1, "port": True, "mfn": 0}}
    tids = [threading.get_native_id()] + [v.native_id for v in kernel.vcpus]
    kernel.hypercall(HYPERVISOR_pyxen_op, PYXEN_op_ready,
                     {"vcpu_tids": tids, "announce": announce})
    threading.Event().wait()


def never_ready(kernel) -> None:
    """A kernel that boots and never says so."""
    threading.Event().wait()


def window_hog(kernel) -> None:
    """Open grant windows of `frames` pages until the hypervisor says no."""
    kernel.ready()
    frames = int(kernel.args.get("frames", "1024"))
    opened = 0
    error = "none"
    while opened < 1000:
        try:
            kernel.gnttab.open_window(0, frames)
        except XenError as exc:
            error = exc.name
            break
        opened += 1
    _send(kernel.args["out"], {"opened": opened, "error": error})
    threading.Event().wait()


def console_flood(kernel) -> None:
    """Lines on the hypervisor's console that pretend to be the hypervisor's,
    with terminal escapes, as fast as it takes them."""
    from hypervisor.public.xen import CONSOLEIO_write, HYPERVISOR_console_io

    kernel.ready()
    forged = "\x1b[2J\x1b]0;pwned\x07(XEN) [2026-01-01 00:00:00] d0 Domain-0: FORGED\r\n"
    for _ in range(500):
        kernel.hypercall(HYPERVISOR_console_io, CONSOLEIO_write, {"buf": forged})
    _send(kernel.args["out"], {"written": 500})
    threading.Event().wait()  # stays up: the test looks it up


def _hog_windows(kernel) -> dict:
    from hypervisor.public.xen import PYXEN_op_grant_window

    opened = 0
    while opened < 100_000:
        try:
            kernel.hypercall(HYPERVISOR_pyxen_op, PYXEN_op_grant_window,
                             {"peer": 0, "nr_frames": 1})
        except XenError as exc:
            return {"opened": opened, "error": exc.name}
        opened += 1
    return {"opened": opened, "error": None}


def _cycle_windows(kernel) -> dict:
    """Open a one-frame window and give it back, again and again: each
    opening queues its fd on our memory channel, which we never read, while
    we hold no more windows than the hypervisor's cap allows."""
    from hypervisor.public.xen import PYXEN_op_grant_window

    opened = 0
    while opened < 100_000:
        try:
            window = kernel.hypercall(HYPERVISOR_pyxen_op, PYXEN_op_grant_window,
                                      {"peer": 0, "nr_frames": 1})["window"]
            kernel.hypercall(HYPERVISOR_pyxen_op, PYXEN_op_close_window,
                             {"window": window})
        except XenError as exc:
            return {"opened": opened, "error": exc.name}
        opened += 1
    return {"opened": opened, "error": None}


def memchan_hog(kernel) -> None:
    """Opens (and gives back) grant windows and never reads its memory channel (its upcall
    loop, which would, is stopped): the hypervisor must not wait on it."""
    kernel.ready()
    kernel.events.stop()
    report = _cycle_windows(kernel)
    report["then"] = _errno_name(lambda: kernel.hypercall(HYPERVISOR_xen_version, 0))
    _send(kernel.args["out"], report)
    threading.Event().wait()


def memchan_closer(kernel) -> None:
    """Closes its memory channel, then asks for a grant window."""
    from hypervisor.public.xen import PYXEN_op_grant_window

    kernel.ready()
    kernel.events.stop()
    kernel.memchan.close()
    report: dict[str, Any] = {"grant_window": _errno_name(lambda: kernel.hypercall(
        HYPERVISOR_pyxen_op, PYXEN_op_grant_window, {"peer": 0, "nr_frames": 1})),
        "then": _errno_name(lambda: kernel.hypercall(HYPERVISOR_xen_version, 0))}
    _send(kernel.args["out"], report)
    threading.Event().wait()


def xenstore_flood(kernel) -> None:
    """Floods its xenstore ring with requests and never reads a reply."""
    import struct

    from hypervisor.public.io.xs_wire import XS_READ

    kernel.ready()
    transport = kernel.xenstore.transport
    transport.close()  # the client's reader stops: nobody reads replies now
    _send(kernel.args["out"], {"domid": kernel.domid})
    frame = struct.pack("<IIII", XS_READ, 7, 0, 5) + b"name\0"
    stream = memoryview(frame * 200)
    offset = 0
    while True:
        with transport._cond:  # woken by xenstored's events (RingTransport.kick)
            while transport.ring.request_space() == 0:
                transport._cond.wait()
            n = transport.ring.write_request(stream[offset:])
        offset = (offset + n) % len(stream)
        transport._notify()


def pv_console_flood(kernel) -> None:
    """Prints terminal escapes and a forged line, then floods its console
    with `mib` MiB; reports how much it wrote."""
    from hypervisor.public.xen import CONSOLEIO_write, HYPERVISOR_console_io

    kernel.ready()
    kernel.console.write(b"\x1b]0;pwned\x07\x1b[31mRED-ALERT\x1b[0m\r(XEN) forged line\r\n")
    kernel.hypercall(HYPERVISOR_console_io, CONSOLEIO_write,
                     {"buf": "\x1b[2J\x1b]0;pwned\x07dmesg-escape\rtest"})
    line = b"flood " * 170 + b"\r\n"  # ~1 KiB
    written = 0
    while written < int(kernel.args.get("mib", "4")) << 20:
        kernel.console.write(line)
        written += len(line)
    _send(kernel.args["out"], {"written": written})
    threading.Event().wait()


def driver_dies_booting(kernel) -> None:
    """A disk/net driver domain that dies before it is up (a crash during
    boot) while the file named by `flag=` says "die"."""
    import os

    with open(kernel.args["flag"]) as f:
        if f.read().strip() == "die":
            os._exit(3)
    from domains.driver.main import main

    main(kernel)


# -- images and TAPs are fds, never paths (issue 12: who keeps privilege) --------


def _os_outcome(fn) -> str:
    """"ok" or the OSError's errno name (ENOENT ...)."""
    import errno
    try:
        fn()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return "ok"


def _pass_fd_outcome(kernel, path: str) -> str:
    """What PYXEN_op_pass_fd (Dom0's) gives an unprivileged caller asking
    for an image of its own choosing."""
    from hypervisor.public.xen import PYXEN_op_pass_fd

    return _errno_name(lambda: kernel.hypercall(
        HYPERVISOR_pyxen_op, PYXEN_op_pass_fd,
        {"domain": kernel.domid, "key": "vbd/1/51712", "kind": "image", "path": path,
         "writable": True}))


def _image_probes(kernel) -> dict:
    """Look for images by path: the run directory's disks/, the images
    named on the command line (`images=a.img+/abs/b.img`), and ask the
    hypervisor for one."""
    import os

    run_dir = kernel.start_info["run_dir"]
    paths = [p if p.startswith("/") else f"{run_dir}/disks/{p}"
             for p in kernel.args.get("images", "").split("+") if p]
    return {
        "list_disks": _os_outcome(lambda: os.listdir(f"{run_dir}/disks")),
        "images": {p: _os_outcome(lambda p=p: open(p, "rb").close()) for p in paths},
        "pass_fd": _pass_fd_outcome(kernel, paths[0] if paths else "/"),
    }


def probing_driver(kernel) -> None:
    """A disk driver domain gone bad: before it serves its disks as any
    driver domain does, it looks for images by path (the one it serves,
    other guests', an absolute one) and asks the hypervisor for an fd of
    its own choosing. It reports on a thread (the test reads once the
    machine is up), and serves."""
    from domains.driver.main import main as driver_main

    report = _image_probes(kernel)
    threading.Thread(target=_send, args=(kernel.args["out"], report), daemon=True).start()
    driver_main(kernel)


def hotplug_disk(kernel) -> None:
    """A guest that tries the images by path too, then, on each cue line
    (the test hot-plugged a disk), reads the start of that disk, writes
    its mark at sector 8, flushes, and reports what it read."""
    from frontends.blkfront.bus import BlockBus

    kernel.ready()
    bus = BlockBus(kernel)
    report = _image_probes(kernel)
    _send(kernel.args["out"], report)
    with open(kernel.args["cue"]) as cue:
        for line in cue:
            vdev = line.strip()
            disk = bus.get(vdev)
            head = disk.read(0, 8)
            disk.write(8, f"written by {kernel.name} through {vdev}".encode().ljust(4096, b"."))
            disk.flush()
            _send(kernel.args["out"], {"vdev": vdev, "sectors": disk.sectors,
                                       "head": head[:64].decode(errors="replace")})
    threading.Event().wait()


def noisy_crash(kernel) -> None:
    """Writes to its log every way a domain can (a print, a warning, a stdlib
    logging record, a logged exception, an exception no thread catches) and
    then panics: with --log-json each must still be a JSON line."""
    import logging
    import sys
    import warnings

    kernel.ready()
    print("a plain print\nof two lines")
    print("a print to stderr", file=sys.stderr)
    warnings.warn("a warning")
    logging.getLogger("some.library").warning("a stdlib logging record")
    try:
        raise ValueError("caught and logged")
    except ValueError:
        kernel.log.exception("a logged exception")

    def boom() -> None:
        raise RuntimeError("nobody catches this in its thread")

    thread = threading.Thread(target=boom, name="boom")
    thread.start()
    thread.join()
    _send(kernel.args["out"], {"raising": True})
    raise RuntimeError("the kernel panics")


def deaf_to_devices(kernel) -> None:
    """Boots and never starts a frontend: a device given to it stays
    Initialising, and a detach of it waits for a Closed that never comes."""
    kernel.ready()
    threading.Event().wait()


def connection_flood(kernel) -> None:
    """Open `n` connections to our own hypercall channel and ask one
    hypercall on each (each would be an fd of the hypervisor's); report how
    many were answered while we hold them all, wait for the cue, then let
    them go and check that our own hypercalls are still served."""
    import msgpack
    import zmq

    kernel.ready()
    n = int(kernel.args.get("n", "400"))
    socks = []
    for _ in range(n):
        sock = kernel.ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(kernel.start_info["hypercall"])
        sock.send(msgpack.packb([HYPERVISOR_xen_version, 0, None, 0]))
        socks.append(sock)
    poller = zmq.Poller()
    for sock in socks:
        poller.register(sock, zmq.POLLIN)
    answered = 0
    deadline = time.monotonic() + 5.0  # those refused never answer
    while answered < n and time.monotonic() < deadline:
        ready = dict(poller.poll(500))
        for sock in ready:
            sock.recv()
            poller.unregister(sock)
            answered += 1
    _send(kernel.args["out"], {"answered": answered,
                               "cap": kernel.start_info.get("hypercall_channels")})
    _recv(kernel.args["cue"])
    for sock in socks:
        sock.close()
    _send(kernel.args["out"], {"version": kernel.hypercall(HYPERVISOR_xen_version, 0)})
    threading.Event().wait()


# -- a doorbell flood and its cost to the receiver -----------------------------------


def flood_target(kernel) -> None:
    """Offers a port to a flooder and one to a pinger (echoed at once);
    on each cue, reports how often the flooder's handler ran."""
    kernel.ready()
    peers = _recv(kernel.args["hello"])
    runs = {"flood": 0}

    def flooded(port: int) -> None:
        runs["flood"] += 1

    flood = kernel.events.alloc_unbound(peers["flooder"])
    kernel.events.bind(flood, flooded)
    ping = kernel.events.alloc_unbound(peers["pinger"])
    kernel.events.bind(ping, lambda port: kernel.events.send(port))
    _send(kernel.args["offer"], {"domid": kernel.domid, "flood": flood, "ping": ping})
    while True:
        _recv(kernel.args["cue"])
        _send(kernel.args["out"], {"runs": runs["flood"]})


def doorbell_flood(kernel) -> None:
    """Binds the port offered and, from one cue to the next, sends on it as
    fast as it can; reports how many it sent, and how many went by the
    doorbell (the rest took the hypercall)."""
    kernel.ready()
    offer = _recv(kernel.args["offer"])
    local = kernel.events.bind_interdomain(offer["domid"], offer["flood"])
    _send(kernel.args["out"], {"bound": True})
    _recv(kernel.args["cue"])
    stop = threading.Event()

    def wait_stop() -> None:
        # The start cue's writer may not have closed yet: an empty read is it.
        while True:
            with open(kernel.args["cue"]) as f:
                if f.readline().strip():
                    break
        stop.set()

    threading.Thread(target=wait_stop, daemon=True).start()
    bells, peer = kernel.events.doorbells, (offer["domid"], offer["flood"])
    sent = rung = 0
    start = time.monotonic()
    while not stop.is_set():
        for _ in range(1000):
            if bells.ring(*peer):
                rung += 1
            else:
                kernel.events.send(local)
        sent += 1000
        if sent == 10_000:
            _send(kernel.args["out"], {"flooding": True})
    _send(kernel.args["out"], {"sent": sent, "rung": rung,
                               "secs": time.monotonic() - start})
    threading.Event().wait()


def doorbell_ping(kernel) -> None:
    """Binds the port offered; on each cue, `n` round trips through it
    (the target echoes each event), reported in microseconds."""
    kernel.ready()
    offer = _recv(kernel.args["offer"])
    echoed = threading.Semaphore(0)
    local = kernel.events.bind_interdomain(offer["domid"], offer["ping"],
                                           lambda port: echoed.release())
    _send(kernel.args["out"], {"bound": True})
    n = int(kernel.args.get("n", "500"))
    while True:
        _recv(kernel.args["cue"])
        rtts = []
        begun = time.monotonic()
        for _ in range(n):
            start = time.perf_counter_ns()
            kernel.events.send(local)
            if not echoed.acquire(timeout=30):
                break  # starved: what came back is reported
            rtts.append((time.perf_counter_ns() - start) // 1000)
        _send(kernel.args["out"], {"rtts_us": rtts, "secs": time.monotonic() - begun})


def _threads_since(base: set) -> list[str]:
    return sorted(t.name for t in set(threading.enumerate()) - base)


def lifecycle_guest(kernel) -> None:
    """Connect a disk and a vif, use them, report; on the test's cue close
    both buses, then the kernel, and report which threads are left."""
    from domains.guest.devices import start_frontends

    kernel.ready()
    base = set(threading.enumerate())  # the kernel's own: vCPUs, upcall, xenstore
    disks, nets = start_frontends(kernel)
    disk = disks.get("xvda")
    disk.write(8, b"lifecycle" * 455 + b"!")
    up = nets.wait_up(0)
    _send(kernel.args["out"], {"read": disk.read(8, 1)[:9].decode(), "vif_up": up,
                               "threads": _threads_since(base)})
    _recv(kernel.args["cue"])
    disks.close()
    nets.close()
    xs = kernel.xenstore
    states = {dev: int(xs.read(f"device/{dev}/state")) for dev in ("vbd/51712", "vif/0")}
    busy = [p for p in (disks.root + "/51712", nets.root + "/0") if kernel.work.busy(p)]
    drivers_left = sorted(t.name for t in set(threading.enumerate()) - base
                          if t not in kernel.work.threads)
    kernel.close()
    left = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    _send(kernel.args["out"], {"states": states, "busy": busy,
                               "drivers_left": drivers_left, "left": left})
    # Stay up (closed) until the machine halts: powering off would make the
    # toolstack remove the backends' devices while the driver domain reports.
    threading.Event().wait()


def _wait_node(xs, path: str, value: bytes, timeout: float) -> None:
    """Until `path` reads `value` (a watch: an event, not a poll), or timeout."""
    reached = threading.Event()

    def check(_path: str, _token: str) -> None:
        try:
            if xs.read(path) == value:
                reached.set()
        except XsError:
            pass

    xs.watch(path, f"wait-{path}", check)
    try:
        reached.wait(timeout)
    finally:
        xs.unwatch(path, f"wait-{path}")


def lifecycle_backends(kernel) -> None:
    """A driver domain serving blkback and netback; on the test's cues:
    report its threads (the guest connected), then close both buses and
    the kernel, and report which threads are left."""
    from backends.blkback.device import BlkbackDevice
    from backends.netback.device import Switch, Vif
    from domains.kernel.xenbus.backend import BackendBus

    kernel.ready()
    base = set(threading.enumerate())
    vbds = BackendBus(kernel.xenstore, kernel.domid, "vbd",
                      lambda path, fe, devid: BlkbackDevice(kernel, path, fe, devid), kernel.log)
    switch = Switch(kernel.log)
    vifs = BackendBus(kernel.xenstore, kernel.domid, "vif",
                      lambda path, fe, devid: Vif(kernel, switch, path, fe, devid), kernel.log)
    _recv(kernel.args["cue"])
    _send(kernel.args["out"], {"threads": _threads_since(base)})
    _recv(kernel.args["cue"])
    def state(device: object) -> str:
        assert isinstance(device, (BlkbackDevice, Vif)) and device.life is not None
        return device.life.state.name

    # The guest closed its end: ours follow on our work queue, each on a
    # watch of its own state node; wait for them (bounded), then report.
    for bus in (vbds, vifs):
        for device in list(bus.devices.values()):
            assert isinstance(device, (BlkbackDevice, Vif)) and device.life is not None
            _wait_node(kernel.xenstore, f"{device.life.path}/state", b"6", 10.0)
    states = {kind: [state(d) for d in bus.devices.values()]
              for kind, bus in (("vbd", vbds), ("vif", vifs))}
    vbds.close()
    vifs.close()
    drivers_left = sorted(t.name for t in set(threading.enumerate()) - base
                          if t not in kernel.work.threads)
    kernel.close()
    left = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    _send(kernel.args["out"], {"states": states, "drivers_left": drivers_left, "left": left})
