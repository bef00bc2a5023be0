"""A domain's log: structlog lines on stdout, which the hypervisor sends to
<run-dir>/logs/<name>.log (JSON lines when the system runs with --log-json).

The domain's stderr goes to the same file.  With --log-json every line
there must be JSON, whoever writes it: :func:`json_output` turns stdout
and stderr into streams that wrap each plain line of text (a print, a
warning, a library's message) into a JSON object, and installs
``sys.excepthook`` and ``threading.excepthook`` so that an uncaught
exception is one JSON line carrying its whole traceback rather than a
traceback's many plain lines.
"""

from __future__ import annotations

import json
import sys
import threading
import traceback
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TextIO

import structlog


def make_logger(name: str, domid: int, json_lines: bool, stream: Any = None) -> Any:
    renderer = (structlog.processors.JSONRenderer() if json_lines
                else structlog.dev.ConsoleRenderer(colors=False))
    # JSON: a traceback (log.exception) becomes the "exception" field, text.
    tracebacks = [structlog.processors.format_exc_info] if json_lines else []
    return structlog.wrap_logger(
        structlog.PrintLogger(stream or sys.stdout),
        processors=[structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso"), *tracebacks, renderer],
    ).bind(domain=name, domid=domid)


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class JsonLines:
    """A text stream writing each line of the text written to it to `raw`
    as a JSON object (`fields`, the line as "event", `level`, a
    timestamp).  A line that is a JSON object already (a structlog line)
    passes as it is.  A line is written once its newline is."""

    def __init__(self, raw: TextIO, fields: dict[str, Any], level: str) -> None:
        self.raw = raw
        self.fields = fields
        self.level = level
        self._partial = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            lines = (self._partial + text).split("\n")
            self._partial = lines.pop()
            for line in lines:
                self.raw.write(self._encode(line) + "\n")
        return len(text)

    def _encode(self, line: str) -> str:
        if line.startswith("{"):
            try:
                if isinstance(json.loads(line), dict):
                    return line
            except ValueError:
                pass
        return json.dumps({"event": line, "level": self.level, "timestamp": _now(),
                           **self.fields})

    def flush(self) -> None:
        self.raw.flush()

    def close(self) -> None:
        """Write what is left of a last line without its newline."""
        with self._lock:
            if self._partial:
                self.raw.write(self._encode(self._partial) + "\n")
                self._partial = ""
        self.raw.flush()

    def fileno(self) -> int:
        return self.raw.fileno()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:
        return getattr(self.raw, "encoding", "utf-8")


def exception_line(fields: dict[str, Any], exc_type: type[BaseException],
                   exc: BaseException | None, tb: TracebackType | None,
                   event: str, **more: Any) -> str:
    """One JSON line for an exception, its traceback in "exception"."""
    text = "".join(traceback.format_exception(exc_type, exc, tb)).rstrip("\n")
    return json.dumps({"event": event, "level": "error", "timestamp": _now(),
                       "exception": text, **more, **fields})


def json_output(name: str, domid: int) -> None:
    """Make every line this process writes to stdout and stderr JSON (see
    the module's docstring).  Call it first thing: streams and hooks in
    place before anything can write or raise."""
    fields = {"domain": name, "domid": domid}
    stdout, stderr = sys.__stdout__, sys.__stderr__
    assert stdout is not None and stderr is not None  # a domain has both: its log
    sys.stdout = JsonLines(stdout, {**fields, "stream": "stdout"}, "info")  # type: ignore[assignment]
    sys.stderr = JsonLines(stderr, {**fields, "stream": "stderr"}, "error")  # type: ignore[assignment]

    def excepthook(exc_type: type[BaseException], exc: BaseException,
                   tb: TracebackType | None) -> None:
        sys.stdout.flush()
        stderr.write(exception_line(fields, exc_type, exc, tb, "uncaught exception",
                                    thread=threading.current_thread().name) + "\n")
        stderr.flush()

    def thread_excepthook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return  # as the default hook: a thread's quiet exit
        thread = args.thread.name if args.thread is not None else "?"
        stderr.write(exception_line(fields, args.exc_type, args.exc_value,
                                    args.exc_traceback, "uncaught exception in a thread",
                                    thread=thread) + "\n")
        stderr.flush()

    sys.excepthook = excepthook
    threading.excepthook = thread_excepthook
