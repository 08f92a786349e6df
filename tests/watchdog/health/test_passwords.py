"""scrypt hashes and the credentials file."""
from __future__ import annotations

import stat

import pytest

from tradeguard.exceptions import UserError
from watchdog.health.passwords import (PasswordHashError, hash_password, parse_credentials,
                                       parse_hash, read_credentials, set_password, verify_password)


def test_hash_format_and_verification():
    h = hash_password("pässword")
    kind, n, r, p, salt, digest = h.split("$")
    assert (kind, n, r, p) == ("scrypt", str(2**14), "8", "1")
    parsed = parse_hash(h)
    assert len(parsed.salt) == 16 and len(parsed.digest) == 32
    assert verify_password("pässword", parsed)
    assert not verify_password("password", parsed)
    assert hash_password("pässword") != h  # a new salt every time


@pytest.mark.parametrize("bad", [
    "", "plain", "scrypt$16384$8$1$salt", "bcrypt$16384$8$1$AAAAAAAAAAA=$" + "A" * 44,
    "scrypt$abc$8$1$AAAAAAAAAAA=$" + "A" * 44,
    "scrypt$1000$8$1$AAAAAAAAAAA=$" + "A" * 44,          # n not a power of two
    f"scrypt${2**24}$8$1$AAAAAAAAAAA=$" + "A" * 44,       # would need gigabytes
    "scrypt$16384$8$1$!!!$" + "A" * 44,
])
def test_malformed_or_hostile_hashes_are_refused(bad):
    with pytest.raises(PasswordHashError):
        parse_hash(bad)


def test_empty_and_oversized_passwords_are_refused():
    with pytest.raises(UserError):
        hash_password("")
    with pytest.raises(UserError):
        hash_password("x" * 2000)


def test_set_password_keeps_other_users_and_comments(tmp_path):
    path = tmp_path / "health.users"
    assert set_password(path, "alice", "a-pass") is False
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_text("# monitors\n" + path.read_text() + "broken line\n")
    path.chmod(0o600)
    set_password(path, "bob", "b-pass")
    assert set_password(path, "alice", "a-new") is True
    text = path.read_text()
    assert text.startswith("# monitors\n") and "broken line" in text
    users = read_credentials(path)
    assert set(users) == {"alice", "bob"}
    assert verify_password("a-new", users["alice"]) and verify_password("b-pass", users["bob"])


def test_bad_user_names_are_refused(tmp_path):
    for user in ("", "a:b", "x" * 65, "spa ce"):
        with pytest.raises(UserError):
            set_password(tmp_path / "u", user, "pw")


def test_parse_credentials_skips_malformed_lines(caplog):
    good = hash_password("pw")
    users = parse_credentials(f"\n# c\nalice:{good}\nbob:plain\n:nouser\nno-separator\n", "f")
    assert set(users) == {"alice"}
    assert sum("ignored" in r.getMessage() for r in caplog.records) == 3
