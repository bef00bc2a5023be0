"""XenStore client: what libxenstore (xs.c) and Linux's xenbus_xs.c do.

Requests are ``xsd_sockmsg`` frames written whole under a send lock. A
reader thread decodes the reply stream and hands each reply to the caller
waiting on its ``req_id``, so any number of threads may have requests in
flight and replies may come back in any order. ``XS_WATCH_EVENT`` messages
go to a queue drained by a separate dispatcher thread that runs the watch
callbacks: a callback may therefore issue requests of its own (the reader
is never blocked behind it), as Linux's xenwatch thread allows.

Errors come back as ``XS_ERROR`` with the error's name; they are raised as
:class:`XsError`. When the connection goes away (EOF, :meth:`close`, a
corrupt ring) every waiting caller gets :class:`XsClosed`.

Wire payloads (docs/misc/xenstore.txt; ``|`` is a NUL):
READ ``path|``, WRITE ``path|value`` (no NUL after the value), DIRECTORY
``path|`` -> ``child|*``, DIRECTORY_PART ``path|offset|`` ->
``gen|child|*`` ending with an empty name, TRANSACTION_END ``T|``/``F|``,
WATCH ``path|token|``, event ``path|token|``.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, Self, TypeVar

import structlog

from domains.kernel.threads import OwnedThread
from domains.kernel.xenbus.transport import Transport
from hypervisor.public import errno as xen_errno
from hypervisor.public.io.xs_wire import (
    XENSTORE_PAYLOAD_MAX,
    XS_CONTROL,
    XS_DIRECTORY,
    XS_DIRECTORY_PART,
    XS_ERROR,
    XS_GET_DOMAIN_PATH,
    XS_GET_PERMS,
    XS_INTRODUCE,
    XS_IS_DOMAIN_INTRODUCED,
    XS_MKDIR,
    XS_READ,
    XS_RELEASE,
    XS_RESET_WATCHES,
    XS_RESUME,
    XS_RM,
    XS_SET_PERMS,
    XS_SET_TARGET,
    XS_TRANSACTION_END,
    XS_TRANSACTION_START,
    XS_UNWATCH,
    XS_WATCH,
    XS_WATCH_EVENT,
    XS_WRITE,
    XSD_SOCKMSG,
    Decoder,
    xsd_sockmsg_type,
)

XBT_NULL = 0
DIRECTORY_PART_RETRIES = 5

T = TypeVar("T")
Watcher = Callable[[str, str], None]
Str = str | bytes


class XsError(Exception):
    """An XS_ERROR reply: ``name`` as sent ("ENOENT"), ``errno`` its Xen value.

    Unknown names map to EINVAL, as libxenstore's get_error() does."""

    def __init__(self, name: str, message: str = "") -> None:
        self.name = name
        value = getattr(xen_errno, name, None) if name.startswith("E") else None
        self.errno = value if isinstance(value, int) else xen_errno.EINVAL
        self.message = message
        super().__init__(f"{name}: {message}" if message else name)

    @classmethod
    def from_payload(cls, payload: bytes, message: str = "") -> XsError:
        return cls(payload.split(b"\0", 1)[0].decode("ascii", "replace") or "EINVAL", message)


class XsClosed(XsError):
    """The connection to xenstored is gone; the request's fate is unknown."""

    def __init__(self, message: str = "connection closed") -> None:
        super().__init__("EIO", message)


def _b(s: Str) -> bytes:
    return s if isinstance(s, bytes) else str(s).encode()


def _s(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def _strz(*parts: Str) -> bytes:
    """NUL-terminate every part: the shape of most request payloads."""
    return b"".join(_b(p) + b"\0" for p in parts)


def _strip1(body: bytes) -> bytes:
    return body[:-1] if body.endswith(b"\0") else body


def _split(body: bytes) -> list[bytes]:
    """A ``s|s|...|`` list; tolerates a missing final NUL."""
    if not body:
        return []
    items = body.split(b"\0")
    if items[-1] == b"":
        items.pop()
    return items


def _watch_matches(watched: str, path: str) -> bool:
    if watched == path or watched.startswith("@"):  # special watches match exactly
        return watched == path
    return path.startswith(watched.rstrip("/") + "/")


class _Waiter:
    __slots__ = ("error", "event", "reply")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reply: tuple[int, bytes] | None = None
        self.error: BaseException | None = None


class XenStoreClient:
    """A connection to xenstored over any :class:`Transport`."""

    def __init__(self, transport: Transport, *, name: str = "xenstore",
                 log: Any = None) -> None:
        self.transport = transport
        self.name = name
        # The kernel's structlog logger (JSON lines with --log-json), so that
        # what the client reports lands in the domain's log as every line does.
        self.log = (log if log is not None else structlog.get_logger()).bind(xenstore=name)
        self._lock = threading.Lock()           # _pending, _next_id, _closed, _watches
        self._send_lock = threading.Lock()      # one whole frame at a time
        self._pending: dict[int, _Waiter] = {}
        self._next_id = 1
        self._closed: BaseException | None = None
        self._watches: dict[tuple[str, str], Watcher] = {}
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._reader = OwnedThread(f"{name}-reader", self._read_loop)
        self._dispatcher = OwnedThread(f"{name}-watches", self._dispatch_loop)
        self._reader.start()
        self._dispatcher.start()

    # -- plumbing ---------------------------------------------------------------

    def _alloc_id(self) -> int:
        while True:
            rid = self._next_id
            self._next_id = (rid + 1) % (1 << 32) or 1
            if rid not in self._pending:
                return rid

    def request(self, mtype: int, payload: bytes, tx: int = XBT_NULL) -> bytes:
        """Send one request and wait for its reply's payload; raises XsError."""
        if len(payload) > XENSTORE_PAYLOAD_MAX:
            raise XsError("E2BIG", f"payload of {len(payload)} bytes")
        waiter = _Waiter()
        with self._lock:
            if self._closed is not None:
                raise XsClosed(str(self._closed))
            rid = self._alloc_id()
            self._pending[rid] = waiter
        try:
            with self._send_lock:
                self.transport.send(XSD_SOCKMSG.pack(mtype, rid, tx, len(payload)) + payload)
        except Exception as exc:
            with self._lock:
                self._pending.pop(rid, None)
            # a partly written frame leaves the stream unusable
            self._shutdown(exc)
            raise XsClosed(f"send failed: {exc}") from exc
        waiter.event.wait()
        if waiter.error is not None:
            raise waiter.error
        rtype, body = waiter.reply
        if rtype == XS_ERROR:
            raise XsError.from_payload(body, _type_name(mtype))
        if rtype != mtype:
            raise XsError("EIO", f"{_type_name(mtype)} answered by {_type_name(rtype)}")
        return body

    def _read_loop(self) -> None:
        decoder = Decoder()
        reason: BaseException = XsClosed("xenstored closed the connection")
        try:
            while True:
                data = self.transport.recv()
                if not data:
                    break
                for msg in decoder.feed(data):
                    mtype, rid, payload = msg.type, msg.req_id, msg.payload
                    if mtype == XS_WATCH_EVENT:
                        self._events.put(payload)
                        continue
                    with self._lock:
                        waiter = self._pending.pop(rid, None)
                    if waiter is None:
                        self.log.warning("reply to unknown req_id", req_id=rid,
                                         type=_type_name(mtype))
                        continue
                    waiter.reply = (mtype, payload)
                    waiter.event.set()
        except Exception as exc:  # corrupt ring, bad frame: the connection is dead
            self.log.error("connection failed", error=str(exc))
            reason = exc
        self._shutdown(reason)

    def _dispatch_loop(self) -> None:
        while True:
            payload = self._events.get()
            if payload is None:
                return
            parts = payload.split(b"\0")
            if len(parts) < 2:
                self.log.warning("malformed watch event", payload=repr(payload))
                continue
            path, token = _s(parts[0]), _s(parts[1])
            with self._lock:
                same_token = [(p, cb) for (p, t), cb in self._watches.items() if t == token]
            hits = [cb for p, cb in same_token if _watch_matches(p, path)] or \
                [cb for _p, cb in same_token]
            for cb in hits:
                try:
                    cb(path, token)
                except Exception:
                    self.log.exception("watch callback failed", path=path, token=token)

    def _shutdown(self, reason: BaseException) -> None:
        with self._lock:
            if self._closed is not None:
                return
            self._closed = reason
            pending, self._pending = self._pending, {}
        error = reason if isinstance(reason, XsClosed) else XsClosed(str(reason) or repr(reason))
        for waiter in pending.values():
            waiter.error = error
            waiter.event.set()
        self.transport.close()
        self._events.put(None)

    @property
    def closed(self) -> bool:
        return self._closed is not None

    def on_watch_thread(self) -> bool:
        """Whether the caller is a watch callback (xenwatch): it must not
        wait for anything a watch event has to bring."""
        return threading.current_thread() is self._dispatcher

    @property
    def threads(self) -> tuple[threading.Thread, ...]:
        return (self._reader, self._dispatcher)

    def close(self) -> None:
        """Stop both threads; callers still waiting get XsClosed."""
        self._shutdown(XsClosed("client closed"))
        me = threading.current_thread()
        for thread in (self._reader, self._dispatcher):
            if thread is not me:
                thread.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- nodes ------------------------------------------------------------------

    def read(self, path: Str, tx: int = XBT_NULL) -> bytes:
        return self.request(XS_READ, _strz(path), tx)

    def write(self, path: Str, value: Str, tx: int = XBT_NULL) -> None:
        self.request(XS_WRITE, _strz(path) + _b(value), tx)

    def mkdir(self, path: Str, tx: int = XBT_NULL) -> None:
        self.request(XS_MKDIR, _strz(path), tx)

    def rm(self, path: Str, tx: int = XBT_NULL) -> None:
        self.request(XS_RM, _strz(path), tx)

    def exists(self, path: Str, tx: int = XBT_NULL) -> bool:
        try:
            self.read(path, tx)
        except XsError as exc:
            if exc.name == "ENOENT":
                return False
            raise
        return True

    def directory(self, path: Str, tx: int = XBT_NULL) -> list[str]:
        """Children's names; falls back to DIRECTORY_PART on E2BIG like xs.c."""
        try:
            body = self.request(XS_DIRECTORY, _strz(path), tx)
        except XsError as exc:
            if exc.name != "E2BIG":
                raise
            return self._directory_part(path, tx)
        return [_s(n) for n in _split(body)]

    def _directory_part(self, path: Str, tx: int) -> list[str]:
        # The children list is fetched in byte-offset chunks; the generation
        # count must not change between chunks or the list is incoherent.
        for _attempt in range(DIRECTORY_PART_RETRIES):
            names = bytearray()
            gen = None
            while True:
                body = self.request(XS_DIRECTORY_PART, _strz(path, str(len(names))), tx)
                chunk_gen, _, chunk = body.partition(b"\0")
                if gen is None:
                    gen = chunk_gen
                elif chunk_gen != gen:
                    break  # node changed under us: start over
                names += chunk
                # an empty name after the last one ends the list (xs.c's test)
                if len(names) <= 1 or names.endswith(b"\0\0") or not chunk:
                    if len(names) <= 1:
                        return []
                    return [_s(n) for n in _split(bytes(names.rstrip(b"\0") + b"\0"))]
        raise XsError("EAGAIN", f"{_s(_b(path))} kept changing during DIRECTORY_PART")

    def get_perms(self, path: Str, tx: int = XBT_NULL) -> list[str]:
        """Permission strings, owner first: e.g. ["n0", "r5"]."""
        return [_s(p) for p in _split(self.request(XS_GET_PERMS, _strz(path), tx))]

    def set_perms(self, path: Str, perms: list[Str], tx: int = XBT_NULL) -> None:
        self.request(XS_SET_PERMS, _strz(path, *perms), tx)

    # -- watches ----------------------------------------------------------------

    def watch(self, path: Str, token: Str, callback: Watcher) -> None:
        """Register ``callback(path, token)``; it runs on the dispatcher thread.

        xenstored fires the watch once right away, as in Xen."""
        key = (_s(_b(path)), _s(_b(token)))
        with self._lock:
            if key in self._watches:
                raise XsError("EEXIST", f"watch {key} already registered")
            # registered before the request: the initial event may beat the reply
            self._watches[key] = callback
        try:
            self.request(XS_WATCH, _strz(path, token))
        except BaseException:
            with self._lock:
                self._watches.pop(key, None)
            raise

    def unwatch(self, path: Str, token: Str) -> None:
        key = (_s(_b(path)), _s(_b(token)))
        try:
            self.request(XS_UNWATCH, _strz(path, token))
        finally:
            with self._lock:
                self._watches.pop(key, None)

    def reset_watches(self) -> None:
        """Drop every watch this connection has (xenstored's and ours)."""
        self.request(XS_RESET_WATCHES, _strz(""))
        with self._lock:
            self._watches.clear()

    # -- transactions -----------------------------------------------------------

    def transaction_start(self) -> int:
        return int(_strip1(self.request(XS_TRANSACTION_START, _strz(""))))

    def transaction_end(self, tx: int, commit: bool = True) -> None:
        """Commit (or abort); a commit raises XsError EAGAIN on conflict."""
        self.request(XS_TRANSACTION_END, _strz("T" if commit else "F"), tx)

    def transaction(self, fn: Callable[[int], T], retries: int | None = 50) -> T:
        """Run ``fn(tx)`` in a transaction and commit it, retrying on EAGAIN.

        ``retries`` bounds the extra attempts (None: retry forever, as
        Linux's xenbus_switch_state does). If ``fn`` raises, the transaction
        is aborted and the exception propagates (EAGAIN from inside ``fn``
        is retried too)."""
        attempt = 0
        while True:
            tx = self.transaction_start()
            try:
                result = fn(tx)
            except BaseException as exc:
                try:
                    self.transaction_end(tx, commit=False)
                except XsError:
                    pass
                if (isinstance(exc, XsError) and exc.name == "EAGAIN"
                        and not isinstance(exc, XsClosed)
                        and (retries is None or attempt < retries)):
                    attempt += 1
                    continue
                raise
            try:
                self.transaction_end(tx, commit=True)
            except XsError as exc:
                if exc.name == "EAGAIN" and (retries is None or attempt < retries):
                    attempt += 1
                    continue
                raise
            return result

    # -- domains and control ----------------------------------------------------

    def get_domain_path(self, domid: int) -> str:
        return _s(_strip1(self.request(XS_GET_DOMAIN_PATH, _strz(str(domid)))))

    def introduce(self, domid: int, mfn: int, port: int) -> None:
        self.request(XS_INTRODUCE, _strz(str(domid), str(mfn), str(port)))

    def release(self, domid: int) -> None:
        self.request(XS_RELEASE, _strz(str(domid)))

    def is_domain_introduced(self, domid: int) -> bool:
        return _strip1(self.request(XS_IS_DOMAIN_INTRODUCED, _strz(str(domid)))) == b"T"

    def resume(self, domid: int) -> None:
        self.request(XS_RESUME, _strz(str(domid)))

    def set_target(self, domid: int, target: int) -> None:
        self.request(XS_SET_TARGET, _strz(str(domid), str(target)))

    def control(self, *args: Str) -> bytes:
        """XS_CONTROL: each argument NUL-terminated; the reply minus its final NUL."""
        return _strip1(self.request(XS_CONTROL, _strz(*args)))


def _type_name(mtype: int) -> str:
    try:
        return xsd_sockmsg_type(mtype).name
    except ValueError:
        return f"XS_#{mtype}"
