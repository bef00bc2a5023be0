"""The kernel's work queue: where xenbus work that may block runs.

Watch callbacks run on the XenStore client's watch thread (Linux's
xenwatch), which must stay free: a device's handshake waits for the other
end's state, and only that thread delivers it.  What waits goes here
instead (Linux's workqueue): connecting a device, reconnecting it to a
restarted backend, its close handshake, a backend's reaction to its
frontend.

Work is submitted under a key (a device's XenStore path): items of one key
run one at a time, in the order they came, so a device's lifecycle is never
run by two threads at once; items of different keys run side by side, each
on a worker thread.  Workers are started when work comes and no worker is
idle, and end after IDLE seconds without work.  The queue owns them:
close() stops taking work, waits for what is queued and running (drains
it) and joins every worker it started.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Hashable

from domains.kernel.threads import OwnedThread

#: Seconds a worker waits for work before it ends.
IDLE = 5.0


class WorkQueue:
    def __init__(self, log, name: str = "xenbus-work", idle: float = IDLE) -> None:
        self.log = log
        self.name = name
        self.idle = idle
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # work came (workers wait on it)
        self._done = threading.Condition(lock)  # work ended (drain() waits on it)
        self._items: dict[Hashable, deque[Callable[[], None]]] = {}
        self._ready: deque[Hashable] = deque()  # keys with work, none of it running
        self._running: dict[Hashable, threading.Thread] = {}
        self._workers: set[threading.Thread] = set()
        self._ended: list[threading.Thread] = []  # left on idle, not joined yet
        self._waiting = 0  # workers waiting for work
        self._count = 0
        self._closing = False

    # -- submitting ---------------------------------------------------------------

    def submit(self, fn: Callable[[], None], key: Hashable | None = None) -> bool:
        """Run `fn()` on a worker, after the work already queued under
        `key` (None: a key of its own).  False, and nothing runs, once the
        queue is closing."""
        with self._cond:
            if self._closing:
                self.log.info("work refused: the queue is closing", work=_name(fn))
                return False
            if key is None:
                key = object()
            items = self._items.setdefault(key, deque())
            items.append(fn)
            if len(items) == 1 and key not in self._running:
                self._ready.append(key)
                self._wake()
        return True

    def _wake(self) -> None:
        """Under the lock: a key became ready."""
        if len(self._ready) <= self._waiting:
            self._cond.notify()
            return
        self._ended = [t for t in self._ended if t.is_alive()]
        self._count += 1
        worker = OwnedThread(f"{self.name}-{self._count}", self._work)
        self._workers.add(worker)
        worker.start()

    # -- the workers -----------------------------------------------------------------

    def _work(self) -> None:
        me = threading.current_thread()
        cond = self._cond
        with cond:
            while True:
                if not self._ready:
                    if self._closing:
                        break
                    self._waiting += 1
                    woken = cond.wait(self.idle)
                    self._waiting -= 1
                    if not self._ready:
                        if self._closing or not woken:
                            break
                        continue
                key = self._ready.popleft()
                fn = self._items[key].popleft()
                self._running[key] = me
                cond.release()
                try:
                    fn()
                except Exception as exc:  # one device's trouble must not stop the others
                    self.log.error("work failed", work=_name(fn), error=repr(exc))
                finally:
                    cond.acquire()
                    del self._running[key]
                    if self._items[key]:
                        self._ready.append(key)
                    else:
                        del self._items[key]
                    self._done.notify_all()
            self._workers.discard(me)
            self._ended.append(me)

    # -- waiting -----------------------------------------------------------------------

    def busy(self, key: Hashable) -> bool:
        """Whether work of `key` is queued or running."""
        with self._cond:
            return key in self._items

    def running_here(self, key: Hashable) -> bool:
        """Whether the calling thread is running work of `key` (which then
        cannot wait for that key's work to end)."""
        with self._cond:
            return self._running.get(key) is threading.current_thread()

    def drain(self, key: Hashable | None = None, timeout: float | None = None) -> bool:
        """Wait until no work of `key` (None: none at all) is queued or
        running; False on timeout, or when called from that very work."""
        with self._cond:
            if key is not None and self._running.get(key) is threading.current_thread():
                return False
            if key is None:
                return self._done.wait_for(lambda: not self._items, timeout)
            return self._done.wait_for(lambda: key not in self._items, timeout)

    @property
    def threads(self) -> list[threading.Thread]:
        """The workers alive (idle or running)."""
        with self._cond:
            return [t for t in (*self._workers, *self._ended) if t.is_alive()]

    def close(self, timeout: float = 60.0) -> bool:
        """Take no more work, drain what is queued, join the workers;
        False if something was still running after `timeout` seconds."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            drained = self._done.wait_for(lambda: not self._items, timeout)
            self._cond.notify_all()
            workers = [*self._workers, *self._ended]
        me = threading.current_thread()
        for worker in workers:
            if worker is not me:
                worker.join(timeout)
        if not drained:
            self.log.error("work still running at close", keys=len(self._items))
        return drained


def _name(fn: Callable) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)
