"""``tradeguard db check|backup PATH``: inspect or copy the state database while the bot runs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from tradeguard.commands._common import config_options, fail
from tradeguard.config import Config
from tradeguard.exceptions import BackupError, CheckFailed, KeyFileError, WrongKeyError


@click.group("db")
def db() -> None:
    """Check or back up the state database (state.db); both are safe while the bot runs."""


def _load_cipher(cfg: Config) -> tuple[Any, str]:
    """(cipher or None, why the key cannot be checked)."""
    from resilience.keys import ensure_cipher

    try:
        return ensure_cipher(cfg.runtime, allow_generate=False)[0], ""
    except KeyFileError as e:
        return None, f"not checked: {e}"


def _check(cfg: Config) -> tuple[dict[str, Any], list[str]]:
    """The check report and the list of failures (empty when healthy)."""
    from resilience.state import open_readonly
    from tradeguard.exceptions import FieldDecryptError, StateError

    path = cfg.runtime.state_db
    cipher, key_note = _load_cipher(cfg)
    failures: list[str] = []
    try:
        reader = open_readonly(path, cipher)
    except WrongKeyError as e:
        key_note, cipher = f"WRONG: {e}", None
        failures.append("the field key does not open this database")
        reader = open_readonly(path)
    except StateError as e:
        return {"path": str(path), "integrity": str(e)}, [str(e)]
    with reader:
        try:
            report = reader.check()
        except StateError as e:
            return {"path": str(path), "integrity": str(e)}, [str(e)]
        if cipher is not None:
            try:
                n = reader.verify_encryption(cipher)
                key_note = f"ok (id {cipher.current_key_id}; {n} encrypted values verified)"
            except FieldDecryptError as e:
                key_note = f"FAILED: {e}"
                failures.append("an encrypted value does not decrypt")
    report = {"path": str(path), **report, "key": key_note}
    if report["integrity"] != "ok":
        failures.insert(0, f"integrity check: {report['integrity']}")
    return report, failures


@db.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@config_options
def check(cfg: Config, as_json: bool) -> None:
    """Integrity check, schema version, row counts, key check; exit 1 if anything fails."""
    path = cfg.runtime.state_db
    if not path.is_file():
        fail(f"no state database at {path} (has the bot run with this --data-dir?)", 2)
    report, failures = _check(cfg)
    if as_json:
        click.echo(json.dumps({**report, "ok": not failures, "failures": failures}, indent=2))
    else:
        click.echo(f"state.db: {report['path']}")
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
