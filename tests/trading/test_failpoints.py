"""Failpoints: parsing, one-shot file semantics, and every action in a real child process."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil
import pytest

from trading.failpoints import Failpoints, Leak, parse
from tests.helpers.proc import REPO
from tradeguard.exceptions import ConfigError, FailpointTriggered


def test_parse_full_syntax():
    fps = parse("orders.after_intent=crash; memory=leak:40@3\nstartup=crash*")
    assert [(f.name, f.action, f.arg, f.nth, f.keep) for f in fps] == [
        ("orders.after_intent", "crash", None, 1, False),
        ("memory", "leak", 40, 3, False),
        ("startup", "crash", None, 1, True)]


@pytest.mark.parametrize("spec, words", [
    ("orders.after_intent", "expected name=action"),
    ("nosuch=crash", "unknown name"),
    ("startup=explode", "unknown action"),
    ("startup=crash:5", "only 'leak'"),
    ("startup=crash@0", "@N must be >= 1"),
])
def test_parse_rejects_bad_entries(spec, words):
    with pytest.raises(ConfigError, match=words):
        parse(spec)


def test_nothing_armed_never_fires(tmp_path):
    fps = Failpoints.load(tmp_path, environ={})
    assert not fps
    assert all(fps.hit(name) is None for name in ("startup", "loop.tick", "memory"))


def test_raise_fires_on_nth_hit_only_once():
    fps = Failpoints(parse("loop.tick=raise@3"))
    assert fps.hit("loop.tick") is None and fps.hit("loop.tick") is None
    with pytest.raises(FailpointTriggered):
        fps.hit("loop.tick")
    assert fps.hit("loop.tick") is None and not fps


def test_file_entry_is_removed_before_acting_and_kept_with_star(tmp_path):
    (tmp_path / "FAILPOINTS").write_text("loop.tick=raise;startup=stall*\nmemory=leak:5\n")
    fps = Failpoints.load(tmp_path, environ={})
    with pytest.raises(FailpointTriggered):
        fps.hit("loop.tick")
    assert (tmp_path / "FAILPOINTS").read_text().split() == ["startup=stall*", "memory=leak:5"]
    assert fps.hit("startup").action == "stall"
    leak = fps.hit("memory")
    assert (leak.action, leak.arg) == ("leak", 5)
    assert (tmp_path / "FAILPOINTS").read_text().split() == ["startup=stall*"]


def test_env_and_file_combine_and_bad_file_is_a_config_error(tmp_path):
    (tmp_path / "FAILPOINTS").write_text("memory=leak")
    fps = Failpoints.load(tmp_path, environ={"TRADEGUARD_FAILPOINTS": "loop.tick=stall"})
    assert sorted(f.name for f in fps.armed()) == ["loop.tick", "memory"]
    (tmp_path / "FAILPOINTS").write_text("memory=")
    with pytest.raises(ConfigError, match="FAILPOINTS|file"):
        Failpoints.load(tmp_path, environ={})


_CHILD = ("import sys; from trading.failpoints import Failpoints, parse; "
          "fps = Failpoints(parse(sys.argv[1])); print('armed', flush=True); fps.hit('startup'); "
          "print('survived', flush=True)")


def _child(spec: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _CHILD, spec], cwd=REPO, stdout=subprocess.PIPE,
                            text=True)


def test_crash_is_a_real_sigkill():
    p = _child("startup=crash")
    out, _ = p.communicate(timeout=20)
    assert p.returncode == -signal.SIGKILL and "survived" not in out


def test_exit_is_an_immediate_exit_3():
    p = _child("startup=exit")
    out, _ = p.communicate(timeout=20)
    assert p.returncode == 3 and "survived" not in out


def test_hang_blocks_forever():
    p = _child("startup=hang")
    try:
        assert p.stdout.readline().strip() == "armed"
        with pytest.raises(subprocess.TimeoutExpired):
            p.wait(0.5)
    finally:
        p.kill()
        p.wait(5)


def test_leak_grows_rss():
    proc = psutil.Process(os.getpid())
    leak = Leak()
    leak.tick()
    before = proc.memory_info().rss
    leak.start(16)
    leak.tick()
    leak.tick()
    assert proc.memory_info().rss - before >= 30 * 1024 * 1024
