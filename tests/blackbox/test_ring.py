"""The fixed-size byte ring behind the recorder's memory of recent events."""
from __future__ import annotations

import random
import tracemalloc

import pytest

from blackbox.ring import HEADER, ByteRing


def test_records_come_back_oldest_first_and_the_oldest_make_room():
    ring = ByteRing(64)
    for i in range(3):
        ring.append(b"%d" % i * 10)  # 14 bytes each
    assert ring.records() == [b"0" * 10, b"1" * 10, b"2" * 10] and ring.used == 42
    ring.append(b"3" * 20)  # 24 more: does not fit behind the third, wraps, drops the first two
    assert ring.records() == [b"2" * 10, b"3" * 20] and len(ring) == 2
    ring.append(b"")
    assert ring.records() == [b"2" * 10, b"3" * 20, b""]


def test_random_sizes_always_leave_the_newest_records_in_order_within_the_capacity():
    rng = random.Random(5)
    ring = ByteRing(1000)
    appended: list[bytes] = []
    for i in range(5000):
        payload = b"%d:" % i + bytes(rng.randrange(0, 120))
        ring.append(payload)
        appended.append(payload)
        held = ring.records()
        assert held == appended[len(appended) - len(held):]  # a suffix: newest kept, in order
        assert len(held) == len(ring) and ring.used == sum(HEADER + len(p) for p in held)
        assert ring.used <= 1000
        # what is dropped is only what the newest needed; at most one record's worth of the end
        # of the buffer is lost to wrapping
        assert ring.used >= 1000 - 2 * (HEADER + 120) or len(held) == len(appended)


def test_a_record_fills_the_whole_ring_and_no_more():
    ring = ByteRing(100)
    ring.append(b"a" * 10)
    ring.append(b"x" * (100 - HEADER))
    assert ring.records() == [b"x" * 96]
    with pytest.raises(ValueError, match="cannot fit"):
        ring.append(b"y" * 97)
    assert ring.records() == [b"x" * 96]  # nothing lost to a refused record
    with pytest.raises(ValueError, match="at least 64"):
        ByteRing(10)


def test_clear_forgets_everything():
    ring = ByteRing(64)
    ring.append(b"abc")
    ring.clear()
    assert ring.records() == [] and len(ring) == 0 and ring.used == 0
    ring.append(b"d")
    assert ring.records() == [b"d"]


def test_its_memory_is_taken_once_and_does_not_grow_as_it_fills():
    tracemalloc.start()
    try:
        ring = ByteRing(256 * 1024)
        before, _ = tracemalloc.get_traced_memory()
        for i in range(20_000):  # ~3 MB through a 256 KiB ring
            ring.append(b"event %d " % i * 15)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(ring) > 1000
    assert after - before < 4096, after - before
