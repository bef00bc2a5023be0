"""A domain's log: structlog lines on stdout, which the hypervisor sends to
<run-dir>/logs/<name>.log (JSON lines when the system runs with --log-json)."""

from __future__ import annotations

import sys
from typing import Any

import structlog


def make_logger(name: str, domid: int, json_lines: bool, stream: Any = None) -> Any:
    renderer = (structlog.processors.JSONRenderer() if json_lines
                else structlog.dev.ConsoleRenderer(colors=False))
    return structlog.wrap_logger(
        structlog.PrintLogger(stream or sys.stdout),
        processors=[structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso"), renderer],
    ).bind(domain=name, domid=domid)
