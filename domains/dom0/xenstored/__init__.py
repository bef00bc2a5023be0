"""xenstored's pure core: Xen 4.17's xenstore daemon without any I/O.

Theory of operation
-------------------
xenstored keeps a tree of nodes (paths like "/local/domain/1/name", each
with a value, permissions and children) and serves requests from clients:
Dom0's tools over a unix socket, every other domain over a shared-memory
ring. This package is the part that does not care which: bytes (or framed
:class:`~.wire.Message` s) go in, messages come out. No sockets, threads,
processes, clocks or files; the I/O layer (``daemon.py``) owns those.

    xs = XenStore(on_introduce=..., on_release=..., log=...)
    conn = xs.connect(domid)          # per client; domid 0 is privileged
    xs.handle_bytes(conn, data)       # or xs.handle(conn, message)
    while conn.outbox: send(encode(conn.outbox.popleft()))
    if conn.closed: drop the client   # it violated the framing
    xs.domain_released(domid)         # a domain died

Every request gets exactly one reply, in order (the same type, req_id and
tx_id, or XS_ERROR with an errno name such as "EACCES\\0"); watch events go
to the outboxes of the connections watching, whoever caused them.

The modules, each after the xenstored C file whose semantics it follows
(docs/misc/xenstore.txt is the protocol):

- :mod:`.wire`: framing (xsd_sockmsg), the Decoder, payload parsing.
- :mod:`.errors`: XsError, carrying an xsd_errors name.
- :mod:`.store`: nodes, path rules, the store and its global view.
- :mod:`.permissions`: "n0"/"r1"/"w2"/"b3" entries, who may do what.
- :mod:`.nodes`: READ/WRITE/MKDIR/RM/DIRECTORY/permissions operations
  with xenstored_core.c's error rules.
- :mod:`.transactions`: private views, generation-checked commits.
- :mod:`.watches`: watch matching and event paths.
- :mod:`.quota`: Xen's quotas, their defaults, comparisons and errors.
- :mod:`.control`: XS_CONTROL commands.
- :mod:`.handler`: Connection and XenStore, the dispatcher, the domain
  requests (INTRODUCE, RELEASE, ...).
"""

from domains.dom0.xenstored.errors import XsError
from domains.dom0.xenstored.handler import Connection, XenStore
from domains.dom0.xenstored.quota import Quotas
from domains.dom0.xenstored.wire import Decoder, Message, WireError, encode

__all__ = ["Connection", "Decoder", "Message", "Quotas", "WireError", "XenStore",
           "XsError", "encode"]
