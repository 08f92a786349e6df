"""Alerts: tell a person when the watchdog restarts the bot, spends its budget or flattens.

:class:`Alerter` sends each alert to the configured channels — a webhook (generic JSON,
Slack or Discord shape) and/or e-mail over SMTP — from one background thread. ``send`` never
blocks and never raises: alerts wait in a bounded queue (the oldest are dropped when it is
full, and counted), each delivery is retried a few times with backoff, and a missing or broken
channel is logged once per outage, never per alert, so supervision goes on whatever happens to
the alerts. Everything that leaves the process passes :func:`blackbox.redact.redact`; the
webhook URL (a capability URL) and the SMTP password are registered as secrets and never logged.
Delivery outcomes go to the black box (``alert.sent`` / ``alert.failed`` / ``alert.dropped``).
"""
from __future__ import annotations

import collections
import http.client
import json
import logging
import smtplib
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from tenacity import (Retrying, retry_if_exception_type, stop_after_attempt, stop_when_event_set,
                      wait_exponential)

from blackbox.redact import redact, redact_text, register_secret
from tradeguard import __version__
from tradeguard.config import AlertsConfig
from tradeguard.exceptions import TradeguardError
from tradeguard.paths import RuntimePaths
from tradeguard.secrets import load_secret

log = logging.getLogger(__name__)

SOURCE = "watchdog"
EVENTS = ("restart", "budget_spent", "emergency_started", "emergency_finished",
          "emergency_failed", "kill_engaged", "unhealthy", "needs_attention", "attention_cleared",
          "daily_summary", "bot_safe", "watchdog_replaced")
SEVERITIES = ("info", "warning", "error", "critical")
# Used when the caller does not say: what a person woken at night should expect.
EVENT_SEVERITY = {"restart": "warning", "unhealthy": "warning", "kill_engaged": "critical",
                  "budget_spent": "critical", "emergency_started": "critical",
                  "emergency_finished": "warning", "emergency_failed": "critical",
                  "needs_attention": "error", "attention_cleared": "info", "daily_summary": "info",
                  "bot_safe": "critical", "watchdog_replaced": "critical",
                  "stop_missing": "critical", "stop_restored": "info"}
SMTP_PASSWORD_CREDENTIAL = "smtp.password"
SMTP_PASSWORD_ENV = "TRADEGUARD_SMTP_PASSWORD"
DISCORD_CONTENT_MAX = 2000
DISCORD_EMBED_TOTAL_MAX = 6000
DISCORD_FIELDS_MAX = 25
DISCORD_COLORS = {"info": 0x3498DB, "warning": 0xF1C40F, "error": 0xE67E22, "critical": 0xE74C3C}
USER_AGENT = f"tradeguard/{__version__} (alerts)"


class DeliveryError(TradeguardError):
    """One delivery attempt failed; ``permanent`` failures are not retried."""

    def __init__(self, message: str, *, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


class _Retryable(DeliveryError):
    """A failure worth another attempt (network, timeout, 5xx, 429, SMTP 4xx)."""


@dataclass(frozen=True)
class Alert:
    """One alert, already redacted: what every channel formats."""

    event: str
    severity: str
    message: str
    host: str
    ts: float
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def iso_time(self) -> str:
        return datetime.fromtimestamp(self.ts, timezone.utc).isoformat(timespec="seconds")

    @property
    def title(self) -> str:
        return f"[tradeguard] {self.severity.upper()} {self.event} on {self.host}"

    def field_lines(self) -> list[str]:
        return [f"{k}: {_text(v)}" for k, v in self.fields.items()]

    def as_text(self) -> str:
        """Plain-text rendering (e-mail body)."""
        lines = [self.message, "", *self.field_lines(), f"host: {self.host}",
                 f"time: {self.iso_time}"]
        return "\n".join(lines) + "\n"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- payloads ---------------------------------------------------------------------------------
def generic_payload(a: Alert) -> dict[str, Any]:
    """``{"event","severity","message","host","ts","fields"}``."""
    return {"event": a.event, "severity": a.severity, "message": a.message, "host": a.host,
            "ts": a.ts, "fields": a.fields}


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(a: Alert) -> dict[str, Any]:
    """Slack incoming-webhook shape: ``{"text": ...}`` (mrkdwn, control characters escaped)."""
    lines = [f"*{_slack_escape(a.title)}*", _slack_escape(a.message)]
    lines += [_slack_escape(line) for line in a.field_lines()]
    lines.append(f"_{a.iso_time}_")
    return {"text": "\n".join(lines)}


def discord_payload(a: Alert) -> dict[str, Any]:
    """Discord webhook shape: ``content`` (<= 2000 chars) plus one embed within Discord's limits.

    ``allowed_mentions`` is empty so that an ``@everyone`` inside a message pings nobody.
    """
    embed_fields = []
    budget = DISCORD_EMBED_TOTAL_MAX - 256 - 1024 - len(a.host)  # title, description, footer
    for k, v in list(a.fields.items())[:DISCORD_FIELDS_MAX]:
        name, value = _cut(str(k), 256) or "-", _cut(_text(v), 1024) or "-"
        budget -= len(name) + len(value)
        if budget < 0:
            break
        embed_fields.append({"name": name, "value": value, "inline": len(value) <= 40})
    embed = {"title": _cut(f"{a.severity.upper()} {a.event}", 256),
             "description": _cut(a.message, 1024),
             "color": DISCORD_COLORS.get(a.severity, DISCORD_COLORS["warning"]),
             "timestamp": a.iso_time, "footer": {"text": _cut(a.host, 256)},
             "fields": embed_fields}
    return {"content": _cut(f"{a.title}: {a.message}", DISCORD_CONTENT_MAX),
            "username": "tradeguard", "allowed_mentions": {"parse": []}, "embeds": [embed]}


PAYLOADS = {"generic": generic_payload, "slack": slack_payload, "discord": discord_payload}


# --- channels ---------------------------------------------------------------------------------
class Channel(ABC):
    """A way out for alerts; :meth:`deliver` raises DeliveryError on failure."""

    name: str
    where: str  # for logs: never holds a secret

    @abstractmethod
    def deliver(self, alert: Alert) -> None:
        """Deliver one alert or raise DeliveryError."""


class WebhookChannel(Channel):
    """JSON POST to a webhook URL (stdlib urllib: no runtime dependency)."""

    name = "webhook"

    def __init__(self, url: str, fmt: str, timeout: float, ssl_context: ssl.SSLContext):
        self.url, self.timeout, self.ssl_context = url, timeout, ssl_context
        self.payload = PAYLOADS[fmt]
        # Logs name the host only: the path of a webhook URL is its password.
        self.where = urllib.parse.urlsplit(url).hostname or "?"

    def deliver(self, alert: Alert) -> None:
        body = json.dumps(redact(self.payload(alert)), default=str).encode("utf-8")
        req = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": USER_AGENT})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self.ssl_context) as r:
                r.read(4096)
        except urllib.error.HTTPError as e:
            e.close()
            msg = f"webhook at {self.where} answered HTTP {e.code}"
            if e.code in (408, 425, 429) or e.code >= 500:
                raise _Retryable(msg) from None
            raise DeliveryError(msg, permanent=True) from None
        except urllib.error.URLError as e:
            raise _classify_os_error(f"webhook at {self.where}", e.reason) from None
        except (OSError, http.client.HTTPException) as e:  # timeouts, resets, bad responses
            raise _classify_os_error(f"webhook at {self.where}", e) from None
        except ValueError as e:  # a URL urllib cannot use
            raise DeliveryError(f"webhook at {self.where}: {e}", permanent=True) from None


class EmailChannel(Channel):
    """E-mail through SMTP: STARTTLS, implicit TLS or plain; login when a user is set."""

    name = "email"

    def __init__(self, cfg: AlertsConfig, password: str | None, ssl_context: ssl.SSLContext):
        self.cfg, self.password, self.ssl_context = cfg, password, ssl_context
        self.where = f"{cfg.smtp_host}:{cfg.smtp_port}"

    def message(self, alert: Alert) -> EmailMessage:
        msg = EmailMessage()
        msg["Subject"] = alert.title
        msg["From"] = self.cfg.smtp_from
        msg["To"] = ", ".join(self.cfg.smtp_to)
        msg["Date"] = formatdate(alert.ts, localtime=False, usegmt=True)
        msg["Message-ID"] = make_msgid(domain=self.cfg.smtp_from.rpartition("@")[2] or None)
        msg["X-Tradeguard-Event"] = alert.event
        msg.set_content(redact_text(alert.as_text()))
        return msg

    def _connect(self) -> smtplib.SMTP:
        c = self.cfg
        if c.smtp_security == "tls":
            return smtplib.SMTP_SSL(c.smtp_host, c.smtp_port, timeout=c.timeout_s,
                                    context=self.ssl_context)
        smtp = smtplib.SMTP(c.smtp_host, c.smtp_port, timeout=c.timeout_s)
        if c.smtp_security == "starttls":
            smtp.ehlo()
            smtp.starttls(context=self.ssl_context)
            smtp.ehlo()
        return smtp

    def deliver(self, alert: Alert) -> None:
        msg = self.message(alert)
        what = f"SMTP server {self.where}"
        try:
            with self._connect() as smtp:
                if self.cfg.smtp_user:
                    smtp.login(self.cfg.smtp_user, self.password or "")
                refused = smtp.send_message(msg, to_addrs=list(self.cfg.smtp_to))
            if refused:
                log.warning("%s refused some recipients: %s", what, ", ".join(sorted(refused)))
        except smtplib.SMTPAuthenticationError as e:
            raise DeliveryError(f"{what} refused the login of {self.cfg.smtp_user!r} "
                                f"({e.smtp_code})", permanent=True) from None
        except smtplib.SMTPRecipientsRefused as e:
            raise DeliveryError(f"{what} refused every recipient: "
                                f"{', '.join(sorted(e.recipients))}", permanent=True) from None
        except smtplib.SMTPNotSupportedError as e:
            raise DeliveryError(f"{what}: {e}", permanent=True) from None
        except smtplib.SMTPResponseException as e:
            err = e.smtp_error.decode("utf-8", "replace") if isinstance(e.smtp_error, bytes) \
                else str(e.smtp_error)
            msg_ = f"{what} answered {e.smtp_code} {err}"
            if 400 <= e.smtp_code < 500:
                raise _Retryable(msg_) from None
            raise DeliveryError(msg_, permanent=True) from None
        except (smtplib.SMTPException, OSError) as e:
            raise _classify_os_error(what, e) from None


def _classify_os_error(what: str, err: BaseException | str) -> DeliveryError:
    if isinstance(err, ssl.SSLCertVerificationError):
        return DeliveryError(f"{what}: TLS certificate not trusted ({err.verify_message})",
                             permanent=True)
    if isinstance(err, (socket.timeout, TimeoutError)):
        return _Retryable(f"{what}: timed out")
    return _Retryable(f"{what}: {err}")


# --- the alerter ------------------------------------------------------------------------------
@dataclass
class _ChannelHealth:
    """Per-channel outage state: a failure is logged when an outage starts, not per alert."""

    failing: bool = False
    sent: int = 0
    failed: int = 0


class Alerter:
    """Queue alerts and deliver them to every configured channel from a background thread."""

    def __init__(self, cfg: AlertsConfig, *, secrets_paths: RuntimePaths | None = None,
                 host: str | None = None, ssl_context: ssl.SSLContext | None = None,
                 attempts: int = 3, backoff_s: float = 1.0, max_backoff_s: float = 30.0):
        self.cfg = cfg
        self.host = host or socket.gethostname()
        self.attempts, self.backoff_s, self.max_backoff_s = attempts, backoff_s, max_backoff_s
        self._ssl = ssl_context or ssl.create_default_context()
        self._queue: collections.deque[Alert] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._busy = False
        self._dropped = 0
        self._dropped_recorded = 0
        self._drop_logged = False
        self._thread: threading.Thread | None = None
        self.channels: list[Channel] = self._build_channels(secrets_paths)
        self._health = {ch.name: _ChannelHealth() for ch in self.channels}
        if self.channels:
            log.info("alerts go to: %s", ", ".join(
                f"{ch.name} ({ch.where})" for ch in self.channels))
        else:
            log.info("alerts are off: set [alerts] webhook_url and/or smtp_host to receive them")

    # --- public -----------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        """True when at least one channel is configured and usable."""
        return bool(self.channels)

    @property
    def dropped(self) -> int:
        """Alerts dropped because the queue was full."""
        return self._dropped

    def send(self, event: str, message: str, *, severity: str | None = None, **fields: Any) -> None:
        """Queue an alert; returns at once and never raises.

        ``severity`` defaults per event (:data:`EVENT_SEVERITY`); unknown values become
        ``warning``. ``fields`` are extra details (JSON-able), redacted like the message.
        """
        if not self.channels or self._stopping.is_set():
            return
        try:
            sev = severity or EVENT_SEVERITY.get(event, "warning")
            alert = Alert(event=str(event), severity=sev if sev in SEVERITIES else "warning",
                          message=redact_text(str(message)), host=redact_text(self.host),
                          ts=time.time(), fields=redact(fields))
            with self._cond:
                if len(self._queue) >= self.cfg.queue_size:
                    self._queue.popleft()
                    self._dropped += 1
                    if not self._drop_logged:
                        self._drop_logged = True
                        log.warning("alert queue full (%d): dropping the oldest alerts",
                                    self.cfg.queue_size)
                self._queue.append(alert)
                self._ensure_worker()
                self._cond.notify_all()
        except Exception:  # noqa: BLE001 - alerts must never stop supervision
            log.exception("could not queue alert %r", event)

    def flush(self, timeout: float) -> bool:
        """Wait until every queued alert has been delivered or given up; False at the deadline."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None or not self._thread.is_alive():
                    return not (self._queue or self._busy)
                self._cond.wait(left)
        return True

    def stop(self, timeout: float = 2.0) -> None:
        """Deliver what is queued within ``timeout``, then stop the worker."""
        start = time.monotonic()
        self.flush(timeout)
        self._stopping.set()
        with self._cond:
            lost = len(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(max(0.0, timeout - (time.monotonic() - start)) + 0.5)
        if lost:
            log.warning("%d alert(s) not delivered before shutdown", lost)

    def stats(self) -> dict[str, Any]:
        """Counters for status pages: per channel sent/failed/failing, queued, dropped."""
        with self._cond:
            queued = len(self._queue)
        return {"enabled": self.enabled, "queued": queued, "dropped": self._dropped,
                "channels": {n: {"sent": h.sent, "failed": h.failed, "failing": h.failing}
                             for n, h in self._health.items()}}

    # --- setup ------------------------------------------------------------------------------
    def _build_channels(self, paths: RuntimePaths | None) -> list[Channel]:
        cfg, channels = self.cfg, []
        if cfg.webhook_url:
            register_secret(cfg.webhook_url)
            scheme = urllib.parse.urlsplit(cfg.webhook_url).scheme
            if scheme in ("http", "https"):
                channels.append(WebhookChannel(cfg.webhook_url, cfg.webhook_format,
                                               cfg.timeout_s, self._ssl))
            else:
                log.error("[alerts] webhook_url must be an http:// or https:// URL (got scheme "
                          "%r): webhook alerts are off", scheme)
        if cfg.smtp_host:
            email = self._email_channel(paths)
            if email is not None:
                channels.append(email)
        return channels

    def _email_channel(self, paths: RuntimePaths | None) -> EmailChannel | None:
        cfg = self.cfg
        if not cfg.smtp_to:
            log.error("[alerts] smtp_host is set but smtp_to is empty: e-mail alerts are off")
            return None
        password = None
        if cfg.smtp_user:
            try:
                password = load_secret(SMTP_PASSWORD_CREDENTIAL, env=SMTP_PASSWORD_ENV,
                                       file=paths.keys_dir / SMTP_PASSWORD_CREDENTIAL
                                       if paths else None)
            except TradeguardError as e:
                log.error("SMTP password unreadable (%s): e-mail alerts are off", e)
                return None
            if not password:
                log.error("[alerts] smtp_user is set but no SMTP password was found (systemd "
                          "credential %r, data_dir/keys/%s or $%s): e-mail alerts are off",
                          SMTP_PASSWORD_CREDENTIAL, SMTP_PASSWORD_CREDENTIAL, SMTP_PASSWORD_ENV)
                return None
            register_secret(password)
            if cfg.smtp_security == "none":
                log.warning("[alerts] smtp_security = 'none': the SMTP password travels "
                            "unencrypted to %s", cfg.smtp_host)
        return EmailChannel(cfg, password, self._ssl)

    # --- delivery ---------------------------------------------------------------------------
    def _ensure_worker(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="alerts", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping.is_set():
                    self._cond.wait()
                if not self._queue:
                    return
                alert = self._queue.popleft()
                self._busy = True
                dropped = self._dropped
            try:
                if dropped > self._dropped_recorded:
                    _record("alert.dropped", f"{dropped - self._dropped_recorded} alert(s) dropped: "
                            "the queue was full", severity="warning", dropped_total=dropped)
                    self._dropped_recorded = dropped
                for ch in self.channels:
                    self._deliver(ch, alert)
            except Exception:  # noqa: BLE001 - a bug here must not kill the worker silently
                log.exception("alert delivery crashed")
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _deliver(self, ch: Channel, alert: Alert) -> None:
        health = self._health[ch.name]
        attempt = 0
        retrying = Retrying(
            stop=stop_after_attempt(self.attempts) | stop_when_event_set(self._stopping),
            wait=wait_exponential(multiplier=self.backoff_s, max=self.max_backoff_s),
            retry=retry_if_exception_type(_Retryable), sleep=self._stopping.wait, reraise=True)
        try:
            for attempt_ctx in retrying:
                with attempt_ctx:
                    attempt += 1
                    ch.deliver(alert)
        except DeliveryError as e:
            health.failed += 1
            reason = redact_text(str(e))
            if not health.failing:
                health.failing = True
                log.warning("%s alerts are failing (%s); they keep being tried, this is logged "
                            "once until delivery works again", ch.name, reason)
            _record("alert.failed", f"{alert.event} via {ch.name}: {reason}", severity="warning",
                    alert_event=alert.event, channel=ch.name, attempts=attempt, error=reason)
            return
        health.sent += 1
        if health.failing:
            health.failing = False
            log.info("%s alerts are delivered again", ch.name)
        _record("alert.sent", f"{alert.event} via {ch.name}", alert_event=alert.event,
                channel=ch.name, attempts=attempt)


def _record(kind: str, message: str, **fields: Any) -> None:
    """Best effort: the black box may be absent (tests, early start) or broken."""
    try:
        from blackbox import recorder
        recorder.record(kind, SOURCE, message, **fields)
    except Exception:  # noqa: BLE001 - the recorder must never break alerting
        log.debug("could not record %s", kind, exc_info=True)
