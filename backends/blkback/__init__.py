"""blkback: the PV block backend's protocol core (runs in the disk driver domain).

Everything here is pure and free of rings, grants and XenStore, so that the
driver domain can wire those around it:

- :mod:`.validate` decodes a 112-byte ring entry into a :class:`Request`
  (from a private copy: the frontend may change the shared slot at any
  time) and checks it against the disk (:class:`DiskInfo`); a bad request
  becomes a :class:`Problem` carrying the status to answer, never an
  exception.
- :mod:`.io` performs a checked request on a file descriptor, with the
  mapped grant pages as buffers (or, with :func:`.io.perform_iov`, an I/O
  vector in which pages contiguous in the backend's mapping are merged:
  :func:`.io.merge_extents`).

A request's segments are decoded and checked in bulk (:class:`.validate.
Segments`: grefs, first_sect and last_sect as columns), because a 1 MiB
request has 256 of them; every field is still checked.
- :mod:`.response` encodes the `blkif_response` to put on the ring.

Per request: ``req = parse_request(slot)``; ``problem = check(req, disk)``;
for BLKIF_OP_INDIRECT map ``req.indirect_grefs`` read-only, ``req =
with_indirect_segments(req, pages)`` and check again; map the segments'
grants (writable for reads); ``status = perform(req, views, fd)``; answer
``response_for(req, status)``.
"""
