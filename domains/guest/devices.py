"""Bring up a guest's PV devices: its disks and its network interfaces."""

from __future__ import annotations

from frontends.blkfront.bus import BlockBus
from frontends.netfront.bus import NetBus


def start_frontends(kernel) -> tuple[BlockBus, NetBus]:
    return BlockBus(kernel), NetBus(kernel)
