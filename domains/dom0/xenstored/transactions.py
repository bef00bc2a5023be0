"""Transactions, as xenstored_transaction.c does them.

TRANSACTION_START hands out an id (never 0, unique on the connection);
requests carrying it in tx_id run against the transaction's private view:
the first time the transaction touches a node it copies it (or notes that
it does not exist) and records its generation; later reads and writes see
and change only the copy. Watches do not fire yet: the changes are queued.

TRANSACTION_END "T" commits. It fails with EAGAIN if any node the
transaction read (which includes every node it went on to write, the
parents whose child lists it read or changed, and nodes it found missing)
has a different generation in the store now; otherwise every modified node
is written back (or deleted) under a new generation and the queued
watches fire, in the order the transaction first touched the nodes.
"F" discards the transaction. Either way the id is gone afterwards, also
when the commit fails.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from domains.dom0.xenstored import quota
from domains.dom0.xenstored.errors import XsError
from domains.dom0.xenstored.permissions import Perms
from domains.dom0.xenstored.store import Fire, Node, Store, node_memory


@dataclass
class Accessed:
    """A node as the transaction first saw it, and what it did to it."""

    generation: int | None   # None: the node did not exist
    check_gen: bool          # first access was a read: check at commit
    perms: Perms | None      # permissions then (watch checks for deletions)
    modified: bool = False
    fire_watch: bool = False
    watch_exact: bool = True


@dataclass
class Transaction:
    id: int
    accessed: dict[str, Accessed] = field(default_factory=dict)
    overlay: dict[str, Node | None] = field(default_factory=dict)
    owned_delta: Counter[int] = field(default_factory=Counter)
    fail: bool = False          # a change failed half-way: commit fails
    node_created: bool = False  # commit checks the nodes quota
    memory: int = 0             # bytes of the nodes it wrote (memory quota)


class TxView:
    """A transaction's private view of the store (see store.View)."""

    in_transaction = True

    def __init__(self, store: Store, tx: Transaction, quotas: quota.Quotas,
                 unprivileged: bool) -> None:
        self.store = store
        self.tx = tx
        self.quotas = quotas
        self.unprivileged = unprivileged

    def _access(self, name: str, write: bool) -> Accessed:
        tx = self.tx
        acc = tx.accessed.get(name)
        if acc is None:
            if self.unprivileged and quota.transaction_nodes_exceeded(
                    self.quotas, len(tx.accessed)):
                tx.fail = True
                raise XsError("ENOSPC", "too many nodes in the transaction")
            node = self.store.get(name)
            acc = Accessed(generation=None if node is None else node.generation,
                           check_gen=not write,
                           perms=None if node is None else node.perms)
            tx.accessed[name] = acc
            tx.overlay[name] = node
        return acc

    def get(self, name: str) -> Node | None:
        self._access(name, write=False)
        return self.tx.overlay[name]

    def put(self, node: Node) -> Node:
        acc = self._access(node.name, write=True)
        old = self.tx.overlay.get(node.name)
        node = replace(node, generation=self.store.next_generation())
        if old is not None:
            self.tx.owned_delta[old.owner] -= 1
        self.tx.owned_delta[node.owner] += 1
        self._memory(acc, old, node)
        acc.modified = True
        self.tx.overlay[node.name] = node
        return node

    def _memory(self, acc: Accessed, old: Node | None, new: Node | None) -> None:
        """Private copies the transaction made count against the memory
        quota (those it only read are the store's)."""
        if acc.modified and old is not None:
            self.tx.memory -= node_memory(old)
        if new is not None:
            self.tx.memory += node_memory(new)

    def delete(self, node: Node) -> None:
        acc = self._access(node.name, write=True)
        old = self.tx.overlay.get(node.name)
        if old is not None:
            self.tx.owned_delta[old.owner] -= 1
        self._memory(acc, old, None)
        acc.modified = True
        self.tx.overlay[node.name] = None

    def owned(self, domid: int) -> int:
        return self.store.owned[domid] + self.tx.owned_delta[domid]

    def changed(self, name: str, node: Node | None, exact: bool,
                old_perms: Perms | None) -> None:
        """Queue the watch event until commit (queue_watches()); a subtree
        event replaces an exact one, never the other way round."""
        acc = self.tx.accessed.get(name)
        if acc is None:
            self.tx.fail = True
            return
        if not acc.fire_watch:
            acc.fire_watch = True
            acc.watch_exact = exact
        elif not exact:
            acc.watch_exact = False

    def fail(self) -> None:
        self.tx.fail = True

    def node_created(self) -> None:
        self.tx.node_created = True


def commit(store: Store, tx: Transaction, quotas_of: Callable[[int], quota.Quotas],
           check_nodes_quota: bool, fire: Fire) -> None:
    """TRANSACTION_END "T": apply `tx` to `store` or raise XsError.

    `check_nodes_quota`: the committer is unprivileged (the nodes quota is
    checked only if the transaction created nodes), against the quotas of
    each domain whose nodes it changes (`quotas_of`)."""
    if tx.fail:
        raise XsError("ENOMEM", "a change in the transaction failed")
    if check_nodes_quota and tx.node_created:
        for domid, delta in tx.owned_delta.items():
            if domid != 0 and quota.commit_nodes_exceeded(
                    quotas_of(domid), store.owned[domid] + delta):
                raise XsError("ENOSPC", f"domain {domid} would own too many nodes")
    for name, acc in tx.accessed.items():
        if acc.check_gen:
            node = store.get(name)
            if (None if node is None else node.generation) != acc.generation:
                raise XsError("EAGAIN", f"{name} changed")
    for name, acc in tx.accessed.items():
        if acc.modified:
            new = tx.overlay[name]
            if new is not None:
                store.put(new)
            else:
                store.delete(name)
        if acc.fire_watch:
            fire(name, None, acc.watch_exact, acc.perms)
