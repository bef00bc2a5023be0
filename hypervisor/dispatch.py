"""Hypercall dispatch: one table, op -> (handler, flags); checks happen once.

Wire format (msgpack over the domain's own ZeroMQ channel):
  request  [hypercall_nr, cmd, args, vcpu]
  reply    [rc, result]        rc is 0 or a negative Xen errno
The calling domain is the channel the request arrived on, bound when the
domain was spawned; nothing in the message can name another caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from hypervisor.public.errno import EFAULT, EINVAL, ENOSYS, EPERM, XenError

if TYPE_CHECKING:
    from hypervisor.domain import Domain
    from hypervisor.machine import Machine

PRIV = 1  # only a privileged domain (Dom0) may call it

# A handler returns this when it will answer later (e.g. createdomain, which
# answers once the new domain's kernel has booted).
DEFERRED = object()


@dataclass
class Call:
    machine: "Machine"
    caller: "Domain"
    vcpu: int
    reply_to: Any  # opaque token the loop uses to answer a deferred call


Handler = Callable[[Call, Any], Any]
TABLE: dict[tuple[int, int], tuple[Handler, int]] = {}


def hypercall(nr: int, cmd: int, flags: int = 0) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        key = (nr, cmd)
        assert key not in TABLE, f"hypercall {key} registered twice"
        TABLE[key] = (fn, flags)
        return fn

    return register


def dispatch(call: Call, nr: int, cmd: int, args: Any) -> tuple[int, Any] | object:
    """Run one hypercall; returns (rc, result) or DEFERRED."""
    entry = TABLE.get((nr, cmd))
    if entry is None:
        return -ENOSYS, None
    handler, flags = entry
    if flags & PRIV and not call.caller.privileged:
        call.machine.log(f"d{call.caller.domid} denied privileged hypercall {nr}/{cmd}")
        return -EPERM, None
    try:
        result = handler(call, args)
    except XenError as exc:
        return -exc.errno, str(exc)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        # Arguments come from an untrusted domain: a malformed one is the
        # guest's fault (EFAULT/EINVAL in Xen), never the hypervisor's crash.
        call.machine.log(f"d{call.caller.domid} bad arguments to {nr}/{cmd}: {exc!r}")
        return -(EFAULT if isinstance(exc, KeyError) else EINVAL), repr(exc)
    if result is DEFERRED:
        return DEFERRED
    return 0, result
