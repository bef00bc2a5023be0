"""xenconsoled: the console backend, a thread in Dom0.

As Xen's, it finds domains through XenStore (@introduceDomain,
@releaseDomain, then /local/domain/<id>/console/{ring-ref,port}), maps each
console page through the domain's GNTTAB_RESERVED_CONSOLE grant and binds
its event channel. Output goes to <run-dir>/console/<name>.log and to every
attached `pyxen console` client; what clients type goes into the `in` ring.

Clients connect to <run-dir>/console/socket, send "NAME\\n", get "OK\\n" (or
"ERR reason\\n"), then the last part of the log and the live output; bytes
they send are keystrokes.
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
from domains.kernel.console_ring import ConsoleRingError, XenconsRing
from domains.kernel.gnttab import GrantStatusError, Mapping
from domains.kernel.xenbus.client import XsError
from hypervisor.public.errno import XenError
from hypervisor.public.grant_table import GNTTAB_RESERVED_CONSOLE

SOCKET_NAME = "socket"
REPLAY_BYTES = 4096  # how much earlier output an attaching client sees


@dataclass
class DomainConsole:
    domid: int
    name: str
    ring: XenconsRing
    mapping: Mapping
    port: int
    log: Any
    clients: list[socket.socket] = field(default_factory=list)
    pending_in: bytearray = field(default_factory=bytearray)


class Xenconsoled(threading.Thread):
    def __init__(self, kernel: Any, run_dir: Path, xenstore: Any) -> None:
        super().__init__(name="xenconsoled", daemon=True)
        self.kernel = kernel
        self.xs = xenstore
        self.log = kernel.log.bind(component="xenconsoled")
        self.dir = run_dir / "console"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / SOCKET_NAME
        self.path.unlink(missing_ok=True)
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
            for key, _ in self.selector.select():
                kind, obj = key.data
                if kind == "accept":
                    self._accept()
                elif kind == "wake":
                    self._drain()
                elif kind == "hello":
                    self._hello(obj)
                elif kind == "client":
                    self._client_input(*obj)
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
            live = {int(d) for d in self.xs.directory("/local/domain")}
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
                domid, port, lambda _p, d=domid: self._wake(("ring", d)))
        except XenError:
            self.kernel.gnttab.unmap(mapping)
            raise
        log = open(self.dir / f"{name}.log", "ab", buffering=0)
        self.consoles[domid] = DomainConsole(domid, name, XenconsRing(mapping.page),
                                             mapping, local, log)
        self.log.info("console attached", domid=domid, name=name)
        self._service(domid)

    def _detach(self, domid: int) -> None:
        con = self.consoles.pop(domid)
        for client in con.clients:
            self._drop_client(client)
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
                con.log.write(data)
                for client in list(con.clients):
                    try:
                        client.sendall(data)
                    except OSError:
                        self._drop_client(client, con)
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
            client, _ = self.listener.accept()
        except BlockingIOError:
            return
        self.selector.register(client, selectors.EVENT_READ, ("hello", client))

    def _hello(self, client: socket.socket) -> None:
        self.selector.unregister(client)
        try:
            client.settimeout(5)
            name = client.makefile("rb").readline(256).decode(errors="replace").strip()
        except OSError:
            client.close()
            return
        con = next((c for c in self.consoles.values() if c.name == name), None)
        if con is None:
            client.sendall(f"ERR no console for domain '{name}'\n".encode())
            client.close()
            return
        client.sendall(b"OK\n")
        try:
            with open(self.dir / f"{con.name}.log", "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - REPLAY_BYTES))
                client.sendall(f.read())
        except OSError:
            pass
        client.settimeout(None)
        con.clients.append(client)
        self.selector.register(client, selectors.EVENT_READ, ("client", (client, con)))

    def _client_input(self, client: socket.socket, con: DomainConsole) -> None:
        try:
            data = client.recv(4096)
        except OSError:
            data = b""
        if not data:
            self._drop_client(client, con)
            return
        con.pending_in += data
        self._service(con.domid)

    def _drop_client(self, client: socket.socket, con: DomainConsole | None = None) -> None:
        try:
            self.selector.unregister(client)
        except (KeyError, ValueError):
            pass
        if con is not None and client in con.clients:
            con.clients.remove(client)
        client.close()

    def _shutdown(self) -> None:
        for domid in list(self.consoles):
            self._detach(domid)
        self.listener.close()
        self.path.unlink(missing_ok=True)
        self.mailbox.close()
