"""The node tree, its paths, and the global view of it.

A node is a path ("/local/domain/1/name"), a value (bytes, possibly empty),
permissions, the names of its children in creation order, and a
*generation*: a number taken from a global counter whenever the node is
written, which transactions compare to detect conflicts.

Paths follow xenstored's is_valid_nodename(): absolute, made of ASCII
letters, digits and "-/_@", no trailing (except "/") or double slash, and
no longer than the path-max quota (XENSTORE_REL_PATH_MAX) once a leading
"/local/domain/<id>/" is discounted (and never longer than
XENSTORE_ABS_PATH_MAX). A path not starting with "/" is relative to the
connection's domain directory "/local/domain/<domid>". "@introduceDomain"
and "@releaseDomain" name special watch events, not nodes.

Node operations run against a *view*: :class:`GlobalView` reads and writes
the store itself and fires watches at once; a transaction's view
(:mod:`.transactions`) keeps its changes private until it commits.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Protocol

from domains.dom0.xenstored import quota
from domains.dom0.xenstored.permissions import Perms, owner_only
from hypervisor.public.io.xs_wire import XENSTORE_ABS_PATH_MAX

ROOT = "/"
INTRODUCE_DOMAIN = "@introduceDomain"
RELEASE_DOMAIN = "@releaseDomain"
SPECIAL_PATHS = (INTRODUCE_DOMAIN, RELEASE_DOMAIN)

#: The tree xenstored starts with, every node owned by Dom0 ("n0"): Xen's
#: own ("/", "/tool", "/tool/xenstored") and the "/local/domain" directory
#: the toolstack would create first (xen-init-dom0 does in Xen).
INITIAL_TREE = ("/", "/tool", "/tool/xenstored", "/local", "/local/domain")

_VALID = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-/_@")
# sscanf(name, "/local/domain/%5u/%n", ...): at most 5 characters of number.
_LOCAL = re.compile(r"/local/domain/(?:[-+]\d{1,4}|\d{1,5})/")


def domain_path(domid: int) -> str:
    """A domain's directory, "/local/domain/<domid>" (as unsigned)."""
    return f"/local/domain/{domid & 0xFFFFFFFF}"


def valid_chars(name: str) -> bool:
    return all(c in _VALID for c in name)


def is_valid_nodename(name: str, path_max: int = quota.Quotas.path_max) -> bool:
    """xenstored's is_valid_nodename() (Xen 4.17)."""
    if not name.startswith("/"):
        return False
    if name.endswith("/") and name != "/":
        return False
    if "//" in name:
        return False
    if len(name) > XENSTORE_ABS_PATH_MAX:
        return False
    local = _LOCAL.match(name)
    if len(name) - (local.end() if local else 0) > path_max:
        return False
    return valid_chars(name)


def canonicalize(name: str, implicit_path: str) -> str:
    """A request's path made absolute: relative to `implicit_path`."""
    if name.startswith(("/", "@")):
        return name
    return f"{implicit_path}/{name}"


def get_parent(name: str) -> str:
    """"/a/b" -> "/a"; "/a" and "/" -> "/"."""
    slash = name.rfind("/", 1)
    return name[:slash] if slash > 0 else ROOT


def basename(name: str) -> str:
    return name[name.rfind("/") + 1:]


def child_name(parent: str, base: str) -> str:
    return f"/{base}" if parent == ROOT else f"{parent}/{base}"


def is_child(child: str, parent: str) -> bool:
    """Is `child` `parent` itself or below it? (Everything is below "/".)"""
    if parent == ROOT:
        return True
    return child.startswith(parent) and (
        len(child) == len(parent) or child[len(parent)] == "/")


@dataclass(frozen=True)
class Node:
    """One node. Immutable: writers store a changed copy."""

    name: str
    value: bytes = b""
    perms: Perms = field(default_factory=owner_only)
    children: tuple[str, ...] = ()
    generation: int = 0

    @property
    def owner(self) -> int:
        return self.perms[0].id

    @property
    def childlen(self) -> int:
        return sum(len(c) + 1 for c in self.children)

    def children_payload(self) -> bytes:
        """The DIRECTORY reply: each child name NUL-terminated."""
        return b"".join(c.encode("latin-1") + b"\0" for c in self.children)

    @property
    def size(self) -> int:
        """The size the node-size quota compares (see quota.node_size)."""
        return quota.node_size(len(self.perms), len(self.value), self.childlen)

    def with_child(self, base: str) -> Node:
        return replace(self, children=self.children + (base,))

    def without_child(self, base: str) -> Node:
        children = list(self.children)
        children.remove(base)
        return replace(self, children=tuple(children))


def node_memory(node: Node) -> int:
    """What a node costs its owner against the memory quota: its record
    and its name (Xen's data->dsize + key->dsize)."""
    return node.size + len(node.name)


class Store:
    """All nodes by path, the generation counter, and who owns how many
    nodes and how many bytes of them."""

    def __init__(self, initial: tuple[str, ...] = INITIAL_TREE) -> None:
        self.nodes: dict[str, Node] = {}
        self.owned: Counter[int] = Counter()
        self.memory: Counter[int] = Counter()
        self._generation = 0
        for name in initial:
            if name != ROOT:
                parent = self.nodes[get_parent(name)]
                self.nodes[parent.name] = parent.with_child(basename(name))
            self.put(Node(name))

    def next_generation(self) -> int:
        generation = self._generation
        self._generation += 1
        return generation

    @property
    def generation(self) -> int:
        """The next generation to be handed out."""
        return self._generation

    def get(self, name: str) -> Node | None:
        return self.nodes.get(name)

    def put(self, node: Node) -> Node:
        """Store `node` under a new generation; returns what was stored."""
        node = replace(node, generation=self.next_generation())
        old = self.nodes.get(node.name)
        if old is not None:
            self._uncount(old)
        self._count(node)
        self.nodes[node.name] = node
        return node

    def delete(self, name: str) -> Node | None:
        old = self.nodes.pop(name, None)
        if old is not None:
            self._uncount(old)
        return old

    def _count(self, node: Node) -> None:
        self.owned[node.owner] += 1
        self.memory[node.owner] += node_memory(node)

    def _uncount(self, node: Node) -> None:
        self.owned[node.owner] -= 1
        self.memory[node.owner] -= node_memory(node)

    def replace_perms(self, name: str, perms: Perms) -> None:
        """Change a node's permissions in place, keeping its generation
        (for entries of dead domains, which no client changed)."""
        old = self.nodes[name]
        new = replace(old, perms=perms)
        self._uncount(old)
        self._count(new)
        self.nodes[name] = new

    def walk(self, root: str = ROOT) -> Iterator[Node]:
        """The nodes at and below `root`, parents before children."""
        stack = [root]
        while stack:
            node = self.nodes.get(stack.pop())
            if node is None:
                continue
            yield node
            stack.extend(child_name(node.name, c) for c in reversed(node.children))


#: fire(name, node or None, exact, old permissions or None): a change that
#: watches may want to hear of (see XenStore.fire_watches).
Fire = Callable[[str, "Node | None", bool, "Perms | None"], None]


class View(Protocol):
    """What node operations read and write through."""

    in_transaction: bool

    def get(self, name: str) -> Node | None: ...

    def put(self, node: Node) -> Node: ...

    def delete(self, node: Node) -> None: ...

    def owned(self, domid: int) -> int: ...

    def changed(self, name: str, node: Node | None, exact: bool,
                old_perms: Perms | None) -> None: ...

    def fail(self) -> None: ...

    def node_created(self) -> None: ...


class GlobalView:
    """The store itself: changes are visible, and watches fire, at once."""

    in_transaction = False

    def __init__(self, store: Store, fire: Fire) -> None:
        self.store = store
        self.fire = fire

    def get(self, name: str) -> Node | None:
        return self.store.get(name)

    def put(self, node: Node) -> Node:
        return self.store.put(node)

    def delete(self, node: Node) -> None:
        self.store.delete(node.name)

    def owned(self, domid: int) -> int:
        return self.store.owned[domid]

    def changed(self, name: str, node: Node | None, exact: bool,
                old_perms: Perms | None) -> None:
        self.fire(name, node, exact, old_perms)

    def fail(self) -> None:
        pass

    def node_created(self) -> None:
        pass
