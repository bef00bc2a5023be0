"""Work posted to a selector-driven thread from other threads.

Dom0's daemons (xenstored, xenconsoled) own their state on one thread that
sleeps in a selector; upcall handlers and watch callbacks run elsewhere.
They post an item and write a byte to a pipe the selector watches.
"""

from __future__ import annotations

import os
import queue
from typing import Any


class Mailbox:
    def __init__(self) -> None:
        self.items: queue.SimpleQueue = queue.SimpleQueue()
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)

    def fileno(self) -> int:
        return self._read

    def post(self, item: Any) -> None:
        self.items.put(item)
        try:
            os.write(self._write, b"!")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already

    def take_all(self) -> list[Any]:
        try:
            while os.read(self._read, 4096):
                pass
        except BlockingIOError:
            pass
        taken = []
        while True:
            try:
                taken.append(self.items.get_nowait())
            except queue.Empty:
                return taken

    def close(self) -> None:
        os.close(self._read)
        os.close(self._write)
