"""The kernel's XenStore connection: the xenstore page and its event channel.

As in Xen, the page is a `xenstore_domain_interface` granted to the
xenstore domain (Dom0) with the reserved ref GNTTAB_RESERVED_XENSTORE, and
an event channel bound to that domain carries the kicks. The page lives in a
grant window opened for Dom0 only, so that is all xenstored can map of us.
The kernel announces (ring-ref, port) to its creator at boot; the toolstack
then introduces the domain to xenstored (XS_INTRODUCE).
"""

from __future__ import annotations

from domains.kernel.xenbus.client import XenStoreClient
from domains.kernel.xenbus.ring import XenstoreRing, init_ring
from domains.kernel.xenbus.transport import RingTransport
from hypervisor.public.grant_table import GNTTAB_RESERVED_XENSTORE
from hypervisor.public.xen import PAGE_SIZE

XENSTORE_DOMID = 0  # xenstored runs in Dom0


def connect_ring(kernel) -> tuple[XenStoreClient, dict]:
    """Set up the xenstore page and channel; returns the client and what to announce."""
    window = kernel.gnttab.open_window(XENSTORE_DOMID, 1)
    page = memoryview(window.map)[:PAGE_SIZE]
    init_ring(page)
    ref = kernel.gnttab.grant_access(XENSTORE_DOMID, window.gfn,
                                     ref=GNTTAB_RESERVED_XENSTORE)
    port = kernel.events.alloc_unbound(XENSTORE_DOMID)
    transport = RingTransport(XenstoreRing(page), notify=lambda: kernel.events.send(port))
    kernel.events.bind(port, lambda _port: transport.kick())
    return XenStoreClient(transport, log=kernel.log), {"ring-ref": ref, "port": port, "mfn": window.gfn}
