"""What a PV driver (and a Dom0 service) may use of its kernel.

Drivers are written against this, not against :class:`domains.kernel.kernel.Kernel`,
so that the real kernel and the tests' fake kernel are checked for the same thing.
Read-only properties, so a kernel whose attributes are plain (and settable) still fits.
"""

from __future__ import annotations

from typing import Any, Protocol

from domains.kernel.events import EventChannels
from domains.kernel.fdtable import FdTable
from domains.kernel.gnttab import GrantTable
from domains.kernel.hypercall import Hypercalls
from domains.kernel.workqueue import WorkQueue
from domains.kernel.xenbus.client import XenStoreClient


class DriverKernel(Protocol):
    """A guest kernel as a PV driver sees it."""

    @property
    def domid(self) -> int: ...

    @property
    def start_info(self) -> dict[str, Any]: ...

    # structlog's bound logger: make_logger() builds it from processors
    # configured at run time, which structlog types only as Any.
    @property
    def log(self) -> Any: ...

    @property
    def xenstore(self) -> XenStoreClient | None: ...

    @property
    def events(self) -> EventChannels: ...

    @property
    def gnttab(self) -> GrantTable: ...

    @property
    def hypercall(self) -> Hypercalls: ...

    @property
    def fds(self) -> FdTable: ...

    @property
    def work(self) -> WorkQueue: ...

