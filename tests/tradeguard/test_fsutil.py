"""Whole-or-nothing file writes: the target is either the old file or the new one, the temp file
never stays behind, ``overwrite=False`` never clobbers, and the swap writer of the heartbeat."""
from __future__ import annotations

import ctypes
import errno
import os
import stat
import threading
import time

import pytest

from tradeguard.fsutil import SHARED, SwapWriter, staged, write_atomic
from tradeguard.heartbeat import Heartbeat, HeartbeatFile, read_heartbeat


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _only(tmp_path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir())


def test_write_atomic_creates_private_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "f.json"
    write_atomic(target, "one")
    assert target.read_text() == "one" and _mode(target) == 0o600
    write_atomic(target, b"two", durable=False)
    assert target.read_bytes() == b"two"
    assert _only(tmp_path) == ["f.json"]


def test_shared_mode_follows_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        write_atomic(tmp_path / "hb", "{}", mode=SHARED)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "hb") == 0o640


def test_no_overwrite_refuses_an_existing_file_and_keeps_it(tmp_path):
    target = tmp_path / "key"
    target.write_text("original")
    with pytest.raises(FileExistsError):
        write_atomic(target, "new", overwrite=False)
    with pytest.raises(FileExistsError):
        with staged(target, overwrite=False) as tmp:
            tmp.write_text("new")
    assert target.read_text() == "original" and _only(tmp_path) == ["key"]


def test_a_failed_move_leaves_the_target_and_no_temp(tmp_path):
    (tmp_path / "d").mkdir()  # a directory cannot be replaced by a file
    with pytest.raises(IsADirectoryError):
        write_atomic(tmp_path / "d", "x")
    assert (tmp_path / "d").is_dir() and _only(tmp_path) == ["d"]


def test_staged_moves_in_only_when_the_block_succeeds(tmp_path):
    target = tmp_path / "export.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with staged(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer failed")
    assert target.read_text() == "old" and _only(tmp_path) == ["export.csv"]
    with staged(target) as tmp:
        assert tmp.parent == tmp_path and _mode(tmp) == 0o600
        tmp.write_text("new")
    assert target.read_text() == "new" and _only(tmp_path) == ["export.csv"]


def test_swap_writer_replaces_whole_contents_with_two_inodes_and_removes_its_spare(tmp_path):
    target = tmp_path / "bot.heartbeat"
    w = SwapWriter(target)
    assert w.swapping  # ext4/tmpfs here: the fallback has its own test
    inodes = set()
    for text in ("first, the longest of them", "second", "", "fourth: longer again"):
        w.write(text)
        assert target.read_text() == text  # a shorter write leaves nothing of a longer one
        inodes.add(target.stat().st_ino)
    assert len(inodes) == 2  # no new file per write: the two names swap
    assert w.spare.read_text() == ""  # the spare holds the previous content, whole
    assert _only(tmp_path) == [".bot.heartbeat.spare", "bot.heartbeat"]
    w.close()
    w.close()  # twice is fine
    assert _only(tmp_path) == ["bot.heartbeat"] and target.read_text() == "fourth: longer again"


def test_swap_writer_never_changes_a_file_a_reader_already_opened(tmp_path):
    target = tmp_path / "hb"
    w = SwapWriter(target)
    w.write("one " * 100)
    with open(target) as reader:  # a reader between open and read while the writer goes on
        w.write("two")
        assert reader.read() == "one " * 100
    assert target.read_text() == "two"


def test_swap_writer_creates_the_file_and_follows_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        w = SwapWriter(tmp_path / "hb", SHARED)
        w.write(b"x")
        w.write(b"y")
    finally:
        os.umask(old)
    assert (tmp_path / "hb").read_bytes() == b"y" and _mode(tmp_path / "hb") == 0o640
    os.unlink(tmp_path / "hb")  # someone removes it: the next write brings it back
    w.write("z")
    assert (tmp_path / "hb").read_text() == "z"


def test_swap_writer_falls_back_to_a_new_file_per_write_where_it_cannot_swap(tmp_path):
    w = SwapWriter(tmp_path / "hb")
    w._swap = lambda *args: (ctypes.set_errno(errno.EINVAL), -1)[1]  # a filesystem without exchange
    w.write("one")
    assert not w.swapping and (tmp_path / "hb").read_text() == "one"
    w.write("two")
    assert (tmp_path / "hb").read_text() == "two" and _only(tmp_path) == ["hb"]


def test_heartbeat_readers_always_get_a_whole_heartbeat_while_it_is_rewritten(tmp_path):
    path = tmp_path / "bot.heartbeat"
    hb_file = HeartbeatFile(path)
    hb_file.write(Heartbeat(1, time.time(), 0, "running"))
    done = threading.Event()
    seen: list[Heartbeat | None] = []

    def read() -> None:
        while not done.is_set():
            seen.append(read_heartbeat(path))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for seq in range(1, 301):  # lengths vary: a torn read would not parse
            hb_file.write(Heartbeat(1, time.time(), seq, "running", {"pad": "x" * (seq % 7 * 300)}))
            time.sleep(0.01)
    finally:
        done.set()
        reader.join(10)
    assert len(seen) > 300 and None not in seen
    assert all(len(hb.detail.get("pad", "")) == hb.seq % 7 * 300 for hb in seen)
