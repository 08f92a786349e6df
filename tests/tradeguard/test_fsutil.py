"""Whole-or-nothing file writes: the target is either the old file or the new one, the temp file
never stays behind, and ``overwrite=False`` never clobbers."""
from __future__ import annotations

import os
import stat

import pytest

from tradeguard.fsutil import SHARED, staged, write_atomic


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
