"""blkfront: the PV block frontend's protocol core (runs in the guest).

:mod:`.requests` builds the ring entries (and indirect segment pages) a
frontend puts on the shared ring and decodes the backend's responses;
:mod:`.shadow` remembers every request in flight by id, so that responses
can be validated (an id the frontend did not issue is a protocol error:
reconnect) and so that, when the backend's driver domain dies, every
request without a response can be reissued to its successor;
:mod:`.pool` hands out the grant window's pages in contiguous runs.
"""
