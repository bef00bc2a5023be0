"""xenstored's I/O: one thread in Dom0 around the pure `XenStore` core.

Two transports feed the same message handler, as in Xen's xenstored:
- a unix socket at <run-dir>/xenstored/socket for Dom0's tools (Debian's
  `XENSTORED_PATH=... xenstore-ls` works against it); its clients act as
  Dom0, as a privileged local socket does in Xen, so only processes of the
  uid that started pyxen may connect (SO_PEERCRED);
- one xenstore ring page per introduced domain, mapped through the grant
  the domain made with GNTTAB_RESERVED_XENSTORE, kicked by an event channel.
  The connection's domid is the domid XS_INTRODUCE named (the toolstack's
  word, never the guest's).

Only this thread touches the core. The upcall thread merely queues "ring N
was kicked" and wakes the selector through a pipe.

Nothing here waits for a client. A domain's ring is read only while its
connection is within quota (`XenStore.wants_input`: Xen's domain_can_read)
and written as far as the response ring has room; a socket is non-blocking,
written when the selector says it can take more, no longer read while
SOCKET_PAUSE bytes wait for its client, and dropped past SOCKET_BACKLOG
(watch events can pile up for a client that stopped reading). Output is
sent from views of the queued messages (`Outbox.chunks`), never by copying
the backlog.
"""

from __future__ import annotations

import os
import selectors
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

from domains.dom0.mailbox import Mailbox
from domains.dom0.peercred import owner_uid, peer_allowed
from domains.dom0.xc import XenCtrl
from domains.dom0.xenstored.handler import Connection, XenStore
from domains.kernel.api import DriverKernel
from domains.kernel.gnttab import Mapping
from domains.kernel.xenbus.ring import RingError, XenstoreRing
from hypervisor.public.domctl import XEN_DOMINF_dying, XEN_DOMINF_shutdown
from hypervisor.public.errno import XenError
from hypervisor.public.grant_table import GNTTAB_RESERVED_XENSTORE
from hypervisor.public.io.xs_wire import XENSTORE_RING_SIZE

SOCKET_NAME = "socket"
SOCKET_PAUSE = 256 * 1024          # stop reading a socket client this far behind
SOCKET_BACKLOG = 16 * 1024 * 1024  # drop it this far behind
RING_ROUNDS = 16                   # ring-fulls served per domain per turn


@dataclass(eq=False)
class RingPeer:
    conn: Connection
    domid: int
    ring: XenstoreRing
    mapping: Mapping
    port: int
    kicked: bool = True


@dataclass(eq=False)
class SocketPeer:
    conn: Connection
    sock: socket.socket
    events: int = selectors.EVENT_READ  # 0: not registered


def pump_ring(store: XenStore, conn: Connection, ring: XenstoreRing,
              rounds: int = RING_ROUNDS) -> tuple[bool, bool]:
    """Serve one domain's ring: write what it has room for, handle what
    its quotas allow, read more only then. Returns (moved: notify the
    domain, busy: it has more to do than `rounds` allowed).

    A domain that never reads its replies fills its response ring, then
    has `outstanding` replies queued: its requests are no longer read and
    its ring stays full, costing xenstored nothing more."""
    moved = False
    for _ in range(rounds):
        progressed = False
        while conn.outbox.sending:
            written = 0
            for view in conn.outbox.chunks(XENSTORE_RING_SIZE):
                n = ring.write_response(view)
                written += n
                if n < len(view):
                    break
            if not written:
                break
            conn.outbox.advance(written)
            progressed = True
        store.process(conn)
        if store.wants_input(conn):
            data = ring.read_request(XENSTORE_RING_SIZE)
            if data:
                progressed = True
                store.receive(conn, data)
                store.process(conn)
        if conn.closed:
            return moved or progressed, False
        moved = moved or progressed
        if not progressed:
            return moved, False
    return moved, True


class Xenstored(threading.Thread):
    def __init__(self, kernel: DriverKernel, run_dir: Path) -> None:
        super().__init__(name="xenstored", daemon=True)
        self.kernel = kernel
        self.log = kernel.log.bind(component="xenstored")
        self.dir = run_dir / "xenstored"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / SOCKET_NAME
        self.path.unlink(missing_ok=True)
        self.store = XenStore(on_introduce=self._introduce, on_release=self._release,
                              log=lambda msg: self.log.info(msg),
                              domain_exists=self._domain_exists)
        self.uid = owner_uid()
        self.selector = selectors.DefaultSelector()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(self.path))
        os.chmod(self.path, 0o600)  # the socket is Dom0's: privileged access
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ, "accept")
        self.mailbox = Mailbox()
        self.selector.register(self.mailbox, selectors.EVENT_READ, "wake")
        self.rings: dict[int, RingPeer] = {}
        self.sockets: set[SocketPeer] = set()
        self.busy = False  # a ring has more to do: poll, do not sleep
        self.stopping = False
        self.ready = threading.Event()

    # -- called from other threads ----------------------------------------------

    def _wake(self, item: tuple) -> None:
        self.mailbox.post(item)

    def kick(self, domid: int) -> None:
        self._wake(("ring", domid))

    def domain_exception(self) -> None:
        self._wake(("dom_exc",))

    def stop(self) -> None:
        self._wake(("stop",))
        self.join(timeout=5)

    # -- the loop -------------------------------------------------------------------

    def run(self) -> None:
        self.xc = XenCtrl(self.kernel.hypercall)
        self.ready.set()
        while not self.stopping:
            for key, mask in self.selector.select(0 if self.busy else None):
                try:
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        self._drain_requests()
                    else:
                        self._socket_event(key.data, mask)
                except Exception:  # never take xenstored down
                    self.log.exception("xenstored error")
            try:
                self._pump()
            except Exception:
                self.log.exception("xenstored error")
        self._shutdown()

    def _drain_requests(self) -> None:
        for item in self.mailbox.take_all():
            if item[0] == "ring":
                peer = self.rings.get(item[1])
                if peer is not None:
                    peer.kicked = True
            elif item[0] == "dom_exc":
                self._check_domains()
            elif item[0] == "stop":
                self.stopping = True

    def _pump(self) -> None:
        """Serve every connection that has something to do."""
        self.busy = False
        for peer in list(self.rings.values()):
            if peer.kicked or peer.conn.outbox.sending or peer.conn.pending:
                self._service_ring(peer)
        for peer in list(self.sockets):
            self._service_socket(peer)

    # -- sockets ----------------------------------------------------------------

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        if not peer_allowed(sock, self.uid):
            # Its clients act as Dom0: nobody else's process may be one.
            self.log.warning("xenstored client of another uid refused")
            sock.close()
            return
        sock.setblocking(False)
        peer = SocketPeer(self.store.connect(0), sock)
        self.sockets.add(peer)
        self.selector.register(sock, peer.events, peer)

    def _socket_event(self, peer: SocketPeer, mask: int) -> None:
        if peer not in self.sockets:
            return
        if mask & selectors.EVENT_READ:
            try:
                data = peer.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                data = b""
            if data == b"":
                self._close_socket(peer)
                return
            if data:
                self.store.receive(peer.conn, data)
                self.store.process(peer.conn)

    def _service_socket(self, peer: SocketPeer) -> None:
        conn = peer.conn
        self.store.process(conn)
        while conn.outbox.sending:
            views = conn.outbox.chunks()
            try:
                sent = peer.sock.sendmsg(views)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                conn.closed = True
                break
            conn.outbox.advance(sent)
            if sent < sum(len(v) for v in views):
                break
        if conn.outbox.bytes > SOCKET_BACKLOG:
            self.log.warning("dropping a xenstored client that does not read",
                             backlog=conn.outbox.bytes)
            conn.closed = True
        if conn.closed:
            self._close_socket(peer)
            return
        events = 0
        if conn.outbox.bytes < SOCKET_PAUSE and self.store.wants_input(conn):
            events |= selectors.EVENT_READ
        if conn.outbox.sending:
            events |= selectors.EVENT_WRITE
        if events == peer.events:
            return
        if not peer.events:
            self.selector.register(peer.sock, events, peer)
        elif not events:
            self.selector.unregister(peer.sock)
        else:
            self.selector.modify(peer.sock, events, peer)
        peer.events = events

    def _close_socket(self, peer: SocketPeer) -> None:
        self.sockets.discard(peer)
        try:
            self.selector.unregister(peer.sock)
        except (KeyError, ValueError):
            pass
        peer.sock.close()
        self.store.disconnect(peer.conn)

    # -- rings ------------------------------------------------------------------

    def _domain_exists(self, domid: int) -> bool:
        try:
            info = self.xc.domain_getinfo(domid)
        except XenError:
            return False
        return info.get("domain") == domid and not info["flags"] & XEN_DOMINF_dying

    def _introduce(self, domid: int, mfn: int, port: int) -> None:
        """XS_INTRODUCE: map the domain's xenstore page and bind its channel."""
        if domid in self.rings:
            raise ValueError(f"domain {domid} is already introduced")
        mapping = self.kernel.gnttab.map_grant_ref(domid, GNTTAB_RESERVED_XENSTORE)
        try:
            local = self.kernel.events.bind_interdomain(
                domid, port, lambda _port: self.kick(domid))
        except XenError:
            self.kernel.gnttab.unmap(mapping)
            raise
        peer = RingPeer(self.store.connect(domid), domid=domid,
                        ring=XenstoreRing(mapping.page), mapping=mapping, port=local)
        self.rings[domid] = peer  # kicked: requests may be waiting in the ring already
        self.log.info("domain introduced", domid=domid, port=port)

    def _release(self, domid: int) -> None:
        peer = self.rings.pop(domid, None)
        if peer is None:
            return
        self.store.disconnect(peer.conn)
        for undo in (lambda: self.kernel.events.close(peer.port),
                     lambda: self.kernel.gnttab.unmap(peer.mapping)):
            try:
                undo()
            except (XenError, Exception) as exc:  # the domain may be gone already
                self.log.info("release", domid=domid, note=str(exc))

    def _service_ring(self, peer: RingPeer) -> None:
        peer.kicked = False
        try:
            moved, busy = pump_ring(self.store, peer.conn, peer.ring)
        except RingError as exc:
            self.log.error("ring protocol violation", domid=peer.domid, error=str(exc))
            peer.conn.closed = True
            moved, busy = False, False
        if moved:
            self._notify(peer)
        if busy:
            peer.kicked = True
            self.busy = True
        if peer.conn.closed:
            self.log.error("dropping misbehaving domain connection", domid=peer.domid)
            self._release(peer.domid)

    def _notify(self, peer: RingPeer) -> None:
        try:
            self.kernel.events.send(peer.port)
        except XenError:
            pass  # the domain died: VIRQ_DOM_EXC will clean up

    def _check_domains(self) -> None:
        """VIRQ_DOM_EXC: tell the core what became of the domains it knows."""
        status = {i["domain"]: (bool(i["flags"] & XEN_DOMINF_shutdown),
                                bool(i["flags"] & XEN_DOMINF_dying))
                  for i in self.xc.domain_getinfolist()}
        for domid in self.store.check_domains(status):
            self._release(domid)
            self.store.domain_released(domid)

    def _shutdown(self) -> None:
        for domid in list(self.rings):
            self._release(domid)
        for peer in list(self.sockets):
            peer.sock.close()
        self.listener.close()
        self.path.unlink(missing_ok=True)
        self.mailbox.close()
