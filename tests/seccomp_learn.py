"""How the seccomp allow-lists (hypervisor/jail/seccomp_policy.py) were
learned, to learn them again after the code changes.

    python tests/seccomp_learn.py listen /tmp/audit.txt &   # as root
    PYXEN_SECCOMP_LEARN=/tmp/roles.txt python -m pytest
    python tests/seccomp_learn.py report /tmp/audit.txt /tmp/roles.txt

With PYXEN_SECCOMP_LEARN set to a file, every filter's default action is
SCMP_ACT_LOG (an unlisted call is allowed, and the kernel writes an audit
record of type 1326 naming the pid and the call) and the hypervisor writes
"pid role" lines to the file. dmesg's copy of audit records is rate-limited,
so `listen` registers as the audit daemon (NETLINK_AUDIT) and keeps every
record; `report` prints, per role, the calls that were missing.
"""

from __future__ import annotations

import collections
import os
import re
import socket
import struct
import sys

NETLINK_AUDIT = 9
AUDIT_SET = 1001
AUDIT_SECCOMP = 1326
AUDIT_STATUS_ENABLED = 1
AUDIT_STATUS_PID = 4
SCMP_ACT_LOG = "0x7ffc0000"


def listen(path: str) -> None:
    out = open(path, "a", buffering=1)  # noqa: SIM115 - open until the listener is killed
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT)
    sock.bind((0, 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    status = struct.pack("=8I", AUDIT_STATUS_ENABLED | AUDIT_STATUS_PID, 1, 0, os.getpid(),
                         0, 0, 0, 0) + bytes(16)
    sock.send(struct.pack("=IHHII", 16 + len(status), AUDIT_SET, 0x5, 1, 0) + status)
    record = re.compile(rb" pid=(\d+) .*syscall=(\d+) .*code=(0x[0-9a-f]+)")
    while True:
        data = sock.recv(1 << 20)
        _, kind = struct.unpack_from("=IH", data, 0)
        match = record.search(data[16:]) if kind == AUDIT_SECCOMP else None
        if match:
            out.write(" ".join(g.decode() for g in match.groups()) + "\n")


def report(audit_path: str, roles_path: str) -> None:
    import pyseccomp

    with open(roles_path) as f:
        roles = dict(line.split() for line in f)
    missing: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    with open(audit_path) as f:
        for line in f:
            pid, nr, code = line.split()
            if code == SCMP_ACT_LOG:
                name = pyseccomp.resolve_syscall(pyseccomp.system_arch(), int(nr)).decode()
                missing[roles.get(pid, "? (a child)")][name] += 1
    for role, calls in sorted(missing.items()):
        print(f"{role}: {' '.join(sorted(calls))}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["listen"]:
        listen(sys.argv[2])
    elif sys.argv[1:2] == ["report"]:
        report(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
