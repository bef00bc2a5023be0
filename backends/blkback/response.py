"""The responses blkback puts on the ring."""

from __future__ import annotations

from hypervisor.public.io.blkif import make_response

from .validate import Request

__all__ = ["make_response", "response_for"]


def response_for(request: Request, status: int) -> bytes:
    """The response to `request` (an indirect request's carries its
    indirect_op, as Linux's blkback answers)."""
    return make_response(request.id, request.io_operation & 0xFF, status)
