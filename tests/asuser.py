"""Run a command as an unprivileged uid that can still reach this checkout.

Usage (as root): unshare --mount --propagation private python asuser.py UID CMD...

A non-root user often cannot reach the interpreter or the checkout: pyenv
and CI clones live under /root, which is 0700. In the private mount
namespace `unshare` gave us, every directory on their paths that the user
cannot search is covered by a 0755 tmpfs that holds only the one entry on
the path (bind-mounted back), so the user reaches exactly those paths
and nothing else of the private directory. Then we drop to the uid, with no
groups and no capabilities, and exec the command.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path


def _unsearchable(path: Path) -> tuple[Path, str] | None:
    """The first directory on `path` that others cannot search, and the
    next component under it."""
    parts = path.parts
    for i in range(1, len(parts)):
        directory = Path(*parts[:i])
        if not os.stat(directory).st_mode & stat.S_IXOTH:
            return directory, parts[i]
    return None


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def _uncover(path: Path) -> None:
    while (hit := _unsearchable(path)) is not None:
        directory, entry = hit
        # Held open across the cover, so that nothing is left on disk: the
        # cover is a tmpfs of this mount namespace only.
        keep = os.open(directory / entry, os.O_PATH)
        try:
            _mount("-t", "tmpfs", "-o", "mode=0755", "pyxen-asuser", str(directory))
            target = directory / entry
            target.mkdir() if stat.S_ISDIR(os.fstat(keep).st_mode) else target.touch()
            _mount("--no-canonicalize", "--rbind", f"/proc/{os.getpid()}/fd/{keep}", str(target))
        finally:
            os.close(keep)


def main() -> None:
    uid = int(sys.argv[1])
    command = sys.argv[2:]
    for path in (Path(sys.executable).resolve(), Path(sys.prefix).resolve(),
                 Path(__file__).resolve().parent.parent):
        _uncover(path)
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)  # clears the permitted and effective capability sets
    os.environ["HOME"] = os.environ.get("PYXEN_RUN_DIR", "/tmp")
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
