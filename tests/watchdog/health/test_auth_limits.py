"""The limits in front of scrypt, over real HTTP from distinct loopback addresses (127.0.0.x):
a limited client gets 429 for every Basic attempt even while the cache is warm (issue 19 item 1),
the global budget of password checks (item 3), OPTIONS and the scheme's case (item 7)."""
from __future__ import annotations

import json

from tests.watchdog.health.conftest import PASSWORD, basic, bearer, request_from
from watchdog.health.passwords import credentials_path, set_password
from watchdog.health.ratelimit import PasswordBudget


def _serve_user(serve, health_cfg, **kw):
    cfg = health_cfg(**kw)
    set_password(credentials_path(cfg), "alice", PASSWORD)
    return serve(cfg)


def test_a_limited_client_gets_429_for_the_right_password_while_the_cache_is_warm(
        serve, health_cfg, scrypt_calls):
    s = _serve_user(serve, health_cfg, limit=3)
    owner, guesser = "127.0.0.1", "127.0.0.2"
    assert request_from(owner, s.url, basic("alice", PASSWORD))[0] == 200  # cache now warm
    for i in range(3):
        assert request_from(guesser, s.url, basic("alice", f"guess-{i}"))[0] == 401
    for _ in range(3):  # the owner keeps polling: served from the cache
        assert request_from(owner, s.url, basic("alice", PASSWORD))[0] == 200
    status, headers, _ = request_from(guesser, s.url, basic("alice", PASSWORD))
    assert status == 429 and 1 <= int(headers["Retry-After"]) <= 60
    assert len(scrypt_calls) == 4  # the owner's first check and three guesses
    # The token (a secret nobody can guess) still works from the limited address.
    assert request_from(guesser, s.url, bearer(s.token))[0] == 200


def test_the_global_budget_answers_429_before_any_hashing(serve, health_cfg, clock, scrypt_calls):
    s = _serve_user(serve, health_cfg, limit=1000, checks=12)  # burst 10, then one per 5 s
    assert request_from("127.0.0.1", s.url, basic("alice", PASSWORD))[0] == 200
    statuses = [request_from(f"127.0.0.{i}", s.url, basic("alice", f"wrong-{i}"))[0]
                for i in range(2, 22)]  # 20 addresses, each far below its own limit
    assert statuses == [401] * 9 + [429] * 11
    assert len(scrypt_calls) == 10
    # Spent: even the right password from a fresh address is refused unhashed, and the cache
    # is not consulted either (it would test guesses for free).
    status, headers, _ = request_from("127.0.0.30", s.url, basic("alice", PASSWORD))
    assert status == 429 and headers["Retry-After"] == "5"
    assert request_from("127.0.0.1", s.url, basic("alice", PASSWORD))[0] == 429
    assert len(scrypt_calls) == 10
    assert request_from("127.0.0.30", s.url, bearer(s.token))[0] == 200
    # Refusals by the budget are not failures of those addresses: nobody got locked out.
    clock.advance(5)  # one check refilled
    assert request_from("127.0.0.30", s.url, basic("alice", PASSWORD))[0] == 200  # cached
    assert request_from("127.0.0.31", s.url, basic("alice", "wrong"))[0] == 401
    assert request_from("127.0.0.32", s.url, basic("alice", "wrong"))[0] == 429
    assert len(scrypt_calls) == 11


def test_budget_runs_one_check_at_a_time_and_refills_at_its_rate(clock):
    budget = PasswordBudget(60, clock=clock)
    assert budget.burst == 10
    assert budget.acquire() is None
    assert budget.acquire() == 1  # one already running: refused, nothing taken
    budget.release()
    for _ in range(9):
        assert budget.acquire() is None
        budget.release()
    assert budget.retry_after() == 1 and budget.acquire() == 1
    clock.advance(1)
    assert budget.retry_after() is None and budget.acquire() is None
    budget.release()


def test_options_with_valid_credentials_is_answered_and_not_counted(serve, health_cfg):
    s = _serve_user(serve, health_cfg, limit=2)
    for auth in (bearer(s.token), basic("alice", PASSWORD)) * 2:
        status, headers, _ = request_from("127.0.0.2", s.url, auth, method="OPTIONS")
        assert status == 204 and headers["Allow"] == "GET, HEAD, OPTIONS"
    assert request_from("127.0.0.2", s.url, basic("alice", "wrong"), method="OPTIONS")[0] == 401
    assert request_from("127.0.0.2", s.url, basic("alice", "wrong"))[0] == 401  # 2nd failure only
    assert request_from("127.0.0.2", s.url, basic("alice", "wrong"))[0] == 429


def test_the_bearer_scheme_is_case_insensitive(serve, health_cfg):
    s = _serve_user(serve, health_cfg)
    for scheme in ("bearer", "BEARER", "BeArEr"):
        status, _, body = request_from("127.0.0.1", s.url, f"{scheme} {s.token}")
        assert status in (200, 503) and "status" in json.loads(body), scheme
    assert request_from("127.0.0.1", s.url, f"bearer {s.token[:-1]}x")[0] == 401


def test_password_checks_run_in_one_thread_at_lower_priority(serve, health_cfg):
    import os
    import threading

    s = _serve_user(serve, health_cfg)
    assert request_from("127.0.0.1", s.url, basic("alice", PASSWORD))[0] == 200
    (hasher,) = [t for t in threading.enumerate() if t.name.startswith("health-scrypt")]
    assert os.getpriority(os.PRIO_PROCESS, hasher.native_id) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 10)
    s.server.stop()
    assert not hasher.is_alive()
