"""netfront: the PV network frontend's protocol core (runs in the guest).

:mod:`.tx` splits a frame into page-sized granted pieces, builds the tx
ring entries for it (NETTXF_more_data chains, the optional GSO extra
slot) and keeps a shadow of every slot in flight by id, so that the
backend's responses can be validated (an id not in flight, unknown or
answered already, is a protocol error: reconnect) and every grant ended.
:mod:`.rx` builds the rx requests that post empty pages, and reassembles
the backend's rx responses (NETRXF_more_data chains, extra info slots)
into frames, refusing malformed ones without losing its place in the ring.
"""
