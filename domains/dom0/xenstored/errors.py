"""The errors xenstored replies with.

A failed request is answered with an XS_ERROR message whose payload is the
error's *name* and a NUL ("ENOENT\\0"), one of io/xs_wire.h's `xsd_errors`.
Like Xen's send_error(), anything that is not in that table goes out as
EINVAL.
"""

from __future__ import annotations

from hypervisor.public.io.xs_wire import xsd_errors


class XsError(Exception):
    """A request failed with `name` (an xsd_errors entry, e.g. "EACCES")."""

    def __init__(self, name: str, detail: str = "") -> None:
        if name not in xsd_errors:
            detail = f"{name} {detail}".strip()
            name = "EINVAL"
        super().__init__(f"{name}: {detail}" if detail else name)
        self.name = name
        self.detail = detail

    @property
    def payload(self) -> bytes:
        """The XS_ERROR reply's payload."""
        return self.name.encode("ascii") + b"\0"
