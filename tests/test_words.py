"""Shared-memory words are read and written whole: another process never
sees a zero or half of an old and half of a new value in the middle of a
write (struct.pack_into zeroes first and writes byte by byte)."""

import mmap
import os

import pytest

from hypervisor.public.pyxen.words import Words

A, B = 0x11223344, 0x55667788


def test_words_are_addressed_by_aligned_byte_offsets():
    buf = bytearray(16)
    words = Words(buf)
    words[4] = A
    assert words[4] == A and buf[4:8] == A.to_bytes(4, "little")
    with pytest.raises(ValueError, match="not aligned"):
        words[2] = 1
    halves = Words(buf, "H")
    assert halves[4] == 0x3344


@pytest.mark.timeout(30)
def test_a_reader_in_another_process_sees_only_whole_values():
    shared = mmap.mmap(-1, mmap.PAGESIZE)
    words = Words(shared)
    words[3084] = A
    pid = os.fork()
    if pid == 0:  # the writer: flip the word as fast as it can
        try:
            for i in range(1_000_000):
                words[3084] = B if i & 1 else A
        finally:
            os._exit(0)
    seen = set()
    while True:
        seen.add(words[3084])
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            break
    assert seen <= {A, B}, f"torn or zeroed reads: {sorted(hex(v) for v in seen - {A, B})}"
