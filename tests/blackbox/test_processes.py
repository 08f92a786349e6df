"""Real processes recording into one blackbox.db: concurrency and SIGKILL."""
from __future__ import annotations

import json
import signal
from collections import defaultdict

from tests.blackbox.conftest import rows

N = 3000


def test_two_processes_recording_at_once_lose_nothing_and_keep_their_order(paths, child):
    paths.ensure()
    procs = [child("flood", str(N)) for _ in range(2)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
    (paths.data_dir / "go").touch()
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0 and out.strip() == "done", err
    by_pid: dict[int, list[int]] = defaultdict(list)
    for pid, seq, _ts, kind, fields in rows(paths.blackbox_db):  # ordered by time
        assert kind == "test.flood"
        assert json.loads(fields)["i"] == seq - 1
        by_pid[pid].append(seq)
    assert sorted(by_pid) == sorted(p.pid for p in procs)
    for seqs in by_pid.values():
        assert seqs == list(range(1, N + 1))  # nothing lost, strictly increasing in time order
    writers = [pid for (pid,) in rows(paths.blackbox_db, "SELECT pid FROM events ORDER BY id")]
    switches = sum(a != b for a, b in zip(writers, writers[1:]))
    assert switches >= 4, "the two processes did not write concurrently"


def test_sigkill_keeps_every_critical_event_that_was_acknowledged(paths, child):
    p = child("critical")
    acked = []
    while len(acked) < 40:
        line = p.stdout.readline()
        assert line, p.stderr.read()
        acked.append(int(line))
    p.send_signal(signal.SIGKILL)
    out, _ = p.communicate(timeout=10)
    acked += [int(x) for x in out.split()]
    assert p.returncode == -signal.SIGKILL
    stored = {json.loads(f)["i"] for (f,) in rows(
        paths.blackbox_db, "SELECT fields FROM events WHERE kind = 'order.intent'")}
    missing = set(acked) - stored
    assert not missing, f"acknowledged critical events lost: {sorted(missing)[:10]}"
    # every non-critical event recorded before an acknowledged critical one was written with it
    noise = {json.loads(f)["i"] for (f,) in rows(
        paths.blackbox_db, "SELECT fields FROM events WHERE kind = 'test.noise'")}
    assert set(acked) <= noise
