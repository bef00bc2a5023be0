"""The hypervisor's one-shot timers: a heap of deadlines with one live
deadline per key (a vCPU's VIRQ_TIMER, a watchdog, a boot deadline).

Re-arming a key does not search the heap for its old entry: the new one is
pushed and the old one becomes stale, skipped when it comes up. A guest that
re-arms its timer in a loop would so grow the heap without bound, so once
stale entries outnumber the live ones the heap is rebuilt from the live
deadlines: its size stays within twice the live timers (plus a small slack),
and the rebuild's cost is paid for by the re-arms that made it necessary.

Pure: no clock of its own, no I/O.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterable

SLACK = 64  # stale entries tolerated even with few live timers


class Timers:
    def __init__(self) -> None:
        self.heap: list[tuple[int, int, Hashable]] = []  # (deadline, seq, key)
        self.live: dict[Hashable, int] = {}  # key -> its deadline
        self._seq = 0

    def _push(self, deadline: int, key: Hashable) -> None:
        self._seq += 1  # unique, so that keys are never compared
        heapq.heappush(self.heap, (deadline, self._seq, key))

    def set(self, key: Hashable, deadline: int) -> None:
        """Arm `key` for `deadline`, replacing its earlier deadline."""
        self.live[key] = deadline
        self._push(deadline, key)
        self._compact()

    def cancel(self, key: Hashable) -> None:
        self.live.pop(key, None)
        self._compact()

    def cancel_where(self, keys: Iterable[Hashable]) -> None:
        for key in list(keys):
            self.live.pop(key, None)
        self._compact()

    def deadline(self, key: Hashable) -> int | None:
        return self.live.get(key)

    def _compact(self) -> None:
        if len(self.heap) > 2 * len(self.live) + SLACK:
            self.heap = [(d, i, k) for i, (k, d) in enumerate(self.live.items())]
            heapq.heapify(self.heap)
            self._seq = len(self.heap)

    def pop_due(self, now: int) -> list[Hashable]:
        """The keys whose deadline is at or before `now`, disarmed."""
        due = []
        heap, live = self.heap, self.live
        while heap and heap[0][0] <= now:
            deadline, _, key = heapq.heappop(heap)
            if live.get(key) == deadline:
                del live[key]
                due.append(key)
        return due

    def next_deadline(self) -> int | None:
        """The earliest live deadline (dropping stale entries on top)."""
        heap, live = self.heap, self.live
        while heap and live.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)  # cancelled or superseded
        return heap[0][0] if heap else None
