"""Alerts: what ``Alerter.send`` costs the watchdog's loop, and how long delivery takes.

    .venv/bin/python -m benchmarks.bench_alerts

Prints medians (and p99 where it matters) of:
* ``send`` with a working webhook (enqueue only; delivery runs in the background);
* ``send`` when the webhook is unreachable and the queue is full (the drop-oldest path);
* send-to-received latency of one alert to a local HTTP receiver (127.0.0.1).
"""
from __future__ import annotations

import logging
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.helpers.proc import free_port
from tradeguard.config import AlertsConfig
from watchdog.alerts import Alerter

SENDS = 20000
ROUND_TRIPS = 300


def _receiver() -> tuple[ThreadingHTTPServer, threading.Event]:
    got = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server API
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()
            got.set()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, got


def _time_sends(alerter: Alerter, n: int) -> list[float]:
    took = []
    for i in range(n):
        t0 = time.perf_counter()
        alerter.send("restart", f"restarting the bot (hung) #{i}", fault="hung", old_pid=1234,
                     budget_left=4, manager="systemd")
        took.append(time.perf_counter() - t0)
    return took


def _report(name: str, samples: list[float]) -> None:
    q = statistics.quantiles(samples, n=100)
    print(f"{name:<44} median {statistics.median(samples) * 1e6:8.1f} us   "
          f"p99 {q[98] * 1e6:8.1f} us   (n={len(samples)})")


def main() -> None:
    logging.disable(logging.WARNING)  # the down webhook and the discarded backlog are expected
    server, got = _receiver()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        working = Alerter(AlertsConfig(webhook_url=url, queue_size=100000), host="bench")
        _report("send, webhook up (enqueue)", _time_sends(working, SENDS))
        working.stop(0.0)  # the deliveries are not what is measured here

        # a free port: nothing listens there
        down = Alerter(AlertsConfig(webhook_url=f"http://127.0.0.1:{free_port()}/hook",
                                    queue_size=100), host="bench", backoff_s=5.0)
        _report("send, webhook down, queue full (drop oldest)", _time_sends(down, SENDS))
        print(f"{'':<44} dropped {down.dropped} of {SENDS}")
        down.stop(0.1)

        rt = Alerter(AlertsConfig(webhook_url=url), host="bench")
        latencies = []
        for i in range(ROUND_TRIPS):
            got.clear()
            t0 = time.perf_counter()
            rt.send("restart", f"round trip {i}")
            got.wait(10)
            latencies.append(time.perf_counter() - t0)
        rt.stop()
        _report("send -> received by a local webhook", latencies)
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    main()
