"""How many hypercall connections a domain may hold, and the fds they cost.

A kernel opens a connection to its hypercall channel per hypercall in
flight (domains/kernel/hypercall.py keeps a pool of them, at most its cap),
and each is a file descriptor of the hypervisor's. Nothing stops a hostile
kernel from opening more: without a cap one domain could take every fd the
hypervisor may open (RLIMIT_NOFILE), after which no domain can be created,
no window opened, no connection accepted, for anyone. So each domain gets
a cap derived from its vCPUs, the connections past it are refused (shut at
once: the domain's own loss), and the hypervisor commits fds to a domain
before it creates it, so that the sum of every domain's worst case fits
its limit: a create that would not fit fails with EMFILE.

Dom0 is trusted, as in Xen, and has no cap (its toolstack's creates hold a
hypercall each for as long as a domain boots).
"""

from __future__ import annotations

import resource

from hypervisor.public.errno import EMFILE, XenError

#: Connections per vCPU, and for the kernel's other threads (the upcall
#: loop, xenbus, a backend's workers): hypercalls in flight at once.
PER_VCPU = 4
SLACK = 4
#: What a domain costs the hypervisor in fds besides its connections: its
#: memfds (RAM, shared info, two grant-table segments), memory channel,
#: pidfd, two ZeroMQ sockets (a mailbox each, a listener, the upcall
#: connection), the connection monitor (two more mailboxes), and room.
FIXED_PER_DOMAIN = 16
#: For the hypervisor's own files, the standby process, connections being
#: refused, doorbell pairs being handed over, a logger rotating.
RESERVE = 256
#: Dom0 has no cap; it is committed this many.
DOM0_COMMITTED = 128


def cap_for(vcpus: int, privileged: bool) -> int | None:
    """The most hypercall connections a domain may hold (None: no cap)."""
    if privileged:
        return None
    return PER_VCPU * vcpus + SLACK


def raise_fd_limit() -> int:
    """Raise our soft RLIMIT_NOFILE to the hard limit; the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


class FdBudget:
    """The fds committed to domains against the hypervisor's limit: each
    domain its fixed cost and its connection cap, and each grant window it
    holds (a memfd) as it opens it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.committed = RESERVE

    @staticmethod
    def domain_cost(cap: int | None) -> int:
        return FIXED_PER_DOMAIN + (DOM0_COMMITTED if cap is None else cap)

    def commit(self, n: int, what: str) -> None:
        """Take `n` fds for `what`, or XenError(EMFILE) when they would not fit."""
        if self.committed + n > self.limit:
            raise XenError(EMFILE, f"{what} needs {n} file descriptors of the "
                           f"hypervisor's {self.limit} ({self.committed} committed)")
        self.committed += n

    def release(self, n: int) -> None:
        self.committed = max(RESERVE, self.committed - n)


class ConnectionCap:
    """One domain's hypercall connections, in the order they were accepted
    (the fds ZeroMQ's monitor reports); `accepted` says which to refuse."""

    def __init__(self, cap: int | None) -> None:
        self.cap = cap
        self.open: dict[int, None] = {}
        self.refused = 0
        self.unlogged = 0  # refused since the last log line

    def accepted(self, fd: int) -> bool:
        """A new connection on `fd`: True to keep it, False to refuse it
        (the domain holds its cap already)."""
        if self.cap is not None and len(self.open) >= self.cap:
            self.refused += 1
            return False
        self.open[fd] = None
        return True

    def closed(self, fd: int) -> None:
        self.open.pop(fd, None)
