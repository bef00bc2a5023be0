"""Devices' fds the hypervisor hands this domain, by key (tag "fd").

Dom0 asks the hypervisor to open what a device needs (a disk image for
blkback, a TAP for netfront; PYXEN_op_pass_fd) before it writes the
device's nodes, so the fd is on our memory channel by the time a driver
looks for it. A driver takes it by key (`take`), and owns it from then on.

Bounded: a key handed again replaces (and closes) the fd not yet taken,
and past MAX_WAITING fds nobody took the oldest is closed, so fds for
devices that never started do not pile up.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from typing import Any

MAX_WAITING = 64
#: How long a driver waits for an fd still in flight (the hypervisor queues
#: it before Dom0 writes the nodes that make the driver look: one read of
#: the channel normally finds it).
TAKE_TIMEOUT = 5.0


def vbd_key(fe: int, devid: int) -> str:
    """The key of a disk's image, in the domain serving it."""
    return f"vbd/{fe}/{devid}"


def vif_key(devid: int) -> str:
    """The key of a vif's TAP fd, in the guest."""
    return f"vif/{devid}"


class FdTable:
    def __init__(self, memchan: Any = None, max_waiting: int = MAX_WAITING) -> None:
        self.memchan = memchan
        self.max_waiting = max_waiting
        self._waiting: OrderedDict[str, tuple[dict, int]] = OrderedDict()
        self._cond = threading.Condition()
        if memchan is not None:
            memchan.on("fd", self.arrive)

    def arrive(self, meta: dict, fds: list) -> None:
        """The channel's sink (under its lock: stash and wake, never wait)."""
        for fd in fds[1:]:
            _close(fd)
        key = meta.get("key")
        if not fds:
            return
        if not isinstance(key, str):
            _close(fds[0])
            return
        with self._cond:
            stale = self._waiting.pop(key, None)
            self._waiting[key] = (meta, fds[0])
            if stale is not None:
                _close(stale[1])
            while len(self._waiting) > self.max_waiting:
                _, (_, fd) = self._waiting.popitem(last=False)
                _close(fd)
            self._cond.notify_all()

    def take(self, key: str, timeout: float = TAKE_TIMEOUT) -> tuple[int, dict]:
        """The fd handed under `key` and what came with it, now the
        caller's; waits up to `timeout` for one still in flight.
        TimeoutError if none came."""
        deadline = time.monotonic() + timeout
        if self.memchan is not None:
            self.memchan.pump()  # not under our lock: the sink takes it
        with self._cond:
            while key not in self._waiting:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no fd was handed over for {key}")
                self._cond.wait(left)
            meta, fd = self._waiting.pop(key)
            return fd, meta

    def discard(self, key: str) -> None:
        """Close the fd waiting under `key`, if any (its device went away
        before it was taken)."""
        with self._cond:
            item = self._waiting.pop(key, None)
        if item is not None:
            _close(item[1])

    def __len__(self) -> int:
        with self._cond:
            return len(self._waiting)


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
