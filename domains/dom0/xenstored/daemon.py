"""xenstored's I/O: one thread in Dom0 around the pure `XenStore` core.

Two transports feed the same message handler, as in Xen's xenstored:
- a unix socket at <run-dir>/xenstored/socket for Dom0's tools (Debian's
  `XENSTORED_PATH=... xenstore-ls` works against it); its clients act as
  Dom0, as a privileged local socket does in Xen;
- one xenstore ring page per introduced domain, mapped through the grant
  the domain made with GNTTAB_RESERVED_XENSTORE, kicked by an event channel.
  The connection's domid is the domid XS_INTRODUCE named (the toolstack's
  word, never the guest's).

Only this thread touches the core. The upcall thread merely queues "ring N
was kicked" and wakes the selector through a pipe.
"""

from __future__ import annotations

import os
import selectors
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domains.dom0.mailbox import Mailbox
from domains.dom0.xc import XenCtrl
from domains.dom0.xenstored.handler import Connection, XenStore
from domains.dom0.xenstored.wire import encode
from domains.kernel.gnttab import Mapping
from domains.kernel.xenbus.ring import RingError, XenstoreRing
from hypervisor.public.domctl import XEN_DOMINF_dying
from hypervisor.public.errno import XenError
from hypervisor.public.grant_table import GNTTAB_RESERVED_XENSTORE

SOCKET_NAME = "socket"


@dataclass
class Peer:
    """A connection and the bytes still to be sent to it."""

    conn: Connection
    out: bytearray = field(default_factory=bytearray)


@dataclass
class RingPeer(Peer):
    domid: int = 0
    ring: XenstoreRing | None = None
    mapping: Mapping | None = None
    port: int = 0


@dataclass
class SocketPeer(Peer):
    sock: socket.socket | None = None


class Xenstored(threading.Thread):
    def __init__(self, kernel: Any, run_dir: Path) -> None:
        super().__init__(name="xenstored", daemon=True)
        self.kernel = kernel
        self.log = kernel.log.bind(component="xenstored")
        self.dir = run_dir / "xenstored"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / SOCKET_NAME
        self.path.unlink(missing_ok=True)
        self.store = XenStore(on_introduce=self._introduce, on_release=self._release,
                              log=lambda msg: self.log.info(msg))
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
            for key, _ in self.selector.select():
                if key.data == "accept":
                    self._accept()
                elif key.data == "wake":
                    self._drain_requests()
                else:
                    self._read_socket(key.data)
            self._flush()
        self._shutdown()

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return
        sock.setblocking(False)
        peer = SocketPeer(self.store.connect(0), sock=sock)
        self.selector.register(sock, selectors.EVENT_READ, peer)

    def _read_socket(self, peer: SocketPeer) -> None:
        try:
            data = peer.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close_socket(peer)
            return
        self.store.handle_bytes(peer.conn, data)

    def _close_socket(self, peer: SocketPeer) -> None:
        self.selector.unregister(peer.sock)
        peer.sock.close()
        self.store.disconnect(peer.conn)

    def _drain_requests(self) -> None:
        for item in self.mailbox.take_all():
            if item[0] == "ring":
                self._read_ring(item[1])
            elif item[0] == "dom_exc":
                self._reap_domains()
            elif item[0] == "stop":
                self.stopping = True

    # -- rings ------------------------------------------------------------------

    def _introduce(self, domid: int, mfn: int, port: int) -> None:
        """XS_INTRODUCE: map the domain's xenstore page and bind its channel."""
        if domid in self.rings:
            raise ValueError(f"domain {domid} is already introduced")
        mapping = self.kernel.gnttab.map_grant_ref(domid, GNTTAB_RESERVED_XENSTORE)
        try:
            local = self.kernel.events.bind_interdomain(
                domid, port, lambda _port, d=domid: self.kick(d))
        except XenError:
            self.kernel.gnttab.unmap(mapping)
            raise
        peer = RingPeer(self.store.connect(domid), domid=domid,
                        ring=XenstoreRing(mapping.page), mapping=mapping, port=local)
        self.rings[domid] = peer
        self.log.info("domain introduced", domid=domid, port=port)
        self.kick(domid)  # requests may be waiting in the ring already

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

    def _read_ring(self, domid: int) -> None:
        peer = self.rings.get(domid)
        if peer is None:
            return
        consumed = False
        try:
            while True:
                data = peer.ring.read_request(4096)
                if not data:
                    break
                consumed = True
                self.store.handle_bytes(peer.conn, data)
        except RingError as exc:
            self.log.error("ring protocol violation", domid=domid, error=str(exc))
            peer.conn.closed = True
        if consumed:
            self._notify(peer)  # room in the request ring for a waiting writer

    def _notify(self, peer: RingPeer) -> None:
        try:
            self.kernel.events.send(peer.port)
        except XenError:
            pass  # the domain died: VIRQ_DOM_EXC will clean up

    def _reap_domains(self) -> None:
        """VIRQ_DOM_EXC: a domain that is gone fires @releaseDomain."""
        alive = {i["domain"] for i in self.xc.domain_getinfolist()
                 if not i["flags"] & XEN_DOMINF_dying}
        for domid in list(self.rings):
            if domid not in alive:
                self._release(domid)
                self.store.domain_released(domid)

    # -- output -----------------------------------------------------------------

    def _flush(self) -> None:
        for peer in list(self.rings.values()):
            self._flush_ring(peer)
        for key in list(self.selector.get_map().values()):
            if isinstance(key.data, SocketPeer):
                self._flush_socket(key.data)

    @staticmethod
    def _take_outbox(peer: Peer) -> None:
        while peer.conn.outbox:
            peer.out += encode(peer.conn.outbox.popleft())

    def _flush_ring(self, peer: RingPeer) -> None:
        self._take_outbox(peer)
        if peer.out:
            written = peer.ring.write_response(bytes(peer.out))
            if written:
                del peer.out[:written]
                self._notify(peer)
        if peer.conn.closed:
            self.log.error("dropping misbehaving domain connection", domid=peer.domid)
            self._release(peer.domid)

    def _flush_socket(self, peer: SocketPeer) -> None:
        self._take_outbox(peer)
        if peer.out:
            try:
                peer.sock.setblocking(True)
                peer.sock.sendall(peer.out)
                peer.out.clear()
            except OSError:
                peer.conn.closed = True
            finally:
                if peer.sock.fileno() >= 0:
                    peer.sock.setblocking(False)
        if peer.conn.closed:
            self._close_socket(peer)

    def _shutdown(self) -> None:
        for domid in list(self.rings):
            self._release(domid)
        for key in list(self.selector.get_map().values()):
            if isinstance(key.data, SocketPeer):
                key.data.sock.close()
        self.listener.close()
        self.path.unlink(missing_ok=True)
        self.mailbox.close()
