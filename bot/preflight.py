"""What the bot checks before it starts, callable without starting it (``tradeguard config check``).

Each check raises a :class:`~tradeguard.exceptions.UserError` whose message names the key and
what to do. None of them writes anything: no field key, no paper credentials, no state.db.
"""
from __future__ import annotations

import os
from typing import Mapping

from bot.strategy import LoadedStrategy, load_strategy
from tradeguard.config import Config


def check_strategy(cfg: Config) -> LoadedStrategy:
    """Import and construct the configured strategy (missing file, syntax error, wrong params)."""
    return load_strategy(cfg.bot.strategy, cfg.bot.strategy_params)


def check_exchange(cfg: Config, environ: Mapping[str, str] | None = None) -> str:
    """The exchange id is 'paper' or a ccxt id, and the credentials it needs are there.

    Returns a one-line description of the exchange client the bot would build.
    """
    environ = os.environ if environ is None else environ
    from trading.stops import stop_policy

    stop_policy(cfg)  # stops asked for on a venue that has none: refused by name
    if cfg.exchange.id == "paper":
        from trading.paper_credentials import read_credentials

        read_credentials(cfg.runtime, environ)  # a bad file is an error; none is created here
        return f"paper exchange at {cfg.paper.host}:{cfg.paper.port}"
    from trading.exchange import build_exchange

    build_exchange(cfg, role="check", environ=environ)  # constructs the client; sends nothing
    return f"{cfg.exchange.id} ({'sandbox' if cfg.exchange.sandbox else 'live'}), API key found"
