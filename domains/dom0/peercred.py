"""Who is at the other end of a unix socket (SO_PEERCRED).

Dom0's sockets in the run dir (xenstored's, xenconsoled's) act with Dom0's
authority: only processes of the uid that started pyxen may use them, as
ZMQ_IPC_FILTER_UID does for the control socket. The kernel fills in the
peer's credentials at connect(); nothing the peer sends can change them.
"""

from __future__ import annotations

import os
import socket
import struct

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_uid(sock: socket.socket) -> int | None:
    try:
        _, uid, _ = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                  _UCRED.size))
    except OSError:
        return None
    return uid


def owner_uid() -> int:
    """The uid whose processes may connect: ours, who started pyxen."""
    return os.getuid()


def peer_allowed(sock: socket.socket, uid: int) -> bool:
    return peer_uid(sock) == uid
