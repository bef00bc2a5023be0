"""Xen's node permissions.

A node's permissions are a list of (domid, access) entries, on the wire
and in tools as strings: "n0", "r1", "w2", "b3" (none, read, write, both).
The first entry names the node's *owner* and gives the access of every
domain not listed later; each later entry gives one domain's access.

Who gets what (perm_for_conn() in xenstored_core.c):
- the privileged domain (Dom0) and the owner have every right, including
  the owner's right to change the permissions (SET_PERMS);
- a domain another was made the device model of (SET_TARGET) acts for its
  target: it has the owner's rights on the target's nodes, and the
  target's entry applies to it;
- otherwise the first later entry naming the domain applies;
- otherwise the first entry's access applies.

New nodes inherit their parent's permissions, except that an unprivileged
creator becomes the owner (construct_node()). Entries naming a domain that
has died are ignored (XS_PERM_IGNORE, xenstored's domain_adjust_node_perms())
so that a later domain reusing the domid does not inherit them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from domains.dom0.xenstored.errors import XsError
from domains.dom0.xenstored.wire import decode, get_strings, join_strings, strtol

# enum xs_perm_type (tools/include/xenstore_lib.h)
XS_PERM_NONE = 0
XS_PERM_READ = 1
XS_PERM_WRITE = 2
XS_PERM_OWNER = 8    # internal: may change the permissions
XS_PERM_IGNORE = 16  # internal: the entry names a domain that is gone

XS_PERM_ALL = XS_PERM_READ | XS_PERM_WRITE | XS_PERM_OWNER

_LETTERS = {"n": XS_PERM_NONE, "r": XS_PERM_READ, "w": XS_PERM_WRITE,
            "b": XS_PERM_READ | XS_PERM_WRITE}
_BY_ACCESS = {access: letter for letter, access in _LETTERS.items()}


@dataclass(frozen=True)
class Perm:
    """One permission entry: a domain and its access bits."""

    id: int
    perms: int

    @property
    def ignored(self) -> bool:
        return bool(self.perms & XS_PERM_IGNORE)

    def __str__(self) -> str:
        return format_perm(self)


Perms = tuple[Perm, ...]


def owner_only(domid: int = 0) -> Perms:
    """"n<domid>": owned by `domid`, no access for anybody else."""
    return (Perm(domid, XS_PERM_NONE),)


def parse_perm(text: str | bytes) -> Perm:
    """"r5" -> Perm(5, READ). The id is parsed as strtol(.., 0) does and
    must be all of the rest of the string (xenstore_strings_to_perms())."""
    if isinstance(text, bytes):
        text = decode(text)
    if not text or text[0] not in _LETTERS:
        raise XsError("EINVAL", f"bad permission {text!r}")
    rest = text[1:]
    value, end = strtol(rest, 0)
    if not rest or end != len(rest):
        raise XsError("EINVAL", f"bad permission {text!r}")
    return Perm(value & 0xFFFFFFFF, _LETTERS[text[0]])


def format_perm(perm: Perm) -> str:
    """Perm(5, READ) -> "r5" (the id printed as a C int, like Xen)."""
    letter = _BY_ACCESS.get(perm.perms & ~XS_PERM_IGNORE)
    if letter is None:
        raise XsError("EINVAL", f"unprintable permission {perm!r}")
    domid = perm.id - (1 << 32) if perm.id >= 1 << 31 else perm.id
    return f"{letter}{domid}"


def parse_perms(strings: Iterable[str | bytes]) -> Perms:
    """["n0", "r1"] -> permissions; EINVAL for a bad entry or none."""
    perms = tuple(parse_perm(s) for s in strings)
    if not perms:
        raise XsError("EINVAL", "no permissions")
    return perms


def format_perms(perms: Perms) -> list[str]:
    """Permissions -> ["n0", "r1"]."""
    return [format_perm(p) for p in perms]


def perms_to_wire(perms: Perms) -> bytes:
    """The GET_PERMS reply form: b"n0\\0r1\\0"."""
    return join_strings(*format_perms(perms))


def perms_from_wire(payload: bytes) -> Perms:
    """b"n0\\0r1\\0" -> permissions."""
    return parse_perms(get_strings(payload))


def perm_for(perms: Perms, domid: int, *, privileged: bool = False,
             target: int | None = None) -> int:
    """The access bits (XS_PERM_READ/WRITE/OWNER) `domid` has on a node
    with `perms`; `target` is the domain it is device model of, if any."""
    if privileged or perms[0].id == domid or (
            target is not None and perms[0].id == target):
        return XS_PERM_ALL
    for entry in perms[1:]:
        if not entry.ignored and (entry.id == domid or (
                target is not None and entry.id == target)):
            return entry.perms & XS_PERM_ALL
    return perms[0].perms & XS_PERM_ALL


def inherit(parent: Perms, creator: int, privileged: bool) -> Perms:
    """The permissions of a node created below one with `parent`'s."""
    if privileged:
        return parent
    return (Perm(creator, parent[0].perms),) + parent[1:]


def forget_domain(perms: Perms, domid: int) -> Perms:
    """`perms` with the non-owner entries naming a dead `domid` ignored."""
    if not any(p.id == domid and not p.ignored for p in perms[1:]):
        return perms
    return perms[:1] + tuple(
        Perm(p.id, p.perms | XS_PERM_IGNORE) if p.id == domid else p
        for p in perms[1:])
