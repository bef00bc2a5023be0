"""Linux namespaces of a domain process, and the uid/gid maps of its user
namespace.

A domain gets its own PID namespace from the hypervisor (see
`children_in_new_pid_namespace`): the hypervisor's next child becomes pid 1
of a fresh namespace while staying the hypervisor's direct child, so its
pidfd, PR_SET_PDEATHSIG, `ps` and its title work as for any child. The
domain then unshares its user, mount, IPC, UTS and network namespaces itself
(`enter_domain_namespaces`, on its first instruction, before any thread
exists), and the hypervisor, root in the parent user namespace, writes the
new namespace's maps (`write_id_maps`): the domain's root is one unprivileged
host uid.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from hypervisor.jail import libc

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

#: What a domain process unshares for itself (its PID namespace it gets
#: from the hypervisor).
DOMAIN_NAMESPACES = (CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS
                     | CLONE_NEWNET)

#: Host uids and gids of domains: domain N runs as BASE + N (its root in
#: its user namespace), so no two live domains share one.
ID_BASE = 0x50000
MAX_DOMID = 0x7FEF  # DOMID_FIRST_RESERVED - 1


def domain_id(domid: int) -> int:
    """The host uid (and gid) of domain `domid`'s process."""
    if not 0 < domid <= MAX_DOMID:
        raise ValueError(f"domid {domid} has no sandbox uid")
    return ID_BASE + domid


@contextmanager
def children_in_new_pid_namespace() -> Iterator[None]:
    """Within this block, the calling thread's next child is pid 1 of a new
    PID namespace (unshare(CLONE_NEWPID) changes only where children go);
    afterwards children go to our own namespace again. Needs CAP_SYS_ADMIN."""
    own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        libc.unshare(CLONE_NEWPID)
        try:
            yield
        finally:
            libc.setns(own, CLONE_NEWPID)
    finally:
        os.close(own)


def enter_domain_namespaces() -> None:
    """The domain process's first act: leave the host's supplementary groups
    (they could not be dropped later: its setgroups is denied), then unshare
    DOMAIN_NAMESPACES. Must run before any thread exists."""
    os.setgroups([])
    libc.unshare(DOMAIN_NAMESPACES)


def write_id_maps(pid: int, host_uid: int, host_gid: int) -> None:
    """Map root of `pid`'s new user namespace onto one host uid and gid.
    "deny" goes to setgroups first: the domain can never take a group back."""
    with open(f"/proc/{pid}/setgroups", "w") as f:
        f.write("deny")
    with open(f"/proc/{pid}/uid_map", "w") as f:
        f.write(f"0 {host_uid} 1\n")
    with open(f"/proc/{pid}/gid_map", "w") as f:
        f.write(f"0 {host_gid} 1\n")


def become_namespace_root() -> None:
    """In the domain, once its maps exist: take the mapped uid/gid (0 inside,
    the domain's host uid outside). Capabilities in its namespace stay until
    capabilities.drop_all."""
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
