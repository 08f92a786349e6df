"""``tradeguard keys generate|rotate``: the field key that encrypts sensitive state.db columns."""
from __future__ import annotations

import click

from tradeguard.commands._common import config_options, fail
from tradeguard.config import Config
from tradeguard.exceptions import KeyFileError


@click.group("keys")
def keys() -> None:
    """Create or rotate the field key (data/keys/field.key)."""


@keys.command("generate")
@config_options
def generate(cfg: Config) -> None:
    """Create a new field key (mode 0600); never overwrites an existing one."""
    from resilience.crypto import key_id
    from resilience.keys import generate_field_key, key_source, load_field_key

    paths = cfg.runtime
    source = key_source(paths)
    if source is not None and source != str(paths.field_key):
        raise KeyFileError(f"a field key is already provided by {source}; a key file would not "
                           "be used")
    path = generate_field_key(paths)
    kid = key_id(load_field_key(paths) or b"")
    click.echo(f"field key {kid} written to {path} (mode 0600)")
    click.echo("  back it up somewhere safe, apart from state.db backups: without it the "
               "encrypted columns of state.db cannot be read")


@keys.command("rotate")
@click.option("--batch-size", type=click.IntRange(1, 100000), default=500, show_default=True,
              help="Rows re-encrypted per (short) transaction.")
@config_options
def rotate(cfg: Config, batch_size: int) -> None:
    """Re-encrypt state.db under a new field key; safe to interrupt and run again."""
    from resilience.keys import rotate_field_key
    from tradeguard.exceptions import StateError

    def progress(phase: str, n: int) -> None:
        messages = {"next_key_written": "new key written (field.key.next)",
                    "reencrypt": f"re-encrypted {n} values",
                    "verified": f"verified {n} values under the new key",
                    "swapped": "key files swapped"}
        if phase in messages:
            click.echo(f"  {messages[phase]}")

    try:
        result = rotate_field_key(cfg.runtime, batch_size=batch_size, progress=progress)
    except StateError as e:
        fail(f"rotation stopped: {e}. No row was left unreadable; fix the cause and run "
             "'tradeguard keys rotate' again", 1)
    if result.resumed:
        click.echo("finished an interrupted rotation; run again for a fresh key")
    click.echo(f"field key rotated: {result.old_key_id} -> {result.new_key_id} "
               f"({result.reencrypted} values re-encrypted, {result.verified} verified)")
    click.echo(f"  back up the new {cfg.runtime.field_key} now; the old key is gone")
