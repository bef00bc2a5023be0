"""The hypervisor's end of a domain's memory channel.

A SEQPACKET socket pair made at spawn: the hypervisor's only way to hand a
running domain a file descriptor (a grant window's memfd, one end of a
doorbell, a device's image or TAP). Each message is a msgpack map with a "tag" saying what it
carries (domains/kernel/memchan.py demultiplexes them), and at most a few
fds.

The hypervisor serves every domain from one thread, so a send must never
wait on the domain: the socket is non-blocking, and its send buffer is the
per-domain cap on what may be queued for it (some 270 messages with the
kernel's default buffer, each holding its fds in flight). A domain that
does not read its channel finds it full and the hypercall that needed it
fails with EBUSY; one that closed its end gets ENOTCONN. Neither touches
any other domain, nor the hypervisor's loop.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
from collections.abc import Sequence

import msgpack

from hypervisor.public.errno import EBUSY, ENOTCONN, XenError


class MemChannel:
    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock

    def send(self, meta: dict, fds: Sequence[int] = ()) -> None:
        """Queue one message for the domain, or raise XenError (EBUSY when
        its channel is full, ENOTCONN when it closed its end). All or
        nothing: SEQPACKET never takes half a message."""
        data = msgpack.packb(meta)
        try:
            if fds:
                socket.send_fds(self.sock, [data], list(fds))
            else:
                self.sock.send(data)
        except BlockingIOError:
            raise XenError(EBUSY, "the domain's memory channel is full "
                                  "(it does not read it)") from None
        except OSError as exc:
            raise XenError(ENOTCONN, "the domain's memory channel is closed "
                                     f"({exc.strerror})") from None

    def queued(self) -> int:
        """Bytes sent that the domain has not read yet (SIOCOUTQ): 0 once it
        has read everything."""
        try:
            out = fcntl.ioctl(self.sock.fileno(), termios.TIOCOUTQ, b"\0" * 4)
        except OSError:
            return 0
        return struct.unpack("i", out)[0]

    def close(self) -> None:
        self.sock.close()
