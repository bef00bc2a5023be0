"""The node operations (READ, WRITE, MKDIR, RM, DIRECTORY[_PART],
GET_PERMS, SET_PERMS) with xenstored_core.c's rules and error codes.

Looking a node up (get_node()) gives:
- EINVAL for a path that is not valid (see store.is_valid_nodename);
- EACCES if the node exists but the caller lacks the access;
- for a node that does not exist: ENOENT if the caller has the access on
  the nearest existing ancestor, else EACCES, so that nobody learns which
  nodes exist where they may not look.
Only the node's own permissions count, never its ancestors'; removing a
node removes its whole subtree whoever owns the nodes below.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from domains.dom0.xenstored import quota
from domains.dom0.xenstored.errors import XsError
from domains.dom0.xenstored.permissions import (
    XS_PERM_NONE,
    XS_PERM_OWNER,
    XS_PERM_READ,
    XS_PERM_WRITE,
    Perms,
    inherit,
    perm_for,
)
from domains.dom0.xenstored.store import (
    ROOT,
    Node,
    View,
    basename,
    canonicalize,
    child_name,
    domain_path,
    get_parent,
    is_valid_nodename,
)
from domains.dom0.xenstored.wire import atou


@dataclass(frozen=True)
class Caller:
    """Who a request acts as."""

    domid: int
    privileged: bool
    target: int | None = None   # SET_TARGET: the domain it is device model of

    def access(self, perms: Perms) -> int:
        return perm_for(perms, self.domid, privileged=self.privileged,
                        target=self.target)

    @property
    def implicit_path(self) -> str:
        return domain_path(self.domid)


class NodeOps:
    """Node operations by `caller` through `view`."""

    def __init__(self, view: View, caller: Caller, quotas: quota.Quotas) -> None:
        self.view = view
        self.caller = caller
        self.quotas = quotas

    @property
    def unprivileged(self) -> bool:
        return not self.caller.privileged

    # -- lookup ---------------------------------------------------------------------

    def lookup(self, raw: str | None, perm: int) -> tuple[Node | None, str]:
        """The node at `raw` (made absolute) if the caller has `perm` on it;
        (None, name) if it does not exist and the caller may know that."""
        if raw is None:
            raise XsError("EINVAL", "malformed request")
        name = canonicalize(raw, self.caller.implicit_path)
        if not is_valid_nodename(name, self.quotas.path_max):
            raise XsError("EINVAL", f"invalid path {raw!r}")
        node = self.view.get(name)
        if node is not None:
            if self.caller.access(node.perms) & perm == perm:
                return node, name
            raise XsError("EACCES", name)
        if self._ancestor_access(name) & perm:
            return None, name
        raise XsError("EACCES", name)

    def must(self, raw: str | None, perm: int) -> tuple[Node, str]:
        node, name = self.lookup(raw, perm)
        if node is None:
            raise XsError("ENOENT", name)
        return node, name

    def _ancestor_access(self, name: str) -> int:
        """ask_parents(): the access on the nearest existing ancestor."""
        while True:
            name = get_parent(name)
            node = self.view.get(name)
            if node is not None:
                return self.caller.access(node.perms)
            if name == ROOT:
                return XS_PERM_NONE

    # -- writing ----------------------------------------------------------------------

    def _check_size(self, node: Node) -> None:
        if self.unprivileged and quota.node_too_big(self.quotas, node.size):
            self.view.fail()  # in Xen the write was under way: the transaction fails
            raise XsError("ENOSPC", f"node {node.name} too big")

    def write_node(self, node: Node, no_quota_check: bool = False) -> Node:
        if not no_quota_check:
            self._check_size(node)
        return self.view.put(node)

    def create(self, name: str, value: bytes) -> Node:
        """create_node(): `name` and its missing ancestors, inheriting the
        nearest existing ancestor's permissions (an unprivileged creator
        owning them)."""
        missing = [name]
        parent_name = get_parent(name)
        while True:
            parent = self.view.get(parent_name)
            if parent is not None:
                break
            if parent_name == ROOT:
                raise XsError("EIO", "no root node")
            missing.append(parent_name)
            parent_name = get_parent(parent_name)
        self.view.node_created()
        top = parent.with_child(basename(missing[-1]))
        new: list[Node] = []
        perms = parent.perms
        for i, path in enumerate(reversed(missing)):
            perms = inherit(perms, self.caller.domid, self.caller.privileged)
            last = i == len(missing) - 1
            children = () if last else (basename(missing[-2 - i]),)
            new.append(Node(path, value if last else b"", perms, children))
        # Xen writes bottom up, checking the quotas of each node in turn.
        order = list(reversed(new)) + [top]
        owned = self.view.owned(self.caller.domid)
        for k, node in enumerate(order):
            if (k < len(new) and self.unprivileged
                    and quota.nodes_exceeded(self.quotas, owned + k)):
                if k:
                    self.view.fail()
                raise XsError("ENOSPC", f"domain {self.caller.domid} owns too many nodes")
            self._check_size(node)
        stored = [self.view.put(node) for node in order]
        return stored[0]

    def write(self, raw: str | None, value: bytes) -> None:
        node, name = self.lookup(raw, XS_PERM_WRITE)
        if node is None:
            node = self.create(name, value)
        else:
            node = self.write_node(replace(node, value=value))
        self.view.changed(name, node, False, None)

    def mkdir(self, raw: str | None) -> None:
        node, name = self.lookup(raw, XS_PERM_WRITE)
        if node is None:
            node = self.create(name, b"")
            self.view.changed(name, node, False, None)

    def rm(self, raw: str | None) -> None:
        node, name = self.lookup(raw, XS_PERM_WRITE)
        if node is None:
            # Not there already? Fine, if the parent is.
            if self.view.get(get_parent(name)) is not None:
                return
            raise XsError("ENOENT", name)
        if name == ROOT:
            raise XsError("EINVAL", "cannot remove /")
        self.rm_node(name)

    def rm_node(self, name: str) -> None:
        """Remove `name` and its subtree, children first; each removed
        node fires the watches on it, the subtree's root those above too."""
        parent = self.view.get(get_parent(name))
        if parent is None:
            raise XsError("EINVAL", f"no parent of {name}")
        root = self.view.get(name)
        if root is None:
            return
        stack: list[tuple[Node, list[str]]] = [(root, list(root.children))]
        while stack:
            node, todo = stack[-1]
            if todo:
                child = self.view.get(child_name(node.name, todo.pop(0)))
                if child is not None:
                    stack.append((child, list(child.children)))
                continue
            stack.pop()
            self.view.delete(node)
            self.view.changed(node.name, node, node.name != name, None)
        parent = self.view.get(get_parent(name))
        if parent is None or basename(name) not in parent.children:
            raise XsError("EIO", f"{name} missing from its parent")
        self.write_node(parent.without_child(basename(name)), no_quota_check=True)

    def remove_owned(self, domid: int) -> None:
        """A domain is gone: remove every node it owns, with the subtree."""
        stack = [ROOT]
        while stack:
            node = self.view.get(stack.pop())
            if node is None:
                continue
            if node.owner == domid and node.name != ROOT:
                self.rm_node(node.name)
                continue
            stack.extend(child_name(node.name, c) for c in reversed(node.children))

    # -- reading ------------------------------------------------------------------------

    def read(self, raw: str | None) -> bytes:
        return self.must(raw, XS_PERM_READ)[0].value

    def directory(self, raw: str | None) -> bytes:
        return self.must(raw, XS_PERM_READ)[0].children_payload()

    def directory_part(self, raw: str | None, offset: bytes) -> bytes:
        """DIRECTORY_PART: "<generation>\\0" and the children from byte
        `offset` of the child list, as many whole names as fit; the last
        chunk ends with an extra NUL (an empty name)."""
        node = self.must(raw, XS_PERM_READ)[0]
        off = atou(offset)
        gen = str(node.generation).encode() + b"\0"
        children = node.children_payload()
        if off >= len(children):
            return gen + b"\0"
        maxlen = self.quotas.payload_max - len(gen) - 1
        length = 0
        while True:
            child_len = children.index(b"\0", off + length) - (off + length)
            if length + child_len >= maxlen:
                break
            length += child_len + 1
            if off + length == len(children):
                break
        data = gen + children[off:off + length]
        if off + length == len(children):
            data += b"\0"
        return data

    def get_perms(self, raw: str | None) -> Perms:
        return self.must(raw, XS_PERM_READ)[0].perms

    def set_perms(self, raw: str | None, perms: Perms) -> None:
        node, name = self.must(raw, XS_PERM_WRITE | XS_PERM_OWNER)
        if self.unprivileged and perms[0].id != node.owner:
            raise XsError("EPERM", "only a privileged domain may change the owner")
        new = self.write_node(replace(node, perms=perms))
        self.view.changed(name, new, False, node.perms)
