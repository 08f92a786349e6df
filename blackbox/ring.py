"""A fixed-size ring of byte records: the recorder's memory of recent events.

All of its memory is taken (and touched) when it is created, so a process's footprint does not
grow as the ring fills, and its bound is in bytes: no event, however large its fields, can make
it hold more. Each record is a 4-byte length and the payload; the oldest records are overwritten.

A snapshot is consistent even when taken from a signal handler that interrupted an append in
the same thread: an append publishes the space it frees before writing into it and the new
record only after it is written, each time with one assignment of the whole position tuple.
"""
from __future__ import annotations

import struct

_LEN = struct.Struct("<I")
HEADER = _LEN.size


class ByteRing:
    """The newest records that fit in ``capacity`` bytes (each costs ``HEADER`` + its length)."""

    def __init__(self, capacity: int):
        if capacity < 64:
            raise ValueError(f"ring capacity must be at least 64 bytes, not {capacity}")
        self.capacity = capacity
        self._buf = bytearray(b"\xff") * capacity  # written, not calloc'd: resident from the start
        # (start, end, head, count): records lie in [start, end) then [0, head) when end is not
        # None (wrapped), else in [start, head).
        self._pos: tuple[int, int | None, int, int] = (0, None, 0, 0)

    def __len__(self) -> int:
        return self._pos[3]

    @property
    def used(self) -> int:
        """Bytes taken by the records now held, headers included."""
        start, end, head, _ = self._pos
        return head - start if end is None else (end - start) + head

    def append(self, payload: bytes) -> None:
        """Keep ``payload`` as the newest record, dropping the oldest ones it needs room from."""
        size = HEADER + len(payload)
        if size > self.capacity:
            raise ValueError(f"a record of {len(payload)} bytes cannot fit a ring of "
                             f"{self.capacity}")
        start, end, head, count = self._pos
        while True:
            if end is None:
                if head + size <= self.capacity:
                    break
                if count == 0:
                    start = head = 0
                    continue
                end, head = head, 0  # wrap: the records at [start, end) stay, writes go to 0
            elif head + size <= start:
                break
            else:  # drop the oldest record
                length, = _LEN.unpack_from(self._buf, start)
                start += HEADER + length
                count -= 1
                if start >= end:  # the older segment is used up: records lie in [0, head)
                    start, end = 0, None
        self._pos = (start, end, head, count)  # what the write below overwrites is let go first
        _LEN.pack_into(self._buf, head, len(payload))
        self._buf[head + HEADER:head + size] = payload
        self._pos = (start, end, head + size, count + 1)

    def records(self) -> list[bytes]:
        """Copies of the records held, oldest first."""
        start, end, head, _ = self._pos
        view = memoryview(self._buf)
        out: list[bytes] = []
        for lo, hi in ((start, head),) if end is None else ((start, end), (0, head)):
            at = lo
            while at < hi:
                length, = _LEN.unpack_from(view, at)
                out.append(bytes(view[at + HEADER:at + HEADER + length]))
                at += HEADER + length
        return out

    def clear(self) -> None:
        """Forget every record (the memory stays)."""
        self._pos = (0, None, 0, 0)
