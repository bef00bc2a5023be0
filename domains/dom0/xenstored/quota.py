"""Xen's xenstored quotas (Xen 4.17's defaults, names and errors).

Each quota protects xenstored from one unprivileged domain; the privileged
domain (Dom0) is exempt from all of them except the path length. The
comparisons are Xen 4.17's own, off-by-ones included:

========================  =======  =================================  =======
quota (CONTROL name)      default  what fails (xenstored_*.c)         error
========================  =======  =================================  =======
nodes                     1000     creating a node when the creator    ENOSPC
                                   already owns >= nodes; committing
                                   a transaction that created nodes
                                   and leaves a domain owning >= nodes
watches                   128      WATCH when the domain already has   E2BIG
                                   > watches (so watches+1 fit)
transactions              10       TRANSACTION_START when the          ENOSPC
                                   connection has > transactions open
                                   (so transactions+1 fit)
transaction-nodes         1024     a transaction touching one more     ENOSPC
                                   node when it touched >= this many
                                   (the transaction is failed too)
node-size                 2048     writing a node whose record is      ENOSPC
                                   >= node-size bytes (see
                                   :func:`node_size`)
permissions               5        SET_PERMS with > permissions        ENOSPC
                                   entries
path-max                  2048     a path whose part after             EINVAL
                                   "/local/domain/<id>/" (the whole
                                   path elsewhere) is longer; applies
                                   to Dom0 too
outstanding               20       replies not yet sent: xenstored     (stall)
                                   stops reading the domain's ring
memory                    2.5 MiB  bytes a domain makes xenstored      (stall)
                                   hold (its nodes, queued output,     ENOMEM
                                   watches, transactions): its ring
                                   is no longer read, a write that
                                   would reach it gets ENOMEM, an
                                   event for it is dropped (the soft
                                   quota, 2 MiB, is only shown)
========================  =======  =================================  =======

A request bigger than XENSTORE_PAYLOAD_MAX (4096) closes the connection; a
reply that would be bigger is replaced by E2BIG; a watch event that would
be bigger is dropped.

`outstanding` and `memory` make xenstored stop reading a domain's ring
(:meth:`XenStore.may_read`, Xen's domain_can_read()): the core handles a
connection's pending requests only while it is within both, and the I/O
layer reads no more from a connection with requests pending. CONTROL
"quota <domid>" reports what a domain uses.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from hypervisor.public.io.xs_wire import XENSTORE_PAYLOAD_MAX, XENSTORE_REL_PATH_MAX

#: sizeof(struct xs_tdb_record_hdr): uint64_t generation, three uint32_t.
NODE_HEADER_SIZE = 24
#: sizeof(struct xs_permissions): the access enum and the domid.
PERMISSION_SIZE = 8


@dataclass
class Quotas:
    """The quota values; CONTROL "quota set <name> <value>" changes them."""

    nodes: int = 1000
    watches: int = 128
    transactions: int = 10
    outstanding: int = 20
    transaction_nodes: int = 1024
    memory: int = 2 * 1024 * 1024 + 512 * 1024
    node_size: int = 2048
    path_max: int = XENSTORE_REL_PATH_MAX
    permissions: int = 5
    memory_soft: int = 2 * 1024 * 1024
    payload_max: int = XENSTORE_PAYLOAD_MAX

    def copy(self) -> Quotas:
        return Quotas(**{f.name: getattr(self, f.name) for f in fields(self)})


#: (CONTROL name, Quotas attribute, description): "quota" (hard) ...
HARD_QUOTAS = (
    ("nodes", "nodes", "Nodes per domain"),
    ("watches", "watches", "Watches per domain"),
    ("transactions", "transactions", "Transactions per domain"),
    ("outstanding", "outstanding", "Outstanding requests per domain"),
    ("transaction-nodes", "transaction_nodes",
     "Max. number of accessed nodes per transaction"),
    ("memory", "memory", "Total Xenstore memory per domain (error level)"),
    ("node-size", "node_size", "Max. size of a node"),
    ("path-max", "path_max", "Max. length of a node path"),
    ("permissions", "permissions", "Max. number of permissions per node"),
)
#: ... and "quota-soft".
SOFT_QUOTAS = (
    ("memory", "memory_soft", "Total Xenstore memory per domain (warning level)"),
)


def node_size(num_perms: int, datalen: int, childlen: int) -> int:
    """The size xenstored gives a node's record: header, permissions,
    value and the NUL-terminated child names."""
    return NODE_HEADER_SIZE + PERMISSION_SIZE * num_perms + datalen + childlen


# The checks, each exactly as Xen 4.17 compares (see the table above).
# Callers apply them to unprivileged domains only (path_too_long: to all).


def nodes_exceeded(q: Quotas, owned: int) -> bool:
    """create_node(): may a domain owning `owned` nodes create one more?"""
    return owned >= q.nodes


def commit_nodes_exceeded(q: Quotas, owned: int) -> bool:
    """TRANSACTION_END: would a domain own too many nodes afterwards?"""
    return owned >= q.nodes


def watches_exceeded(q: Quotas, watches: int) -> bool:
    return watches > q.watches


def transactions_exceeded(q: Quotas, open_transactions: int) -> bool:
    return open_transactions > q.transactions


def transaction_nodes_exceeded(q: Quotas, accessed: int) -> bool:
    return accessed >= q.transaction_nodes


def node_too_big(q: Quotas, size: int) -> bool:
    return size >= q.node_size


def permissions_exceeded(q: Quotas, num: int) -> bool:
    return num > q.permissions


def path_too_long(q: Quotas, length: int) -> bool:
    return length > q.path_max


def reply_too_big(q: Quotas, length: int) -> bool:
    return length > q.payload_max
