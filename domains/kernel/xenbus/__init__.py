"""The client side of XenStore and the xenbus library.

- :mod:`.ring` -- the two byte rings of a domain's xenstore page
  (``xenstore_domain_interface``), both the domain's and xenstored's halves.
- :mod:`.transport` -- byte pipes to xenstored: a Unix socket (Dom0's tools)
  or the shared page plus an event channel (every other domain).
- :mod:`.client` -- ``XenStoreClient``: requests, replies matched by req_id,
  watches, transactions (what Linux's xenbus_xs.c and libxenstore's xs.c do).
- :mod:`.state` -- the xenbus state machine both ends of a split driver
  follow, and helpers built on the client (xenbus_client.c's share).
"""
