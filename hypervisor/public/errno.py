"""Xen's error numbers (xen/errno.h).

Xen's public error values originate from x86 Linux and are part of the
ABI: a hypercall returns ``-E*`` on failure (``enum neg_errnoval``).  In C
they are ``XEN_EPERM``, ``XEN_ENOENT``, ...; here they drop the ``XEN_``
prefix.  Use these, never the host's :mod:`errno`, for values on the wire:
the host's numbering is not Xen's on every platform.

``EINTR`` and ``ERESTART`` are defined only for ``__XEN__``: they are
internal to the hypervisor and must never be returned to a guest.
"""

EPERM = 1            # Operation not permitted
ENOENT = 2           # No such file or directory
ESRCH = 3            # No such process
EINTR = 4            # Interrupted system call (hypervisor-internal only)
EIO = 5              # I/O error
ENXIO = 6            # No such device or address
E2BIG = 7            # Arg list too long
ENOEXEC = 8          # Exec format error
EBADF = 9            # Bad file number
ECHILD = 10          # No child processes
EAGAIN = 11          # Try again
EWOULDBLOCK = 11     # Operation would block.  Aliases EAGAIN
ENOMEM = 12          # Out of memory
EACCES = 13          # Permission denied
EFAULT = 14          # Bad address
EBUSY = 16           # Device or resource busy
EEXIST = 17          # File exists
EXDEV = 18           # Cross-device link
ENODEV = 19          # No such device
ENOTDIR = 20         # Not a directory
EISDIR = 21          # Is a directory
EINVAL = 22          # Invalid argument
ENFILE = 23          # File table overflow
EMFILE = 24          # Too many open files
ENOSPC = 28          # No space left on device
EROFS = 30           # Read-only file system
EMLINK = 31          # Too many links
EDOM = 33            # Math argument out of domain of func
ERANGE = 34          # Math result not representable
EDEADLK = 35         # Resource deadlock would occur
EDEADLOCK = 35       # Resource deadlock would occur. Aliases EDEADLK
ENAMETOOLONG = 36    # File name too long
ENOLCK = 37          # No record locks available
ENOSYS = 38          # Function not implemented
ENOTEMPTY = 39       # Directory not empty
ENODATA = 61         # No data available
ETIME = 62           # Timer expired
EBADMSG = 74         # Not a data message
EOVERFLOW = 75       # Value too large for defined data type
EILSEQ = 84          # Illegal byte sequence
ERESTART = 85        # Interrupted system call should be restarted (internal)
ENOTSOCK = 88        # Socket operation on non-socket
EMSGSIZE = 90        # Message too large.
EOPNOTSUPP = 95      # Operation not supported on transport endpoint
EADDRINUSE = 98      # Address already in use
EADDRNOTAVAIL = 99   # Cannot assign requested address
ENOBUFS = 105        # No buffer space available
EISCONN = 106        # Transport endpoint is already connected
ENOTCONN = 107       # Transport endpoint is not connected
ETIMEDOUT = 110      # Connection timed out
ECONNREFUSED = 111   # Connection refused

_ALIASES = frozenset({"EWOULDBLOCK", "EDEADLOCK"})

#: value -> name, like the standard library's ``errno.errorcode``; aliased
#: values map to their primary name (11 -> "EAGAIN", 35 -> "EDEADLK").
errorcode: dict[int, str] = {
    value: name
    for name, value in globals().items()
    if name.startswith("E") and isinstance(value, int) and name not in _ALIASES
}


class XenError(Exception):
    """A failed hypercall: ``errno`` is the positive Xen error number."""

    def __init__(self, errno: int, message: str = "") -> None:
        if errno <= 0:
            raise ValueError(f"Xen error numbers are positive, got {errno}")
        super().__init__(errno, message)
        self.errno = errno
        self.name = errorcode.get(errno, f"E#{errno}")
        self.message = message

    @classmethod
    def from_rc(cls, rc: int, message: str = "") -> "XenError":
        """The error for a negative hypercall return value (``-errno``)."""
        if rc >= 0:
            raise ValueError(f"hypercall result {rc} is not an error")
        return cls(-rc, message)

    @property
    def rc(self) -> int:
        """The hypercall return value carrying this error (``-errno``)."""
        return -self.errno

    def __str__(self) -> str:
        return f"{self.name}: {self.message}" if self.message else self.name
