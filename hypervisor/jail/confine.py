"""The domain's side of its sandbox: what domains/kernel/boot.py calls.

`enter` is the first thing a jailed domain process does (it is pid 1 of a
PID namespace the hypervisor made for it): fresh user, mount, IPC, UTS and
network namespaces, the generic seccomp filter, and a word to the
hypervisor that its maps can be written. `confine` runs once it is handed
its domain: its root, its uid, its last capabilities gone, its role's
seccomp filter. After that it can reach nothing it was not given.
"""

from __future__ import annotations

import os
import resource
import select
import socket
from dataclasses import dataclass

from hypervisor.jail import capabilities, mounts, namespaces, seccomp_policy

READY = b"unshared"


@dataclass
class Confined:
    """What confinement handed the kernel: whether it is a guest (which
    keeps its network capabilities over its own namespace), and a net
    driver domain's uplink TAPs."""
    guest: bool
    uplinks: list[tuple[int, dict]]


def enter(sock: socket.socket, seccomp: bool) -> None:
    namespaces.enter_domain_namespaces()
    if seccomp:
        seccomp_policy.install_generic()
    sock.send(READY)


def confine(jail: dict, fds: list[int], hv_sock: socket.socket) -> Confined:
    """Build the domain's root, become its uid, drop everything, filter.
    `fds` are the ones the hypervisor sent for the jail (uplink TAPs), in
    the order `jail` names them."""
    binds = [mounts.Bind.from_json(b) for b in jail.get("binds", ())]
    trees = mounts.clone_binds(binds)
    namespaces.become_namespace_root()
    mounts.build_root(trees, dict(jail.get("symlinks", {})))
    _die_with_hypervisor(hv_sock)
    nproc = jail.get("nproc")
    if nproc:
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # A guest keeps what configuring a TAP takes, over its own (empty)
    # network namespace only: that namespace belongs to its user namespace.
    guest = jail.get("role") == "guest"
    keep = capabilities.NET_CAPABILITIES if guest else frozenset()
    capabilities.drop_all(keep)
    if jail.get("seccomp"):
        seccomp_policy.install_role(jail["role"], bool(jail.get("learn")))
    uplinks = [(fds[i] if i >= 0 else -1, dict(config))
               for i, config in jail.get("uplinks", ())]
    return Confined(guest, uplinks)


def _die_with_hypervisor(hv_sock: socket.socket) -> None:
    """PR_SET_PDEATHSIG again: changing uid cleared it. A parent outside our
    PID namespace shows as ppid 0, so whether the hypervisor is still there
    is read off its socket: it holds its end for as long as we run."""
    capabilities.libc.prctl(capabilities.PR_SET_PDEATHSIG, 9)
    poller = select.poll()
    poller.register(hv_sock, select.POLLHUP)
    if poller.poll(0):
        os._exit(1)
