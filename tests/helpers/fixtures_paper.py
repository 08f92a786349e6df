"""Fixtures: a real paper exchange process per test (``tradeguard paper-exchange`` on a free port).

``paper_exchange`` — started with the default ``[paper]`` settings; ``paper_exchange_factory`` —
``make(**paper_settings)`` for other settings (``tick_s``, ``fee_asset``, ``prices_csv``...).
Both return :class:`paper_exchange.control.PaperExchange`: ``.url .port .data_dir .logs_dir .api_key
.secret .env .config_file .client() .ledger() .balances() .add_fault(**spec) .clear_faults()
.set_price(symbol, price) .pause() .resume() .deposit(asset, amount) .restart() .stop()``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import pytest

from paper_exchange.control import PaperExchange
from tests.helpers.proc import free_port, spawn, stop


def _spawn(argv: Sequence[str], env: Mapping[str, str], log: Path):
    return spawn(argv, env=env, log=log)


def start_paper_exchange(root: Path, **paper: Any) -> PaperExchange:
    """A started paper exchange under ``root`` with these ``[paper]`` settings (stop it yourself)."""
    return PaperExchange.create(root, free_port(), paper=paper, launch=_spawn, terminate=stop).start()


@pytest.fixture
def paper_exchange_factory(tmp_path: Path) -> Iterator[Callable[..., PaperExchange]]:
    started: list[PaperExchange] = []

    def make(**paper: Any) -> PaperExchange:
        px = start_paper_exchange(tmp_path / f"paper{len(started)}", **paper)
        started.append(px)
        return px

    yield make
    for px in started:
        px.stop()


@pytest.fixture
def paper_exchange(paper_exchange_factory: Callable[..., PaperExchange]) -> PaperExchange:
    return paper_exchange_factory()
