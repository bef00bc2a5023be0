"""The client side of XenStore and the xenbus library.

- :mod:`.ring` -- the two byte rings of a domain's xenstore page
  (``xenstore_domain_interface``), both the domain's and xenstored's halves.
- :mod:`.transport` -- byte pipes to xenstored: a Unix socket (Dom0's tools)
  or the shared page plus an event channel (every other domain).
- :mod:`.client` -- ``XenStoreClient``: requests, replies matched by req_id,
  watches, transactions (what Linux's xenbus_xs.c and libxenstore's xs.c do).
- :mod:`.state` -- the xenbus state machine both ends of a split driver
  follow, and helpers built on the client (xenbus_client.c's share).
- :mod:`.reactions` -- what an end does when the other end's state
  changes: a table over (other end's state, our state), pure.
- :mod:`.lifecycle` -- one device's lifecycle, both ends, for every PV
  driver: the reactions run on the kernel's work queue, reconnects after a
  backend moves, the close handshake; drivers give hooks.
- :mod:`.backend` -- a driver domain's backend devices, found in XenStore.
"""
