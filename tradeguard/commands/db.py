"""``tradeguard db check|backup PATH``: inspect or copy the state database while the bot runs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from tradeguard.commands._common import config_options, fail
from tradeguard.config import Config
from tradeguard.exceptions import BackupError, CheckFailed, KeyFileError, WrongKeyError

VERIFY_NEWEST = 1000  # rows per table whose encrypted values a quick check decrypts


@click.group("db")
def db() -> None:
    """Check or back up the state database (state.db); both are safe while the bot runs."""


def _load_cipher(cfg: Config) -> tuple[Any, str, str | None]:
    """(cipher or None, the key's note, a failure). A missing key is not checked; a key file that
    group or others can read, or that is malformed, fails the check."""
    from resilience.keys import ensure_cipher

    try:
        return ensure_cipher(cfg.runtime, allow_generate=False)[0], "", None
    except KeyFileError as e:
        if cfg.runtime.field_key.exists():
            return None, f"UNSAFE: {e}", f"the field key file cannot be used: {e}"
        return None, f"not checked: {e}", None


def _check_one(path: Path, cipher: Any, key_note: str, *, full: bool) -> tuple[dict[str, Any], list[str]]:
    """One database (state.db or an archive): its report and failures."""
    from resilience.state import open_readonly
    from tradeguard.exceptions import FieldDecryptError, StateError

    failures: list[str] = []
    try:
        reader = open_readonly(path, cipher)
    except WrongKeyError as e:
        key_note, cipher = f"WRONG: {e}", None
        failures.append(f"the field key does not open {path.name}")
        reader = open_readonly(path)
    except StateError as e:
        return {"path": str(path), "integrity": str(e)}, [str(e)]
    with reader:
        try:
            report = reader.check(full=full)
        except StateError as e:
            return {"path": str(path), "integrity": str(e)}, [str(e)]
        if cipher is not None:
            try:
                n = reader.verify_encryption(cipher, newest=None if full else VERIFY_NEWEST)
                scope = "encrypted values verified" if full else \
                    f"encrypted values verified (the newest {VERIFY_NEWEST} rows of each table; --full: all)"
                key_note = f"ok (id {cipher.current_key_id}; {n} {scope})"
            except FieldDecryptError as e:
                key_note = f"FAILED: {e}"
                failures.append(f"an encrypted value in {path.name} does not decrypt")
    report = {"path": str(path), **report, "key": key_note}
    if report["integrity"] != "ok":
        failures.insert(0, f"integrity check of {path.name}: {report['integrity']}")
    return report, failures


def _check(cfg: Config, *, full: bool = False, archives: bool = False
           ) -> tuple[dict[str, Any], list[str]]:
    """The check report and the list of failures (empty when healthy)."""
    from resilience.state import archive_files

    cipher, key_note, key_failure = _load_cipher(cfg)
    report, failures = _check_one(cfg.runtime.state_db, cipher, key_note, full=full)
    if key_failure:
        failures.insert(0, key_failure)
    files = archive_files(cfg.runtime.state_db)
    report["archives"] = {"files": len(files), "bytes": sum(p.stat().st_size for p in files),
                          "checked": archives}
    if archives:
        report["archive_reports"] = []
        for path in files:
            sub, bad = _check_one(path, cipher, key_note, full=full)
            report["archive_reports"].append(sub)
            failures += bad
    return report, failures


def _print_one(report: dict[str, Any], title: str) -> None:
    click.echo(f"{title}: {report['path']}")
    click.echo(f"  integrity: {report['integrity']}")
    if "schema_version" in report:
        counts = ", ".join(f"{t} {n}" for t, n in report["counts"].items())
        states = ", ".join(f"{s} {n}" for s, n in sorted(report["orders_by_state"].items()))
        click.echo(f"  schema version: {report['schema_version']}")
        click.echo(f"  field key: {report['key']}")
        click.echo(f"  needs reconciliation: {'yes' if report['needs_reconciliation'] else 'no'}")
        click.echo(f"  rows: {counts}")
        click.echo(f"  orders by state: {states or 'none'}")
        click.echo(f"  wal: {report['wal_bytes']} bytes")


@db.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--full", is_flag=True,
              help="integrity_check (not quick_check) and decrypt every encrypted value.")
@click.option("--archives", is_flag=True,
              help="Also check the monthly archives (data/archive/) that retention wrote.")
@config_options
def check(cfg: Config, as_json: bool, full: bool, archives: bool) -> None:
    """Integrity, schema version, row counts, key check of state.db; exit 1 if anything fails.

    Quick by default (quick_check, the key tried on the newest rows); the archives on request."""
    path = cfg.runtime.state_db
    if not path.is_file():
        fail(f"no state database at {path} (has the bot run with this --data-dir?)", 2)
    report, failures = _check(cfg, full=full, archives=archives)
    if as_json:
        click.echo(json.dumps({**report, "ok": not failures, "failures": failures}, indent=2))
    else:
        _print_one(report, "state.db")
        a = report.get("archives")
        if a is not None:
            click.echo(f"  archives: {a['files']} files, {a['bytes']} bytes"
                       + ("" if archives or not a["files"] else " (not checked; --archives)"))
        for sub in report.get("archive_reports", []):
            _print_one(sub, "archive")
    if failures:
        raise CheckFailed("; ".join(failures))


@db.command("backup")
@click.argument("dest", metavar="PATH", type=click.Path(dir_okay=False))
@config_options
def backup(cfg: Config, dest: str) -> None:
    """Copy state.db to PATH with SQLite's online backup (consistent while the bot writes)."""
    from resilience.state import open_readonly
    from tradeguard.exceptions import StateError

    target = Path(dest)
    if target.exists():
        raise BackupError(f"{target} already exists; refusing to overwrite it")
    src = cfg.runtime.state_db
    if not src.is_file():
        fail(f"no state database at {src} (has the bot run with this --data-dir?)", 2)
    try:
        with open_readonly(src) as reader:
            reader.backup(target)
            key = reader.meta.get("key_id", "?")
        with open_readonly(target) as copy:
            result = copy.check()
    except StateError as e:
        fail(f"backup failed: {e}", 1)
    if result["integrity"] != "ok":
        raise CheckFailed(f"backup {target} failed its integrity check: {result['integrity']}")
    orders = result["counts"].get("orders", 0)
    click.echo(f"backup written: {target} ({target.stat().st_size} bytes, orders: {orders}, "
               "integrity ok)")
    click.echo(f"  its encrypted columns need field key {key}: keep a copy of "
               f"{cfg.runtime.field_key} apart from the backup")
