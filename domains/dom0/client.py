"""The CLI side of the control socket, and where a system lives."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgpack
import zmq

CONTROL_SOCKET = "control.sock"
REPLY_TIMEOUT_MS = 120_000  # creating a domain waits for its kernel to boot


class NotRunning(Exception):
    """No system answers in this run directory."""


class CommandFailed(Exception):
    """The toolstack refused the command; the message says why."""


def default_run_dir() -> Path:
    env = os.environ.get("PYXEN_RUN_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/run/pyxen")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime) / "pyxen" if runtime else Path(f"/tmp/pyxen-{os.getuid()}")


def hypervisor_pid(run_dir: Path) -> int | None:
    """The pid of the hypervisor running in `run_dir`, if one is alive."""
    try:
        pid = int((run_dir / "hypervisor.pid").read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


class ControlClient:
    def __init__(self, run_dir: Path, timeout_ms: int = REPLY_TIMEOUT_MS) -> None:
        self.run_dir = run_dir
        self.path = run_dir / CONTROL_SOCKET
        self.timeout_ms = timeout_ms

    def call(self, cmd: str, **args: Any) -> Any:
        if hypervisor_pid(self.run_dir) is None or not self.path.exists():
            raise NotRunning(f"no pyxen system is running in {self.run_dir} "
                             "(start one with `pyxen boot`, or give --run-dir)")
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(f"ipc://{self.path}")
            sock.send(msgpack.packb({"cmd": cmd, "args": args}))
            if not sock.poll(self.timeout_ms):
                raise NotRunning(f"the toolstack in {self.run_dir} did not answer "
                                 f"within {self.timeout_ms // 1000}s")
            reply = msgpack.unpackb(sock.recv())
        finally:
            sock.close()
        if not reply.get("ok"):
            raise CommandFailed(reply.get("error", "failed"))
        return reply.get("result")
