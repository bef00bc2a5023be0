"""Hypercall dispatch: one table, op -> (handler, flags, argument schema);
checks happen once, here.

Wire format (msgpack over the domain's own ZeroMQ channel):
  request  [hypercall_nr, cmd, args, vcpu]
  reply    [rc, result]        rc is 0 or a negative Xen errno
The calling domain is the channel the request arrived on, bound when the
domain was spawned; nothing in the message can name another caller.

Everything in a request is the guest's to choose: `args` is checked against
the schema its handler declared (`hypervisor.args`) before the handler runs,
and whatever a handler raises becomes an errno for that caller alone, never
an exception out of the hypervisor's loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hypervisor.args import ArgError, Schema
from hypervisor.public.errno import EFAULT, EINVAL, EIO, ENOSYS, EPERM, XenError

if TYPE_CHECKING:
    from hypervisor.domain import Domain
    from hypervisor.machine import Machine

PRIV = 1  # only a privileged domain (Dom0) may call it

# A handler returns this when it will answer later (e.g. createdomain, which
# answers once the new domain's kernel has booted).
DEFERRED = object()


@dataclass
class Call:
    machine: Machine
    caller: Domain
    vcpu: int
    reply_to: Any  # opaque token the loop uses to answer a deferred call


Handler = Callable[[Call, Any], Any]


@dataclass(frozen=True)
class Entry:
    handler: Handler
    flags: int
    args: Schema


TABLE: dict[tuple[int, int], Entry] = {}


def hypercall(nr: int, cmd: int, flags: int = 0, *, args: Schema
              ) -> Callable[[Handler], Handler]:
    """Register a handler; `args` is the shape of what it reads."""
    def register(fn: Handler) -> Handler:
        key = (nr, cmd)
        assert key not in TABLE, f"hypercall {key} registered twice"
        TABLE[key] = Entry(fn, flags, args)
        return fn

    return register


def dispatch(call: Call, nr: int, cmd: int, args: Any) -> tuple[int, Any] | object:
    """Run one hypercall; returns (rc, result) or DEFERRED."""
    entry = TABLE.get((nr, cmd))
    if entry is None:
        return -ENOSYS, None
    domid = call.caller.domid
    if entry.flags & PRIV and not call.caller.privileged:
        call.machine.log_about(call.caller, f"d{domid} denied privileged hypercall {nr}/{cmd}")
        return -EPERM, None
    try:
        entry.args.check(args)
        result = entry.handler(call, args)
    except ArgError as exc:
        call.machine.log_about(call.caller, f"d{domid} bad arguments to {nr}/{cmd}: {exc}")
        return exc.rc, exc.message
    except XenError as exc:
        return exc.rc, exc.message
    except Exception as exc:  # noqa: BLE001  (the guest's call must not end the loop)
        # A handler failed in a way it did not foresee: the caller gets an
        # errno as Xen's would (EFAULT for what it could not read, EIO for the
        # host refusing something), the hypervisor carries on.
        errno = (EFAULT if isinstance(exc, LookupError)
                 else EIO if isinstance(exc, OSError) else EINVAL)
        call.machine.log_about(call.caller, f"d{domid} hypercall {nr}/{cmd} failed: {exc!r}")
        return -errno, f"{type(exc).__name__}: {exc}"[:200]
    if result is DEFERRED:
        return DEFERRED
    return 0, result
