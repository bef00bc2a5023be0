"""The hypervisor's log: its file (structlog, JSON lines on request; capped
and rotated), the text rules for what domains put in it, and the per-domain
rate limit.

A domain may write to the hypervisor's console (CONSOLEIO_write) and can
make the hypervisor log about it (a refused grant, a bad hypercall). Both are
the domain's words, so, as Xen does for guest_console_write and its printk
ratelimit:
- every line a domain hands over is stripped of control characters (no
  terminal escapes reach an admin's `pyxen dmesg`, no forged line breaks)
  and is prefixed with its domain, "(d5) ...", never the "(XEN)" of the
  hypervisor's own lines;
- each domain has a token bucket: a burst of lines, then one line per
  interval; the first line let through after a quiet spell says how many
  were suppressed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, cast

import structlog

from hypervisor.public.pyxen.text import clean_line

# Xen's printk_ratelimit_ms and printk_ratelimit_burst.
RATELIMIT_MS = 5000
RATELIMIT_BURST = 10

LOG_MAX_BYTES = 4 << 20  # one log file, before it is rotated
LOG_BACKUPS = 3  # hypervisor.log.1 .. .3 kept beside it


def printable(text: str) -> str:
    """`text` without control characters or escape sequences (tabs kept):
    what a domain's words may look like on an admin's terminal."""
    return text if text.isprintable() else clean_line(text)


@dataclass
class TokenBucket:
    """Xen's __printk_ratelimit: `burst` lines at once, then one per
    `interval_ms`. Times are milliseconds of a monotonic clock."""

    interval_ms: int = RATELIMIT_MS
    burst: int = RATELIMIT_BURST
    toks: int = -1  # full, the first time it is asked
    last_ms: int | None = None
    missed: int = 0

    def admit(self, now_ms: int) -> tuple[bool, int]:
        """(whether this line goes out, how many were suppressed before it)."""
        cap = self.burst * self.interval_ms
        if self.toks < 0:
            self.toks = cap
        elif self.last_ms is not None:
            self.toks = min(cap, self.toks + max(0, now_ms - self.last_ms))
        self.last_ms = now_ms
        if self.toks >= self.interval_ms:
            self.toks -= self.interval_ms
            lost, self.missed = self.missed, 0
            return True, lost
        self.missed += 1
        return False, 0


class RotatingFile:
    """A text file that, before it would pass `max_bytes`, becomes `name.1` (older ones
    shift up to `name.<backups>`, the oldest dropped) and starts afresh:
    what logging.handlers.RotatingFileHandler does, as a plain file object
    structlog can write to."""

    def __init__(self, path: Path, max_bytes: int = LOG_MAX_BYTES,
                 backups: int = LOG_BACKUPS) -> None:
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        self.file: TextIO = open(path, "a", buffering=1)

    def write(self, text: str) -> int:
        size = self.file.tell()
        if size and size + len(text.encode()) > self.max_bytes:
            self._rotate()
        return self.file.write(text)

    def flush(self) -> None:
        self.file.flush()

    def _rotate(self) -> None:
        self.file.close()
        for i in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.backups > 0:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self.file = open(self.path, "a", buffering=1)

    def close(self) -> None:
        self.file.close()


def make_logger(path: Path, json_lines: bool = False, max_bytes: int = LOG_MAX_BYTES,
                backups: int = LOG_BACKUPS) -> Any:
    path.parent.mkdir(parents=True, exist_ok=True)
    renderer = (structlog.processors.JSONRenderer() if json_lines
                else structlog.dev.ConsoleRenderer(colors=False))
    return structlog.wrap_logger(
        structlog.WriteLogger(cast(TextIO, RotatingFile(path, max_bytes, backups))),
        processors=[structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso"), renderer],
    ).bind(component="xen")
