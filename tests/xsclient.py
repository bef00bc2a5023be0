""":class:`Client`, the in-memory helper the xenstored tests share: it sends
one request on a connection of a :class:`XenStore` and returns the reply."""

from __future__ import annotations

from domains.dom0.xenstored import Message, XenStore, XsError
from domains.dom0.xenstored.wire import join_strings
from hypervisor.public.io import xs_wire as xs


class Client:
    """One connection of `store`, acting as `domid`."""

    def __init__(self, store: XenStore, domid: int) -> None:
        self.store = store
        self.conn = store.connect(domid)
        self.req_id = 0
        self.events: list[tuple[str, str]] = []

    def _drain(self) -> list[Message]:
        out = list(self.conn.outbox)
        self.conn.outbox.clear()
        for msg in out:
            if msg.type == xs.XS_WATCH_EVENT:
                path, token = msg.payload.split(b"\0")[:2]
                self.events.append((path.decode("latin-1"), token.decode("latin-1")))
        return [m for m in out if m.type != xs.XS_WATCH_EVENT]

    def request(self, type_: int, payload: bytes, tx: int = 0) -> Message:
        """Send one request; return its (only) reply."""
        self._drain()
        self.req_id += 1
        self.store.handle(self.conn, Message(type_, self.req_id, tx, payload))
        replies = self._drain()
        assert len(replies) == 1, replies
        reply = replies[0]
        assert (reply.req_id, reply.tx_id) == (self.req_id, tx)
        assert reply.type in (type_, xs.XS_ERROR)
        return reply

    def call(self, type_: int, *args: str | bytes, tx: int = 0) -> bytes:
        """The reply's payload; an XS_ERROR reply raises XsError."""
        reply = self.request(type_, join_strings(*args), tx)
        if reply.type == xs.XS_ERROR:
            assert reply.payload.endswith(b"\0")
            raise XsError(reply.payload[:-1].decode())
        return reply.payload

    def error(self, type_: int, *args: str | bytes, tx: int = 0) -> str | None:
        """The error name the request gets, or None if it succeeds."""
        try:
            self.call(type_, *args, tx=tx)
        except XsError as exc:
            return exc.name
        return None

    def raw_error(self, type_: int, payload: bytes, tx: int = 0) -> str | None:
        reply = self.request(type_, payload, tx)
        return reply.payload[:-1].decode() if reply.type == xs.XS_ERROR else None

    # conveniences

    def read(self, path: str, tx: int = 0) -> bytes:
        return self.call(xs.XS_READ, path, tx=tx)

    def write(self, path: str, value: bytes | str = b"", tx: int = 0) -> None:
        value = value.encode() if isinstance(value, str) else value
        reply = self.request(xs.XS_WRITE, path.encode() + b"\0" + value, tx)
        if reply.type == xs.XS_ERROR:
            raise XsError(reply.payload[:-1].decode())

    def mkdir(self, path: str, tx: int = 0) -> None:
        self.call(xs.XS_MKDIR, path, tx=tx)

    def rm(self, path: str, tx: int = 0) -> None:
        self.call(xs.XS_RM, path, tx=tx)

    def directory(self, path: str, tx: int = 0) -> list[str]:
        return [c.decode() for c in self.call(xs.XS_DIRECTORY, path, tx=tx).split(b"\0")[:-1]]

    def get_perms(self, path: str) -> list[str]:
        return [p.decode() for p in self.call(xs.XS_GET_PERMS, path).split(b"\0")[:-1]]

    def set_perms(self, path: str, *perms: str, tx: int = 0) -> None:
        self.call(xs.XS_SET_PERMS, path, *perms, tx=tx)

    def watch(self, path: str, token: str) -> None:
        self.call(xs.XS_WATCH, path, token)

    def unwatch(self, path: str, token: str) -> None:
        self.call(xs.XS_UNWATCH, path, token)

    def start(self) -> int:
        return int(self.call(xs.XS_TRANSACTION_START, "")[:-1])

    def commit(self, tx: int) -> str | None:
        return self.error(xs.XS_TRANSACTION_END, "T", tx=tx)

    def abort(self, tx: int) -> None:
        self.call(xs.XS_TRANSACTION_END, "F", tx=tx)

    def take_events(self) -> list[tuple[str, str]]:
        self._drain()
        events, self.events = self.events, []
        return events


def guest_dir(dom0: Client, domid: int, *perms: str) -> str:
    """/local/domain/<domid>, owned by Dom0, readable by the domain (libxl)."""
    path = f"/local/domain/{domid}"
    dom0.mkdir(path)
    dom0.set_perms(path, *(perms or ("n0", f"r{domid}")))
    return path
