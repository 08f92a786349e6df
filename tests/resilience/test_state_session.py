"""quick_check where it pays: after an unclean shutdown or a change to the file, or on request."""
from __future__ import annotations

import os

import pytest

from resilience.state import StateStore
from tests.resilience._state_support import cipher_for, intent, key_bytes, running_writer


def _open(db, integrity="auto"):
    return StateStore.open(db, cipher_for(1), synchronous="NORMAL", integrity=integrity)


def _marker(db) -> str:
    return (db.parent / "state.db.session").read_text()


@pytest.fixture
def db(data_dir):
    path = data_dir / "state.db"
    s = _open(path)
    intent(s)
    s.close()
    return path


def test_a_cleanly_closed_file_is_not_scanned_again(db):
    assert _marker(db).startswith("clean ")
    s = _open(db)
    assert not s.integrity_checked
    assert _marker(db) == "open"
    s.close()
    s = _open(db, "always")  # on request
    assert s.integrity_checked
    s.close()


def _killed_writer(db) -> None:
    """A writer process SIGKILLed while it holds the database (as a power cut would leave it)."""
    with running_writer(db, key_bytes(1)) as w:
        w.wait_for(3)
        w.proc.kill()


def test_a_killed_writer_makes_the_next_open_scan_the_file(db):
    _killed_writer(db)
    assert _marker(db) == "open"  # nobody recorded a clean close
    s = _open(db)
    assert s.integrity_checked and s.quarantined is None
    s.close()
    s = _open(db)  # checked and closed cleanly: not again
    assert not s.integrity_checked
    s.close()


def test_a_file_changed_since_its_clean_close_is_scanned(db):
    st = os.stat(db)
    os.utime(db, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a restore, a copy, a disk
    s = _open(db)
    assert s.integrity_checked
    s.close()


def test_the_emergency_path_never_scans_and_leaves_the_check_to_the_next_opener(db):
    _killed_writer(db)
    s = _open(db, "never")  # the watchdog's flatten after the bot died
    assert not s.integrity_checked and _marker(db) == "dirty"
    s.close()
    assert _marker(db) == "dirty"  # not recorded clean: it was never checked
    s = _open(db)
    assert s.integrity_checked
    s.close()
    assert _marker(db).startswith("clean ")


def test_a_second_writer_joins_without_scanning(db):
    with running_writer(db, key_bytes(1)) as w:
        w.wait_for(3)
        s = _open(db)  # the bot holds it (and decided at its open): the watchdog joins
        assert not s.integrity_checked
        intent(s, bot_id="wd")
        s.close()
        assert _marker(db) == "open"  # the other writer is still in: not the last one out
        w.wait_for(6)
