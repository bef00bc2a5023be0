"""The byte rings of a domain's xenstore page (io/xs_wire.h).

The page is a ``xenstore_domain_interface``: ``req`` carries requests from
the domain to xenstored, ``rsp`` carries replies and watch events back.
Each ring has a consumer and a producer index. They are free-running
uint32 counters: the producer only ever advances ``*_prod``, the consumer
only ever advances ``*_cons``; ``prod - cons`` (mod 2**32) is the number of
bytes in flight and ``MASK_XENSTORE_IDX`` turns an index into an offset.

A side writes data, then advances its producer index, then notifies the
event channel; a side reading reads the indexes, then the data, then
advances its consumer index, then notifies (the producer may be waiting
for room). Python has no memory barriers: the comments marking each
ordering point say where Xen puts one, and the stores here happen in that
order.

Notification contract: every method that moves bytes returns how many it
moved (``write_*`` an int, ``read_*`` the bytes themselves). When that is
non-zero the caller must notify the other end over the event channel.
Notifying when nothing moved is harmless but useless.

Indexes read from the other side are not trusted: if the producer is more
than ``XENSTORE_RING_SIZE`` ahead of the consumer the ring is corrupt and
:class:`RingError` is raised. On xenstored's side the page's ``error``
field is then set to ``XENSTORE_ERROR_RINGIDX`` first, as Xen's xenstored
does before it gives up on the connection.
"""

from __future__ import annotations

import ctypes

from hypervisor.public.io.xs_wire import (
    MASK_XENSTORE_IDX,
    XENSTORE_CONNECTED,
    XENSTORE_ERROR_NONE,
    XENSTORE_ERROR_RINGIDX,
    XENSTORE_RING_SIZE,
    XENSTORE_SERVER_FEATURE_ERROR,
    XENSTORE_SERVER_FEATURE_RECONNECTION,
)
from hypervisor.public.io.xs_wire import (
    xenstore_domain_interface as _intf,
)
from hypervisor.public.pyxen.words import Words

_WRAP = 1 << 32

INTERFACE_SIZE = ctypes.sizeof(_intf)
REQ = _intf.req.offset
RSP = _intf.rsp.offset
REQ_CONS = _intf.req_cons.offset
REQ_PROD = _intf.req_prod.offset
RSP_CONS = _intf.rsp_cons.offset
RSP_PROD = _intf.rsp_prod.offset
SERVER_FEATURES = _intf.server_features.offset
CONNECTION = _intf.connection.offset
ERROR = _intf.error.offset

DEFAULT_SERVER_FEATURES = (XENSTORE_SERVER_FEATURE_RECONNECTION
                           | XENSTORE_SERVER_FEATURE_ERROR)


class RingError(Exception):
    """The other side published an impossible index: the ring is corrupt."""


def _in_flight(cons: int, prod: int, which: str) -> int:
    used = (prod - cons) % _WRAP
    if used > XENSTORE_RING_SIZE:
        raise RingError(f"{which}: producer {prod:#x} is {used} bytes ahead of "
                        f"consumer {cons:#x} (ring holds {XENSTORE_RING_SIZE})")
    return used


class _Word:
    """A uint32 field of the page, read and written whole by its ring."""

    def __init__(self, offset: int) -> None:
        self.offset = offset

    def __get__(self, ring: XenstoreRing, owner: type | None = None) -> int:
        return ring._get(self.offset)

    def __set__(self, ring: XenstoreRing, value: int) -> None:
        ring._set(self.offset, value)


class XenstoreRing:
    """Both halves of a xenstore page over any writable buffer.

    The domain uses :meth:`write_request` / :meth:`read_response`, xenstored
    uses :meth:`read_request` / :meth:`write_response`. Each half of each
    ring has a single producer and a single consumer, so one thread may
    write requests while another reads responses without locking.
    """

    def __init__(self, buf) -> None:
        view = memoryview(buf)
        if view.readonly:
            raise ValueError("the xenstore page must be writable")
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        if view.nbytes < INTERFACE_SIZE:
            raise ValueError(f"xenstore page needs {INTERFACE_SIZE} bytes, got {view.nbytes}")
        self._buf = view
        self._words = Words(view[:INTERFACE_SIZE])  # 2076: a whole number of words

    # -- fields: each read and written whole (see hypervisor/public/pyxen/words.py) --

    def _get(self, offset: int) -> int:
        return self._words[offset]

    def _set(self, offset: int, value: int) -> None:
        self._words[offset] = value % _WRAP

    server_features = _Word(SERVER_FEATURES)
    connection = _Word(CONNECTION)
    error = _Word(ERROR)

    # -- the generic halves -----------------------------------------------------

    def _write(self, data: bytes, ring: int, cons_off: int, prod_off: int, which: str) -> int:
        cons = self._get(cons_off)
        prod = self._get(prod_off)
        # indexes are read before the data slots they guard are written
        free = XENSTORE_RING_SIZE - _in_flight(cons, prod, which)
        n = min(free, len(data))
        if n == 0:
            return 0
        src = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        start = MASK_XENSTORE_IDX(prod)
        first = min(n, XENSTORE_RING_SIZE - start)
        self._buf[ring + start:ring + start + first] = src[:first]
        if n > first:
            self._buf[ring:ring + n - first] = src[first:n]
        # data before the producer index is advanced
        self._set(prod_off, prod + n)
        return n

    def _read(self, maxlen: int, ring: int, cons_off: int, prod_off: int, which: str) -> bytes:
        cons = self._get(cons_off)
        prod = self._get(prod_off)
        # producer index is read before the data it publishes
        n = min(_in_flight(cons, prod, which), max(maxlen, 0))
        if n == 0:
            return b""
        start = MASK_XENSTORE_IDX(cons)
        first = min(n, XENSTORE_RING_SIZE - start)
        out = bytes(self._buf[ring + start:ring + start + first])
        if n > first:
            out += bytes(self._buf[ring:ring + n - first])
        # data is copied out before the consumer index releases the slots
        self._set(cons_off, cons + n)
        return out

    def _used(self, cons_off: int, prod_off: int, which: str) -> int:
        return _in_flight(self._get(cons_off), self._get(prod_off), which)

    # -- the domain's side ------------------------------------------------------

    def write_request(self, data: bytes) -> int:
        """Queue as much of ``data`` as fits in ``req``; returns the count.

        Notify xenstored when the count is non-zero."""
        return self._write(data, REQ, REQ_CONS, REQ_PROD, "req")

    def read_response(self, maxlen: int = XENSTORE_RING_SIZE) -> bytes:
        """Take up to ``maxlen`` bytes from ``rsp``.

        Notify xenstored when the result is non-empty (it may be waiting
        for room to write)."""
        return self._read(maxlen, RSP, RSP_CONS, RSP_PROD, "rsp")

    def request_space(self) -> int:
        """Bytes :meth:`write_request` could accept now."""
        return XENSTORE_RING_SIZE - self._used(REQ_CONS, REQ_PROD, "req")

    def response_available(self) -> int:
        """Bytes :meth:`read_response` could return now."""
        return self._used(RSP_CONS, RSP_PROD, "rsp")

    # -- xenstored's side -------------------------------------------------------

    def _server(self, fn, *args):
        try:
            return fn(*args)
        except RingError:
            self.error = XENSTORE_ERROR_RINGIDX
            raise

    def read_request(self, maxlen: int = XENSTORE_RING_SIZE) -> bytes:
        """Take up to ``maxlen`` bytes from ``req``.

        Notify the domain when the result is non-empty."""
        return self._server(self._read, maxlen, REQ, REQ_CONS, REQ_PROD, "req")

    def write_response(self, data: bytes) -> int:
        """Queue as much of ``data`` as fits in ``rsp``; returns the count.

        Notify the domain when the count is non-zero."""
        return self._server(self._write, data, RSP, RSP_CONS, RSP_PROD, "rsp")

    def request_available(self) -> int:
        """Bytes :meth:`read_request` could return now."""
        return self._server(self._used, REQ_CONS, REQ_PROD, "req")

    def response_space(self) -> int:
        """Bytes :meth:`write_response` could accept now."""
        return XENSTORE_RING_SIZE - self._server(self._used, RSP_CONS, RSP_PROD, "rsp")


def init_ring(buf, server_features: int = DEFAULT_SERVER_FEATURES) -> XenstoreRing:
    """Zero a fresh xenstore page and mark it connected; returns its ring."""
    ring = XenstoreRing(buf)
    ring._buf[:INTERFACE_SIZE] = bytes(INTERFACE_SIZE)
    ring.server_features = server_features
    ring.error = XENSTORE_ERROR_NONE
    # the page is fully initialised before it is published as connected
    ring.connection = XENSTORE_CONNECTED
    return ring
