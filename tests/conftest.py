"""Test configuration: every test is bounded (pytest-timeout in setup.cfg), seeded, and runs in
its own temp dirs. Fixture modules ``tests/helpers/fixtures_*.py`` are loaded as plugins."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.proc import free_port

pytest_plugins = sorted(
    f"tests.helpers.{p.stem}" for p in (Path(__file__).parent / "helpers").glob("fixtures_*.py"))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir(mode=0o700)
    return d


@pytest.fixture
def logs_dir(tmp_path: Path) -> Path:
    d = tmp_path / "logs"
    d.mkdir()
    return d


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's kill switch, config or credentials."""
    import os
    for k in list(os.environ):
        if k.startswith("TRADEGUARD_") or k in ("BOT_EMERGENCY_SHUTDOWN", "CREDENTIALS_DIRECTORY",
                                                "NOTIFY_SOCKET", "WATCHDOG_USEC"):
            monkeypatch.delenv(k, raising=False)
    monkeypatch.chdir(tmp_path)
