"""The moments `pyxen chaos` strikes at, each a step of the run.

A restart that works when kills are spaced out can still break when they
are not (issue 14 found each of these by hand):
- spaced:    one SIGKILL after a stretch of normal running;
- boot:      the driver domain, then its successor while it boots (before
             its kernel reported ready: "died during boot");
- handshake: the driver domain, then its successor as soon as it is up,
             while its devices' xenbus handshakes run;
- double, triple: two or three kills in a row, each as soon as the last
             one's I/O resumed through its successor;
- reattach:  a scratch disk (and, with a network, a vif) detached and
             attached again at the same vdev or index while the guests'
             I/O runs, twice.
After every step each guest's devices must be Connected; a device that is
not is reported with its state (never held silently).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from domains.dom0.client import CommandFailed, ControlClient
from domains.dom0.toolstack import wait_for_state
from domains.dom0.xlspec import virtual_device_number
from domains.kernel.xenbus.client import XenStoreClient, XsError
from domains.kernel.xenbus.transport import UnixTransport
from hypervisor.public.io.xenbus import XenbusState

KINDS = ("spaced", "boot", "handshake", "double", "triple", "reattach")
KILLS_OF = {"spaced": 1, "boot": 2, "handshake": 2, "double": 2, "triple": 3, "reattach": 0}
CONNECT_TIMEOUT = 10.0
SCRATCH_VDEV = "xvdp"
SCRATCH_DEVID = virtual_device_number(SCRATCH_VDEV)


@dataclass
class Kill:
    domid: int
    at: float
    landed: str  # when it struck: "running", "boot", "handshake"


@dataclass
class StepResult:
    kills: list[Kill] = field(default_factory=list)
    note: str = ""


def parse_kinds(text: str) -> list[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"--timing {text!r}: choose from {', '.join(KINDS)}")
    return kinds


class Striker:
    """Kills a driver domain at the moments above, through the toolstack's
    own view of the machine (`list` gives every domain's pid and whether
    it is still booting)."""

    def __init__(self, run_dir: Path) -> None:
        self.client = ControlClient(run_dir)

    def row(self, name: str) -> dict | None:
        return next((r for r in self.client.call("list") if r["name"] == name), None)

    def kill(self, row: dict, landed: str) -> Kill:
        at = time.monotonic()
        os.kill(row["pid"], signal.SIGKILL)
        return Kill(row["domid"], at, landed)

    def successor(self, target: str, old: int, booting: bool, timeout: float = 10.0
                  ) -> dict | None:
        """The row of `target`'s successor of `old`: while it boots (the
        toolstack's note says so), or once it is up. Polled: the toolstack
        has no event for "a domain began booting", and a boot is short."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = self.row(target)
            if row is not None and row["domid"] != old and row.get("pid"):
                is_booting = row.get("note") == "booting"
                if booting:
                    return row if is_booting else None  # up before we saw it boot
                if not is_booting:
                    return row
        return None

    def strike(self, kind: str, target: str, resumed: Callable[[Kill], bool]) -> StepResult:
        """The kills of one step; `resumed(kill)` waits until I/O resumed
        through a successor of that kill (for double and triple)."""
        first = self.row(target)
        if first is None or not first.get("pid"):
            return StepResult(note=f"{target} was not running")
        result = StepResult([self.kill(first, "running")])
        if kind in ("boot", "handshake"):
            row = self.successor(target, first["domid"], booting=kind == "boot")
            if row is None:
                result.note = f"missed the successor's {kind}"
            else:
                try:
                    result.kills.append(self.kill(row, kind))
                except ProcessLookupError:
                    result.note = f"the successor was gone before its {kind} kill"
        elif kind in ("double", "triple"):
            for _ in range(KILLS_OF[kind] - 1):
                if not resumed(result.kills[-1]):
                    result.note = "I/O did not resume between kills"
                    break
                row = self.row(target)
                if row is None or not row.get("pid"):
                    break
                result.kills.append(self.kill(row, "running"))
        return result


def device_states(run_dir: Path, guests: list[str]) -> dict[str, int]:
    """Every guest device's frontend state, `guest:vbd/51712` -> state."""
    client = ControlClient(run_dir)
    states = {}
    for guest in guests:
        for kind, listing in (("vbd", "block-list"), ("vif", "network-list")):
            try:
                rows = client.call(listing, domain=guest)
            except CommandFailed:
                continue
            for row in rows:
                states[f"{guest}:{kind}/{row['devid']}"] = row["state"]
    return states


def not_connected(run_dir: Path, guests: list[str]) -> dict[str, int]:
    return {dev: state for dev, state in device_states(run_dir, guests).items()
            if state != int(XenbusState.Connected)}


def reattach(run_dir: Path, guest: str, disk_backend: str | None,
             vif: tuple[str, str] | None, cycles: int = 2) -> str:
    """Detach and attach a scratch disk (and a vif) at the same vdev (index)
    `cycles` times, each attach waited until Connected; "" or what failed."""
    client = ControlClient(run_dir)
    xs = XenStoreClient(UnixTransport(str(run_dir / "xenstored" / "socket")))
    try:
        domid = next(r["domid"] for r in client.call("list") if r["name"] == guest)
        for _ in range(cycles):
            if disk_backend is not None:
                client.call("block-attach", domain=guest,
                            spec=f"backend={disk_backend}, vdev={SCRATCH_VDEV}, size=1M, "
                                 f"target=chaos-{guest}-scratch.img")
                front = f"/local/domain/{domid}/device/vbd/{SCRATCH_DEVID}"
                if not _connected(xs, front):
                    return f"{guest}:{SCRATCH_VDEV} did not connect after attach"
                client.call("block-detach", domain=guest, vdev=SCRATCH_VDEV)
            if vif is not None:
                backend, bridge = vif
                devid = client.call("network-attach", domain=guest,
                                    spec=f"backend={backend}, bridge={bridge}")["devid"]
                front = f"/local/domain/{domid}/device/vif/{devid}"
                if not _connected(xs, front):
                    return f"{guest}:vif{devid} did not connect after attach"
                client.call("network-detach", domain=guest, devid=devid)
        return ""
    except CommandFailed as exc:
        return f"{guest}: {exc}"
    finally:
        xs.close()


def _connected(xs: XenStoreClient, front: str) -> bool:
    connected = int(XenbusState.Connected)
    wait_for_state(xs, front, {connected}, CONNECT_TIMEOUT)
    try:
        return int(xs.read(f"{front}/state")) == connected
    except (XsError, ValueError):
        return False
