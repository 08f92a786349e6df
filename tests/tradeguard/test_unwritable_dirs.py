"""An unwritable data or logs dir is a plain message and exit 2 for every command — never a
traceback (item 4 of #18). Run with the permission-bypassing capabilities dropped."""
from __future__ import annotations

import pytest

COMMANDS = [("bot",), ("watchdog",), ("paper-exchange",), ("run",), ("health", "token", "--rotate")]
CASES = [(c, d) for c in COMMANDS for d in ("data", "logs")] + [(("keys", "generate"), "data")]


@pytest.mark.parametrize("command, unwritable", CASES, ids=lambda v: " ".join(v) if isinstance(v, tuple) else v)
def test_unwritable_dir_is_a_plain_error(unprivileged, command, unwritable) -> None:
    dirs = {name: unprivileged.dir(name, writable=name != unwritable) for name in ("data", "logs")}
    r = unprivileged.run_cli(*command, "--data-dir", str(dirs["data"]),
                             "--logs-dir", str(dirs["logs"]), timeout=30)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    assert f"{unwritable} dir {dirs[unwritable]}" in r.stderr or str(dirs[unwritable]) in r.stderr


def test_a_data_dir_below_a_file_is_a_plain_error(unprivileged) -> None:
    blocker = unprivileged.root / "file"
    blocker.write_text("")
    r = unprivileged.run_cli("bot", "--data-dir", str(blocker / "data"), "--logs-dir",
                             str(unprivileged.dir("logs")))
    assert r.returncode == 2 and "cannot create the data dir" in r.stderr
    assert "Traceback" not in r.stderr
