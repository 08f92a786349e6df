"""Error classification: what a failed exchange call means (DESIGN.md, "Error classes").

``classify(exc, state_changing)`` returns one of:

* ``RETRYABLE`` — a read may be retried with backoff within the retry budget;
* ``UNKNOWN_OUTCOME`` — a state-changing call whose effect is unknown (timeout, network
  error, 5xx, unreadable 2xx): never a failure; resolve by fetching by client order id;
* ``NOT_RETRYABLE`` — fail the read / reject the intent with the reason;
* ``DUPLICATE`` — the exchange already has an order with this client order id: fetch it.
"""
from __future__ import annotations

import enum

import ccxt


class ErrorClass(str, enum.Enum):
    RETRYABLE = "retryable"
    UNKNOWN_OUTCOME = "unknown_outcome"
    NOT_RETRYABLE = "not_retryable"
    DUPLICATE = "duplicate"


RATE_LIMIT_TYPES: tuple[type[BaseException], ...] = (ccxt.RateLimitExceeded, ccxt.DDoSProtection)


class UnreadableResponse(ccxt.BadResponse):
    """A 2xx whose body does not describe the order (e.g. no id): the outcome is unknown."""


def is_duplicate(exc: BaseException) -> bool:
    """The exchange says an order with this client order id already exists."""
    if isinstance(exc, ccxt.DuplicateOrderId):
        return True
    return isinstance(exc, ccxt.ExchangeError) and "duplicate order" in str(exc).lower()


def is_rate_limit(exc: BaseException) -> bool:
    return isinstance(exc, RATE_LIMIT_TYPES)


def classify(exc: BaseException, state_changing: bool) -> ErrorClass:
    """Map an exception from an exchange call to what the caller must do."""
    if is_duplicate(exc):
        return ErrorClass.DUPLICATE if state_changing else ErrorClass.NOT_RETRYABLE
    # OperationFailed covers NetworkError (timeouts, 5xx, rate limits, nonce) and BadResponse
    # (a 2xx whose body could not be read). On a state-changing call the exchange may have acted.
    if isinstance(exc, (ccxt.OperationFailed, TimeoutError, ConnectionError)):
        return ErrorClass.UNKNOWN_OUTCOME if state_changing else ErrorClass.RETRYABLE
    return ErrorClass.NOT_RETRYABLE
