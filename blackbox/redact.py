"""Secret redaction, applied before anything is written (events, logs, crash dumps, responses).

Three nets: by place (:func:`redact_config` masks whole configuration keys that hold
credentials, such as ``[health] users``, whatever their values look like), by field name (``api_key``, ``secret``, ``password``, ``token``, ``signature``, ...)
and by value pattern (HMAC-looking hex, long base64/hex runs, ``Bearer ...``, URL credentials
and signature query parameters). Exact secret values registered at run time with
:func:`register_secret` (the exchange secret, the field key, the health token) are replaced
wherever they appear, even inside free text.
"""
from __future__ import annotations

import functools
import re
import threading
from typing import Any

MASK = "***"

_NAME_RE = re.compile(
    r"(secret|passw|passphrase|api[_-]?key|apikey|token|signature|private|credential|"
    r"authorization|cookie|field[_-]?key|webhook_url|smtp_password)", re.I)
_VALUE_PATTERNS = [
    # a password hash (``tradeguard health passwd``): its base64 may hold "/", which the
    # long-token pattern below leaves alone for the sake of file paths
    re.compile(r"(scrypt\$)[0-9]+\$[0-9]+\$[0-9]+\$[A-Za-z0-9+/=]*\$[A-Za-z0-9+/=]*()"),
    re.compile(r"(?i)\b(bearer\s+|basic\s+)[A-Za-z0-9._~+/=-]{8,}()"),
    re.compile(r"(?i)([?&](?:signature|api[_-]?key|token|secret)=)[^&\s\"']+()"),
    re.compile(r"(?i)(https?://)[^/\s:@]+:[^/\s@]+(@)"),
    re.compile(r"\b[0-9a-fA-F]{40,}\b"),
    # long random-looking tokens: mixed case and digits, no "/" (so file paths stay readable)
    re.compile(r"(?<![A-Za-z0-9+/_-])(?=[A-Za-z0-9+_-]*[0-9])(?=[A-Za-z0-9+_-]*[A-Z])"
               r"(?=[A-Za-z0-9+_-]*[a-z])[A-Za-z0-9+_-]{40,}={0,2}(?![A-Za-z0-9+/_-])"),
]
# (section, key) of configuration values that are credentials as a whole: masked by place.
CREDENTIAL_CONFIG_KEYS = frozenset({("health", "users")})
_registered: set[str] = set()
_lock = threading.Lock()
_generation = 0  # bumped by register_secret so that no cached result predates a secret
_CACHE_MAX_CHARS = 256  # short strings (kinds, states, symbols, messages) repeat: cache them


def register_secret(value: str | bytes | None) -> None:
    """Remember an exact secret value so that it is masked wherever it appears."""
    global _generation
    if not value:
        return
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if len(value) >= 6:
        with _lock:
            _registered.add(value)
            _generation += 1


@functools.lru_cache(maxsize=1024)
def is_secret_name(name: str) -> bool:
    """True if a field called ``name`` holds a secret (its value is masked whatever it is)."""
    return bool(_NAME_RE.search(name))


def redact_text(text: str) -> str:
    """Mask registered secrets and secret-looking patterns inside free text."""
    if len(text) <= _CACHE_MAX_CHARS:
        return _redact_short(text, _generation)
    return _redact_text(text)


# Small on purpose: what repeats (states, symbols, sides, fixed messages) recurs within a few
# events and stays, while messages and ids that carry an order id never repeat. In the bot 128
# entries hit as often as 512 did (76 %); 8,192 once held 2.2 MB for nothing.
@functools.lru_cache(maxsize=128)
def _redact_short(text: str, generation: int) -> str:
    return _redact_text(text)


def _redact_text(text: str) -> str:
    for s in tuple(_registered):
        if s in text:
            text = text.replace(s, MASK)
    for pat in _VALUE_PATTERNS:
        if pat.groups:  # keep the prefix (group 1) and suffix (group 2) around the mask
            text = pat.sub(lambda m: m.group(1) + MASK + m.group(2), text)
        else:
            text = pat.sub(MASK, text)
    return utf8_safe(text)


def utf8_safe(text: str) -> str:
    """``text`` with lone surrogates (undecodable bytes of a file name, say) written out as
    ``\\udcff``: every file, database and terminal can take it."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def redact(obj: Any, _depth: int = 0) -> Any:
    """A copy of ``obj`` (dicts, lists, strings, scalars) with secrets masked."""
    if _depth > 20:
        return MASK
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            ks = str(k)
            if is_secret_name(ks) and v not in (None, "", {}, [], False):
                out[ks] = MASK
            else:
                out[ks] = redact(v, _depth + 1)
        return out
    if isinstance(obj, (list, tuple)):
        return [redact(v, _depth + 1) for v in obj]
    if isinstance(obj, str):
        return redact_text(obj)
    if isinstance(obj, bytes):
        return redact_text(obj.decode("utf-8", "replace"))
    return obj


def redact_config(config: dict[str, Any]) -> dict[str, Any]:
    """A redacted copy of a configuration (``Config.to_dict()``): every credential-bearing key
    of :data:`CREDENTIAL_CONFIG_KEYS` masked whole, then the name and value nets."""
    out = {name: dict(section) if isinstance(section, dict) else section
           for name, section in config.items()}
    for name, key in CREDENTIAL_CONFIG_KEYS:
        section = out.get(name)
        if isinstance(section, dict) and section.get(key) not in (None, "", {}, []):
            section[key] = MASK
    return redact(out)
