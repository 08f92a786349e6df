"""The paper exchange's API key and secret.

``TRADEGUARD_PAPER_API_KEY`` / ``TRADEGUARD_PAPER_API_SECRET`` win when both are set; otherwise the
pair lives in ``<data dir>/paper/credentials.json`` (0600), created by whichever process needs it
first (the exchange or a client sharing its data dir), so the two always agree.
"""
from __future__ import annotations

import json
import os
import secrets
from typing import Mapping

from blackbox.redact import register_secret
from tradeguard.exceptions import KeyFileError
from tradeguard.paths import RuntimePaths
from tradeguard.secrets import read_private, write_private

ENV_KEY = "TRADEGUARD_PAPER_API_KEY"
ENV_SECRET = "TRADEGUARD_PAPER_API_SECRET"


def _from_env(environ: Mapping[str, str]) -> tuple[str, str] | None:
    key, secret = environ.get(ENV_KEY, "").strip(), environ.get(ENV_SECRET, "").strip()
    return (key, secret) if key and secret else None


def read_credentials(paths: RuntimePaths, environ: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """(api_key, secret) from the environment or the credentials file; None if neither has them."""
    environ = os.environ if environ is None else environ
    pair = _from_env(environ)
    if pair is None and paths.paper_credentials.exists():
        path = paths.paper_credentials
        try:
            data = json.loads(read_private(path))
            pair = (str(data["api_key"]), str(data["secret"]))
        except (ValueError, KeyError, TypeError):
            raise KeyFileError(f"{path} is not a JSON object with 'api_key' and 'secret'; "
                               "delete it to generate a new pair") from None
    if pair is not None:
        register_secret(pair[0])
        register_secret(pair[1])
    return pair


def load_or_create(paths: RuntimePaths, environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(api_key, secret): from the environment or the file, generated into the file if absent."""
    pair = read_credentials(paths, environ)
    if pair is not None:
        return pair
    content = json.dumps({"api_key": secrets.token_hex(32), "secret": secrets.token_hex(32)})
    try:
        write_private(paths.paper_credentials, content)
    except KeyFileError:
        if not paths.paper_credentials.exists():
            raise
        # another process created it first: use theirs
    pair = read_credentials(paths, {})
    assert pair is not None
    return pair
