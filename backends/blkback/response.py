"""The responses blkback puts on the ring."""

from __future__ import annotations

import ctypes

from hypervisor.public.io import blkif

from .validate import Request

RESPONSE_SIZE = ctypes.sizeof(blkif.blkif_response)


def make_response(id: int, operation: int, status: int) -> bytes:
    """A `blkif_response` (16 bytes, padding zeroed), to be written at the
    start of the ring slot: `id` and `operation` echo the request."""
    return bytes(blkif.blkif_response(id=id, operation=operation, status=status))


def response_for(request: Request, status: int) -> bytes:
    """The response to `request` (an indirect request's carries its
    indirect_op, as Linux's blkback answers)."""
    return make_response(request.id, request.io_operation & 0xFF, status)
