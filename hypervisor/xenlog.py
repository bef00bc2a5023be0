"""The hypervisor's log file (structlog; JSON lines on request)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog


def make_logger(path: Path, json_lines: bool = False) -> Any:
    path.parent.mkdir(parents=True, exist_ok=True)
    renderer = (structlog.processors.JSONRenderer() if json_lines
                else structlog.dev.ConsoleRenderer(colors=False))
    return structlog.wrap_logger(
        structlog.WriteLogger(open(path, "a", buffering=1)),
        processors=[structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso"), renderer],
    ).bind(component="xen")
