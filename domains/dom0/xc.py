"""libxc for pyxen: the privileged hypercalls a toolstack makes, as methods."""

from __future__ import annotations

import os
from typing import Any

import msgpack
import zmq

from domains.kernel.hypercall import Hypercalls
from hypervisor.public import domctl as D
from hypervisor.public import sysctl as S
from hypervisor.public import version as V
from hypervisor.public.errno import XenError
from hypervisor.public.sched import SHUTDOWN_NAMES, SCHEDOP_remote_shutdown
from hypervisor.public.xen import (
    CONSOLEIO_write,
    HYPERVISOR_console_io,
    HYPERVISOR_domctl,
    HYPERVISOR_pyxen_op,
    HYPERVISOR_sched_op,
    HYPERVISOR_sysctl,
    HYPERVISOR_xen_version,
    PYXEN_op_pass_fd,
)


class Abandoned(Exception):
    """A wait for the hypervisor was given up (see Abandon)."""


class Abandon:
    """Lets one thread give up another's wait for a hypercall: an eventfd
    the waiting thread polls together with its socket."""

    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.given_up = False

    def fileno(self) -> int:
        return self.fd

    def set(self) -> None:
        self.given_up = True
        os.eventfd_write(self.fd, 1)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class XenCtrl:
    def __init__(self, hypercall: Hypercalls) -> None:
        self.hypercall = hypercall

    def _domctl(self, cmd: int, domid: int, **args: Any) -> Any:
        return self.hypercall(HYPERVISOR_domctl, cmd, {"domain": domid, **args})

    def _sysctl(self, cmd: int, **args: Any) -> Any:
        return self.hypercall(HYPERVISOR_sysctl, cmd, args)

    def domain_create(self, name: str, memory_mib: int, vcpus: int, kernel: str,
                      cmdline: str, cpus: tuple[int, ...] | None,
                      boot_timeout: float | None = None,
                      max_window_mib: int | None = None,
                      abandon: Abandon | None = None,
                      sandbox: dict | None = None) -> dict:
        """Create and boot a domain; returns once its kernel reports ready,
        with its domid and what the kernel announced (its xenstore ring).
        ETIMEDOUT (the domain destroyed) if it is not ready in boot_timeout
        seconds; max_window_mib caps its grant windows (the hypervisor's
        default: max(64, memory)).

        With `abandon`, the wait can be given up from another thread (the
        domain was destroyed while booting, the machine halts): Abandoned
        is raised. The hypervisor answers createdomain only when the
        kernel is ready, fails or runs out of time. `sandbox` is what its
        jail holds beyond the default (see hypervisor/jail/sandbox.py: role,
        binds, disks, net)."""
        args = {
            "name": name, "max_memkb": memory_mib * 1024, "max_vcpus": vcpus,
            "kernel": kernel, "cmdline": cmdline,
            "cpus": list(cpus) if cpus is not None else None,
        }
        if boot_timeout is not None:
            args["boot_timeout"] = boot_timeout
        if max_window_mib is not None:
            args["max_window_kb"] = max_window_mib * 1024
        if sandbox:
            args["sandbox"] = sandbox
        if abandon is None or not hasattr(self.hypercall, "endpoint"):
            return self.hypercall(HYPERVISOR_domctl, D.XEN_DOMCTL_createdomain, args)
        return self._abandonable(HYPERVISOR_domctl, D.XEN_DOMCTL_createdomain, args, abandon)

    def _abandonable(self, nr: int, cmd: int, args: Any, abandon: Abandon) -> Any:
        """One hypercall on a socket of its own, waited for alongside
        `abandon`: a REQ socket left waiting cannot be reused, so it is
        closed if the wait is given up."""
        sock = self.hypercall.ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(self.hypercall.endpoint)
            sock.send(msgpack.packb([nr, cmd, args, 0]))
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            poller.register(abandon.fileno(), zmq.POLLIN)
            while True:
                ready = dict(poller.poll())
                if sock in ready:
                    rc, result = msgpack.unpackb(sock.recv())
                    break
                if abandon.fileno() in ready:
                    raise Abandoned()
        finally:
            sock.close()
        if rc < 0:
            raise XenError.from_rc(rc, result if isinstance(result, str) else "")
        return result

    def domain_destroy(self, domid: int) -> None:
        self._domctl(D.XEN_DOMCTL_destroydomain, domid)

    def domain_pause(self, domid: int) -> None:
        self._domctl(D.XEN_DOMCTL_pausedomain, domid)

    def domain_unpause(self, domid: int) -> None:
        self._domctl(D.XEN_DOMCTL_unpausedomain, domid)

    def domain_shutdown(self, domid: int, reason: int) -> None:
        assert reason in SHUTDOWN_NAMES
        self.hypercall(HYPERVISOR_sched_op, SCHEDOP_remote_shutdown,
                       {"domain_id": domid, "reason": reason})

    def domain_getinfo(self, domid: int) -> dict:
        return self._domctl(D.XEN_DOMCTL_getdomaininfo, domid)

    def domain_getinfolist(self) -> list[dict]:
        return self._sysctl(S.XEN_SYSCTL_getdomaininfolist, first_domain=0,
                            max_domains=1 << 16)

    def vcpu_getinfo(self, domid: int, vcpu: int) -> dict:
        return self._domctl(D.XEN_DOMCTL_getvcpuinfo, domid, vcpu=vcpu)

    def vcpu_getaffinity(self, domid: int, vcpu: int) -> dict:
        return self._domctl(D.XEN_DOMCTL_getvcpuaffinity, domid, vcpu=vcpu)

    def vcpu_setaffinity(self, domid: int, vcpu: int, cpus: tuple[int, ...] | None) -> None:
        self._domctl(D.XEN_DOMCTL_setvcpuaffinity, domid, vcpu=vcpu,
                     cpumap_hard=list(cpus) if cpus is not None else None)

    def _scheduler_op(self, domid: int, cmd: int, **params: Any) -> Any:
        # Not _domctl: struct xen_domctl_scheduler_op has a field named cmd.
        args = {"domain": domid, "sched_id": D.XEN_SCHEDULER_CREDIT2, "cmd": cmd}
        if params:
            args["credit2"] = params
        return self.hypercall(HYPERVISOR_domctl, D.XEN_DOMCTL_scheduler_op, args)

    def sched_credit2_domain_get(self, domid: int) -> dict:
        """xc_sched_credit2_domain_get: {"weight", "cap"}."""
        return self._scheduler_op(domid, D.XEN_DOMCTL_SCHEDOP_getinfo)["credit2"]

    def sched_credit2_domain_set(self, domid: int, weight: int, cap: int = 0) -> None:
        """xc_sched_credit2_domain_set: weight 0 leaves it unchanged."""
        self._scheduler_op(domid, D.XEN_DOMCTL_SCHEDOP_putinfo, weight=weight, cap=cap)

    def pass_image(self, domid: int, key: str, path: str, writable: bool) -> dict:
        """Have the hypervisor open the image at `path` (read-write only if
        `writable`) and hand the fd to domain `domid` under `key`, as Xen's
        hotplug script sets up a disk before blkback opens it. Returns
        {"type": "file" | "phy", "size": bytes}; ENOENT, EACCES, EINVAL (not
        a file or block device) as XenError."""
        return self.hypercall(HYPERVISOR_pyxen_op, PYXEN_op_pass_fd,
                              {"domain": domid, "key": key, "kind": "image",
                               "path": path, "writable": writable})

    def pass_tun(self, domid: int, key: str) -> None:
        """Have the hypervisor hand domain `domid` a /dev/net/tun fd of its
        own network namespace under `key` (for a vif's TAP)."""
        self.hypercall(HYPERVISOR_pyxen_op, PYXEN_op_pass_fd,
                       {"domain": domid, "key": key, "kind": "tun"})

    def physinfo(self) -> dict:
        return self._sysctl(S.XEN_SYSCTL_physinfo)

    def readconsole(self, clear: bool = False) -> str:
        return self._sysctl(S.XEN_SYSCTL_readconsole, clear=clear)

    def console_write(self, text: str) -> None:
        """A line on the hypervisor's console (what `pyxen dmesg` shows)."""
        self.hypercall(HYPERVISOR_console_io, CONSOLEIO_write, {"buf": text})

    def version(self) -> dict:
        ver = self.hypercall(HYPERVISOR_xen_version, V.XENVER_version)
        return {
            "xen_major": ver >> 16,
            "xen_minor": ver & 0xFFFF,
            "xen_extra": self.hypercall(HYPERVISOR_xen_version, V.XENVER_extraversion),
            "xen_caps": self.hypercall(HYPERVISOR_xen_version, V.XENVER_capabilities),
        }
