"""Pages of blkfront's grant window, handed out as contiguous as possible.

A request's data pages are persistently granted pages of the window.  When
they are consecutive in the window they are consecutive in the backend's
mapping of it too, so the backend does one preadv/pwritev into one buffer
instead of walking one iovec per page, and the frontend copies a request's
data with one slice assignment.  :class:`Extents` therefore keeps the free
pages as sorted, coalesced runs and hands out a single run when one is
long enough (first fit), several only when the free space is fragmented.

:class:`Extents` is pure bookkeeping; :class:`Pool` adds the waiting: a
taker blocks until enough pages are given back, or until the pool is
closed (its connection is gone: the taker retries on the next one).
"""

from __future__ import annotations

import bisect
import threading


class Extents:
    """Free pages ``start .. start+count-1`` as sorted ``[start, length]`` runs."""

    def __init__(self, start: int, count: int) -> None:
        if start < 0 or count < 0:
            raise ValueError(f"pages {start}+{count}")
        self.first, self.total = start, count
        self.starts: list[int] = [start] if count else []
        self.lengths: list[int] = [count] if count else []
        self.free = count

    def runs(self) -> list[tuple[int, int]]:
        """The free runs, in page order (for tests and logs)."""
        return list(zip(self.starts, self.lengths))

    def take(self, count: int, contiguous: bool = False) -> list[int] | None:
        """`count` pages, in one run if any free run is long enough, else
        (unless `contiguous`) from the first runs; None (nothing taken) if
        they cannot be had."""
        if count < 0 or count > self.total:
            raise ValueError(f"{count} pages asked of a pool of {self.total}")
        if count > self.free:
            return None
        if not count:
            return []
        starts, lengths = self.starts, self.lengths
        for i, length in enumerate(lengths):
            if length >= count:
                start = starts[i]
                if length == count:
                    del starts[i], lengths[i]
                else:
                    starts[i] += count
                    lengths[i] -= count
                self.free -= count
                return list(range(start, start + count))
        if contiguous:
            return None
        # Fragmented: gather from the first runs.
        pages: list[int] = []
        while len(pages) < count:
            start, length = starts[0], lengths[0]
            n = min(length, count - len(pages))
            pages.extend(range(start, start + n))
            if n == length:
                del starts[0], lengths[0]
            else:
                starts[0] += n
                lengths[0] -= n
        self.free -= count
        return pages

    def give(self, pages: list[int]) -> None:
        """Return pages (any order); ValueError if one is outside the pool
        or already free (a double free), and then nothing is returned."""
        if not pages:
            return
        first = pages[0]
        if pages[-1] - first == len(pages) - 1 and \
                pages == list(range(first, first + len(pages))):
            runs = [(first, len(pages))]  # the usual case: one run, as taken
        else:
            runs = _runs(sorted(pages))
        end = self.first + self.total
        for start, length in runs:
            if start < self.first or start + length > end:
                raise ValueError(f"pages {start}..{start + length - 1} are not "
                                 f"this pool's {self.first}..{end - 1}")
            if self._overlaps(start, length):
                raise ValueError(f"pages {start}..{start + length - 1}: some are "
                                 "free already")
        for start, length in runs:
            self._insert(start, length)
        self.free += len(pages)

    def _overlaps(self, start: int, length: int) -> bool:
        i = bisect.bisect_right(self.starts, start)
        if i and self.starts[i - 1] + self.lengths[i - 1] > start:
            return True
        return i < len(self.starts) and self.starts[i] < start + length

    def _insert(self, start: int, length: int) -> None:
        """Add a free run that overlaps none, merging with its neighbours."""
        starts, lengths = self.starts, self.lengths
        i = bisect.bisect_right(starts, start)
        if i and starts[i - 1] + lengths[i - 1] == start:
            i -= 1
            lengths[i] += length
        else:
            starts.insert(i, start)
            lengths.insert(i, length)
        if i + 1 < len(starts) and starts[i] + lengths[i] == starts[i + 1]:
            lengths[i] += lengths[i + 1]
            del starts[i + 1], lengths[i + 1]


def _runs(pages: list[int]) -> list[tuple[int, int]]:
    """Sorted pages as (start, length) runs; ValueError on a duplicate."""
    runs: list[tuple[int, int]] = []
    start = prev = pages[0]
    for page in pages[1:]:
        if page == prev:
            raise ValueError(f"page {page} given twice")
        if page != prev + 1:
            runs.append((start, prev - start + 1))
            start = page
        prev = page
    runs.append((start, prev - start + 1))
    return runs


class PoolClosed(Exception):
    """The pool's connection is gone: take pages from the next one."""


class Pool:
    """Extents shared by threads: take() waits until enough pages are free."""

    def __init__(self, start: int, count: int) -> None:
        self.extents = Extents(start, count)
        self.cond = threading.Condition()
        self.closed = False

    @property
    def size(self) -> int:
        return self.extents.total

    def take(self, count: int) -> list[int]:
        """`count` pages, waiting for them; PoolClosed once closed."""
        with self.cond:
            while True:
                if self.closed:
                    raise PoolClosed("the connection is gone")
                pages = self.extents.take(count)
                if pages is not None:
                    return pages
                self.cond.wait()

    def try_take(self, count: int, contiguous: bool = False) -> list[int] | None:
        """`count` pages now (one run if `contiguous`), or None."""
        with self.cond:
            if self.closed:
                raise PoolClosed("the connection is gone")
            return self.extents.take(count, contiguous)

    def give(self, pages: list[int]) -> None:
        if not pages:
            return
        with self.cond:
            self.extents.give(pages)
            self.cond.notify_all()

    def close(self) -> None:
        """Wake every taker: they get PoolClosed."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()
