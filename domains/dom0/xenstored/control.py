"""XS_CONTROL (formerly XS_DEBUG): xenstored_control.c's commands.

The payload is the command and its arguments, each NUL-terminated. Only
the privileged domain may send it (EACCES otherwise, checked by the
dispatcher); an unknown command or wrong arguments give EINVAL, as Xen.

  check                          OK (the store is checked as it changes)
  log on|off                     turn the log callback on or off
  print <string>                 log "control: <string>"
  quota                          the hard quotas, one per line
  quota set <name> <value>       change a hard quota (value >= 1)
  quota set <domid> <name> <val> change it for one domain only (pyxen's, as
                                 oxenstored's per-domain overrides)
  quota <domid>                  what the domain uses, and its own quotas
                                 where they differ (ENOENT if unknown)
  quota-soft [set <name> <val>]  the same for the soft quota (memory)
  help                           the commands, "<cmd>\\t<args>\\n" each

Xen's logfile, memreport and live-update are not offered: there is no file
or process here to act on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from domains.dom0.xenstored.errors import XsError
from domains.dom0.xenstored.quota import HARD_QUOTAS, SOFT_QUOTAS
from domains.dom0.xenstored.wire import atoi, count_strings, decode, get_strings

if TYPE_CHECKING:
    from domains.dom0.xenstored.handler import Connection, XenStore

OK = b"OK\0"

Command = Callable[["XenStore", "Connection", list[str]], bytes]


def _check(xs: XenStore, conn: Connection, args: list[str]) -> bytes:
    if args:
        raise XsError("EINVAL", "check takes no arguments")
    return OK


def _log(xs: XenStore, conn: Connection, args: list[str]) -> bytes:
    if len(args) != 1 or args[0] not in ("on", "off"):
        raise XsError("EINVAL", "log on|off")
    xs.logging = args[0] == "on"
    return OK


def _print(xs: XenStore, conn: Connection, args: list[str]) -> bytes:
    if len(args) != 1:
        raise XsError("EINVAL", "print <string>")
    xs.log(f"control: {args[0]}")
    return OK


def _show(xs: XenStore, table: tuple[tuple[str, str, str], ...]) -> bytes:
    text = "Quota settings:\n" + "".join(
        f"{name:<17}: {getattr(xs.quotas, attr):8d} {descr}\n"
        for name, attr, descr in table)
    return text.encode() + b"\0"


def _set(xs: XenStore, args: list[str], table: tuple[tuple[str, str, str], ...]) -> bytes:
    if len(args) != 2:
        raise XsError("EINVAL", "set <name> <value>")
    value = atoi(args[1])
    if value < 1:
        raise XsError("EINVAL", "quota values are >= 1")
    for name, attr, _ in table:
        if name == args[0]:
            setattr(xs.quotas, attr, value)
            return OK
    raise XsError("EINVAL", f"no quota {args[0]!r}")


def _quota(xs: XenStore, conn: Connection, args: list[str]) -> bytes:
    if not args:
        return _show(xs, HARD_QUOTAS)
    if args[0] == "set" and len(args) == 4:
        return _set_domain(xs, args[1:])
    if args[0] == "set":
        return _set(xs, args[1:], HARD_QUOTAS)
    if len(args) != 1:
        raise XsError("EINVAL", "quota <domid>")
    domid = atoi(args[0]) & 0xFFFFFFFF
    usage = xs.domain_quota(domid)
    if usage is None:
        raise XsError("ENOENT", f"no domain {domid}")
    text = f"Domain {domid}:\n" + "".join(
        f"{name:<16}: {value:8d}\n" for name, value in usage.items())
    if domid in xs.quota_errors:
        text += f"last quota error: {xs.quota_errors[domid]}\n"
    own = xs.domain_quotas.get(domid)
    if own is not None:
        text += "Quota settings of the domain:\n" + "".join(
            f"{name:<17}: {getattr(own, attr):8d} {descr}\n"
            for name, attr, descr in HARD_QUOTAS if getattr(own, attr) != getattr(xs.quotas, attr))
    return text.encode() + b"\0"


def _set_domain(xs: XenStore, args: list[str]) -> bytes:
    """quota set <domid> <name> <value>"""
    domid = atoi(args[0]) & 0xFFFFFFFF
    if xs.domain_quota(domid) is None:
        raise XsError("ENOENT", f"no domain {domid}")
    value = atoi(args[2])
    if value < 1:
        raise XsError("EINVAL", "quota values are >= 1")
    for name, attr, _ in HARD_QUOTAS:
        if name == args[1]:
            xs.set_domain_quota(domid, attr, value)
            return OK
    raise XsError("EINVAL", f"no quota {args[1]!r}")


def _quota_soft(xs: XenStore, conn: Connection, args: list[str]) -> bytes:
    if not args:
        return _show(xs, SOFT_QUOTAS)
    if args[0] == "set":
        return _set(xs, args[1:], SOFT_QUOTAS)
    raise XsError("EINVAL", "quota-soft [set <name> <value>]")


def _help(xs: XenStore, conn: Connection, args: list[str]) -> bytes:
    if args:
        raise XsError("EINVAL", "help takes no arguments")
    # Like Xen, without a terminating NUL.
    return "".join(f"{name}\t{params}\n" for name, (_, params) in COMMANDS.items()).encode()


COMMANDS: dict[str, tuple[Command, str]] = {
    "check": (_check, ""),
    "log": (_log, "on|off"),
    "print": (_print, "<string>"),
    "quota": (_quota, "[set [<domid>] <name> <val>|<domid>]"),
    "quota-soft": (_quota_soft, "[set <name> <val>]"),
    "help": (_help, ""),
}


def do_control(xs: XenStore, conn: Connection, payload: bytes) -> bytes:
    if count_strings(payload) < 1:
        raise XsError("EINVAL", "no command")
    vec = [decode(s) for s in get_strings(payload)]
    command = COMMANDS.get(vec[0])
    if command is None:
        raise XsError("EINVAL", f"unknown command {vec[0]!r}")
    return command[0](xs, conn, vec[1:])
