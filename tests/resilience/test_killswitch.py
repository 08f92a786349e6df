"""The kill switch: file and environment, modes, fail-safe reading, no downgrade, cheap checks."""
from __future__ import annotations

import builtins
import json
import logging
import os

import pytest

from resilience import killswitch as ks
from resilience.killswitch import ENV_VAR, UNREADABLE_REASON, KillSwitch


@pytest.fixture
def kill_file(data_dir):
    return data_dir / "KILL"


def test_not_engaged_without_file_or_env(kill_file):
    assert KillSwitch(kill_file, environ={}).check() is None


def test_engage_halt_writes_the_documented_file(kill_file):
    switch = KillSwitch(kill_file, environ={})
    state = switch.engage("halt", "  maintenance  ", by="ops")
    on_disk = json.loads(kill_file.read_text())
    assert on_disk == {"mode": "halt", "reason": "maintenance", "at": state.at, "by": "ops"}
    seen = KillSwitch(kill_file, environ={}).check()
    assert (seen.mode, seen.reason, seen.at, seen.source, seen.by) == \
        ("halt", "maintenance", state.at, "file", "ops")


def test_flatten_upgrades_and_halt_never_downgrades(kill_file):
    switch = KillSwitch(kill_file, environ={})
    switch.engage("halt", "first")
    switch.engage("flatten", "losing money", by="watchdog")
    before = kill_file.read_bytes()
    state = switch.engage("halt", "calm down")
    assert state.mode == "flatten" and state.reason == "losing money"
    assert kill_file.read_bytes() == before
    assert switch.check().mode == "flatten"


def test_same_mode_keeps_the_first_reason(kill_file):
    switch = KillSwitch(kill_file, environ={})
    switch.engage("halt", "the operator's reason", by="cli")
    assert switch.engage("halt", "daily loss", by="bot").reason == "the operator's reason"


@pytest.mark.parametrize("mode, reason", [("stop", "x"), ("halt", ""), ("flatten", "   ")])
def test_engage_rejects_bad_arguments(kill_file, mode, reason):
    with pytest.raises(ValueError):
        KillSwitch(kill_file, environ={}).engage(mode, reason)
    assert not kill_file.exists()


def test_release_removes_the_file_and_says_what_it_was(kill_file):
    switch = KillSwitch(kill_file, environ={})
    assert switch.release() is None
    switch.engage("flatten", "x")
    assert switch.check() is not None
    assert switch.release().mode == "flatten"
    assert not kill_file.exists() and switch.check() is None


@pytest.mark.parametrize("value, mode", [
    ("1", "halt"), ("true", "halt"), ("TRUE", "halt"), (" halt ", "halt"), ("flatten", "flatten"),
    ("Flatten", "flatten"), ("0", None), ("false", None), ("", None), ("  ", None),
])
def test_environment_values(kill_file, value, mode):
    state = KillSwitch(kill_file, environ={ENV_VAR: value}).check()
    assert (state.mode if state else None) == mode
    if state:
        assert state.source == "env" and state.by == "env" and state.reason == f"{ENV_VAR}={value.strip()}"


def test_unknown_environment_value_halts_with_a_warning(kill_file, caplog):
    with caplog.at_level(logging.WARNING, logger="resilience.killswitch"):
        state = KillSwitch(kill_file, environ={ENV_VAR: "yes please"}).check()
    assert state.mode == "halt" and state.source == "env"
    assert "treated as halt" in caplog.text


def test_environment_change_is_seen(kill_file):
    env: dict[str, str] = {}
    switch = KillSwitch(kill_file, environ=env)
    assert switch.check() is None
    env[ENV_VAR] = "flatten"
    assert switch.check().mode == "flatten"
    env[ENV_VAR] = "0"
    assert switch.check() is None


def test_the_stronger_of_file_and_env_wins(kill_file):
    KillSwitch(kill_file, environ={}).engage("flatten", "from file")
    assert KillSwitch(kill_file, environ={ENV_VAR: "halt"}).check().source == "file"
    kill_file.unlink()
    KillSwitch(kill_file, environ={}).engage("halt", "from file")
    assert KillSwitch(kill_file, environ={ENV_VAR: "flatten"}).check().source == "env"
    assert KillSwitch(kill_file, environ={ENV_VAR: "1"}).check().source == "file"  # tie: the file


@pytest.mark.parametrize("content", [b"", b"{trunc", b"[1, 2]", b'{"mode": "stop"}', b"\xff\xfe",
                                     b'{"reason": "no mode"}'])
def test_a_malformed_file_engages_halt(kill_file, content, caplog):
    kill_file.write_bytes(content)
    state = KillSwitch(kill_file, environ={}).check()
    assert (state.mode, state.reason, state.source) == ("halt", UNREADABLE_REASON, "file")
    assert "fail safe" in caplog.text


def test_an_unreadable_file_engages_halt(kill_file):
    kill_file.mkdir()  # opening it fails whoever we run as
    state = KillSwitch(kill_file, environ={}).check()
    assert (state.mode, state.reason) == ("halt", UNREADABLE_REASON)


def test_engage_replaces_an_unreadable_file(kill_file):
    kill_file.write_text("garbage")
    switch = KillSwitch(kill_file, environ={})
    assert switch.engage("halt", "clean up").reason == "clean up"
    assert switch.check().reason == "clean up"


def test_a_hand_written_file_with_odd_fields_is_still_obeyed(kill_file):
    kill_file.write_text(json.dumps({"mode": "flatten", "reason": 42, "at": "yesterday"}))
    state = KillSwitch(kill_file, environ={}).check()
    assert state.mode == "flatten" and state.reason == "" and state.by == "unknown"
    assert state.at == pytest.approx(os.stat(kill_file).st_mtime)


def test_check_costs_one_stat_and_reads_only_on_change(kill_file, monkeypatch):
    switch = KillSwitch(kill_file, environ={})
    switch.engage("halt", "x")
    stats, opens = [], []
    real_stat, real_open = os.stat, builtins.open
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: stats.append(p) or real_stat(p, *a, **k))
    monkeypatch.setattr(ks, "open", lambda *a, **k: opens.append(a[0]) or real_open(*a, **k),
                        raising=False)
    for _ in range(50):
        assert switch.check().mode == "halt"
    assert len(stats) == 50 and len(opens) == 1
    # another writer replaces the file: same size, same mtime, but a new inode
    other = kill_file.with_name("KILL.new")
    payload = kill_file.read_bytes().replace(b'"halt"', b'"HALT"')
    other.write_bytes(payload)
    st = real_stat(kill_file)
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, kill_file)
    assert switch.check().reason == UNREADABLE_REASON  # re-read: "HALT" is not a mode
    assert len(opens) == 2
