"""`pyxen console NAME`: attach to a domain's console through xenconsoled.

On a terminal, keys go to the guest as typed (raw mode) and Ctrl-] detaches,
as with `xl console`. Otherwise standard input is forwarded until it ends,
and output is shown until the console closes or the command is interrupted.
"""

from __future__ import annotations

import os
import select
import socket
import sys
import termios
import tty
from pathlib import Path

ESCAPE = 0x1D  # Ctrl-]


class ConsoleError(Exception):
    pass


def attach(run_dir: Path, name: str) -> int:
    path = run_dir / "console" / "socket"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError as exc:
        raise ConsoleError(f"cannot reach xenconsoled at {path}: {exc.strerror}") from None
    sock.sendall(name.encode() + b"\n")
    answer = b""
    while not answer.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise ConsoleError("xenconsoled closed the connection")
        answer += chunk
    if not answer.startswith(b"OK"):
        raise ConsoleError(answer.decode(errors="replace").removeprefix("ERR ").strip())
    interactive = sys.stdin.isatty()
    saved = termios.tcgetattr(sys.stdin) if interactive else None
    if interactive:
        tty.setraw(sys.stdin)
    try:
        return _pump(sock, interactive)
    finally:
        if saved is not None:
            termios.tcsetattr(sys.stdin, termios.TCSADRAIN, saved)
            print()
        sock.close()


def _pump(sock: socket.socket, interactive: bool) -> int:
    stdin = sys.stdin.fileno()
    out = sys.stdout.buffer
    watching = [sock, stdin]
    while True:
        readable, _, _ = select.select(watching, [], [])
        if sock in readable:
            data = sock.recv(65536)
            if not data:
                return 0  # the domain is gone
            out.write(data)
            out.flush()
        if stdin in readable:
            data = os.read(stdin, 4096)
            if not data:
                watching.remove(stdin)  # input ended: keep showing output
                continue
            if interactive and ESCAPE in data:
                data = data[:data.index(ESCAPE)]
                if data:
                    sock.sendall(data)
                return 0
            sock.sendall(data)
