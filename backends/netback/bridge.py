"""A learning Ethernet bridge (802.1D forwarding, no spanning tree), pure.

The net driver domain connects its vifs (and any uplink) through one of
these.  :meth:`Bridge.forward` takes the frame a port received and says
which ports to send it out of; it never sends anything itself, and the
time is an argument, so tests need no clock.

- The source MAC is learnt on the ingress port (a station that moves is
  re-learnt at once).  A frame whose source is a group (multicast /
  broadcast) address or all-zero is invalid: dropped, nothing learnt.
- A destination in 01:80:C2:00:00:00..0F (the IEEE link-local block: STP,
  pause frames, LACP, 802.1X) is never forwarded by a bridge.
- A broadcast or multicast destination is flooded to every port but the
  ingress one; so is a unicast destination that is not (or no longer)
  known.  A known unicast destination goes to its port only, and nowhere
  if that is the ingress port (the station is on the same segment).
- A learnt entry expires `ageing_time` seconds after the station was last
  heard from.  A removed port's entries are forgotten.
- At most `max_entries` stations are learnt (a guest spraying source
  addresses must not grow the table without bound): when full, expired
  entries are purged, and if still full the new station is not learnt
  (its frames keep being flooded, which is correct, only slower).

Ports are any hashable ids, listed in the order they were added.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from domains.kernel.netpkt import ETH_HLEN

ETH_ALEN = 6
#: Linux's default bridge ageing time (seconds).
DEFAULT_AGEING_TIME = 300.0
DEFAULT_MAX_ENTRIES = 4096
_LINK_LOCAL_PREFIX = bytes.fromhex("0180c20000")

PortId = Hashable


def is_multicast(mac: bytes) -> bool:
    """A group address (broadcast included): the I/G bit of octet 0."""
    return bool(mac[0] & 1)


def is_valid_source(mac: bytes) -> bool:
    """An address a station may send from: unicast and not all-zero."""
    return not is_multicast(mac) and any(mac)


def is_link_local(mac: bytes) -> bool:
    """01:80:C2:00:00:00..0F: reserved, never forwarded by a bridge."""
    return mac[:5] == _LINK_LOCAL_PREFIX and mac[5] <= 0x0F


def mac_str(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def parse_mac(text: str) -> bytes:
    """"aa:bb:cc:dd:ee:ff" -> 6 bytes (the XenStore "mac" node's form)."""
    parts = text.split(":")
    if len(parts) != ETH_ALEN or not all(len(p) == 2 for p in parts):
        raise ValueError(f"not a MAC address: {text!r}")
    return bytes(int(p, 16) for p in parts)


@dataclass
class FdbEntry:
    """A learnt station: on `port`, last heard from at `seen`."""

    port: PortId
    seen: float


class Bridge:
    """One bridge: its ports and forwarding database."""

    def __init__(self, name: str, ageing_time: float = DEFAULT_AGEING_TIME,
                 max_entries: int = DEFAULT_MAX_ENTRIES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if ageing_time <= 0:
            raise ValueError(f"ageing time {ageing_time}")
        if max_entries < 1:
            raise ValueError(f"max_entries {max_entries}")
        self.name = name
        self.ageing_time = ageing_time
        self.max_entries = max_entries
        self._clock = clock
        self._ports: dict[PortId, None] = {}   # insertion-ordered set
        self._fdb: dict[bytes, FdbEntry] = {}

    def __repr__(self) -> str:
        return f"Bridge({self.name!r}, ports={list(self._ports)!r})"

    @property
    def ports(self) -> list[PortId]:
        return list(self._ports)

    def add_port(self, port_id: PortId) -> None:
        """Attach a port.  ValueError if it is attached already."""
        if port_id in self._ports:
            raise ValueError(f"{self.name}: port {port_id!r} already attached")
        self._ports[port_id] = None

    def remove_port(self, port_id: PortId) -> None:
        """Detach a port and forget the stations learnt on it.  KeyError if
        it is not attached."""
        if port_id not in self._ports:
            raise KeyError(f"{self.name}: no port {port_id!r}")
        del self._ports[port_id]
        for mac in [m for m, e in self._fdb.items() if e.port == port_id]:
            del self._fdb[mac]

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else now

    def _expired(self, entry: FdbEntry, now: float) -> bool:
        return now - entry.seen > self.ageing_time

    def expire(self, now: float | None = None) -> int:
        """Forget the stations not heard from for ageing_time; how many."""
        now = self._now(now)
        stale = [m for m, e in self._fdb.items() if self._expired(e, now)]
        for mac in stale:
            del self._fdb[mac]
        return len(stale)

    def lookup(self, mac: bytes, now: float | None = None) -> PortId | None:
        """The port `mac` was learnt on, if the entry is still fresh."""
        entry = self._fdb.get(bytes(mac))
        if entry is None or self._expired(entry, self._now(now)):
            return None
        return entry.port

    def fdb(self, now: float | None = None) -> dict[bytes, PortId]:
        """The fresh entries: MAC -> port."""
        now = self._now(now)
        return {m: e.port for m, e in self._fdb.items()
                if not self._expired(e, now)}

    def _learn(self, mac: bytes, port: PortId, now: float) -> None:
        entry = self._fdb.get(mac)
        if entry is not None:
            entry.port, entry.seen = port, now
            return
        if len(self._fdb) >= self.max_entries and not self.expire(now):
            return
        self._fdb[mac] = FdbEntry(port, now)

    def forward(self, in_port: PortId, frame: bytes | bytearray | memoryview,
                now: float | None = None) -> list[PortId]:
        """The ports to send `frame`, received on `in_port`, out of (none:
        drop it).  Learns its source.  KeyError if `in_port` is not
        attached; `now` defaults to the bridge's clock."""
        if in_port not in self._ports:
            raise KeyError(f"{self.name}: no port {in_port!r}")
        header = bytes(frame[:ETH_HLEN])
        if len(header) < ETH_HLEN:
            return []
        dst, src = header[:ETH_ALEN], header[ETH_ALEN:2 * ETH_ALEN]
        if not is_valid_source(src):
            return []
        now = self._clock() if now is None else now
        self._learn(src, in_port, now)
        if is_link_local(dst):
            return []
        if not is_multicast(dst):
            entry = self._fdb.get(dst)
            if entry is not None and now - entry.seen <= self.ageing_time:
                port = entry.port
                return [] if port == in_port else [port]
        return [p for p in self._ports if p != in_port]
