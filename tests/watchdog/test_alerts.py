"""Alerts over real channels: a local HTTP receiver (http.server) and a local SMTP server
(aiosmtpd), plain, STARTTLS and implicit TLS with a certificate made here."""
from __future__ import annotations

import datetime
import email
import ipaddress
import json
import logging
import ssl
import statistics
import threading
import time
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from blackbox.redact import register_secret
from tests.helpers.proc import free_port, wait_until
from tradeguard.config import AlertsConfig
from tradeguard.paths import RuntimePaths
from tradeguard.secrets import write_private
from watchdog.alerts import DISCORD_CONTENT_MAX, Alerter

FAST = {"backoff_s": 0.01, "max_backoff_s": 0.05}
LOGGER = "watchdog.alerts"


# --- a webhook receiver -------------------------------------------------------------------------
@dataclass
class Receiver:
    """Records every POST; answers with ``statuses`` in turn (then 204); ``hold`` blocks replies."""

    server: ThreadingHTTPServer
    requests: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    hold: threading.Event | None = None

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    @property
    def bodies(self) -> list[Any]:
        return [r["json"] for r in self.requests]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec: Receiver

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server API
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            rec.requests.append({"path": self.path, "headers": dict(self.headers),
                                 "raw": raw, "json": json.loads(raw)})
            if rec.hold is not None:
                rec.hold.wait(10)
            self.send_response(rec.statuses.pop(0) if rec.statuses else 204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    rec = Receiver(server)
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield rec
    if rec.hold is not None:
        rec.hold.set()
    server.shutdown()
    server.server_close()


# --- an SMTP server -----------------------------------------------------------------------------
class Mailbox:
    def __init__(self) -> None:
        self.envelopes: list[Any] = []
        self.logins: list[tuple[str, str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.envelopes.append(envelope)
        return "250 OK"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str,
                     auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and auth_data.password == b"s3cret-smtp-pw"
        self.logins.append((auth_data.login.decode(), "ok" if ok else "refused"))
        return AuthResult(success=ok)

    def message(self, i: int = 0) -> Message:
        return email.message_from_bytes(self.envelopes[i].content)


@dataclass
class Tls:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """A self-signed certificate for 127.0.0.1."""
    d = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    paths = Tls(d / "cert.pem", d / "key.pem")
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    return paths


@pytest.fixture
def smtp_server() -> Iterator[Any]:
    """Start an aiosmtpd server on a free port: ``smtp_server(**smtp_kwargs) -> (port, mailbox)``."""
    controllers: list[Controller] = []

    def start(**kw: Any) -> tuple[int, Mailbox]:
        box = Mailbox()
        if kw.pop("auth", False):
            # aiosmtpd cannot tell that an implicit-TLS session is encrypted: don't ask it to.
            kw.update(authenticator=box.authenticate, auth_required=True,
                      auth_require_tls="ssl_context" not in kw)
        c = Controller(box, hostname="127.0.0.1", port=free_port(), **kw)
        c.start()
        controllers.append(c)
        return c.port, box

    yield start
    for c in controllers:
        c.stop()


# --- the alerter --------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """urllib honours proxy variables: the tests talk to 127.0.0.1 only."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def make_alerter() -> Iterator[Any]:
    made: list[Alerter] = []

    def make(**kw: Any) -> Alerter:
        opts = {k: kw.pop(k) for k in ("secrets_paths", "ssl_context", "attempts", "backoff_s",
                                       "max_backoff_s") if k in kw}
        a = Alerter(AlertsConfig(**kw), host="test-host", **{**FAST, **opts})
        made.append(a)
        return a

    yield make
    for a in made:
        a.stop(0.5)


def _warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING
            and text in r.getMessage()]


# --- webhook formats ----------------------------------------------------------------------------
def test_generic_payload_has_the_documented_shape(receiver: Receiver, make_alerter: Any) -> None:
    a = make_alerter(webhook_url=receiver.url(), webhook_format="generic")
    assert a.enabled
    before = time.time()
    a.send("restart", "restarting the bot (hung)", fault="hung", old_pid=123)
    assert a.flush(5)
    [req] = receiver.requests
    assert req["headers"]["Content-Type"] == "application/json"
    body = req["json"]
    assert set(body) == {"event", "severity", "message", "host", "ts", "fields"}
    assert body["event"] == "restart" and body["severity"] == "warning"
    assert body["message"] == "restarting the bot (hung)" and body["host"] == "test-host"
    assert before <= body["ts"] <= time.time()
    assert body["fields"] == {"fault": "hung", "old_pid": 123}


def test_slack_payload_is_escaped_text(receiver: Receiver, make_alerter: Any) -> None:
    a = make_alerter(webhook_url=receiver.url(), webhook_format="slack")
    a.send("emergency_started", "flatten <now> & sell", reason="budget spent")
    assert a.flush(5)
    [body] = receiver.bodies
    assert set(body) == {"text"}
    assert "CRITICAL emergency_started on test-host" in body["text"]
    assert "flatten &lt;now&gt; &amp; sell" in body["text"]
    assert "reason: budget spent" in body["text"]


def test_discord_payload_stays_within_discord_limits(receiver: Receiver,
                                                     make_alerter: Any) -> None:
    a = make_alerter(webhook_url=receiver.url(), webhook_format="discord")
    fields = {f"field{i}": "v" * 1500 for i in range(40)}
    a.send("emergency_failed", "@everyone " + "x" * 5000, severity="critical", **fields)
    assert a.flush(5)
    [body] = receiver.bodies
    assert len(body["content"]) <= DISCORD_CONTENT_MAX
    assert body["content"].startswith("[tradeguard] CRITICAL emergency_failed on test-host: @everyone")
    assert body["allowed_mentions"] == {"parse": []}
    [embed] = body["embeds"]
    assert len(embed["title"]) <= 256 and len(embed["description"]) <= 4096
    assert 0 < len(embed["fields"]) <= 25
    assert all(len(f["name"]) <= 256 and len(f["value"]) <= 1024 for f in embed["fields"])
    total = len(embed["title"]) + len(embed["description"]) + len(embed["footer"]["text"]) + sum(
        len(f["name"]) + len(f["value"]) for f in embed["fields"])
    assert total <= 6000


# --- e-mail -------------------------------------------------------------------------------------
def test_email_goes_to_every_recipient(smtp_server: Any, make_alerter: Any) -> None:
    port, box = smtp_server()
    to = ["ops@example.com", "me@example.org", "pager@example.net"]
    a = make_alerter(smtp_host="127.0.0.1", smtp_port=port, smtp_security="none",
                     smtp_from="bot@example.com", smtp_to=to)
    a.send("budget_spent", "restart budget spent", restarts=5)
    assert a.flush(5)
    [env] = box.envelopes
    assert env.mail_from == "bot@example.com" and sorted(env.rcpt_tos) == sorted(to)
    msg = box.message()
    assert msg["Subject"] == "[tradeguard] CRITICAL budget_spent on test-host"
    assert msg["To"] == ", ".join(to)
    body = msg.get_payload(decode=True).decode()
    assert "restart budget spent" in body and "restarts: 5" in body


def test_email_over_starttls_with_login(smtp_server: Any, make_alerter: Any, tls: Tls,
                                        tmp_path: Path) -> None:
    port, box = smtp_server(tls_context=tls.server_context(), require_starttls=True, auth=True)
    paths = RuntimePaths(tmp_path / "data", tmp_path / "logs")
    write_private(paths.keys_dir / "smtp.password", "s3cret-smtp-pw\n")
    a = make_alerter(smtp_host="127.0.0.1", smtp_port=port, smtp_security="starttls",
                     smtp_user="alerts", smtp_to=["ops@example.com"], secrets_paths=paths,
                     ssl_context=tls.client_context())
    a.send("kill_engaged", "kill switch engaged (halt): manual", mode="halt")
    assert a.flush(5)
    assert box.logins == [("alerts", "ok")]
    assert len(box.envelopes) == 1 and box.envelopes[0].rcpt_tos == ["ops@example.com"]


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
def test_email_over_implicit_tls(smtp_server: Any, make_alerter: Any, tls: Tls,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADEGUARD_SMTP_PASSWORD", "s3cret-smtp-pw")
    port, box = smtp_server(ssl_context=tls.server_context(), auth=True)
    a = make_alerter(smtp_host="127.0.0.1", smtp_port=port, smtp_security="tls",
                     smtp_user="alerts", smtp_to=["ops@example.com"],
                     ssl_context=tls.client_context())
    a.send("unhealthy", "unhealthy for 60s")
    assert a.flush(5)
    assert box.logins == [("alerts", "ok")] and len(box.envelopes) == 1


def test_untrusted_smtp_certificate_is_refused_and_logged_once(
        smtp_server: Any, make_alerter: Any, tls: Tls, caplog: pytest.LogCaptureFixture) -> None:
    port, box = smtp_server(tls_context=tls.server_context(), require_starttls=True)
    a = make_alerter(smtp_host="127.0.0.1", smtp_port=port, smtp_to=["ops@example.com"])
    with caplog.at_level(logging.INFO, LOGGER):
        a.send("restart", "one")
        a.send("restart", "two")
        assert a.flush(5)
    assert box.envelopes == []
    [warning] = _warnings(caplog, "email alerts are failing")
    assert "certificate" in warning.getMessage()
    assert a.stats()["channels"]["email"] == {"sent": 0, "failed": 2, "failing": True}


def test_smtp_login_without_a_password_turns_email_off(make_alerter: Any,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, LOGGER):
        a = make_alerter(smtp_host="127.0.0.1", smtp_user="alerts", smtp_to=["ops@example.com"])
    assert not a.enabled
    assert any("no SMTP password" in r.getMessage() for r in caplog.records)
    a.send("restart", "nobody hears this")
    assert a.flush(0.1)


# --- retries, failures, the queue ---------------------------------------------------------------
def test_a_receiver_failing_twice_then_recovering_gets_the_alert(
        receiver: Receiver, make_alerter: Any, caplog: pytest.LogCaptureFixture) -> None:
    receiver.statuses = [500, 503]
    a = make_alerter(webhook_url=receiver.url())
    with caplog.at_level(logging.INFO, LOGGER):
        a.send("restart", "retry me")
        assert a.flush(5)
    assert [b["message"] for b in receiver.bodies] == ["retry me"] * 3
    assert a.stats()["channels"]["webhook"] == {"sent": 1, "failed": 0, "failing": False}
    assert _warnings(caplog, "failing") == []


def test_a_permanent_http_error_is_not_retried(receiver: Receiver, make_alerter: Any) -> None:
    receiver.statuses = [404, 404, 404]
    a = make_alerter(webhook_url=receiver.url())
    a.send("restart", "wrong url")
    assert a.flush(5)
    assert len(receiver.requests) == 1
    assert a.stats()["channels"]["webhook"]["failed"] == 1


def test_an_unreachable_webhook_is_logged_once_and_send_stays_fast(
        make_alerter: Any, caplog: pytest.LogCaptureFixture) -> None:
    secret_path = "/services/T000/B000/XyZsecretPathToken"
    url = f"http://127.0.0.1:{free_port()}{secret_path}"  # nothing listens there
    a = make_alerter(webhook_url=url, queue_size=5)
    took = []
    with caplog.at_level(logging.DEBUG, LOGGER):
        for i in range(200):
            t0 = time.perf_counter()
            a.send("restart", f"alert {i}", n=i)
            took.append(time.perf_counter() - t0)
            assert a.stats()["queued"] <= 5
        assert a.flush(10)
    assert statistics.median(took) < 0.002, f"send median {statistics.median(took) * 1e3:.3f} ms"
    assert len(_warnings(caplog, "webhook alerts are failing")) == 1
    assert "XyZsecretPathToken" not in caplog.text
    st = a.stats()
    assert st["channels"]["webhook"]["failed"] + st["dropped"] == 200
    assert st["channels"]["webhook"]["sent"] == 0


def test_a_full_queue_drops_the_oldest(receiver: Receiver, make_alerter: Any,
                                       caplog: pytest.LogCaptureFixture) -> None:
    receiver.hold = threading.Event()
    a = make_alerter(webhook_url=receiver.url(), queue_size=3)
    a.send("restart", "first")
    wait_until(lambda: receiver.requests, 5, message="the first alert in flight")
    with caplog.at_level(logging.WARNING, LOGGER):
        for i in range(10):
            a.send("restart", f"queued {i}")
    assert a.stats()["queued"] == 3 and a.dropped == 7
    assert len(_warnings(caplog, "queue full")) == 1
    receiver.hold.set()
    assert a.flush(5)
    assert [b["message"] for b in receiver.bodies] == ["first", "queued 7", "queued 8", "queued 9"]


def test_stop_delivers_what_is_queued_and_later_sends_are_ignored(
        receiver: Receiver, make_alerter: Any) -> None:
    a = make_alerter(webhook_url=receiver.url())
    for i in range(3):
        a.send("restart", f"n{i}")
    a.stop(5)
    assert [b["message"] for b in receiver.bodies] == ["n0", "n1", "n2"]
    a.send("restart", "after stop")
    assert a.flush(0.1) and len(receiver.requests) == 3


def test_no_usable_channel_means_disabled(make_alerter: Any,
                                          caplog: pytest.LogCaptureFixture) -> None:
    a = make_alerter()
    assert not a.enabled
    a.send("restart", "nobody")
    assert a.flush(0.1) and a.stats()["queued"] == 0
    with caplog.at_level(logging.INFO, LOGGER):
        assert not make_alerter(webhook_url="ftp://example.com/hook").enabled
    assert any("must be an http:// or https:// URL" in r.getMessage() for r in caplog.records)


# --- secrets ------------------------------------------------------------------------------------
def test_secrets_never_reach_the_receiver(receiver: Receiver, make_alerter: Any) -> None:
    secret = "exch-SECRET-9f8e7d6c5b"
    register_secret(secret)
    a = make_alerter(webhook_url=receiver.url(), webhook_format="slack")
    b = make_alerter(webhook_url=receiver.url(), webhook_format="generic")
    for alerter in (a, b):
        alerter.send("emergency_failed", f"order failed: key {secret} rejected",
                     api_key="AKIA-plain-key", detail={"note": f"with {secret} inside"})
        assert alerter.flush(5)
    assert len(receiver.requests) == 2
    for req in receiver.requests:
        assert secret.encode() not in req["raw"] and b"AKIA-plain-key" not in req["raw"]
    generic = receiver.bodies[1]
    assert generic["message"] == "order failed: key *** rejected"
    assert generic["fields"] == {"api_key": "***", "detail": {"note": "with *** inside"}}


def test_secret_in_email_is_redacted(smtp_server: Any, make_alerter: Any) -> None:
    secret = "smtp-visible-SECRET-42"
    register_secret(secret)
    port, box = smtp_server()
    a = make_alerter(smtp_host="127.0.0.1", smtp_port=port, smtp_security="none",
                     smtp_to=["ops@example.com"])
    a.send("restart", f"leaked {secret}?", token="abc123token")
    assert a.flush(5)
    raw = box.envelopes[0].content
    assert secret.encode() not in raw and b"abc123token" not in raw and b"leaked ***?" in raw


def test_delivery_outcomes_go_to_the_black_box(receiver: Receiver, make_alerter: Any,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = pytest.importorskip("blackbox.recorder")
    seen: list[tuple[str, str, dict[str, Any]]] = []
    monkeypatch.setattr(recorder, "record",
                        lambda kind, source, message, **kw: seen.append((kind, source, kw)))
    receiver.statuses = [204, 404]
    a = make_alerter(webhook_url=receiver.url())
    a.send("restart", "ok")
    a.send("restart", "refused")
    assert a.flush(5)
    assert [(k, s, kw["channel"]) for k, s, kw in seen] == [
        ("alert.sent", "watchdog", "webhook"), ("alert.failed", "watchdog", "webhook")]

