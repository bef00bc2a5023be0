"""A domain process's threads, as it names them and as the hypervisor does.

A kernel reports its vCPU threads by the ids it sees. In its own pid
namespace those are not the hypervisor's: /proc/<pid>/task/<tid>/status has
an `NSpid:` line listing the thread's id in each namespace it is in, from
the one /proc belongs to (the hypervisor's: the first field) to its own (the
last). Without a pid namespace the line has one field and both are the same.
"""

from __future__ import annotations

import os


def parse_nspid(status: str) -> tuple[int, int] | None:
    """(the id /proc's namespace knows, the thread's own innermost id), from
    a /proc status file's text; None if it has no NSpid line."""
    for line in status.splitlines():
        if line.startswith("NSpid:"):
            ids = line.split()[1:]
            if ids:
                return int(ids[0]), int(ids[-1])
    return None


def thread_ids(pid: int) -> dict[int, int]:
    """{the id the process's threads know themselves by: our id for it}
    for every thread of process `pid` (empty if it is gone)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return {}
    ids: dict[int, int] = {}
    for name in tids:
        try:
            with open(f"/proc/{pid}/task/{name}/status") as f:
                found = parse_nspid(f.read())
        except OSError:
            continue  # the thread ended meanwhile
        host = int(name)
        inner = found[1] if found is not None and found[0] == host else host
        ids[inner] = host
    return ids
