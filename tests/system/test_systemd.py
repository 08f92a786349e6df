"""tradeguard under a real systemd: installed by systemd/install.sh as docs/DEPLOY.md says, started
with ``systemctl enable --now tradeguard.target``, then broken on purpose.

The tests follow one installation in file order (run with ``-n 0``); each asserts what systemd
and tradeguard did, and records how long it took (system-report.json).
"""
from __future__ import annotations

import base64
import hashlib
import json
import time

import pytest

from tests.system.box import Box, flatten_with_kill_switch, record

pytestmark = pytest.mark.timeout(600)

BOT, WD, PAPER = "tradeguard-bot.service", "tradeguard-watchdog.service", "tradeguard-paper.service"
TARGET = "tradeguard.target"
FIELD_KEY = base64.b64encode(hashlib.sha256(b"tradeguard system test field key").digest()).decode()
API_KEY = "sysTestApiKey-" + hashlib.sha256(b"api key").hexdigest()[:24]
API_SECRET = "sysTestApiSecret-" + hashlib.sha256(b"api secret").hexdigest()[:24]
DATA = "/var/lib/tradeguard"

# state.db read-only, as root: filled orders by origin and open positions.
_TRADES = """
import json, sqlite3
db = sqlite3.connect("file:/var/lib/tradeguard/state.db?mode=ro", uri=True, timeout=10)
filled = dict(db.execute("SELECT origin, count(*) FROM orders WHERE state = 'FILLED' "
                         "GROUP BY origin").fetchall())
positions = dict(db.execute("SELECT symbol, amount FROM positions").fetchall())
print(json.dumps({"filled": filled, "positions": positions}))
"""


def trades(box: Box) -> dict:
    return box.py(_TRADES)


def filled_total(box: Box) -> int:
    try:
        return sum(trades(box)["filled"].values())
    except AssertionError:
        return 0


def active(box: Box, unit: str) -> bool:
    return box.show(unit, "ActiveState")["ActiveState"] == "active"


def healthy_bot(box: Box) -> int:
    """The bot's pid once systemd has its READY=1 and its heartbeat advances, else 0."""
    props = box.show(BOT, "ActiveState", "SubState", "MainPID")
    if (props["ActiveState"], props["SubState"]) != ("active", "running"):
        return 0
    snap = json.loads(box.tg("status --json --timeout 2", check=False).stdout or "{}")
    bot = snap.get("bot", {})
    if bot.get("state") == "running" and bot.get("pid") == int(props["MainPID"]):
        return int(props["MainPID"])
    return 0


def nrestarts(box: Box, unit: str) -> int:
    return int(box.show(unit, "NRestarts")["NRestarts"])


@pytest.fixture(scope="module")
def started(installed: Box) -> Box:
    """Credentials in /etc/credstore as DEPLOY.md shows, then ``enable --now`` the target."""
    box = installed
    for name, value in (("field.key", FIELD_KEY), ("exchange.api_key", API_KEY),
                        ("exchange.api_secret", API_SECRET)):
        box.put(f"/etc/credstore/{name}", value)
    t0 = time.monotonic()
    box.sh(f"systemctl enable --now {TARGET}", timeout=240)
    record("enable_now_s", time.monotonic() - t0)
    return box


def test_enable_now_starts_all_units_and_the_bot_reaches_ready_and_trades(started: Box) -> None:
    box = started
    t0 = time.monotonic()
    for unit in (PAPER, BOT, WD):  # the target is up at once; each service when it is ready
        box.wait_for(lambda: active(box, unit), 120, f"{unit} active")
    record("enable_to_all_ready_s", time.monotonic() - t0)
    for unit in (PAPER, BOT, WD):
        assert nrestarts(box, unit) == 0, box.journal(unit)
    # Type=notify: "active (running)" only after READY=1; the status line is the bot's own.
    props = box.show(BOT, "Type", "SubState", "StatusText", "NotifyAccess")
    assert props["Type"] == "notify" and props["SubState"] == "running"
    assert props["StatusText"], "the bot sent no STATUS= line"
    wd_props = box.show(WD, "Type", "SubState", "StatusText", "WatchdogUSec")
    assert wd_props["Type"] == "notify" and wd_props["SubState"] == "running"
    assert wd_props["StatusText"].startswith("bot:"), wd_props  # STATUS= from its check loop
    assert wd_props["WatchdogUSec"] == "30s"
    assert "tradeguard-paper.service" in box.sh("systemctl list-dependencies --plain "
                                                f"{TARGET}").stdout
    box.wait_for(lambda: healthy_bot(box), 60, "a healthy bot")
    box.wait_for(lambda: filled_total(box) >= 2, 90, "the bot's first filled orders")
    record("first_trades_s", time.monotonic() - t0)
    assert "bot" in trades(box)["filled"]


def test_credstore_keys_are_used_and_never_land_on_disk_elsewhere(started: Box) -> None:
    box = started
    # The field key in state.db is the credential's (no key file was generated instead).
    written = box.py("""
import json
from resilience.state import stored_key_id
print(json.dumps(stored_key_id("/var/lib/tradeguard/state.db")))
""")
    from resilience.crypto import key_id
    assert written == key_id(base64.b64decode(FIELD_KEY))
    assert box.sh(f"test -e {DATA}/keys/field.key", check=False).returncode != 0
    # Each service got a private copy in $CREDENTIALS_DIRECTORY; the user cannot read the store.
    for unit in (BOT, WD):  # systemd's in-memory copy, $CREDENTIALS_DIRECTORY of the unit
        assert box.sh(f"cat /run/credentials/{unit}/field.key").stdout.strip() == FIELD_KEY
        assert box.sh(f"cat /run/credentials/{unit}/exchange.api_key").stdout.strip() == API_KEY
    assert box.sh("sudo -u tradeguard cat /etc/credstore/field.key", check=False).returncode != 0
    assert FIELD_KEY not in box.sh(f"systemctl show {BOT} {WD}").stdout
    # No secret in any file outside the store and systemd's in-memory credential mounts, nor in
    # the journal. grep -F over the whole file system (other pseudo file systems skipped).
    patterns = "\n".join((FIELD_KEY, API_KEY, API_SECRET,
                          base64.b64decode(FIELD_KEY).hex()))
    box.put("/root/secret-patterns", patterns)
    hits = box.sh("grep -rlaF -f /root/secret-patterns / --exclude-dir=proc --exclude-dir=sys "
                  "--exclude-dir=dev --exclude-dir=credstore --exclude-dir=credentials "
                  "--exclude=secret-patterns 2>/dev/null || true", timeout=300).stdout.split()
    assert hits == [], f"secrets found in {hits}"
    journal = box.sh("journalctl --no-pager -o cat").stdout
    assert FIELD_KEY not in journal and API_KEY not in journal and API_SECRET not in journal


def test_sigkill_of_the_bot_is_brought_back_by_restart(started: Box) -> None:
    box = started
    old, before = box.main_pid(BOT), nrestarts(box, BOT)
    t0 = time.monotonic()
    box.sh(f"kill -KILL {old}")
    new = box.wait_for(lambda: (p := healthy_bot(box)) != old and p, 60, "a new healthy bot")
    record("sigkill_to_healthy_s", time.monotonic() - t0)
    assert new != old and nrestarts(box, BOT) == before + 1
    # The watchdog saw it and counted it against its budget, without a second restart.
    box.wait_for(lambda: "restarting the bot (crashed)" in box.journal(WD), 30,
                 "the watchdog's record of the crash")
    n = filled_total(box)
    box.wait_for(lambda: filled_total(box) > n, 60, "the new bot trading")


def test_sigstop_of_the_bot_is_replaced_by_the_watchdog_before_watchdogsec(started: Box) -> None:
    """A hung bot: the watchdog (stale heartbeat, 10 s) acts before systemd's WatchdogSec (30 s)
    on the bot: it SIGKILLs the bot and systemd's Restart= brings a new one. They do not fight:
    one kill, one restart, and no 'Watchdog timeout' from systemd."""
    box = started
    since = box.now()
    old, before = box.main_pid(BOT), nrestarts(box, BOT)
    t0 = time.monotonic()
    box.sh(f"kill -STOP {old}")
    new = box.wait_for(lambda: (p := healthy_bot(box)) != old and p, 90, "a new healthy bot")
    record("sigstop_to_healthy_s", time.monotonic() - t0)
    assert nrestarts(box, BOT) == before + 1
    bot_log = box.journal(BOT, since=since)
    assert "Watchdog timeout" not in bot_log, bot_log
    assert "status=9/KILL" in bot_log, bot_log
    wd_log = box.journal(WD, since=since)
    assert "restarting the bot (hung)" in wd_log or "restarting the bot (stalled)" in wd_log, wd_log
    assert box.sh(f"test -d /proc/{old}", check=False).returncode != 0
    assert new == box.main_pid(BOT)


def test_a_hung_watchdog_is_replaced_by_its_watchdogsec(started: Box) -> None:
    box = started
    since = box.now()
    old, bot = box.main_pid(WD), box.main_pid(BOT)
    t0 = time.monotonic()
    box.sh(f"kill -STOP {old}")

    def replaced() -> int:
        props = box.show(WD, "MainPID", "SubState")
        pid = int(props["MainPID"])
        return pid if pid not in (0, old) and props["SubState"] == "running" else 0

    new = box.wait_for(replaced, 90, "systemd to replace the stopped watchdog")
    record("watchdog_sigstop_to_replaced_s", time.monotonic() - t0)
    log = box.journal(WD, since=since)
    assert "Watchdog timeout" in log, log
    # The new watchdog re-attached to the running bot without restarting it.
    box.wait_for(lambda: box.main_pid(BOT) == bot and healthy_bot(box) == bot, 30,
                 "the same bot, healthy, under the new watchdog")
    assert box.sh(f"test -d /proc/{old}", check=False).returncode != 0 and new != old


def test_restart_budget_spent_flattens_under_the_systemd_manager(started: Box) -> None:
    box = started
    since = box.now()
    t0 = time.monotonic()
    kills = 0
    # Crash the bot each time it is back healthy until the watchdog gives up.
    while "restart budget spent" not in box.journal(WD, since=since):
        pid = box.wait_for(lambda: healthy_bot(box) or "budget" in box.journal(WD, since=since),
                           90, "a healthy bot to crash")
        if isinstance(pid, int) and pid:
            box.sh(f"kill -KILL {pid}", check=False)
            kills += 1
        assert kills <= 7, "the watchdog never spent its budget"
        assert time.monotonic() - t0 < 400
    box.wait_for(lambda: not active(box, BOT), 60, "the watchdog to stop the bot's unit")
    kill = json.loads(box.sh(f"cat {DATA}/KILL").stdout)
    assert kill["mode"] == "flatten"
    state = box.wait_for(lambda: (s := json.loads(box.sh(f"cat {DATA}/watchdog.json").stdout))
                         ["emergency"]["state"] in ("done", "failed") and s, 150,
                         "the emergency flatten to finish")
    record("budget_spent_to_flat_s", time.monotonic() - t0)
    assert state["emergency"]["state"] == "done", state["emergency"]
    positions = trades(box)["positions"]
    assert all(abs(a) < 1e-6 for a in positions.values()), positions
    assert "watchdog" in trades(box)["filled"] or all(a == 0 for a in positions.values())
    # The watchdog stopped the bot's unit with systemctl as user tradeguard (allowed by the
    # polkit rule): the restart systemd had scheduled was cancelled and none followed.
    bot_log = box.journal(BOT, since=since)
    last_exit = bot_log.rindex("Main process exited")
    assert "Stopped tradeguard-bot.service" in bot_log[last_exit:], bot_log[last_exit:]
    assert "Started tradeguard-bot.service" not in bot_log[last_exit:], bot_log[last_exit:]
    assert "Started polkit.service" in box.journal("polkit.service")
    assert box.show(BOT, "ActiveState")["ActiveState"] == "inactive"
    # The operator releases it: the watchdog starts the bot again through systemctl.
    box.tg("resume")
    box.wait_for(lambda: healthy_bot(box), 90, "the bot started again after resume")
    record("resume_to_healthy_s", time.monotonic() - t0)


def test_kill_flatten_from_the_cli_goes_flat(started: Box) -> None:
    box = started
    flatten_with_kill_switch(box, lambda: trades(box)["positions"],
                             lambda: box.tg("kill --flatten --reason 'system test: phone'"),
                             "kill_flatten_to_flat_s")
    status = json.loads(box.tg("status --json").stdout)
    assert status["kill_switch"]["engaged"] and status["kill_switch"]["mode"] == "flatten"
    assert status["open_orders_count"] == 0, status["open_orders"]


def test_logs_are_in_the_journal_and_in_the_files(started: Box) -> None:
    box = started
    for unit, file in ((BOT, "bot"), (WD, "watchdog"), (PAPER, "paper-exchange")):
        assert box.journal(unit).count("\n") > 3, unit
        lines = box.sh(f"ls /var/log/tradeguard/ && tail -n 20 /var/log/tradeguard/{file}.jsonl"
                       ).stdout.splitlines()[1:]
        records = [json.loads(line) for line in lines if line.startswith("{")]
        assert records, file
    mode = box.sh("stat -c '%U %a' /var/log/tradeguard").stdout.split()
    assert mode == ["tradeguard", "750"]


def test_stopping_the_target_is_clean_and_within_the_timeouts(started: Box) -> None:
    box = started
    box.tg("resume")
    box.wait_for(lambda: healthy_bot(box), 90, "a healthy bot before the stop")
    since = box.now()
    t0 = time.monotonic()
    # `systemctl stop tradeguard.target` alone returns at once: a target is ordered after what it
    # wants, so it stops first and its job does not wait for the services (seen here: the bot
    # still active after it returned). Naming the services too waits for all of them.
    box.sh(f"systemctl stop {TARGET} {WD} {BOT} {PAPER}", timeout=120)
    took = time.monotonic() - t0
    record("stop_target_s", took)
    assert took < 20 + 20, took  # both TimeoutStopSec, in sequence
    for unit in (BOT, WD, PAPER):
        props = box.show(unit, "ActiveState", "Result", "ExecMainStatus")
        assert props["ActiveState"] == "inactive" and props["Result"] == "success", (unit, props)
    log = box.journal(BOT, WD, PAPER, since=since)
    assert "SIGKILL" not in log and "timed out" not in log, log
    # The watchdog stops first: it must not take the bot's stop for a crash.
    assert "restarting the bot" not in box.journal(WD, since=since)
    wd_stop = log.index(f"Stopped {WD}")
    assert wd_stop < log.index(f"Stopped {BOT}") < log.index(f"Stopped {PAPER}"), log
