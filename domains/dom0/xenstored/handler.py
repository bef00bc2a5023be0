"""xenstored's message handler: requests in, replies and watch events out.

The I/O layer creates a :class:`Connection` per client (:meth:`XenStore.
connect`), feeds it what the client sent (:meth:`XenStore.handle_bytes`, or
already framed messages to :meth:`XenStore.handle`) and sends whatever
appears in the connections' `outbox`es. Each request gets exactly one
reply, in order, echoing its req_id and tx_id: the request's type with the
result, or XS_ERROR with an error name (xenstored_core.c's
process_message()):

- a type xenstored does not serve (unknown, WATCH_EVENT, ERROR) -> ENOSYS;
- a privileged-only type (CONTROL, INTRODUCE, RELEASE, RESUME, SET_TARGET,
  IS_DOMAIN_INTRODUCED) from an unprivileged domain -> EACCES;
- a tx_id naming no transaction of the connection -> ENOENT (WATCH and
  UNWATCH ignore tx_id);
- a payload without the arguments the type needs -> EINVAL;
- a reply longer than XENSTORE_PAYLOAD_MAX -> E2BIG.

Watch events a request causes are queued before its reply (WATCH's own
first event after it), as in Xen. Nothing here blocks, sleeps or raises:
a framing violation closes the connection (`closed`), an internal error is
logged and answered with EIO.

Flow control is Xen 4.17's: :meth:`XenStore.receive` only decodes what a
client sent into its `pending` requests; :meth:`XenStore.process` handles
them while the connection is within its quotas (:meth:`XenStore.may_read`:
fewer than `outstanding` replies not yet sent, its domain's memory below
`memory`), and the I/O layer stops reading a connection that has requests
pending, so an unprivileged domain that does not read its replies is
simply no longer served, and costs nothing more.

Domains, as xenstored_domain.c knows them: entries of permissions name
domains, which must exist when the entries are set (SET_PERMS: ENOENT for
an owner that does not exist, an absent domain's other entries are marked
ignored), and :meth:`XenStore.check_domains` (VIRQ_DOM_EXC) forgets those
that are gone, marking their entries ignored everywhere so that a later
domain with the same id inherits nothing (XSA-322); an introduced domain
that shuts down or crashes fires @releaseDomain once, until RESUME.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from domains.dom0.xenstored import control, quota
from domains.dom0.xenstored.errors import XsError
from domains.dom0.xenstored.nodes import Caller, NodeOps
from domains.dom0.xenstored.outbox import Outbox
from domains.dom0.xenstored.permissions import (
    XS_PERM_IGNORE,
    XS_PERM_OWNER,
    XS_PERM_READ,
    XS_PERM_WRITE,
    Perm,
    Perms,
    forget_domain,
    owner_only,
    parse_perms,
    perms_to_wire,
)
from domains.dom0.xenstored.quota import Quotas
from domains.dom0.xenstored.store import (
    INTRODUCE_DOMAIN,
    RELEASE_DOMAIN,
    SPECIAL_PATHS,
    GlobalView,
    Node,
    Store,
    canonicalize,
    domain_path,
    get_parent,
)
from domains.dom0.xenstored.transactions import Transaction, TxView, commit
from domains.dom0.xenstored.watches import Watch, Watches, check_watch_path, event_payload
from domains.dom0.xenstored.wire import (
    Decoder,
    Message,
    WireError,
    atoi,
    atou,
    count_strings,
    decode,
    error_reply,
    get_strings,
    onearg,
    reply_to,
)
from hypervisor.public.io import xs_wire as xs
from hypervisor.public.pyxen.text import clean_line
from hypervisor.public.xen import DOMID_SELF

OK = b"OK\0"
#: The errors Xen's quotas answer with (ENOSPC: nodes, transactions ...;
#: E2BIG: watches; ENOMEM: memory).
QUOTA_ERRORS = frozenset({"ENOSPC", "E2BIG", "ENOMEM"})
#: Seconds between two reports of one domain's quota refusals to Dom0.
QUOTA_TELL_EVERY = 10.0

_ids = itertools.count(1)


class Connection:
    """One client connection (a unix socket client, or a domain's ring)."""

    def __init__(self, domid: int) -> None:
        self.id = next(_ids)
        self.domid = domid                      # who it acts as
        self.outbox = Outbox()                  # replies and events, in order
        self.pending: deque[Message] = deque()  # received, not handled yet
        self.closed = False                     # the server must drop it
        self.decoder = Decoder()
        self.watches = Watches()
        self.transactions: dict[int, Transaction] = {}
        self.next_transaction_id = 0
        self.attached = False

    @property
    def privileged(self) -> bool:
        return self.domid == 0

    @property
    def implicit_path(self) -> str:
        """What relative paths are relative to."""
        return domain_path(self.domid)

    @property
    def outstanding(self) -> int:
        """Replies not sent yet (queued, or being sent)."""
        return self.outbox.replies

    @property
    def memory(self) -> int:
        """What this connection makes xenstored hold, besides nodes."""
        return (self.outbox.bytes + self.watches.bytes
                + sum(tx.memory for tx in self.transactions.values()))

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""
        return f"<Connection {self.id} d{self.domid}{state}>"


@dataclass
class _Request:
    conn: Connection
    msg: Message
    tx: Transaction | None
    after: list[Callable[[], None]] = field(default_factory=list)


@dataclass(frozen=True)
class _Op:
    name: str
    func: Callable[[XenStore, _Request], bytes] | None
    priv: bool = False    # XS_FLAG_PRIV: privileged domain only
    notid: bool = False   # XS_FLAG_NOTID: tx_id is ignored
    grows: bool = False   # may make the caller's nodes bigger (memory quota)


class XenStore:
    """The xenstore database and its clients' state."""

    def __init__(self, quotas: Quotas | None = None,
                 on_introduce: Callable[[int, int, int], None] | None = None,
                 on_release: Callable[[int], None] | None = None,
                 log: Callable[[str], None] | None = None,
                 domain_exists: Callable[[int], bool] | None = None) -> None:
        self.quotas = quotas if quotas is not None else Quotas()
        # Per-domain quotas (CONTROL "quota set <domid> ..."), as oxenstored's
        # overrides: a driver domain's backend nodes are its own, so the
        # toolstack sizes its quotas for the devices it serves.
        self.domain_quotas: dict[int, Quotas] = {}
        # The last request of each domain a quota refused: a device whose
        # backend cannot write its nodes must not fail silently (CONTROL
        # "quota <domid>" and the toolstack's device views say why).
        self.quota_errors: dict[int, str] = {}
        self.on_quota_error: Callable[[int, str], None] | None = None
        self._quota_told: dict[int, float] = {}  # when each domain's was last told
        self.store = Store()
        self.connections: list[Connection] = []
        self._by_domain: dict[int, list[Connection]] = {}
        self.introduced: set[int] = {0}       # Dom0 is from the start
        # Domains permissions may name (xenstored_domain.c's struct domain):
        # introduced ones, and those a SET_PERMS named while they existed.
        self.known: set[int] = {0}
        self.shut_down: set[int] = set()       # @releaseDomain fired, until RESUME
        # Does the hypervisor know this domain (and is it not dying)? None:
        # every domain exists (the pure core without a hypervisor).
        self._domain_exists = domain_exists
        self.targets: dict[int, int] = {}      # SET_TARGET: domid -> target
        self.special_perms: dict[str, Perms] = {p: owner_only(0) for p in SPECIAL_PATHS}
        self.logging = True                    # CONTROL log on|off
        self._on_introduce = on_introduce
        self._on_release = on_release
        self._log_fn = log

    # -- the public API -------------------------------------------------------------

    def connect(self, domid: int) -> Connection:
        conn = Connection(domid)
        conn.attached = True
        self.connections.append(conn)
        self._by_domain.setdefault(domid, []).append(conn)
        return conn

    def disconnect(self, conn: Connection) -> None:
        """The client is gone: drop its watches and transactions."""
        self._drop_state(conn)
        conn.closed = True
        conn.attached = False
        if conn in self.connections:
            self.connections.remove(conn)
            same = self._by_domain.get(conn.domid, [])
            if conn in same:
                same.remove(conn)
            if not same:
                self._by_domain.pop(conn.domid, None)

    def handle(self, conn: Connection, msg: Message) -> None:
        """Process one request; the reply goes to `conn.outbox`."""
        if conn.closed or not conn.attached:
            return
        replied = False
        try:
            req = self._dispatch(conn, msg)
            replied = True
            for after in req.after:
                after()
        except Exception as exc:  # a bug: report it, never take the daemon down
            self.log(f"internal error handling {msg.type_name} from {conn}: {exc!r}")
            if not replied:
                conn.outbox.append(error_reply(msg, "EIO"))

    def handle_bytes(self, conn: Connection, data: bytes) -> None:
        """Feed what the client sent; handle every complete request, quotas
        or not (see :meth:`receive` and :meth:`process` for those)."""
        self.receive(conn, data)
        while conn.pending and not conn.closed and conn.attached:
            self.handle(conn, conn.pending.popleft())

    def receive(self, conn: Connection, data: bytes) -> None:
        """Decode what the client sent into its pending requests. A framing
        violation handles what came before it and closes the connection."""
        if conn.closed or not conn.attached:
            return
        try:
            conn.pending.extend(conn.decoder.feed(data))
        except WireError as exc:
            conn.pending.extend(exc.messages)
            while conn.pending and not conn.closed:
                self.handle(conn, conn.pending.popleft())
            self.log(f"protocol violation on {conn}: {exc}; closing it")
            self._drop_state(conn)
            conn.closed = True

    def process(self, conn: Connection) -> None:
        """Handle pending requests while the connection is within quota."""
        while conn.pending and not conn.closed and conn.attached and self.may_read(conn):
            self.handle(conn, conn.pending.popleft())

    def wants_input(self, conn: Connection) -> bool:
        """Should the I/O layer read more from this client now? Not while
        requests wait for it to get under quota (Xen's domain_can_read())."""
        return not conn.closed and not conn.pending and self.may_read(conn)

    def domain_released(self, domid: int) -> None:
        """A domain died: drop its connections' state, remove the nodes it
        owns and fire @releaseDomain (if it had been introduced)."""
        if domid == 0:
            self.log("ignoring the release of domain 0")
            return
        try:
            self._destroy_domain(domid)
        except Exception as exc:
            self.log(f"internal error releasing domain {domid}: {exc!r}")

    def is_introduced(self, domid: int) -> bool:
        return domid in self.introduced

    def quotas_of(self, domid: int) -> Quotas:
        """The quotas that apply to a domain: its own, else the global ones."""
        return self.domain_quotas.get(domid, self.quotas)

    def set_domain_quota(self, domid: int, attr: str, value: int) -> None:
        own = self.domain_quotas.get(domid)
        if own is None:
            own = self.domain_quotas[domid] = self.quotas.copy()
        setattr(own, attr, value)

    def may_read(self, conn: Connection) -> bool:
        """May `conn`'s requests be handled now? Xen stops reading a domain
        with `outstanding` replies not yet sent, or whose memory reached
        the `memory` quota; the privileged domain is exempt."""
        if conn.privileged:
            return True
        q = self.quotas_of(conn.domid)
        return (sum(c.outstanding for c in self._domain_connections(conn.domid))
                < q.outstanding
                and self.domain_memory(conn.domid) < q.memory)

    def domain_memory(self, domid: int) -> int:
        """What a domain makes xenstored hold: the nodes it owns, and its
        connections' queued output, watches and transactions."""
        return self.store.memory[domid] + sum(
            c.memory for c in self._domain_connections(domid))

    # -- domains (xenstored_domain.c) -------------------------------------------------

    def domain_exists(self, domid: int) -> bool:
        """domain_alloc_permrefs(): a domain may be named in permissions if
        xenstored knows it, or the hypervisor has it (then it is known)."""
        if domid in self.known:
            return True
        if self._domain_exists is not None:
            try:
                if not self._domain_exists(domid):
                    return False
            except Exception as exc:
                self.log(f"cannot ask about domain {domid}: {exc!r}")
                return False
        self.known.add(domid)
        return True

    def check_domains(self, status: dict[int, tuple[bool, bool]]) -> list[int]:
        """VIRQ_DOM_EXC (check_domains()): `status` is every domain the
        hypervisor has, domid -> (shut down or crashed, dying).

        A known domain that is gone is forgotten: its entries in every
        node's permissions are marked ignored. An introduced domain that
        shut down or crashed fires @releaseDomain once (RESUME re-arms
        it). Returns the introduced domains that are gone or dying: the
        I/O layer releases their rings, then calls domain_released()."""
        gone_introduced = []
        fire = False
        for domid in sorted(self.known - {0}):
            state = status.get(domid)
            alive = state is not None and not state[1]
            if domid in self.introduced:
                if not alive:
                    gone_introduced.append(domid)
                elif state[0] and domid not in self.shut_down:
                    self.shut_down.add(domid)
                    fire = True
            elif not alive:
                self._forget_domain(domid)
        if fire:
            self.fire_watches(RELEASE_DOMAIN, None, True, None)
        return gone_introduced

    def log(self, message: str) -> None:
        if self._log_fn is not None and self.logging:
            self._log_fn(message)

    # -- dispatch -------------------------------------------------------------------

    def _dispatch(self, conn: Connection, msg: Message) -> _Request:
        req = _Request(conn, msg, None)
        op = OPS.get(msg.type)
        try:
            if op is None or op.func is None:
                raise XsError("ENOSYS", f"unknown operation {msg.type}")
            if op.priv and not conn.privileged:
                raise XsError("EACCES", f"{op.name} is for the privileged domain")
            if not op.notid and msg.tx_id != 0:
                req.tx = conn.transactions.get(msg.tx_id)
                if req.tx is None:
                    raise XsError("ENOENT", f"no transaction {msg.tx_id}")
            if op.grows and not conn.privileged and (
                    self.domain_memory(conn.domid) + len(msg.payload)
                    >= self.quotas_of(conn.domid).memory):
                # write_node()'s domain_memory_add(): over the hard quota.
                raise XsError("ENOMEM", "memory quota reached")
            payload = op.func(self, req)
            if quota.reply_too_big(self.quotas, len(payload)):
                raise XsError("E2BIG", "reply too long")
        except XsError as exc:
            req.after.clear()
            conn.outbox.append(error_reply(msg, exc.name))
            if exc.name in QUOTA_ERRORS and not conn.privileged:
                self._quota_error(conn.domid, op, msg, exc)
        else:
            conn.outbox.append(reply_to(msg, payload))
        return req

    def _quota_error(self, domid: int, op: _Op | None, msg: Message, exc: XsError) -> None:
        # The path is the guest's: cleaned (it reaches the admin's terminal
        # through list -v and block-list), and told at most once a while
        # (a guest can hit quotas in a loop, with a new path each time).
        first = get_strings(msg.payload)[:1]
        path = decode(first[0])[:120] if first else ""
        what = op.name if op is not None else str(msg.type)
        text = clean_line(f"{exc.name} ({exc.detail or 'quota'}) on {what} {path}".strip())
        self.quota_errors[domid] = text
        now = time.monotonic()
        if (self.on_quota_error is not None
                and now - self._quota_told.get(domid, -QUOTA_TELL_EVERY) >= QUOTA_TELL_EVERY):
            self._quota_told[domid] = now
            self.on_quota_error(domid, text)

    def caller(self, conn: Connection) -> Caller:
        return Caller(conn.domid, conn.privileged, self.targets.get(conn.domid))

    def _nodes(self, req: _Request) -> NodeOps:
        conn = req.conn
        if req.tx is not None:
            view = TxView(self.store, req.tx, self.quotas_of(conn.domid), not conn.privileged)
        else:
            view = GlobalView(self.store, self.fire_watches)
        return NodeOps(view, self.caller(conn), self.quotas_of(conn.domid))

    def _privileged_nodes(self) -> NodeOps:
        return NodeOps(GlobalView(self.store, self.fire_watches), Caller(0, True),
                       self.quotas)

    # -- watches ----------------------------------------------------------------------

    def fire_watches(self, name: str, node: Node | None, exact: bool,
                     old_perms: Perms | None) -> None:
        """`name` changed: queue an event for every watch it matches whose
        connection may see the change (fire_watches())."""
        for conn in list(self.connections):
            if conn.closed:
                continue
            matching = conn.watches.matching(name, exact)
            if not matching:
                continue
            if name.startswith("@"):
                if not self._special_access(name, conn) & XS_PERM_READ:
                    continue
            elif not self._watch_permitted(conn, name, node, old_perms):
                continue
            for watch in matching:
                self._send_event(conn, watch.event_path(name), watch.token)

    def _watch_permitted(self, conn: Connection, name: str, node: Node | None,
                         old_perms: Perms | None) -> bool:
        caller = self.caller(conn)
        if old_perms is not None and caller.access(old_perms) & XS_PERM_READ:
            return True
        if node is None:
            node = self.store.get(name)
            if node is None:
                return False
        if caller.access(node.perms) & XS_PERM_READ:
            return True
        parent = self.store.get(get_parent(node.name))
        return parent is not None and bool(caller.access(parent.perms) & XS_PERM_READ)

    def _special_access(self, name: str, conn: Connection) -> int:
        perms = self.special_perms.get(name)
        return 0 if perms is None else self.caller(conn).access(perms)

    def _send_event(self, conn: Connection, path: str, token: bytes) -> None:
        payload = event_payload(path, token)
        if quota.reply_too_big(self.quotas, len(payload)):
            return  # Xen does not send over-long events
        if not path.startswith("@") and conn.outbox.has_event(payload):
            return  # an identical event is still pending
        if not conn.privileged and (self.domain_memory(conn.domid) + len(payload)
                                    >= self.quotas_of(conn.domid).memory):
            return  # over its memory quota: Xen drops the event
        conn.outbox.append(Message(xs.XS_WATCH_EVENT, 0, 0, payload))

    def _drop_state(self, conn: Connection) -> None:
        conn.watches.clear()
        conn.transactions.clear()

    # -- domains ----------------------------------------------------------------------

    def _domain_connections(self, domid: int) -> list[Connection]:
        return list(self._by_domain.get(domid, ()))

    def _forget_domain(self, domid: int) -> None:
        """The domain is gone: no entry naming it may ever grant anything,
        to it or to a later domain with its id (XSA-322). Open
        transactions' copies included, or a commit would bring them back."""
        self.known.discard(domid)
        self.shut_down.discard(domid)
        for node in list(self.store.nodes.values()):
            perms = forget_domain(node.perms, domid)
            if perms is not node.perms:
                self.store.replace_perms(node.name, perms)
        for conn in self.connections:
            for tx in conn.transactions.values():
                for name, node in tx.overlay.items():
                    if node is not None:
                        perms = forget_domain(node.perms, domid)
                        if perms is not node.perms:
                            tx.overlay[name] = replace(node, perms=perms)
        for name, perms in self.special_perms.items():
            self.special_perms[name] = forget_domain(perms, domid)

    def _destroy_domain(self, domid: int) -> None:
        was_introduced = domid in self.introduced
        self.introduced.discard(domid)
        self.domain_quotas.pop(domid, None)  # a later domain gets the defaults
        self.quota_errors.pop(domid, None)
        self._quota_told.pop(domid, None)
        self.targets.pop(domid, None)
        for dm, target in list(self.targets.items()):
            if target == domid:
                del self.targets[dm]
        for conn in self._domain_connections(domid):
            self._drop_state(conn)
            conn.closed = True
        self._privileged_nodes().remove_owned(domid)
        self._forget_domain(domid)
        if was_introduced:
            self.fire_watches(RELEASE_DOMAIN, None, True, None)

    def domain_quota(self, domid: int) -> dict[str, int] | None:
        """What a domain uses, for CONTROL "quota <domid>"; None if unknown."""
        conns = self._domain_connections(domid)
        if not (domid in self.introduced or conns or self.store.owned[domid]):
            return None
        memory = self.domain_memory(domid)
        return {  # what it uses; quota_limits() what it may
            "nodes": self.store.owned[domid],
            "watches": sum(len(c.watches) for c in conns),
            "transactions": sum(len(c.transactions) for c in conns),
            "outstanding": sum(c.outstanding for c in conns),
            "memory": memory,
        }

    # -- the requests -----------------------------------------------------------------

    def _arg(self, req: _Request) -> str | None:
        raw = onearg(req.msg.payload)
        return None if raw is None else decode(raw)

    def _do_directory(self, req: _Request) -> bytes:
        return self._nodes(req).directory(self._arg(req))

    def _do_directory_part(self, req: _Request) -> bytes:
        payload = req.msg.payload
        if count_strings(payload) != 2:
            raise XsError("EINVAL", "DIRECTORY_PART needs a path and an offset")
        path, offset = get_strings(payload)
        return self._nodes(req).directory_part(decode(path), offset)

    def _do_read(self, req: _Request) -> bytes:
        return self._nodes(req).read(self._arg(req))

    def _do_write(self, req: _Request) -> bytes:
        payload = req.msg.payload
        if count_strings(payload) < 1:
            raise XsError("EINVAL", "WRITE needs a path")
        path = payload[:payload.index(b"\0")]
        self._nodes(req).write(decode(path), payload[len(path) + 1:])
        return OK

    def _do_mkdir(self, req: _Request) -> bytes:
        self._nodes(req).mkdir(self._arg(req))
        return OK

    def _do_rm(self, req: _Request) -> bytes:
        self._nodes(req).rm(self._arg(req))
        return OK

    def _do_get_perms(self, req: _Request) -> bytes:
        path = self._arg(req)
        if path is not None and path.startswith("@"):
            perms = self.special_perms.get(path)
            if perms is None:
                raise XsError("EINVAL", f"no special node {path}")
            if not self.caller(req.conn).access(perms) & XS_PERM_READ:
                raise XsError("EACCES", path)
        else:
            perms = self._nodes(req).get_perms(path)
        return perms_to_wire(perms)

    def _do_set_perms(self, req: _Request) -> bytes:
        payload = req.msg.payload
        num = count_strings(payload)
        if num < 2:
            raise XsError("EINVAL", "SET_PERMS needs a path and permissions")
        num -= 1
        if not req.conn.privileged and quota.permissions_exceeded(
                self.quotas_of(req.conn.domid), num):
            raise XsError("ENOSPC", "too many permissions")
        strings = get_strings(payload)
        path = decode(strings[0])
        perms = self._alloc_permrefs(parse_perms(strings[1:1 + num]))
        if perms[0].ignored:
            raise XsError("ENOENT", f"no domain {perms[0].id} to own {path}")
        if path.startswith("@"):
            old = self.special_perms.get(path)
            if old is None:
                raise XsError("EINVAL", f"no special node {path}")
            need = XS_PERM_WRITE | XS_PERM_OWNER
            if self.caller(req.conn).access(old) & need != need:
                raise XsError("EACCES", path)
            self.special_perms[path] = perms
            return OK
        self._nodes(req).set_perms(path, perms)
        return OK

    def _alloc_permrefs(self, perms: Perms) -> Perms:
        """domain_alloc_permrefs(): entries naming a domain that does not
        exist are marked ignored."""
        return tuple(p if self.domain_exists(p.id) else Perm(p.id, p.perms | XS_PERM_IGNORE)
                     for p in perms)

    def _do_watch(self, req: _Request) -> bytes:
        conn = req.conn
        strings = get_strings(req.msg.payload)
        if len(strings) != 2:
            raise XsError("EINVAL", "WATCH needs a path and a token")
        node, relative = check_watch_path(decode(strings[0]), conn.implicit_path,
                                          self.quotas)
        token = strings[1]
        if conn.watches.find(node, token) is not None:
            raise XsError("EEXIST", "duplicate watch")
        if not conn.privileged and quota.watches_exceeded(
                self.quotas_of(conn.domid),
                sum(len(c.watches) for c in self._domain_connections(conn.domid))):
            raise XsError("E2BIG", "too many watches")
        watch = Watch(node, token, conn.implicit_path if relative else None)
        conn.watches.add(watch)
        # Fired once up front, after the reply.
        req.after.append(lambda: self._send_event(conn, watch.event_path(node), token))
        return OK

    def _do_unwatch(self, req: _Request) -> bytes:
        conn = req.conn
        strings = get_strings(req.msg.payload)
        if len(strings) != 2:
            raise XsError("EINVAL", "UNWATCH needs a path and a token")
        node = canonicalize(decode(strings[0]), conn.implicit_path)
        conn.watches.remove(node, strings[1])
        return OK

    def _do_transaction_start(self, req: _Request) -> bytes:
        conn = req.conn
        if req.tx is not None:
            raise XsError("EBUSY", "no nested transactions")
        if not conn.privileged and quota.transactions_exceeded(
                self.quotas_of(conn.domid), len(conn.transactions)):
            raise XsError("ENOSPC", "too many transactions")
        while True:
            tx_id = conn.next_transaction_id
            conn.next_transaction_id = (tx_id + 1) & 0xFFFFFFFF
            if tx_id != 0 and tx_id not in conn.transactions:
                break
        conn.transactions[tx_id] = Transaction(tx_id)
        return f"{tx_id}\0".encode()

    def _do_transaction_end(self, req: _Request) -> bytes:
        conn = req.conn
        arg = onearg(req.msg.payload)
        if arg not in (b"T", b"F"):
            raise XsError("EINVAL", 'TRANSACTION_END needs "T" or "F"')
        tx = req.tx
        if tx is None:
            raise XsError("ENOENT", "not in a transaction")
        del conn.transactions[tx.id]
        if arg == b"T":
            commit(self.store, tx, self.quotas_of, not conn.privileged, self.fire_watches)
        return OK

    def _do_introduce(self, req: _Request) -> bytes:
        strings = get_strings(req.msg.payload)
        if len(strings) < 3:
            raise XsError("EINVAL", "INTRODUCE needs domid, mfn and port")
        domid, mfn, port = atou(strings[0]), atoi(strings[1]), atou(strings[2])
        if port == 0:
            raise XsError("EINVAL", "bad event channel")
        again = domid in self.introduced
        if self._on_introduce is not None:
            try:
                self._on_introduce(domid, mfn, port)
            except Exception as exc:
                self.log(f"introducing domain {domid} failed: {exc!r}")
                raise XsError("EINVAL", str(exc)) from exc
        self.introduced.add(domid)
        self.known.add(domid)
        if domid != 0:
            for conn in self._domain_connections(domid):  # domain_conn_reset()
                self._drop_state(conn)
                if conn is not req.conn:
                    conn.outbox.clear()
        if not again and domid != 0:
            self.fire_watches(INTRODUCE_DOMAIN, None, True, None)
        return OK

    def _onearg_domain(self, req: _Request) -> int:
        arg = onearg(req.msg.payload)
        if arg is None:
            raise XsError("EINVAL", "needs a domid")
        domid = atou(arg)
        if domid == 0:
            raise XsError("EINVAL", "not for domain 0")
        if domid not in self.introduced:
            raise XsError("ENOENT", f"domain {domid} is not introduced")
        return domid

    def _do_release(self, req: _Request) -> bytes:
        domid = self._onearg_domain(req)
        if self._on_release is not None:
            try:
                self._on_release(domid)
            except Exception as exc:
                self.log(f"releasing domain {domid}: {exc!r}")
        self._destroy_domain(domid)
        return OK

    def _do_resume(self, req: _Request) -> bytes:
        # A domain that resumed may shut down again: that fires again.
        self.shut_down.discard(self._onearg_domain(req))
        return OK

    def _do_get_domain_path(self, req: _Request) -> bytes:
        arg = onearg(req.msg.payload)
        if arg is None:
            raise XsError("EINVAL", "needs a domid")
        return domain_path(atou(arg)).encode() + b"\0"

    def _do_is_domain_introduced(self, req: _Request) -> bytes:
        arg = onearg(req.msg.payload)
        if arg is None:
            raise XsError("EINVAL", "needs a domid")
        domid = atou(arg)
        return b"T\0" if domid == DOMID_SELF or domid in self.introduced else b"F\0"

    def _do_set_target(self, req: _Request) -> bytes:
        strings = get_strings(req.msg.payload)
        if len(strings) < 2:
            raise XsError("EINVAL", "SET_TARGET needs two domids")
        domid, target = atou(strings[0]), atou(strings[1])
        for d in (domid, target):
            if d not in self.introduced:
                raise XsError("ENOENT", f"domain {d} is not introduced")
        self.targets[domid] = target
        return OK

    def _do_reset_watches(self, req: _Request) -> bytes:
        self._drop_state(req.conn)
        return OK

    def _do_control(self, req: _Request) -> bytes:
        return control.do_control(self, req.conn, req.msg.payload)


OPS: dict[int, _Op] = {
    xs.XS_CONTROL: _Op("CONTROL", XenStore._do_control, priv=True),
    xs.XS_DIRECTORY: _Op("DIRECTORY", XenStore._do_directory),
    xs.XS_READ: _Op("READ", XenStore._do_read),
    xs.XS_GET_PERMS: _Op("GET_PERMS", XenStore._do_get_perms),
    xs.XS_WATCH: _Op("WATCH", XenStore._do_watch, notid=True, grows=True),
    xs.XS_UNWATCH: _Op("UNWATCH", XenStore._do_unwatch, notid=True),
    xs.XS_TRANSACTION_START: _Op("TRANSACTION_START", XenStore._do_transaction_start),
    xs.XS_TRANSACTION_END: _Op("TRANSACTION_END", XenStore._do_transaction_end),
    xs.XS_INTRODUCE: _Op("INTRODUCE", XenStore._do_introduce, priv=True),
    xs.XS_RELEASE: _Op("RELEASE", XenStore._do_release, priv=True),
    xs.XS_GET_DOMAIN_PATH: _Op("GET_DOMAIN_PATH", XenStore._do_get_domain_path),
    xs.XS_WRITE: _Op("WRITE", XenStore._do_write, grows=True),
    xs.XS_MKDIR: _Op("MKDIR", XenStore._do_mkdir, grows=True),
    xs.XS_RM: _Op("RM", XenStore._do_rm),
    xs.XS_SET_PERMS: _Op("SET_PERMS", XenStore._do_set_perms, grows=True),
    xs.XS_WATCH_EVENT: _Op("WATCH_EVENT", None),
    xs.XS_ERROR: _Op("ERROR", None),
    xs.XS_IS_DOMAIN_INTRODUCED: _Op("IS_DOMAIN_INTRODUCED",
                                    XenStore._do_is_domain_introduced, priv=True),
    xs.XS_RESUME: _Op("RESUME", XenStore._do_resume, priv=True),
    xs.XS_SET_TARGET: _Op("SET_TARGET", XenStore._do_set_target, priv=True),
    xs.XS_RESET_WATCHES: _Op("RESET_WATCHES", XenStore._do_reset_watches),
    xs.XS_DIRECTORY_PART: _Op("DIRECTORY_PART", XenStore._do_directory_part),
}
