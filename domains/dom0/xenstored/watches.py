"""Watches, as xenstored_watch.c does them.

WATCH <path> <token> registers a watch on the connection and fires it once
straight away (event path = the path as given). From then on every change
at or below the path fires it: writes, creations, permission changes and
removals, including the removal of a parent (each removed node fires the
watches exactly on it; the removed subtree's root fires watches on it and
above). A change made in a transaction fires on commit only.

A watch given as a relative path ("device/vif") is reported relative to
the connection's domain directory; an absolute one absolutely.
"@introduceDomain" and "@releaseDomain" watch the special events of
INTRODUCE and of a domain's release or death.

A watch fires for a change only if its connection may read the changed
node or its parent (or, for a permission change, could read it before);
special events need read access granted through SET_PERMS on the special
path (Dom0 always has it). An event identical to one still waiting in the
connection's outbox is dropped, as Xen does. UNWATCH removes one watch,
RESET_WATCHES all of them (and the connection's transactions).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from domains.dom0.xenstored import quota
from domains.dom0.xenstored.errors import XsError
from domains.dom0.xenstored.store import canonicalize, is_child, is_valid_nodename
from hypervisor.public.io.xs_wire import XENSTORE_REL_PATH_MAX


@dataclass(frozen=True)
class Watch:
    node: str                   # absolute path, or "@..." special event
    token: bytes
    relative_path: str | None   # the implicit path, if given relative

    def matches(self, name: str, exact: bool) -> bool:
        return name == self.node if exact else is_child(name, self.node)

    def event_path(self, name: str) -> str:
        """The path a changed `name` is reported as to this watch."""
        if self.relative_path is None:
            return name
        path = name[len(self.relative_path):]
        return path.removeprefix("/")


def event_payload(path: str, token: bytes) -> bytes:
    """A WATCH_EVENT's payload: "<path>\\0<token>\\0"."""
    return path.encode("latin-1") + b"\0" + token + b"\0"


def check_watch_path(path: str, implicit_path: str,
                     quotas: quota.Quotas) -> tuple[str, bool]:
    """(canonical path, relative?) of a WATCH/UNWATCH path, or EINVAL."""
    if path.startswith("@"):
        if len(path) > XENSTORE_REL_PATH_MAX:
            raise XsError("EINVAL", "special watch path too long")
        return path, False
    relative = not path.startswith("/")
    name = canonicalize(path, implicit_path)
    if not is_valid_nodename(name, quotas.path_max):
        raise XsError("EINVAL", f"bad watch path {path!r}")
    return name, relative


class Watches:
    """One connection's watches, in registration order."""

    def __init__(self) -> None:
        self._list: list[Watch] = []
        self.bytes = 0  # what they cost against the memory quota

    @staticmethod
    def _cost(watch: Watch) -> int:
        return len(watch.node) + len(watch.token)

    def __len__(self) -> int:
        return len(self._list)

    def __iter__(self) -> Iterator[Watch]:
        return iter(list(self._list))

    def find(self, node: str, token: bytes) -> Watch | None:
        for watch in self._list:
            if watch.node == node and watch.token == token:
                return watch
        return None

    def add(self, watch: Watch) -> None:
        if self.find(watch.node, watch.token) is not None:
            raise XsError("EEXIST", "duplicate watch")
        self._list.append(watch)
        self.bytes += self._cost(watch)

    def remove(self, node: str, token: bytes) -> None:
        watch = self.find(node, token)
        if watch is None:
            raise XsError("ENOENT", "no such watch")
        self._list.remove(watch)
        self.bytes -= self._cost(watch)

    def clear(self) -> None:
        self._list.clear()
        self.bytes = 0

    def matching(self, name: str, exact: bool) -> list[Watch]:
        return [w for w in self._list if w.matches(name, exact)]
