"""Threads of the kernel and its drivers: each has an owner that keeps it
and joins it when it stops (a vCPU, the upcall loop, the XenStore
client's reader and watch threads, the work queue's workers, a backend's
ring workers).  Nothing starts a thread it does not join.

They are daemon threads for one case only: a domain whose workload dies
(a panic, SystemExit) must still end, whatever its threads were doing.
Every orderly stop goes through the owners' close(), which joins them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class OwnedThread(threading.Thread):
    """A thread its creator keeps and joins (see the module's docstring)."""

    def __init__(self, name: str, target: Callable[..., Any] | None = None,
                 args: tuple = ()) -> None:
        super().__init__(name=name, target=target, args=args, daemon=True)
