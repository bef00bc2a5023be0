"""`pyxen chaos`'s arithmetic, free of processes: which kill a guest's report
answers, recovery percentiles, and the block-by-block check of an image.

Recovery of a kill: from the kill to the moment every device the killed
driver domain served has completed a request again through its successor
(a disk: a write acknowledged by the new backend; a vif: an echo answered
for a probe sent after the kill). The slowest device sets the time.

Image check, per slot, against the last acknowledged write there:
- lost: the slot holds an older write of this guest (or nothing);
- duplicated: the slot holds a block of this guest meant for another slot,
  or a write newer than any acknowledged (one applied twice, or late);
- corrupted: the slot holds a torn block (checksum fails) or foreign data.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from domains.dom0.bench.common import percentile
from domains.guest import chaos_blocks as blocks


def summary_ms(seconds: list[float]) -> dict[str, float] | None:
    if not seconds:
        return None
    ms = [s * 1000 for s in seconds]
    return {"p50": round(percentile(ms, 50), 1), "p90": round(percentile(ms, 90), 1),
            "p99": round(percentile(ms, 99), 1), "max": round(max(ms), 1)}


@dataclass(frozen=True)
class Device:
    guest: str
    kind: str  # "vbd" or "vif"
    name: str  # xvda, eth0


def resumed_at(device: Device, events: Iterable[dict], killed_at: float,
               killed: int) -> float | None:
    """When `device` first completed a request through a backend other than
    the killed domain `killed`, after the kill; None if it has not (yet)."""
    times = []
    for ev in events:
        if ev.get("guest") != device.guest:
            continue
        if device.kind == "vbd" and ev.get("ev") == "blk" and ev.get("disk") == device.name:
            if ev["t"] > killed_at and ev["backend"] != killed:
                times.append(ev["t"])
        elif device.kind == "vif" and ev.get("ev") == "net" and ev["sent"] >= killed_at:
            times.append(ev["t"])
    return min(times, default=None)


@dataclass
class ImageCheck:
    slots: int
    checked: int = 0
    lost: list[int] = field(default_factory=list)
    duplicated: list[int] = field(default_factory=list)
    corrupted: list[int] = field(default_factory=list)


def check_image(image: bytes, tag: int, top: int, slots: int) -> ImageCheck:
    """Every slot of `image` against writes 0..top of guest `tag` (write n
    went to slot n % slots; all of them acknowledged and flushed)."""
    result = ImageCheck(slots)
    for slot in range(slots):
        expected = blocks.latest(top, slot, slots)
        found = blocks.decode(image[slot * blocks.BLOCK:(slot + 1) * blocks.BLOCK])
        result.checked += 1
        if not found.intact or (found.tag not in (None, tag)):
            result.corrupted.append(slot)
        elif found.tag is None:
            if expected is not None:
                result.lost.append(slot)
        elif found.slot != slot or expected is None or found.seq > expected:
            result.duplicated.append(slot)
        elif found.seq < expected:
            result.lost.append(slot)
    return result
