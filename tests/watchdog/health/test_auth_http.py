"""Authentication of the health endpoint over real HTTP: every route, every way to get it wrong."""
from __future__ import annotations

import base64

from tests.helpers.proc import run_cli
from tests.watchdog.health.conftest import PASSWORD, basic, bearer
from watchdog.health.passwords import credentials_path, hash_password, set_password

ROUTES = ("/health", "/health/detailed", "/metrics")


def _with_user(health_cfg, limit: int = 1000, cache_s: float = 60.0):
    cfg = health_cfg(limit=limit, cache_s=cache_s)
    set_password(credentials_path(cfg), "alice", PASSWORD)
    return cfg


def _bad_headers(token: str) -> dict[str, str | bytes]:
    return {
        "wrong token": bearer(token[:-4] + "AAAA"),
        "token of another length": bearer("short"),
        "wrong password": basic("alice", "not-it"),
        "unknown user": basic("mallory", PASSWORD),
        "garbage": "x",
        "empty bearer": "Bearer ",
        "scheme only": "Basic",
        "bad base64": "Basic !!!not*base64!!!",
        "no colon": "Basic " + base64.b64encode(b"alicepassword").decode(),
        "wrong scheme": "Digest username=alice",
        "token scheme": "Token " + token,
        "lowercase scheme": "bearer " + token[:10],
        "huge": "Bearer " + "A" * 10_000,
        "non-ascii token": "Bearer ünïcødé-tøken".encode("utf-8"),
        "non-ascii basic": b"Basic " + base64.b64encode("alice:pässwörd".encode("latin-1")),
        "binary": b"Basic \xff\xfe\x80\xc3",
    }


def test_no_credentials_is_401_on_every_route_even_unknown_ones(serve, health_cfg):
    s = serve(_with_user(health_cfg))
    for path in ROUTES + ("/nope", "/health/../metrics", "/"):
        r = s.get(path)
        assert r.status_code == 401, path
        assert r.json() == {"error": "unauthorized"}
        assert "Basic" in r.headers["WWW-Authenticate"] and "Bearer" in r.headers["WWW-Authenticate"]
    r = s.session.options(s.url + "/health", timeout=5)
    assert r.status_code == 401 and "Allow" not in r.headers
    for path in ROUTES:  # authenticated, OPTIONS is answered (and not counted as a failure)
        r = s.session.options(s.url + path, headers={"Authorization": bearer(s.token)}, timeout=5)
        assert r.status_code == 204 and r.headers["Allow"] == "GET, HEAD, OPTIONS", path


def test_every_bad_credential_gets_the_same_401(serve, health_cfg):
    s = serve(_with_user(health_cfg))
    reference = s.get("/health")
    for name, header in _bad_headers(s.token).items():
        for path in ROUTES:
            r = s.get(path, header)
            assert r.status_code == 401, (name, path, r.status_code, r.text)
            assert r.content == reference.content, name
            assert r.headers["WWW-Authenticate"] == reference.headers["WWW-Authenticate"], name


def test_malformed_headers_never_cost_a_scrypt_run(serve, health_cfg, scrypt_calls):
    s = serve(_with_user(health_cfg))
    bad = _bad_headers(s.token)
    for name in ("garbage", "empty bearer", "scheme only", "bad base64", "no colon", "wrong scheme",
                 "huge", "binary", "wrong token"):
        assert s.get("/health", bad[name]).status_code == 401
    assert scrypt_calls == []
    assert s.get("/health", bad["unknown user"]).status_code == 401
    assert len(scrypt_calls) == 1  # a dummy hash: an unknown user takes as long as a known one


def test_right_token_and_right_password_get_200(serve, health_cfg, bot_child):
    s = serve(_with_user(health_cfg))
    bot_child.start()
    s.wait_status("healthy")
    for auth in (bearer(s.token), basic("alice", PASSWORD)):
        for path in ROUTES:
            r = s.get(path, auth)
            assert r.status_code == 200, (path, r.text)
            assert r.headers["Cache-Control"] == "no-store"
    assert s.get("/health", bearer(s.token)).json() == {"status": "healthy"}
    assert s.get("/nope", bearer(s.token)).status_code == 404  # authenticated: the truth


def test_config_users_work_and_bad_hashes_are_ignored(serve, health_cfg):
    extra = f'users = {{ bob = "{hash_password("bob-pass")}", eve = "scrypt$1$1$1$AA==$AA==" }}'
    s = serve(health_cfg(extra=extra))
    assert s.get("/health/detailed", basic("bob", "bob-pass")).status_code == 200
    assert s.get("/health/detailed", basic("eve", "")).status_code == 401


def test_failure_limit_answers_429_then_recovers_after_the_window(serve, health_cfg, clock, scrypt_calls):
    s = serve(_with_user(health_cfg, limit=3))
    for _ in range(3):
        assert s.get("/health", basic("alice", "wrong")).status_code == 401
    assert len(scrypt_calls) == 3
    blocked = s.get("/health", basic("alice", "wrong"))
    assert blocked.status_code == 429
    assert 1 <= int(blocked.headers["Retry-After"]) <= 60
    assert "WWW-Authenticate" in blocked.headers
    # Over the limit nothing runs scrypt, not even the right password...
    for header in (basic("alice", "wrong"), basic("alice", PASSWORD), bearer("nope"), "garbage"):
        assert s.get("/health/detailed", header).status_code == 429
    assert len(scrypt_calls) == 3
    # ...but the owner's token (cheap to check) still gets through.
    assert s.get("/health/detailed", bearer(s.token)).status_code == 200

    clock.advance(61)
    assert s.get("/health/detailed", basic("alice", PASSWORD)).status_code == 200
    assert s.get("/health", basic("alice", "wrong")).status_code == 401
    assert len(scrypt_calls) == 5


def test_missing_credentials_are_not_counted_as_failures(serve, health_cfg):
    s = serve(_with_user(health_cfg, limit=2))
    for _ in range(5):  # a browser's first request carries no credentials
        assert s.get("/health").status_code == 401
    assert s.get("/health/detailed", basic("alice", PASSWORD)).status_code == 200


def test_basic_success_is_cached_and_expires(serve, health_cfg, clock, scrypt_calls):
    s = serve(_with_user(health_cfg, cache_s=30))
    for _ in range(5):
        assert s.get("/health/detailed", basic("alice", PASSWORD)).status_code == 200
    assert len(scrypt_calls) == 1
    assert s.get("/health/detailed", basic("alice", PASSWORD + "x")).status_code == 401
    assert len(scrypt_calls) == 2  # failures are never cached
    clock.advance(31)
    assert s.get("/health/detailed", basic("alice", PASSWORD)).status_code == 200
    assert len(scrypt_calls) == 3


def test_password_change_takes_effect_at_once_despite_the_cache(serve, health_cfg, scrypt_calls):
    cfg = _with_user(health_cfg, cache_s=3600)
    s = serve(cfg)
    assert s.get("/health/detailed", basic("alice", PASSWORD)).status_code == 200
    r = run_cli("health", "passwd", "alice", "--password-stdin", "--data-dir", str(cfg.runtime.data_dir),
                "--config", str(cfg.source), input="brand-new-pass\n")
    assert r.returncode == 0, r.stderr
    assert s.get("/health/detailed", basic("alice", PASSWORD)).status_code == 401
    assert s.get("/health/detailed", basic("alice", "brand-new-pass")).status_code == 200


def test_token_rotation_is_noticed_by_the_running_server(serve, health_cfg):
    cfg = health_cfg()
    s = serve(cfg)
    old = s.token
    assert s.get("/health/detailed", bearer(old)).status_code == 200
    r = run_cli("health", "token", "--rotate", "--data-dir", str(cfg.runtime.data_dir),
                "--config", str(cfg.source))
    assert r.returncode == 0, r.stderr
    assert old not in r.stdout + r.stderr
    new = s.token
    assert new != old
    assert s.get("/health/detailed", bearer(old)).status_code == 401
    assert s.get("/health/detailed", bearer(new)).status_code == 200


def test_secret_files_readable_by_others_are_refused(serve, health_cfg):
    cfg = _with_user(health_cfg)
    s = serve(cfg)
    assert s.get("/health/detailed", bearer(s.token)).status_code == 200
    cfg.runtime.health_token.chmod(0o644)
    credentials_path(cfg).chmod(0o640)
    assert s.get("/health/detailed", bearer(s.token)).status_code == 401
    assert s.get("/health/detailed", basic("alice", PASSWORD)).status_code == 401
    cfg.runtime.health_token.chmod(0o600)
    credentials_path(cfg).chmod(0o600)
    assert s.get("/health/detailed", bearer(s.token)).status_code == 200
    assert s.get("/health/detailed", basic("alice", PASSWORD)).status_code == 200


def test_headers_the_server_refuses_get_a_4xx_not_a_500(serve, health_cfg):
    s = serve(health_cfg())
    for header in (bearer("A" * 100_000), b"Basic \x00\x01"):  # over the size bound; control bytes
        r = s.get("/health", header)
        assert r.status_code in (400, 431), r.status_code
    assert s.get("/health", bearer(s.token)).status_code in (200, 503)  # still serving
