"""``tradeguard health check | token | passwd`` as real subprocesses against a real endpoint."""
from __future__ import annotations

import json
import stat
import time

from tests.helpers.proc import run_cli
from watchdog.health.passwords import read_credentials, verify_password


def _cli(cfg, *args, data_dir=None, **kw):
    return run_cli(*args, "--config", str(cfg.source), "--data-dir", str(data_dir or cfg.runtime.data_dir),
                   "--logs-dir", str(cfg.runtime.logs_dir), **kw)


def test_check_exits_0_when_healthy_and_1_with_the_reason_otherwise(serve, bot_child, tmp_path):
    s = serve()
    bot_child.start()
    s.wait_status("healthy")
    r = _cli(s.cfg, "health", "check")
    assert r.returncode == 0, r.stderr
    assert "healthy" in r.stdout

    s.cfg.runtime.kill_file.write_text(json.dumps({"mode": "halt", "reason": "maintenance", "at": time.time()}))
    s.wait_status("halted")
    r = _cli(s.cfg, "health", "check")
    assert r.returncode == 1
    assert "halted" in r.stderr and "maintenance" in r.stderr

    other = tmp_path / "other-data"  # a data dir whose token the endpoint does not know
    other.mkdir()
    (other / "health.token").write_text("not-the-token\n")
    (other / "health.token").chmod(0o600)
    r = _cli(s.cfg, "health", "check", data_dir=other)
    assert r.returncode == 1 and "refused the token" in r.stderr

    s.server.stop()
    r = _cli(s.cfg, "health", "check", "--timeout", "2")
    assert r.returncode == 1 and "unreachable" in r.stderr
    assert "Traceback" not in r.stderr


def test_token_shows_the_path_and_rotate_replaces_the_file(health_cfg):
    cfg = health_cfg()
    r = _cli(cfg, "health", "token")
    assert r.returncode == 0, r.stderr
    path = cfg.runtime.health_token
    first = path.read_text().strip()
    assert str(path) in r.stdout and first not in r.stdout
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    r = _cli(cfg, "health", "token", "--rotate")
    assert r.returncode == 0, r.stderr
    second = path.read_text().strip()
    assert second != first and second not in r.stdout + r.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_passwd_from_stdin_writes_a_private_scrypt_entry(health_cfg):
    cfg = health_cfg()
    r = _cli(cfg, "health", "passwd", "monitor", "--password-stdin", input="correct horse\n")
    assert r.returncode == 0, r.stderr
    path = cfg.runtime.health_users
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "correct horse" not in path.read_text()
    assert path.read_text().startswith("monitor:scrypt$16384$8$1$")
    assert verify_password("correct horse", read_credentials(path)["monitor"])


def test_passwd_prompts_twice_and_refuses_a_mismatch(health_cfg):
    cfg = health_cfg()
    r = _cli(cfg, "health", "passwd", "monitor", input="one\ntwo\none\none\n")
    assert r.returncode == 0, r.stderr + r.stdout
    assert "do not match" in r.stdout + r.stderr
    assert verify_password("one", read_credentials(cfg.runtime.health_users)["monitor"])
    assert "one" not in r.stdout.replace("monitor", "")  # never echoed


def test_passwd_bad_input_exits_2_without_a_traceback(health_cfg):
    cfg = health_cfg()
    for args, stdin in ((("passwd", "bad:name", "--password-stdin"), "pw\n"),
                        (("passwd", "monitor", "--password-stdin"), "\n")):
        r = _cli(cfg, "health", *args, input=stdin)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert r.stderr.startswith("error:") and "Traceback" not in r.stderr
    assert not cfg.runtime.health_users.exists()
