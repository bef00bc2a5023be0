"""Guest text on its way to the admin: cleaned, attributed, limited.

A guest chooses every byte it prints. Where that text lands in front of
the admin (console/<name>.log, `pyxen dmesg`) it must not be able to
drive the terminal (escape sequences: colours are the least of it, some
terminals answer queries or set the window title), hide itself (carriage
returns, bidi overrides that reorder what is shown) or pass for somebody
else's line. So each line is cleaned (:func:`clean_line`) and prefixed
with the domain it came from, and a domain's log is rate limited with a
token bucket, as xenconsoled's discard does, saying how much it dropped,
and capped in size, rotated to one older file (:class:`ConsoleLog`).

`pyxen console` is the guest's own terminal and gets its bytes unchanged.
Pure: files and the clock are handed in.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from hypervisor.public.pyxen.text import clean_line

# -- `pyxen dmesg` ------------------------------------------------------------------

# "(XEN) [2026-01-01 10:00:00] ..." for the hypervisor's own lines, "(d5) [...] ..."
# for what a domain wrote with CONSOLEIO_write, as the hypervisor's console writes.
_HV_LINE = re.compile(r"^\((?:XEN|d(\d+))\) \[[^\]]*\] ")


def dmesg_lines(text: str) -> str:
    """The hypervisor console as the admin sees it: each line cleaned and
    prefixed with where it came from. An entry says so already ("(XEN)
    [time] ..." or a domain's "(d5) [time] ..."); a line that does not start
    that way continues
    the entry before it (a guest's CONSOLEIO_write holding a newline) and
    is marked with that entry's domain, so it cannot pass for a line of
    its own."""
    out = []
    origin = "(XEN)"
    for raw in text.split("\n"):
        line = clean_line(raw)
        match = _HV_LINE.match(line)
        if match:
            origin = f"(d{match.group(1)})" if match.group(1) else "(XEN)"
            out.append(line)
        elif line:
            out.append(f"{origin} | {line}")
        else:
            out.append(line)
    return "\n".join(out)


# -- console logs ---------------------------------------------------------------------


@dataclass
class TokenBucket:
    """`rate` bytes a second on average, `burst` at once."""

    rate: float
    burst: float
    tokens: float = -1.0
    stamp: float | None = None

    def take(self, wanted: int, now: float) -> bool:
        """May `wanted` bytes pass now? (If so they are spent.)"""
        if self.stamp is None:
            self.tokens = self.burst
        else:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if wanted > self.tokens:
            return False
        self.tokens -= wanted
        return True


#: A domain's console log: 64 KiB/s on average, 256 KiB at once; files of
#: at most 1 MiB, the last one kept as <name>.log.1.
CONSOLE_RATE = 64 * 1024
CONSOLE_BURST = 256 * 1024
CONSOLE_LOG_MAX = 1024 * 1024
MAX_LINE = 4096  # a longer line is cut into lines of this many characters


class ConsoleLog:
    """One domain's console log file: whole lines, cleaned, each prefixed
    with the domain; rate limited, size capped and rotated."""

    def __init__(self, path: Path, prefix: str, clock: Callable[[], float],
                 rate: float = CONSOLE_RATE, burst: float = CONSOLE_BURST,
                 limit: int = CONSOLE_LOG_MAX,
                 opener: Callable[[Path], BinaryIO] | None = None) -> None:
        self.path = path
        self.prefix = prefix
        self.clock = clock
        self.bucket = TokenBucket(rate, burst)
        self.limit = limit
        self._open = opener or (lambda p: open(p, "ab", buffering=0))
        self.file = self._open(path)
        self.size = self.file.tell()
        self.partial = bytearray()
        self.dropped = 0       # bytes dropped since the last notice
        self.dropped_total = 0

    def feed(self, data: bytes) -> None:
        """Output as it came from the ring (a chunk of at most a ring)."""
        if not self.bucket.take(len(data), self.clock()):
            if not self.dropped:
                self._flush_partial()
                self._line(f"xenconsoled: output over {self.bucket.rate / 1024:g} KiB/s, "
                           "dropping")
            self.dropped += len(data)
            self.dropped_total += len(data)
            return
        if self.dropped:
            self._flush_partial()
            self._line(f"xenconsoled: dropped {self.dropped} bytes of output")
            self.dropped = 0
        self.partial += data
        *lines, rest = self.partial.split(b"\n")
        for line in lines:
            self._line(line)
        self.partial = bytearray(rest)
        while len(self.partial) > MAX_LINE:
            self._line(bytes(self.partial[:MAX_LINE]))
            del self.partial[:MAX_LINE]

    def close(self) -> None:
        self._flush_partial()
        if self.dropped:
            self._line(f"xenconsoled: dropped {self.dropped} bytes of output")
            self.dropped = 0
        self.file.close()

    def _flush_partial(self) -> None:
        if self.partial:
            self._line(bytes(self.partial))
            self.partial.clear()

    def _line(self, line: bytes | str) -> None:
        if not isinstance(line, str):
            line = bytes(line).decode("utf-8", errors="replace")
        record = f"{self.prefix} {clean_line(line)}\n".encode()
        if self.size and self.size + len(record) > self.limit:
            self._rotate()
        self.file.write(record)
        self.size += len(record)

    def _rotate(self) -> None:
        self.file.close()
        self.path.replace(self.path.with_name(self.path.name + ".1"))
        self.file = self._open(self.path)
        self.size = 0
