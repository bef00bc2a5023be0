"""What a guest's kernel hands its creator at boot, checked.

A kernel reports ready with an `announce` map (PYXEN_op_ready), which the
hypervisor passes through, unread, as createdomain's result: where its
xenstore and console rings are. It is guest data, as hostile as anything a
guest writes into a ring, and the toolstack writes it into XenStore and
hands it to xenstored (XS_INTRODUCE), so every field is checked here for
type and range before any of it is used:

    {"store":   {"ring-ref": int, "port": int, "mfn": int} | absent/None,
     "console": {"ring-ref": int, "port": int, "mfn": int} | absent/None}

Unknown keys are refused too: a kernel that says something Dom0 does not
understand is not one Dom0 built.
"""

from __future__ import annotations

from typing import Any

from hypervisor.public.errno import EINVAL, XenError

RINGS = ("store", "console")
# grant_ref_t and evtchn_port_t are uint32_t; a gfn is a xen_pfn_t (64 bits).
FIELDS = {"ring-ref": 1 << 32, "port": 1 << 32, "mfn": 1 << 64}


def _names(keys: set) -> str:
    """A few of a guest's keys, short: it chose them, and they go in logs."""
    shown = sorted(repr(k)[:40] for k in keys)
    return ", ".join(shown[:5]) + (" ..." if len(shown) > 5 else "")


def _ring(which: str, value: Any) -> dict[str, int] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"{which} is a {type(value).__name__}, not a map")
    unknown = set(value) - set(FIELDS)
    if unknown:
        raise ValueError(f"{which} has unknown keys {_names(unknown)}")
    ring = {}
    for key, limit in FIELDS.items():
        field = value.get(key)
        # bool is an int to Python, not to the ABI.
        if not isinstance(field, int) or isinstance(field, bool):
            raise ValueError(f"{which}.{key} is {type(field).__name__}, not an integer")
        if not 0 <= field < limit:
            raise ValueError(f"{which}.{key} {field} is out of range")
        ring[key] = field
    if ring["port"] == 0:
        raise ValueError(f"{which}.port 0 is not an event channel")
    return ring


def parse_announce(value: Any) -> dict[str, dict[str, int] | None]:
    """The checked announce, or XenError(EINVAL) saying what is wrong."""
    try:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ValueError(f"it is a {type(value).__name__}, not a map")
        unknown = set(value) - set(RINGS)
        if unknown:
            raise ValueError(f"unknown keys {_names(unknown)}")
        return {which: _ring(which, value.get(which)) for which in RINGS}
    except ValueError as exc:
        raise XenError(EINVAL, f"bad announce: {exc}") from None
