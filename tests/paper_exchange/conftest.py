"""One paper exchange per test module for the read-mostly tests (prices do not move: tick_s=3600);
tests that need a fresh account use the function-scoped ``paper_exchange_factory``."""
from __future__ import annotations

from typing import Iterator

import pytest

from paper_exchange.control import PaperExchange
from tests.helpers.fixtures_paper import start_paper_exchange


@pytest.fixture(scope="module")
def px(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PaperExchange]:
    ex = start_paper_exchange(tmp_path_factory.mktemp("paper"), tick_s=3600)
    yield ex
    ex.stop()


@pytest.fixture
def client(px: PaperExchange):
    ex = px.client()
    ex.load_markets()
    return ex
