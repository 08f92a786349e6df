"""Fault injection for the paper exchange's API (``POST /_paper/faults``).

A fault matches a method (or ``*``) and a path (``*`` = every API path, or a glob such as
``/api/v3/*``) and fires ``times`` times (omitted = once; ``null`` = until cleared), each match with
``probability`` (seeded per fault, so a run is repeatable). Actions:

* ``respond`` — answer ``status`` (default 503) with ``body`` (a JSON value or raw text);
* ``delay`` — wait ``seconds``, then serve the request normally;
* ``hang`` — hold the request until the client gives up (or ``seconds``, at most 60), then drop it;
* ``reset`` — close the connection without an answer;
* ``apply_then_fail`` — serve the request (an order is placed), then fail as ``then`` says:
  ``respond`` (default; ``status``/``body``), ``reset`` or ``hang``;
* ``invisible`` — serve the request normally, but the order it creates stays invisible to
  ``GET /order``, ``openOrders``, ``allOrders``, ``myTrades`` and cancels (-2013/-2011) for
  ``seconds`` (eventual visibility).

A fault with ``params`` (an object of strings) matches only requests whose query or form
parameters carry those values, e.g. ``{"type": "MARKET", "side": "SELL"}``: a venue that
refuses market sells while it takes the stop orders on the same path.

``delay`` holds an accepted request *after* its signature and recvWindow were checked, on its way
to the matching engine, which checks the recvWindow again. ``delay`` and ``apply_then_fail`` also
take ``invisible_s``: the order they create is hidden that long (a lost answer followed by
"Order does not exist").
"""
from __future__ import annotations

import fnmatch
import random
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from tradeguard.exceptions import PaperApiError

ACTIONS = ("respond", "delay", "hang", "reset", "apply_then_fail", "invisible")
THEN = ("respond", "reset", "hang")
MAX_SECONDS = 60.0
_KEYS = {"method", "path", "action", "times", "probability", "status", "body", "seconds", "then",
         "invisible_s", "params"}


def _bad(msg: str) -> PaperApiError:
    return PaperApiError(-1130, f"fault: {msg}")


@dataclass
class Fault:
    id: int
    method: str
    path: str
    action: str
    times: int | None
    probability: float
    status: int
    body: Any
    seconds: float
    then: str
    invisible_s: float = 0.0
    params: dict[str, str] | None = None
    hits: int = 0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def matches(self, method: str, path: str, fields: Callable[[], Mapping[str, str]]) -> bool:
        if self.method not in ("*", method) or \
                not (self.path == "*" or fnmatch.fnmatchcase(path, self.path)):
            return False
        if not self.params:
            return True
        got = fields()
        return all(got.get(k) == v for k, v in self.params.items())

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "method": self.method, "path": self.path, "action": self.action,
                "times": self.times, "probability": self.probability, "status": self.status,
                "body": self.body, "seconds": self.seconds, "then": self.then,
                "invisible_s": self.invisible_s, "params": self.params, "hits": self.hits}


def parse_fault(spec: Any, fault_id: int, seed: int) -> Fault:
    """Validate a fault spec (a JSON object); raise -1130 naming the bad field."""
    if not isinstance(spec, dict):
        raise _bad("the body must be a JSON object")
    unknown = set(spec) - _KEYS
    if unknown:
        raise _bad(f"unknown field(s) {sorted(unknown)}; allowed: {sorted(_KEYS)}")
    action = spec.get("action")
    if action not in ACTIONS:
        raise _bad(f"'action' = {action!r}: must be one of {', '.join(ACTIONS)}")
    method = str(spec.get("method", "*")).upper()
    if method not in ("*", "GET", "POST", "PUT", "DELETE"):
        raise _bad(f"'method' = {method!r}: must be GET, POST, PUT, DELETE or *")
    path = spec.get("path", "*")
    if not isinstance(path, str) or not (path == "*" or path.startswith("/")) or path.startswith("/_paper"):
        raise _bad(f"'path' = {path!r}: must be '*' or an API path such as /api/v3/order")
    times = spec.get("times", 1)
    if times is not None and (isinstance(times, bool) or not isinstance(times, int) or times < 1):
        raise _bad(f"'times' = {times!r}: must be a positive integer or null")
    prob = spec.get("probability", 1.0)
    if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0 < prob <= 1:
        raise _bad(f"'probability' = {prob!r}: must be a number in (0, 1]")
    status = spec.get("status", 503)
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise _bad(f"'status' = {status!r}: must be an HTTP status code")
    seconds = spec.get("seconds", MAX_SECONDS if action == "hang" else None)
    if action in ("delay", "invisible") and seconds is None:
        raise _bad(f"'{action}' needs 'seconds'")
    seconds = MAX_SECONDS if seconds is None else seconds
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= MAX_SECONDS:
        raise _bad(f"'seconds' = {seconds!r}: must be a number from 0 to {MAX_SECONDS:g}")
    then = spec.get("then", "respond")
    then = "respond" if then == "status" else then
    if then not in THEN:
        raise _bad(f"'then' = {then!r}: must be one of {', '.join(THEN)}")
    invisible = spec.get("invisible_s", seconds if action == "invisible" else 0)
    if action not in ("delay", "apply_then_fail", "invisible") and "invisible_s" in spec:
        raise _bad("'invisible_s' only applies to delay, apply_then_fail and invisible")
    if isinstance(invisible, bool) or not isinstance(invisible, (int, float)) or not 0 <= invisible <= MAX_SECONDS:
        raise _bad(f"'invisible_s' = {invisible!r}: must be a number from 0 to {MAX_SECONDS:g}")
    params = spec.get("params")
    if params is not None and (not isinstance(params, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in params.items())):
        raise _bad(f"'params' = {params!r}: must be an object of strings, such as "
                   '{"type": "MARKET", "side": "SELL"}')
    return Fault(fault_id, method, path, action, times, float(prob), status, spec.get("body", ""),
                 float(seconds), then, float(invisible), params or None, rng=random.Random(f"{seed}:fault:{fault_id}"))


class FaultBook:
    """The active faults, in the order they were added. Thread-safe."""

    def __init__(self, seed: int):
        self.seed = seed
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._next_id = 1

    def add(self, spec: Any) -> Fault:
        with self._lock:
            fault = parse_fault(spec, self._next_id, self.seed)
            self._next_id += 1
            self._faults.append(fault)
            return fault

    def views(self) -> list[dict[str, Any]]:
        with self._lock:
            return [f.view() for f in self._faults]

    def clear(self) -> int:
        with self._lock:
            n = len(self._faults)
            self._faults.clear()
            return n

    def take(self, method: str, path: str,
             fields: Callable[[], Mapping[str, str]] = lambda: {}) -> Fault | None:
        """The first fault that matches and fires for this request (uses up one of its times).
        ``fields()`` gives the request's parameters, read only for a fault with ``params``."""
        if not self._faults:  # the common case costs one check
            return None
        with self._lock:
            for f in self._faults:
                if not f.matches(method, path, fields) or f.rng.random() >= f.probability:
                    continue
                f.hits += 1
                if f.times is not None:
                    f.times -= 1
                    if f.times == 0:
                        self._faults.remove(f)
                return f
        return None
