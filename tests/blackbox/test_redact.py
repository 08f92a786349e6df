"""Redaction: by field name, by value pattern, and registered exact values."""
from __future__ import annotations

from blackbox.redact import MASK, is_secret_name, redact, redact_text, register_secret


def test_secret_field_names_are_masked_whatever_their_value():
    out = redact({"api_key": "k", "apiSecret": 123, "password": ["a"], "symbol": "BTC/USDT",
                  "nested": {"Authorization": "x", "smtp_password": "p", "empty_token": ""}})
    assert out == {"api_key": MASK, "apiSecret": MASK, "password": MASK, "symbol": "BTC/USDT",
                   "nested": {"Authorization": MASK, "smtp_password": MASK, "empty_token": ""}}
    assert is_secret_name("X-MBX-APIKEY") and not is_secret_name("client_order_id")


def test_secret_looking_values_are_masked_inside_text():
    sig = "9f" * 32
    assert redact_text(f"GET /api/v3/order?symbol=BTCUSDT&signature={sig}") == \
        "GET /api/v3/order?symbol=BTCUSDT&signature=***"
    assert redact_text("Authorization: Bearer abcdefgh12345678") == "Authorization: Bearer ***"
    assert redact_text("https://user:pa55word@hooks.example/x") == "https://***@hooks.example/x"
    assert redact_text("key " + "A1b2" * 16 + " end") == "key *** end"
    assert redact_text("BTC/USDT filled 0.01 @ 50000.5") == "BTC/USDT filled 0.01 @ 50000.5"


def test_a_registered_secret_is_masked_even_in_text_seen_before_it_was_registered():
    text = "the key is qwerty-uiop-7731"
    assert redact_text(text) == text  # now cached
    register_secret("qwerty-uiop-7731")
    assert redact_text(text) == f"the key is {MASK}"
    assert redact([text, b"qwerty-uiop-7731"]) == [f"the key is {MASK}", MASK]


def test_password_hashes_are_masked_in_free_text_whatever_their_base64_holds():
    from blackbox.redact import redact_text
    for h in ("scrypt$16384$8$1$ab/cd+ef==$Zm9v/YmFy+YmF6/cXV4cXV4cXV4cXV4cXV4cXV4cXU=",
              "scrypt$16384$8$1$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g="):
        masked = redact_text(f"alice:{h} (line 3)")
        assert masked == "alice:scrypt$*** (line 3)", masked


def test_redact_config_masks_credential_tables_by_place():
    from blackbox.redact import redact_config
    cfg = {"health": {"users": {"bob": "not-even-a-hash"}, "port": 8080}, "bot": {"x": 1}}
    out = redact_config(cfg)
    assert out == {"health": {"users": "***", "port": 8080}, "bot": {"x": 1}}
    assert cfg["health"]["users"] == {"bob": "not-even-a-hash"}  # the caller's copy untouched
    assert redact_config({"health": {"users": {}}})["health"]["users"] == {}
