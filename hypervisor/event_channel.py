"""Event channels: per-domain port tables and the rules of event_channel.h.

Pure logic: no sockets, no processes. The hypervisor loop turns the
`Delivery` values returned here into upcalls.

Pending and mask state lives in each domain's shared-info segment (see
`EventBitmap`), not here, so that a domain can mask and clear ports without a
hypercall, as a Xen guest does with its shared_info page.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from hypervisor.public.errno import EBUSY, EINVAL, ENOENT, ENOSPC, ESRCH, XenError
from hypervisor.public.event_channel import (
    EVTCHN_2L_NR_CHANNELS,
    PYXEN_SHINFO_MASK_OFFSET,
    PYXEN_SHINFO_PENDING_OFFSET,
    PYXEN_SHINFO_SIZE,
    EVTCHNSTAT_closed,
    EVTCHNSTAT_interdomain,
    EVTCHNSTAT_unbound,
    EVTCHNSTAT_virq,
)
from hypervisor.public.xen import NR_VIRQS

NR_EVENT_CHANNELS = EVTCHN_2L_NR_CHANNELS


@dataclass
class Channel:
    state: int = EVTCHNSTAT_closed
    remote_dom: int = 0
    remote_port: int = 0
    virq: int = 0
    vcpu: int = 0


@dataclass(frozen=True)
class Delivery:
    """Mark `port` pending in domain `domid` (and upcall it unless masked)."""

    domid: int
    port: int


class PortTable:
    """One domain's ports. Port 0 is never handed out, as in Xen.

    Ports come from a free list, not a scan: a domain with a full table that
    keeps asking costs the hypervisor nothing more than one that asks once.
    The lowest free port is handed out first: ports never used yet are those
    from `_next` up, and freed ones wait in a heap (all below `_next`)."""

    def __init__(self, domid: int) -> None:
        self.domid = domid
        self.channels: dict[int, Channel] = {}
        self.virqs: dict[tuple[int, int], int] = {}  # (virq, vcpu) -> port
        self._next = 1
        self._freed: list[int] = []

    def get(self, port: int) -> Channel:
        chn = self.channels.get(port)
        if chn is None:
            raise XenError(EINVAL, f"d{self.domid} port {port} is not in use")
        return chn

    def allocate(self) -> tuple[int, Channel]:
        if self._freed:
            port = heapq.heappop(self._freed)
        elif self._next < NR_EVENT_CHANNELS:
            port = self._next
            self._next += 1
        else:
            raise XenError(ENOSPC, f"d{self.domid} has no free event channel")
        chn = Channel()
        self.channels[port] = chn
        return port, chn

    def free(self, port: int) -> None:
        chn = self.channels.pop(port)
        heapq.heappush(self._freed, port)
        if chn.state == EVTCHNSTAT_virq:
            self.virqs.pop((chn.virq, chn.vcpu), None)


class EventChannels:
    """All domains' port tables and the operations of EVTCHNOP_*."""

    def __init__(self) -> None:
        self.tables: dict[int, PortTable] = {}

    def add_domain(self, domid: int) -> None:
        self.tables[domid] = PortTable(domid)

    def table(self, domid: int) -> PortTable:
        table = self.tables.get(domid)
        if table is None:
            raise XenError(ESRCH, f"no domain {domid}")
        return table

    def alloc_unbound(self, dom: int, remote_dom: int) -> int:
        self.table(remote_dom)  # the future peer must exist
        port, chn = self.table(dom).allocate()
        chn.state = EVTCHNSTAT_unbound
        chn.remote_dom = remote_dom
        return port

    def bind_interdomain(self, dom: int, remote_dom: int, remote_port: int) -> int:
        local = self.table(dom)
        remote = self.table(remote_dom)
        rchn = remote.channels.get(remote_port)
        if rchn is None or rchn.state != EVTCHNSTAT_unbound or rchn.remote_dom != dom:
            raise XenError(
                EINVAL,
                f"d{remote_dom} port {remote_port} is not unbound for d{dom}",
            )
        port, chn = local.allocate()
        chn.state = EVTCHNSTAT_interdomain
        chn.remote_dom, chn.remote_port = remote_dom, remote_port
        rchn.state = EVTCHNSTAT_interdomain
        rchn.remote_dom, rchn.remote_port = dom, port
        return port

    def bind_virq(self, dom: int, virq: int, vcpu: int, nr_vcpus: int) -> int:
        if not 0 <= virq < NR_VIRQS:
            raise XenError(EINVAL, f"no VIRQ {virq}")
        if not 0 <= vcpu < nr_vcpus:
            raise XenError(ENOENT, f"d{dom} has no vcpu {vcpu}")
        table = self.table(dom)
        if (virq, vcpu) in table.virqs:
            raise XenError(EBUSY, f"VIRQ {virq} already bound on vcpu {vcpu}")
        port, chn = table.allocate()
        chn.state, chn.virq, chn.vcpu = EVTCHNSTAT_virq, virq, vcpu
        table.virqs[(virq, vcpu)] = port
        return port

    def close(self, dom: int, port: int) -> tuple[int, int] | None:
        """Close a port; returns the peer's (domid, port) it unbound, if any."""
        table = self.table(dom)
        chn = table.get(port)
        unbound = None
        if chn.state == EVTCHNSTAT_interdomain:
            # The peer's end goes back to waiting for a connection from us.
            peer = self.tables.get(chn.remote_dom)
            if peer is not None:
                pchn = peer.channels.get(chn.remote_port)
                if pchn is not None and pchn.state == EVTCHNSTAT_interdomain:
                    pchn.state = EVTCHNSTAT_unbound
                    pchn.remote_dom, pchn.remote_port = dom, 0
                    unbound = (chn.remote_dom, chn.remote_port)
        table.free(port)
        return unbound

    def send(self, dom: int, port: int) -> Delivery | None:
        chn = self.table(dom).get(port)
        if chn.state == EVTCHNSTAT_interdomain:
            return Delivery(chn.remote_dom, chn.remote_port)
        if chn.state == EVTCHNSTAT_unbound:
            return None  # Xen silently drops a notification nobody can hear
        raise XenError(EINVAL, f"d{dom} port {port} cannot be sent on")

    def status(self, dom: int, port: int) -> dict:
        table = self.table(dom)
        chn = table.channels.get(port)
        if chn is None:
            if not 0 < port < NR_EVENT_CHANNELS:
                raise XenError(EINVAL, f"port {port} out of range")
            return {"status": EVTCHNSTAT_closed, "vcpu": 0}
        result = {"status": chn.state, "vcpu": chn.vcpu}
        if chn.state == EVTCHNSTAT_unbound:
            result["unbound"] = {"dom": chn.remote_dom}
        elif chn.state == EVTCHNSTAT_interdomain:
            result["interdomain"] = {"dom": chn.remote_dom, "port": chn.remote_port}
        elif chn.state == EVTCHNSTAT_virq:
            result["virq"] = chn.virq
        return result

    def virq_port(self, dom: int, virq: int, vcpu: int = 0) -> Delivery | None:
        table = self.tables.get(dom)
        port = table.virqs.get((virq, vcpu)) if table else None
        return None if port is None else Delivery(dom, port)

    def remove_domain(self, domid: int) -> None:
        """Close every port of a dying domain; peers see their ends unbound."""
        table = self.tables.get(domid)
        if table is None:
            return
        for port in list(table.channels):
            self.close(domid, port)
        del self.tables[domid]


class EventBitmap:
    """Pending and mask state in a domain's shared-info segment.

    One byte per port (see PYXEN_SHINFO_* in the public header): two
    processes never update the same byte at once, since the hypervisor only
    sets pending and the domain only clears it.
    """

    PENDING_OFFSET = PYXEN_SHINFO_PENDING_OFFSET
    MASK_OFFSET = PYXEN_SHINFO_MASK_OFFSET
    SIZE = PYXEN_SHINFO_SIZE

    def __init__(self, buf) -> None:  # any writable buffer of SIZE bytes
        self.buf = buf

    def set_pending(self, port: int) -> bool:
        """Mark pending; True when the domain must get an upcall.

        Repeated sends coalesce: only the edge 0 -> 1 on an unmasked port
        raises an upcall, as evtchn_2l_set_pending does.
        """
        offset = self.PENDING_OFFSET + port
        if self.buf[offset]:
            return False
        self.buf[offset] = 1
        return not self.buf[self.MASK_OFFSET + port]

    def clear_pending(self, port: int) -> None:
        self.buf[self.PENDING_OFFSET + port] = 0

    def is_pending(self, port: int) -> bool:
        return bool(self.buf[self.PENDING_OFFSET + port])

    def mask(self, port: int) -> None:
        self.buf[self.MASK_OFFSET + port] = 1

    def unmask(self, port: int) -> bool:
        """Unmask; True when an event arrived while masked and must be raised."""
        self.buf[self.MASK_OFFSET + port] = 0
        return bool(self.buf[self.PENDING_OFFSET + port])

    def reset(self, port: int) -> None:
        self.buf[self.PENDING_OFFSET + port] = 0
        self.buf[self.MASK_OFFSET + port] = 0
