"""``tradeguard kill`` and ``tradeguard resume`` through the real CLI (child processes)."""
from __future__ import annotations

import json

from blackbox.reader import query_events
from tests.helpers.proc import run_cli


def _cli(data_dir, logs_dir, *args, env=None):
    return run_cli(*args, "--data-dir", str(data_dir), "--logs-dir", str(logs_dir), env=env)


def test_kill_halt_then_flatten_then_no_downgrade_then_resume(data_dir, logs_dir):
    kill_file = data_dir / "KILL"
    r = _cli(data_dir, logs_dir, "kill", "--reason", "exchange looks odd")
    assert r.returncode == 0, r.stderr
    assert "engaged (halt)" in r.stdout and "no new orders" in r.stdout and "resume" in r.stdout
    on_disk = json.loads(kill_file.read_text())
    assert (on_disk["mode"], on_disk["reason"], on_disk["by"]) == ("halt", "exchange looks odd", "cli")

    r = _cli(data_dir, logs_dir, "kill", "--flatten", "--reason", "get out")
    assert r.returncode == 0, r.stderr
    assert "engaged (flatten)" in r.stdout and "watchdog" in r.stdout
    assert json.loads(kill_file.read_text())["mode"] == "flatten"

    r = _cli(data_dir, logs_dir, "kill", "--reason", "just halt")
    assert r.returncode == 0 and "Not downgraded" in r.stdout
    assert json.loads(kill_file.read_text())["reason"] == "get out"

    r = _cli(data_dir, logs_dir, "resume")
    assert r.returncode == 0, r.stderr
    assert "released" in r.stdout and "get out" in r.stdout
    assert not kill_file.exists()

    events = query_events(data_dir / "blackbox.db", kinds=("kill.",))
    assert [(e["kind"], e["fields"]["mode"]) for e in events] == \
        [("kill.engaged", "halt"), ("kill.engaged", "flatten"), ("kill.released", "flatten")]
    assert all(e["critical"] and e["role"] == "cli" for e in events)


def test_reason_is_required_and_must_not_be_blank(data_dir, logs_dir):
    for args in (("kill",), ("kill", "--reason", "   "), ("kill", "--flatten", "--reason", "")):
        r = _cli(data_dir, logs_dir, *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "--reason" in r.stderr and "Traceback" not in r.stderr
    assert not (data_dir / "KILL").exists()


def test_resume_without_a_kill_file_and_with_the_env_still_set(data_dir, logs_dir):
    r = _cli(data_dir, logs_dir, "resume")
    assert r.returncode == 0 and "nothing to release" in r.stdout
    r = _cli(data_dir, logs_dir, "kill", "--reason", "x", env={"BOT_EMERGENCY_SHUTDOWN": "1"})
    assert r.returncode == 0 and "BOT_EMERGENCY_SHUTDOWN=1 in this environment also engages it" in r.stdout
    r = _cli(data_dir, logs_dir, "resume", env={"BOT_EMERGENCY_SHUTDOWN": "flatten"})
    assert r.returncode == 1
    assert "remains engaged by env" in r.stderr and "BOT_EMERGENCY_SHUTDOWN=flatten" in r.stderr
    assert not (data_dir / "KILL").exists()


SECRET_ENV = {"TRADEGUARD_EXCHANGE_API_KEY": "k-123", "TRADEGUARD_EXCHANGE_API_SECRET": "s-456",
              "TRADEGUARD_EXCHANGE_PASSWORD": "p-789"}


def test_kill_and_resume_work_with_exchange_keys_in_the_environment(data_dir, logs_dir):
    r = _cli(data_dir, logs_dir, "kill", "--reason", "x", env=SECRET_ENV)
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stderr and (data_dir / "KILL").exists()
    r = _cli(data_dir, logs_dir, "resume", env=SECRET_ENV)
    assert r.returncode == 0, r.stderr
    assert not (data_dir / "KILL").exists()


def test_a_broken_config_does_not_stop_the_kill_switch(data_dir, logs_dir, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[resilience]\nnot_a_key = 1\n")
    r = run_cli("kill", "--reason", "x", "--config", str(bad), "--data-dir", str(data_dir),
                "--logs-dir", str(logs_dir))
    assert r.returncode == 0, r.stderr
    assert "not_a_key" in r.stderr and str(data_dir) in r.stderr and "Traceback" not in r.stderr
    assert json.loads((data_dir / "KILL").read_text())["reason"] == "x"


def test_a_broken_config_still_names_the_bots_data_dir(tmp_path):
    """Without --data-dir, the kill file goes where the file's [paths] says the bot's state is."""
    bots = tmp_path / "bots-data"
    bad = tmp_path / "bad.toml"
    bad.write_text(f'[paths]\ndata_dir = "{bots}"\nlogs_dir = "{tmp_path / "l"}"\n'
                   '[exchange]\napi_key = "oops"\n[bot]\nloop_interval_s = "slow"\n')
    r = run_cli("kill", "--flatten", "--reason", "get out", "--config", str(bad), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "secrets are never read from the config file" in r.stderr
    assert json.loads((bots / "KILL").read_text())["mode"] == "flatten"
    assert not (tmp_path / "data" / "KILL").exists()
    r = run_cli("resume", "--config", str(bad), cwd=tmp_path)
    assert r.returncode == 0 and "released" in r.stdout
    assert not (bots / "KILL").exists()


def test_kill_with_an_unwritable_logs_dir_still_writes_the_kill_file(unprivileged):
    data = unprivileged.dir("data")
    logs = unprivileged.dir("logs", writable=False)
    r = unprivileged.run_cli("kill", "--reason", "logs are full", "--data-dir", str(data),
                             "--logs-dir", str(logs / "sub"))
    assert r.returncode == 0, r.stderr
    assert "logs dir" in r.stderr and "Traceback" not in r.stderr
    assert json.loads((data / "KILL").read_text())["reason"] == "logs are full"


def test_kill_with_an_unwritable_data_dir_says_so(unprivileged):
    data = unprivileged.dir("data", writable=False)
    r = unprivileged.run_cli("kill", "--reason", "x", "--data-dir", str(data),
                             "--logs-dir", str(unprivileged.dir("logs")))
    assert r.returncode == 2
    assert f"the data dir {data} is not writable" in r.stderr and "Traceback" not in r.stderr
