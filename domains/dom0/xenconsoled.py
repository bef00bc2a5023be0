"""xenconsoled: the console backend, a thread in Dom0.

As Xen's, it finds domains through XenStore (@introduceDomain,
@releaseDomain, then /local/domain/<id>/console/{ring-ref,port}), maps each
console page through the domain's GNTTAB_RESERVED_CONSOLE grant and binds
its event channel. Output goes to every attached `pyxen console` client
as the guest wrote it, and to <run-dir>/console/<name>.log cleaned, each
line prefixed with the domain, rate limited, capped and rotated
(domains.dom0.logtext.ConsoleLog); what clients type goes into the `in`
ring.

Clients connect to <run-dir>/console/socket (processes of our uid only,
SO_PEERCRED), send "NAME\\n", get "OK\\n" (or "ERR reason\\n"), then the
last part of the output and the live output; bytes they send are
keystrokes. Nothing here blocks on a client: a client that does not read
loses output beyond CLIENT_BACKLOG bytes, as a slow serial line would.
"""

from __future__ import annotations

import os
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domains.dom0.logtext import ConsoleLog
from domains.dom0.mailbox import Mailbox
from domains.dom0.peercred import owner_uid, peer_allowed
from domains.kernel.api import DriverKernel
from domains.kernel.console_ring import ConsoleRingError, XenconsRing
from domains.kernel.gnttab import GrantStatusError, Mapping
from domains.kernel.xenbus.client import XsError
from hypervisor.public.errno import XenError
from hypervisor.public.grant_table import GNTTAB_RESERVED_CONSOLE

SOCKET_NAME = "socket"
REPLAY_BYTES = 4096      # how much earlier output an attaching client sees
CLIENT_BACKLOG = 65536   # output kept for a client that does not read
HELLO_MAX = 256          # the "NAME\n" line


@dataclass
class Client:
    sock: socket.socket
    hello: bytearray = field(default_factory=bytearray)
    out: bytearray = field(default_factory=bytearray)
    con: DomainConsole | None = None
    lost: int = 0  # bytes it did not read in time


@dataclass
class DomainConsole:
    domid: int
    name: str
    ring: XenconsRing
    mapping: Mapping
    port: int
    log: ConsoleLog
    clients: list[Client] = field(default_factory=list)
    pending_in: bytearray = field(default_factory=bytearray)
    recent: bytearray = field(default_factory=bytearray)  # raw, for attaching clients


class Xenconsoled(threading.Thread):
    def __init__(self, kernel: DriverKernel, run_dir: Path, xenstore: Any) -> None:
        super().__init__(name="xenconsoled", daemon=True)
        self.kernel = kernel
        self.xs = xenstore
        self.log = kernel.log.bind(component="xenconsoled")
        self.dir = run_dir / "console"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / SOCKET_NAME
        self.path.unlink(missing_ok=True)
        self.uid = owner_uid()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(self.path))
        os.chmod(self.path, 0o600)
        self.listener.listen(16)
        self.listener.setblocking(False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, ("accept", None))
        self.mailbox = Mailbox()
        self.selector.register(self.mailbox, selectors.EVENT_READ, ("wake", None))
        self.consoles: dict[int, DomainConsole] = {}
        self.stopping = False

    def _wake(self, item: tuple) -> None:
        self.mailbox.post(item)

    def start(self) -> None:
        super().start()
        for special in ("@introduceDomain", "@releaseDomain"):
            self.xs.watch(special, "xenconsoled", lambda path, token: self._wake(("scan",)))

    def stop(self) -> None:
        self._wake(("stop",))
        self.join(timeout=5)

    # -- loop -------------------------------------------------------------------

    def run(self) -> None:
        while not self.stopping:
            for key, mask in self.selector.select():
                kind, obj = key.data
                try:
                    if kind == "accept":
                        self._accept()
                    elif kind == "wake":
                        self._drain()
                    elif kind == "client":
                        if mask & selectors.EVENT_WRITE:
                            self._flush_client(obj)
                        if mask & selectors.EVENT_READ and obj.sock.fileno() >= 0:
                            self._client_input(obj)
                except Exception:  # one console's trouble is not everybody's
                    self.log.exception("xenconsoled error", kind=kind)
        self._shutdown()

    def _drain(self) -> None:
        for item in self.mailbox.take_all():
            if item[0] == "scan":
                self._scan()
            elif item[0] == "ring":
                self._service(item[1])
            elif item[0] == "stop":
                self.stopping = True

    # -- domains ------------------------------------------------------------------

    def _scan(self) -> None:
        try:
            live = {int(d) for d in self.xs.directory("/local/domain") if d.isdigit()}
        except XsError:
            return
        for domid in set(self.consoles) - live:
            self._detach(domid)
        for domid in sorted(live - set(self.consoles) - {0}):
            try:
                self._attach(domid)
            except (XsError, XenError, GrantStatusError, ValueError) as exc:
                self.log.info("no console yet", domid=domid, reason=str(exc))

    def _attach(self, domid: int) -> None:
        base = f"/local/domain/{domid}"
        name = self.xs.read(f"{base}/name").decode()
        port = int(self.xs.read(f"{base}/console/port"))
        mapping = self.kernel.gnttab.map_grant_ref(domid, GNTTAB_RESERVED_CONSOLE)
        try:
            local = self.kernel.events.bind_interdomain(
                domid, port, lambda _p: self._wake(("ring", domid)))
        except XenError:
            self.kernel.gnttab.unmap(mapping)
            raise
        log = ConsoleLog(self.dir / f"{name}.log", f"(d{domid})", time.monotonic)
        self.consoles[domid] = DomainConsole(domid, name, XenconsRing(mapping.page),
                                             mapping, local, log)
        self.log.info("console attached", domid=domid, name=name)
        self._service(domid)

    def _detach(self, domid: int) -> None:
        con = self.consoles.pop(domid)
        for client in list(con.clients):
            self._drop_client(client)
        if con.log.dropped_total:
            self.log.warning("console output dropped", domid=domid, name=con.name,
                             bytes=con.log.dropped_total)
        con.log.close()
        for undo in (lambda: self.kernel.events.close(con.port),
                     lambda: self.kernel.gnttab.unmap(con.mapping)):
            try:
                undo()
            except Exception as exc:  # the domain is gone already
                self.log.info("console release", domid=domid, note=str(exc))

    def _service(self, domid: int) -> None:
        """Drain the domain's output; feed it pending keystrokes."""
        con = self.consoles.get(domid)
        if con is None:
            return
        try:
            moved = False
            while data := con.ring.read_out():
                moved = True
                con.log.feed(data)
                con.recent += data
                if len(con.recent) > REPLAY_BYTES:
                    del con.recent[:-REPLAY_BYTES]
                for client in list(con.clients):
                    self._send(client, data)
            if con.pending_in:
                n = con.ring.write_in(bytes(con.pending_in))
                del con.pending_in[:n]
                moved = moved or n > 0
        except ConsoleRingError as exc:
            self.log.error("console ring corrupt", domid=domid, error=str(exc))
            self._detach(domid)
            return
        if moved:
            try:
                self.kernel.events.send(con.port)
            except XenError:
                pass

    # -- clients --------------------------------------------------------------------

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        if not peer_allowed(sock, self.uid):
            self.log.warning("console client of another uid refused")
            sock.close()
            return
        sock.setblocking(False)
        client = Client(sock)
        self.selector.register(sock, selectors.EVENT_READ, ("client", client))

    def _hello(self, client: Client, data: bytes) -> None:
        client.hello += data
        if b"\n" not in client.hello:
            if len(client.hello) > HELLO_MAX:
                self._drop_client(client)
            return
        line, _, keys = bytes(client.hello).partition(b"\n")
        name = line[:HELLO_MAX].decode(errors="replace").strip()
        con = next((c for c in self.consoles.values() if c.name == name), None)
        if con is None:
            self._send(client, f"ERR no console for domain '{name}'\n".encode())
            self._flush_client(client)
            self._drop_client(client)
            return
        client.con = con
        self._send(client, b"OK\n" + bytes(con.recent))
        con.clients.append(client)
        if keys:
            self._keys(client, keys)

    def _client_input(self, client: Client) -> None:
        try:
            data = client.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop_client(client)
        elif client.con is None:
            self._hello(client, data)
        else:
            self._keys(client, data)

    def _keys(self, client: Client, data: bytes) -> None:
        con = client.con
        if con.domid not in self.consoles:
            self._drop_client(client)
            return
        # Keystrokes wait here while the guest does not read them: as many
        # as a client could hold back, no more.
        room = CLIENT_BACKLOG - len(con.pending_in)
        con.pending_in += data[:max(0, room)]
        self._service(con.domid)

    def _send(self, client: Client, data: bytes) -> None:
        """Queue output for a client; never wait for it."""
        room = CLIENT_BACKLOG - len(client.out)
        if len(data) > room:
            client.lost += len(data) - max(0, room)
            data = data[:max(0, room)]
        was_idle = not client.out
        client.out += data
        if was_idle:
            self._flush_client(client)

    def _flush_client(self, client: Client) -> None:
        sock = client.sock
        if sock.fileno() < 0:
            return
        while client.out:
            try:
                sent = sock.send(client.out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop_client(client)
                return
            del client.out[:sent]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.out else 0)
        try:
            self.selector.modify(sock, events, ("client", client))
        except (KeyError, ValueError):
            pass

    def _drop_client(self, client: Client) -> None:
        try:
            self.selector.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        if client.con is not None and client in client.con.clients:
            client.con.clients.remove(client)
        if client.lost:
            self.log.info("console client lost output it did not read", bytes=client.lost)
        client.sock.close()

    def _shutdown(self) -> None:
        for domid in list(self.consoles):
            self._detach(domid)
        for key in list(self.selector.get_map().values()):
            if key.data[0] == "client":
                self._drop_client(key.data[1])
        self.listener.close()
        self.path.unlink(missing_ok=True)
        self.mailbox.close()
