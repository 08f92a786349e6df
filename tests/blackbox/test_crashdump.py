"""Crash dumps taken by real processes: SIGUSR1, a dying worker thread, a fatal signal;
retention of dump files."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from blackbox.dumps import FAULT_REASON, dump_name, list_dumps, prune
from tests.blackbox.child import SECRET
from tests.blackbox.conftest import rows
from tests.helpers.proc import wait_until

LEAKS = (SECRET, "ak-live-123456", "abcdefghijklmnopqrstuvwxyz", "XXXXXXXX")


def json_dumps(crash_dir: Path) -> list[Path]:
    return sorted(crash_dir.glob("*.json"))


def assert_no_secrets(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    for leaked in LEAKS:
        assert leaked not in text, f"{leaked!r} leaked into {path.name}"


def test_sigusr1_takes_a_dump_with_stacks_events_and_the_objgraph_summary(paths, child):
    p = child("usr1")
    assert p.stdout.readline().strip() == "ready", p.stderr.read()
    p.send_signal(signal.SIGUSR1)
    (path,) = wait_until(lambda: json_dumps(paths.crash_dir), timeout=15, message="a dump")
    data = wait_until(lambda: json.loads(path.read_text()), timeout=5, message="a readable dump")
    assert data["reason"] == "SIGUSR1 (on demand)" and data["pid"] == p.pid
    assert data["role"] == "usr1" and data["exception"] is None and data["errors"] == []
    memory = data["memory"]
    assert len(memory["most_common_types"]) == 20 and memory["growth_since"] is not None
    assert all(isinstance(n, str) and c > 0 for n, c in memory["most_common_types"])
    assert isinstance(memory["growth"], list)
    main = [t for t in data["threads"] if t["name"] == "MainThread"]
    assert main and any("in usr1" in line for line in main[0]["stack"])
    assert data["process"]["rss_bytes"] > 0 and data["process"]["num_fds"] > 0
    assert [e["kind"] for e in data["events"]] == ["test.secret"]
    assert data["config"]["exchange"] == {"id": "paper", "api_key": "***"}
    assert_no_secrets(path)
    assert path.stat().st_mode & 0o077 == 0


def test_unhandled_exception_in_a_thread_dumps_its_stack_and_dumps_are_rate_limited(paths, child):
    p = child("thread")
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err  # a dying worker thread does not take the process down
    result = json.loads(out)
    assert result["first"] and result["second"] is None  # the same reason within 10 s: skipped
    dumps = {d.reason: d for d in list_dumps(paths.crash_dir)}
    crash = dumps["unhandled exception in thread worker-1"]
    assert crash.exception.startswith("ValueError: worker failed holding")
    data = json.loads(crash.path.read_text())
    tb = "".join(data["exception"]["traceback"])
    assert "explode_in_worker" in tb and data["exception"]["thread"] == "worker-1"
    assert dumps["SIGTERM"].path == Path(result["first"])
    for d in dumps.values():
        assert_no_secrets(d.path)
    assert "worker failed holding ***" in crash.exception
    # the default report still reaches stderr, redacted like everything else
    assert "Exception in thread worker-1" in err and "explode_in_worker" in err
    assert SECRET not in err


def test_unhandled_exception_in_the_main_thread_dumps_then_exits_as_usual(paths, child):
    p = child("main")
    _, err = p.communicate(timeout=30)
    assert p.returncode == 1
    (d,) = list_dumps(paths.crash_dir)
    assert d.reason == "unhandled exception" and d.exception == "RuntimeError: main loop failed holding ***"
    assert_no_secrets(d.path)
    assert "Traceback" in err and "main_thread" in err and SECRET not in err
    # the dump is announced in the event log, durably
    (kind, fields), = rows(paths.blackbox_db, "SELECT kind, fields FROM events WHERE kind = 'crash.dump'")
    assert json.loads(fields)["file"] == d.path.name


def test_a_dump_is_written_even_when_the_event_log_is_unavailable(paths, child):
    paths.blackbox_db.mkdir(parents=True)  # a directory where the database should be
    p = child("thread")
    _, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    (d,) = [d for d in list_dumps(paths.crash_dir) if d.reason.startswith("unhandled")]
    data = json.loads(d.path.read_text())
    assert [e["kind"] for e in data["events"]] == ["test.secret"]  # from memory
    assert data["recorder"]["failing"] is True and data["errors"] == []


def test_a_dump_carries_the_whole_ring_newest_last(paths, child):
    p = child("ring", "64", "3000")  # ~100 bytes each: ~300 KB through a 64 KiB ring
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    data = json.loads(Path(out.strip()).read_text())
    ring = [e["fields"]["i"] for e in data["events"] if e["kind"] == "test.ring"]
    assert ring == list(range(ring[0], 3000))  # the newest events, in order, none missing
    stats = data["recorder"]
    assert 400 < len(ring) < 1000 and stats["ring_events"] <= len(ring)
    assert 60 * 1024 < stats["ring_bytes"] <= 64 * 1024  # full, and no fuller than its memory


def test_fatal_signal_leaves_a_faulthandler_file_that_is_listed(paths, child):
    p = child("segv")
    assert p.stdout.readline().strip() == "ready", p.stderr.read()
    p.wait(timeout=15)
    assert p.returncode == -signal.SIGSEGV
    (fault,) = [d for d in list_dumps(paths.crash_dir) if d.kind == "fault"]
    assert fault.reason == FAULT_REASON and fault.pid == p.pid and fault.role == "segv"
    assert "Segmentation fault" in fault.exception
    assert "in segv" in fault.path.read_text()


def test_retention_keeps_the_newest_dumps_and_drops_empty_fault_files_of_dead_processes(tmp_path):
    t0 = 1_795_000_000.0
    for i in range(55):
        (tmp_path / dump_name(t0 + i, "bot", 1000 + i, "json")).write_text("{}")
    dead_pid = 2 ** 22 + 12345  # above pid_max's default: no such process
    (tmp_path / dump_name(t0, "bot", dead_pid, "fault")).touch()
    (tmp_path / dump_name(t0, "bot", os.getpid(), "fault")).touch()  # alive: kept
    (tmp_path / "notes.txt").write_text("not a dump")
    assert prune(tmp_path, keep=50) == 6
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len([n for n in names if n.endswith(".json")]) == 50
    assert dump_name(t0 + 5, "bot", 1005, "json") in names  # the oldest five are gone
    assert dump_name(t0 + 4, "bot", 1004, "json") not in names
    assert "notes.txt" in names and dump_name(t0, "bot", os.getpid(), "fault") in names
    assert all(d.kind == "json" for d in list_dumps(tmp_path))  # empty fault files are not dumps


def test_two_dumps_in_the_same_millisecond_are_both_kept_private(tmp_path):
    from blackbox.crashdump import _write

    data = {"ts": 1795440000.123, "role": "bot", "pid": 4242, "reason": "sigusr1"}
    first, second = _write(tmp_path, dict(data)), _write(tmp_path, {**data, "reason": "sigterm"})
    assert first != second and first.name == dump_name(data["ts"], "bot", 4242, "json")
    assert [json.loads(p.read_text())["reason"] for p in (first, second)] == ["sigusr1", "sigterm"]
    assert {oct(p.stat().st_mode & 0o777) for p in (first, second)} == {"0o600"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, second.name])


def test_a_dump_never_carries_health_users_or_their_hashes(paths, child, tmp_path):
    """20 hashes as `tradeguard health passwd` writes them (about half have a "/" in their
    base64, which the generic token pattern leaves alone): none reaches the dump."""
    import random

    from watchdog.health.passwords import HASH_BYTES, SALT_BYTES, SCRYPT_N, ScryptHash

    rnd = random.Random(19)
    hashes = {f"user{i}": ScryptHash(SCRYPT_N, 8, 1, rnd.randbytes(SALT_BYTES),
                                     rnd.randbytes(HASH_BYTES)).encode() for i in range(20)}
    assert sum("/" in h for h in hashes.values()) >= 5
    toml = tmp_path / "tradeguard.toml"
    toml.write_text("[health]\nusers = { " + ", ".join(f'{u} = "{h}"' for u, h in hashes.items()) + " }\n")
    p = child("config", str(toml))
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    text = Path(out.strip()).read_text(encoding="utf-8")
    data = json.loads(text)
    assert data["config"]["health"]["users"] == "***"
    assert data["config"]["health"]["port"] == 8080  # the rest of the config is still there
    for user, h in hashes.items():
        for part in h.split("$")[4:]:  # salt and digest
            assert part not in text, f"{user}'s hash leaked"
        assert user not in text
