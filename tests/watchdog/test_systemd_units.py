"""The systemd units in systemd/: verified by systemd-analyze (offline: no systemd needs to run),
their security exposure rated, their contracts with the code checked, and the install script's
dry run.

``systemd-analyze verify`` requires every ExecStart binary to exist, so the tests verify copies
of the units in a temp dir in which ``/opt/tradeguard/venv/bin/tradeguard`` is replaced by a
real executable; nothing else is changed. ``verify`` does not resolve ``User=``, so the missing
``tradeguard`` user raises no warning and needs no substitute. Any output of ``verify`` — a
warning included — fails the test.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.proc import REPO
from tradeguard.config import BotConfig, WatchdogConfig, load_config
from tradeguard.paths import RuntimePaths
from watchdog.alerts import SMTP_PASSWORD_CREDENTIAL
from watchdog.managers import SYSTEMD_UNIT

UNITS_DIR = REPO / "systemd"
SERVICES = ("tradeguard-bot.service", "tradeguard-watchdog.service")
PAPER = "tradeguard-paper.service"
UNITS = (*SERVICES, PAPER, "tradeguard.target")
INSTALLED_BINARY = "/opt/tradeguard/venv/bin/tradeguard"
CLI_ARGS = ["--config", "/etc/tradeguard/tradeguard.toml", "--data-dir", "/var/lib/tradeguard",
            "--logs-dir", "/var/log/tradeguard"]
EXPOSURE_MAX = 3.5

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze is not installed (.ci/run installs it)")


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections of a unit file: key -> every value in order (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit[section].get(key, [])
    assert len(values) == 1, f"[{section}] {key}: expected one value, got {values}"
    return values[0]


def seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|sec|min|m)?", value)
    assert m, f"cannot read time span {value!r}"
    return float(m[1]) * {"ms": 0.001, "min": 60, "m": 60}.get(m[2] or "s", 1)


@pytest.fixture(scope="module")
def units() -> dict[str, dict[str, dict[str, list[str]]]]:
    return {name: parse_unit(UNITS_DIR / name) for name in UNITS}


@pytest.fixture
def unit_copies(tmp_path: Path) -> Path:
    """The units in a temp dir, ExecStart pointed at a real executable."""
    binary = tmp_path / "bin" / "tradeguard"
    binary.parent.mkdir()
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    out = tmp_path / "units"
    out.mkdir()
    for name in UNITS:
        text = (UNITS_DIR / name).read_text(encoding="utf-8")
        if name != "tradeguard.target":
            assert text.count(f"ExecStart={INSTALLED_BINARY} ") == 1
            text = text.replace(INSTALLED_BINARY, str(binary))
        (out / name).write_text(text, encoding="utf-8")
    return out


def analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "LC_ALL": "C"})


# --- systemd-analyze ----------------------------------------------------------------------------
@pytest.mark.systemd
@needs_analyze
def test_units_verify_without_a_single_warning(unit_copies: Path) -> None:
    r = analyze("verify", "--man=no", *(f"./{n}" for n in UNITS), cwd=unit_copies)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r.stdout + r.stderr


@pytest.mark.systemd
@needs_analyze
def test_verify_would_catch_a_broken_unit(unit_copies: Path) -> None:
    """The check above can fail: a typo'd key and a bad value both produce output."""
    bot = unit_copies / "tradeguard-bot.service"
    bot.write_text(bot.read_text().replace("WatchdogSec=30", "WatchdogSec=soon\nWatchdogSecs=30"))
    r = analyze("verify", "--man=no", f"./{bot.name}", cwd=unit_copies)
    assert "WatchdogSecs" in r.stderr and "soon" in r.stderr


@pytest.mark.systemd
@needs_analyze
@pytest.mark.parametrize("name", (*SERVICES, PAPER))
def test_security_exposure_is_low(unit_copies: Path, name: str) -> None:
    r = analyze("security", "--offline=true", "--no-pager", f"./{name}", cwd=unit_copies)
    m = re.search(rf"Overall exposure level for {re.escape(name)}: (\d+(?:\.\d+)?)", r.stdout)
    assert m, r.stdout[-2000:] + r.stderr
    assert float(m[1]) <= EXPOSURE_MAX, r.stdout


# --- contracts between the units and the code ---------------------------------------------------
def test_bot_unit_restarts_failures_and_is_watched(units: dict) -> None:
    bot = units["tradeguard-bot.service"]
    svc = bot["Service"]
    assert SYSTEMD_UNIT == "tradeguard-bot.service"  # the name the watchdog's manager controls
    assert one(bot, "Service", "Type") == "notify" and one(bot, "Service", "NotifyAccess") == "main"
    assert one(bot, "Service", "Restart") == "on-failure"
    assert one(bot, "Service", "RestartPreventExitStatus") == "2"  # config errors: no loop
    # WATCHDOG=1 comes once per tick; a tick may wait tick_deadline_s on the exchange.
    defaults = BotConfig()
    assert seconds(one(bot, "Service", "WatchdogSec")) >= 2 * (defaults.tick_deadline_s +
                                                                defaults.loop_interval_s)
    assert "TimeoutAbortSec" in svc and seconds(one(bot, "Service", "TimeoutStopSec")) > 10
    # systemd must not give up before the watchdog's own restart budget is spent.
    wd = WatchdogConfig()
    assert int(one(bot, "Unit", "StartLimitBurst")) > wd.restart_budget
    assert seconds(one(bot, "Unit", "StartLimitIntervalSec")) >= wd.restart_window_s
    assert one(bot, "Service", "MemoryDenyWriteExecute") == "yes"


def test_watchdog_unit_can_reach_and_signal_the_bot(units: dict) -> None:
    bot, wd = units["tradeguard-bot.service"], units["tradeguard-watchdog.service"]
    for key in ("User", "Group", "StateDirectory", "LogsDirectory", "WorkingDirectory"):
        assert one(bot, "Service", key) == one(wd, "Service", key), key
    assert one(bot, "Service", "User") not in ("root", "0")
    for unit in (bot, wd):
        svc = unit["Service"]
        assert "DynamicUser" not in svc and "PrivatePIDs" not in svc and "PrivateUsers" not in svc
        assert svc.get("ProtectProc", ["invisible"]) == ["invisible"]  # hides other users only
    assert one(wd, "Service", "Restart") == "always"
    # Someone watches the watchdog: READY=1 once watching, WATCHDOG=1 after every check.
    assert one(wd, "Service", "Type") == "notify" and one(wd, "Service", "NotifyAccess") == "main"
    check_s = WatchdogConfig().interval_s
    assert seconds(one(wd, "Service", "WatchdogSec")) >= 20 * check_s + 15  # + a slow systemctl
    assert seconds(one(wd, "Service", "TimeoutAbortSec")) <= 10  # a stopped one gets SIGKILL soon
    assert "tradeguard-bot.service" in one(wd, "Unit", "After").split()  # stopped first
    env = dict(item.split("=", 1) for v in wd["Service"]["Environment"] for item in v.split())
    assert load_config(env=env).watchdog.manager == "systemd"


@pytest.mark.parametrize("name,command", [("tradeguard-bot.service", "bot"),
                                          ("tradeguard-watchdog.service", "watchdog"),
                                          (PAPER, "paper-exchange")])
def test_exec_start_runs_the_cli_with_the_shared_paths(units: dict, name: str,
                                                       command: str) -> None:
    argv = one(units[name], "Service", "ExecStart").split()
    assert argv[0] == INSTALLED_BINARY and argv[1] == command
    assert argv[2:] == CLI_ARGS
    assert one(units[name], "Service", "StateDirectory") == "tradeguard"  # /var/lib/tradeguard
    assert one(units[name], "Service", "LogsDirectory") == "tradeguard"   # /var/log/tradeguard


def test_credentials_have_the_names_the_code_reads(units: dict) -> None:
    expected = {RuntimePaths(Path("d"), Path("l")).field_key.name, "exchange.api_key",
                "exchange.api_secret"}
    for name in SERVICES:
        creds = {v.split(":", 1)[0] for v in units[name]["Service"]["LoadCredential"]}
        assert expected <= creds, name
    wd_creds = units["tradeguard-watchdog.service"]["Service"]["LoadCredential"]
    assert SMTP_PASSWORD_CREDENTIAL in wd_creds


def test_the_target_groups_both_services(units: dict) -> None:
    target = units["tradeguard.target"]
    assert set(one(target, "Unit", "Wants").split()) == set(SERVICES)
    assert one(target, "Install", "WantedBy") == "multi-user.target"
    for name in (*SERVICES, PAPER):
        assert one(units[name], "Unit", "PartOf") == "tradeguard.target"
        assert one(units[name], "Install", "WantedBy") == "tradeguard.target"


def test_the_paper_exchange_unit_is_optional_and_up_before_the_bot(units: dict) -> None:
    """Paper trading only: enabled into the target (install.sh does it with the example
    configuration, which trades on "paper"), never pulled in by the target itself."""
    paper = units[PAPER]
    assert PAPER not in one(units["tradeguard.target"], "Unit", "Wants").split()
    assert set(SERVICES) <= set(one(paper, "Unit", "Before").split())
    for key in ("User", "StateDirectory", "LogsDirectory"):  # shares the data dir's paper/
        assert one(paper, "Service", key) == one(units[SERVICES[0]], "Service", key)


# --- MemoryDenyWriteExecute: does the runtime cope? ---------------------------------------------
_MDWE_PROBE = r"""
import ctypes, importlib, json, os, pkgutil, sys
if sys.argv[1] == "mdwe":
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
        print(json.dumps({"unsupported": os.strerror(ctypes.get_errno())})); sys.exit(0)
failed = {}
for pkg in ("tradeguard", "bot", "watchdog", "resilience", "blackbox", "paper_exchange", "chaos"):
    mod = importlib.import_module(pkg)
    for m in pkgutil.walk_packages(mod.__path__, pkg + "."):
        if not m.name.endswith("__main__"):
            try:
                importlib.import_module(m.name)
            except Exception as e:
                failed[m.name] = type(e).__name__
import hashlib, sqlite3, ssl, ccxt, waitress, psutil, prometheus_client
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
key, nonce = AESGCM.generate_key(256), os.urandom(12)
assert AESGCM(key).decrypt(nonce, AESGCM(key).encrypt(nonce, b"v", b"ad"), b"ad") == b"v"
hashlib.scrypt(b"pw", salt=b"s" * 16, n=2 ** 14, r=8, p=1)
ccxt.binance({"apiKey": "k", "secret": "s"}).hmac(b"m", b"s", hashlib.sha256)
ssl.create_default_context()
db = sqlite3.connect(sys.argv[2]); db.execute("pragma journal_mode=wal"); db.execute("create table t(x)")
db.commit(); psutil.Process().memory_info()
print(json.dumps({"modules": len(sys.modules), "failed": failed}))
"""


def test_the_runtime_works_under_memory_deny_write_execute(tmp_path: Path) -> None:
    """Both units set MemoryDenyWriteExecute=yes. Without a running systemd this applies the
    kernel's equivalent (prctl PR_SET_MDWE, Linux >= 6.3: no writable+executable memory, no
    making memory executable) to a child that imports every module and exercises cryptography,
    scrypt, ccxt signing, TLS setup and SQLite WAL; it must fare exactly as without it."""
    procs = {mode: subprocess.Popen([sys.executable, "-c", _MDWE_PROBE, mode,
                                     str(tmp_path / f"{mode}.db")], cwd=REPO, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for mode in ("mdwe", "plain")}  # side by side: each imports everything
    results = {}
    for mode, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, f"{mode}: {err[-3000:]}"
        results[mode] = json.loads(out.strip().splitlines()[-1])
    if "unsupported" in results["mdwe"]:
        pytest.skip(f"kernel without PR_SET_MDWE: {results['mdwe']['unsupported']}")
    assert results["mdwe"]["failed"] == results["plain"]["failed"]


# --- install script and polkit rule -------------------------------------------------------------
def test_install_dry_run_prints_every_step_and_changes_nothing() -> None:
    touched = [Path(p) for p in ("/opt/tradeguard", "/etc/tradeguard", "/etc/credstore",
                                 "/etc/systemd/system/tradeguard-bot.service")]
    before = [p.exists() for p in touched]
    r = subprocess.run(["bash", str(UNITS_DIR / "install.sh"), "--dry-run", "--source", str(REPO)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "# dry run: nothing is changed"
    steps = [line[2:] for line in lines if line.startswith("+ ")]
    assert "# user tradeguard exists" in lines or any(
        s.startswith("useradd --system --user-group") and s.endswith(" tradeguard") for s in steps)
    assert f"/opt/tradeguard/venv/bin/python -m pip install --quiet -r {REPO}/requirements.txt" \
        in steps
    assert f"/opt/tradeguard/venv/bin/python -m pip install --quiet --no-deps --force-reinstall " \
        f"{REPO}" in steps
    for name in UNITS:
        assert f"install -m 0644 -o root -g root {UNITS_DIR}/{name} /etc/systemd/system/{name}" \
            in steps
    assert "install -d -m 0700 -o root -g root /etc/credstore" in steps
    assert "systemctl enable --now tradeguard.target" in r.stdout
    if "install -m 0640 -o root -g tradeguard " in r.stdout:  # a fresh example configuration
        assert f"systemctl enable {PAPER}" in steps
    assert [p.exists() for p in touched] == before


def test_what_install_sh_installs_holds_every_package() -> None:
    """install.sh installs the tree with ``pip install SOURCE`` (not editable): a directory of
    modules without ``__init__.py`` is left out by setup.cfg's ``find:`` and the installed
    service fails on import (watchdog.health did, found under a real systemd)."""
    import configparser

    from setuptools import find_packages

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    include = cfg["options.packages.find"]["include"].split()
    found = set(find_packages(str(REPO), include=include))
    tops = [p for p in include if "*" not in p]
    dirs = {str(d.relative_to(REPO)).replace("/", ".") for top in tops
            for d in [REPO / top, *(REPO / top).rglob("*")]
            if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.py"))}
    assert dirs - found == set()

    r = subprocess.run(["bash", str(UNITS_DIR / "install.sh"), "--dry-run", "--frobnicate"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "unknown option: --frobnicate" in r.stderr
    r = subprocess.run(["bash", str(UNITS_DIR / "install.sh"), "--dry-run", "--source", "/"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "not a tradeguard source tree" in r.stderr


_POLKIT_HARNESS = r"""
const fs = require("fs");
const rules = [];
const polkit = {Result: {YES: "yes", NOT_HANDLED: null}, addRule: (f) => rules.push(f)};
new Function("polkit", fs.readFileSync(process.argv[2], "utf8"))(polkit);
const ask = (user, unit, verb, id = "org.freedesktop.systemd1.manage-units") =>
    rules[0]({id, lookup: (k) => ({unit, verb})[k]}, {user});
console.log(JSON.stringify([
    ask("tradeguard", "tradeguard-bot.service", "stop"),
    ask("tradeguard", "tradeguard-bot.service", "start"),
    ask("tradeguard", "tradeguard-watchdog.service", "stop"),
    ask("tradeguard", "ssh.service", "stop"),
    ask("nobody", "tradeguard-bot.service", "stop"),
    ask("tradeguard", "tradeguard-bot.service", "stop", "org.freedesktop.login1.reboot"),
]));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_polkit_rule_lets_the_watchdog_manage_only_the_bot_unit(tmp_path: Path) -> None:
    harness = tmp_path / "harness.js"
    harness.write_text(_POLKIT_HARNESS)
    r = subprocess.run(["node", str(harness), str(UNITS_DIR / "polkit" / "50-tradeguard.rules")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == ["yes", "yes", None, None, None, None]
