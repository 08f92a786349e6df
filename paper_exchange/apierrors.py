"""The Binance error responses the paper exchange gives, built in one place so codes never drift.

Each maps to the ccxt exception the real Binance answer produces (ccxt/binance.py ``exceptions``).
"""
from __future__ import annotations

from tradeguard.exceptions import PaperApiError

CLIENT_ID_PATTERN = r"^[\.A-Z\:/a-z0-9_-]{1,36}$"
NUMBER_PATTERN = r"^([0-9]{1,20})(\.[0-9]{1,20})?$"


def unknown_error() -> PaperApiError:
    return PaperApiError(-1000, "An unknown error occurred while processing the request.", 500)


def mandatory(name: str) -> PaperApiError:
    return PaperApiError(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")


def one_of(a: str, b: str) -> PaperApiError:
    return PaperApiError(-1102, f"Param '{a}' or '{b}' must be sent, but both were empty/null!")


def illegal(name: str, legal: str) -> PaperApiError:
    return PaperApiError(-1100, f"Illegal characters found in parameter '{name}'; legal range is '{legal}'.")


def invalid_value(name: str) -> PaperApiError:
    return PaperApiError(-1130, f"Data sent for parameter '{name}' is not valid.")


def not_required(name: str) -> PaperApiError:
    return PaperApiError(-1106, f"Parameter '{name}' sent when not required.")


def duplicate_param(name: str) -> PaperApiError:
    return PaperApiError(-1101, f"Duplicate values for parameter '{name}'.")


def too_large(limit: int) -> PaperApiError:
    return PaperApiError(-1101, f"Request body too large (limit {limit} bytes).", 413)


def invalid_symbol() -> PaperApiError:
    return PaperApiError(-1121, "Invalid symbol.")


def invalid_interval() -> PaperApiError:
    return PaperApiError(-1120, "Invalid interval.")


def invalid_side() -> PaperApiError:
    return PaperApiError(-1117, "Invalid side.")


def invalid_type() -> PaperApiError:
    return PaperApiError(-1116, "Invalid orderType.")


def invalid_tif() -> PaperApiError:
    return PaperApiError(-1115, "Invalid timeInForce.")


def filter_failure(name: str) -> PaperApiError:
    return PaperApiError(-1013, f"Filter failure: {name}")


def bad_api_key() -> PaperApiError:
    return PaperApiError(-2015, "Invalid API-key, IP, or permissions for action.", 401)


def api_key_format() -> PaperApiError:
    return PaperApiError(-2014, "API-key format invalid.", 401)


def bad_signature() -> PaperApiError:
    return PaperApiError(-1022, "Signature for this request is not valid.")


def outside_recv_window() -> PaperApiError:
    return PaperApiError(-1021, "Timestamp for this request is outside of the recvWindow.")


def ahead_of_server(ms: int) -> PaperApiError:
    return PaperApiError(-1021, f"Timestamp for this request was {ms}ms ahead of the server's time.")


def recv_window_too_large() -> PaperApiError:
    return PaperApiError(-1131, "recvWindow must be less than 60000")


def insufficient_balance() -> PaperApiError:
    return PaperApiError(-2010, "Account has insufficient balance for requested action.")


def duplicate_order() -> PaperApiError:
    return PaperApiError(-2010, "Duplicate order sent.")


def would_take() -> PaperApiError:
    return PaperApiError(-2010, "Order would immediately match and take.")


def would_trigger() -> PaperApiError:
    return PaperApiError(-2010, "Order would immediately trigger.")


def too_much_weight(limit: int) -> PaperApiError:
    return PaperApiError(-1003, f"Too much request weight used; current limit is {limit} request weight "
                         "per 1 MINUTE. Please use WebSocket Streams for live updates to avoid polling "
                         "the API.", 429)


def too_many_orders(limit: int, interval: str) -> PaperApiError:
    return PaperApiError(-1015, f"Too many new orders; current limit is {limit} orders per {interval}.", 429)


def banned(until_ms: int) -> PaperApiError:
    return PaperApiError(-1003, f"Way too much request weight used; IP banned until {until_ms}. Please use "
                         "WebSocket Streams for live updates to avoid bans.", 418)


def no_such_order() -> PaperApiError:
    return PaperApiError(-2013, "Order does not exist.")


def unknown_order() -> PaperApiError:
    return PaperApiError(-2011, "Unknown order sent.")


# Binance answers unknown paths with a bare 404; -1 is not in ccxt's table, so it reads as ExchangeError.
def not_found(method: str, path: str) -> PaperApiError:
    return PaperApiError(-1, f"Unknown endpoint: {method} {path}", 404)


def method_not_allowed(method: str, path: str) -> PaperApiError:
    return PaperApiError(-1, f"Method {method} is not allowed for {path}.", 405)
