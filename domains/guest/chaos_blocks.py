"""The self-describing blocks `pyxen chaos` writes: every 4 KiB block says
which guest wrote it, for which slot, as which write, and carries a checksum,
so that an image can be checked block by block after the run.

Layout (little-endian): magic "PYXCHAOS", the guest's tag (CRC32 of its
name), the slot, the write's sequence number, the CRC32 of the payload; the
payload is derived from (tag, sequence), so a block from another write or a
torn block does not pass.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass

BLOCK = 4096
SECTORS = BLOCK // 512
MAGIC = b"PYXCHAOS"
HEADER = struct.Struct("<8sIIQI")
PAYLOAD = BLOCK - HEADER.size


def tag_of(name: str) -> int:
    return zlib.crc32(name.encode())


def _payload(tag: int, seq: int) -> bytes:
    seed = hashlib.sha256(struct.pack("<IQ", tag, seq)).digest()
    return (seed * (PAYLOAD // len(seed) + 1))[:PAYLOAD]


def encode(tag: int, slot: int, seq: int) -> bytes:
    payload = _payload(tag, seq)
    return HEADER.pack(MAGIC, tag, slot, seq, zlib.crc32(payload)) + payload


@dataclass(frozen=True)
class Found:
    """What a block on the image holds: None fields when it is no block of ours."""

    tag: int | None
    slot: int | None
    seq: int | None
    intact: bool  # header and payload agree


EMPTY = Found(None, None, None, True)


def decode(data: bytes) -> Found:
    if len(data) != BLOCK:
        raise ValueError(f"a block is {BLOCK} bytes, got {len(data)}")
    magic, tag, slot, seq, crc = HEADER.unpack_from(data)
    if magic != MAGIC:
        return EMPTY if not any(data) else Found(None, None, None, False)
    payload = data[HEADER.size:]
    intact = zlib.crc32(payload) == crc and payload == _payload(tag, seq)
    return Found(tag, slot, seq, intact)


def latest(top: int, slot: int, slots: int) -> int | None:
    """The last of writes 0..top (write n goes to slot n % slots) that went
    to `slot`, or None when none did."""
    if top < slot:
        return None
    return top - (top - slot) % slots
