"""The price feed: deterministic random walk, CSV replay, candles and klines."""
from __future__ import annotations

from decimal import Decimal

import pytest

from paper_exchange.markets import MARKETS, market_for
from paper_exchange.prices import HISTORY_MINUTES, INTERVALS_MS, MIN_BARS, MINUTE_MS, PriceFeed, load_csv_series
from tradeguard.exceptions import ConfigError, PaperApiError

T0 = 1_800_000_000_000 - 1_800_000_000_000 % (7 * 24 * 60 * MINUTE_MS)  # aligned to every interval


def feed(seed: int = 7, **kw) -> PriceFeed:
    return PriceFeed(MARKETS, seed=seed, volatility=0.001, tick_s=0.5, now_ms=T0, **kw)


def walk(f: PriceFeed, steps: int) -> list[Decimal]:
    return [f.step(T0 + i * 500)["BTCUSDT"] for i in range(steps)]


def test_walk_is_deterministic_per_seed_and_resumable() -> None:
    a, b, c = feed(), feed(), feed(seed=8)
    assert walk(a, 50) == walk(b, 50) != walk(c, 50)
    # resuming from a saved state continues the same path
    full = feed()
    path = walk(full, 40)
    half = feed()
    walk(half, 20)
    resumed = feed(state={k: v for k, v in half.state.items()})
    assert [resumed.step(T0 + (20 + i) * 500)["BTCUSDT"] for i in range(20)] == path[20:]
    assert all(p == MARKETS["BTCUSDT"].round_price(p) for p in path)


def test_history_backfill_and_kline_aggregation() -> None:
    f = feed()
    rows = f.klines("BTCUSDT", "1m", None, None, 1000)[-HISTORY_MINUTES:]
    assert rows[-1][4] == "60000.00000000"  # the history ends at the start price
    assert [r[0] for r in rows] == [T0 - (HISTORY_MINUTES - i) * MINUTE_MS for i in range(HISTORY_MINUTES)]
    five = f.klines("BTCUSDT", "5m", None, None, 1000)[-(HISTORY_MINUTES // 5):]
    first5 = rows[:5]
    assert five[0][1] == first5[0][1] and five[0][4] == first5[-1][4]
    assert Decimal(five[0][2]) == max(Decimal(r[2]) for r in first5)
    assert Decimal(five[0][5]) == sum(Decimal(r[5]) for r in first5)
    assert f.klines("BTCUSDT", "1m", rows[10][0], rows[12][0], 1000) == rows[10:13]
    assert f.klines("BTCUSDT", "1m", None, None, 3) == rows[-3:]
    with pytest.raises(PaperApiError) as ei:
        f.klines("BTCUSDT", "1s", None, None, 10)
    assert ei.value.code == -1120


@pytest.mark.parametrize("interval", ["1m", "5m", "1h", "1d", "1w"])
def test_every_interval_serves_at_least_1000_contiguous_bars(interval) -> None:
    f, g = feed(), feed()
    rows = f.klines("BTCUSDT", interval, None, None, 1000)
    assert len(rows) == MIN_BARS == 1000
    size = INTERVALS_MS[interval]
    assert all(b[0] - a[0] == size for a, b in zip(rows, rows[1:]))  # no gap before the real ones
    assert all(Decimal(r[3]) <= min(Decimal(r[1]), Decimal(r[4])) <= Decimal(r[2]) for r in rows)
    assert rows == g.klines("BTCUSDT", interval, None, None, 1000)  # deterministic per seed
    older = f.klines("BTCUSDT", interval, rows[0][0], rows[9][0], 1000)
    assert older == rows[:10]  # startTime/endTime reach the synthesised history too


def test_steps_build_the_current_candle() -> None:
    f = feed()
    f.set_price("ETHUSDT", Decimal("3100"), T0 + 1000)
    f.set_price("ETHUSDT", Decimal("2900"), T0 + 2000)
    f.set_price("ETHUSDT", Decimal("3000.5"), T0 + 3000)
    c = f.current_candle("ETHUSDT")
    assert (c.open_time, c.high, c.low, c.close) == (T0, Decimal("3100"), Decimal("2900"), Decimal("3000.5"))
    t = f.ticker_24h(MARKETS["ETHUSDT"], T0 + 4000, Decimal("0.001"))
    assert t["lastPrice"] == "3000.50000000" and Decimal(t["bidPrice"]) < Decimal(t["askPrice"])


def test_csv_replay_with_and_without_symbol_column(tmp_path) -> None:
    shared = tmp_path / "shared.csv"
    shared.write_text("timestamp,open,high,low,close,volume\n1,1,1,1,100,5\n2,1,1,1,110,5\n3,1,1,1,99,5\n")
    series = load_csv_series(shared, MARKETS.values())
    assert series["BTCUSDT"] == [Decimal("60000.00"), Decimal("66000.00"), Decimal("59400.00")]
    assert series["ETHUSDT"][1] == Decimal("3300.00")
    f = feed(series=series)
    assert [f.step(T0 + i)["BTCUSDT"] for i in range(4)] == [Decimal("66000.00"), Decimal("59400.00"),
                                                             Decimal("60000.00"), Decimal("66000.00")]
    per = tmp_path / "per.csv"
    per.write_text("symbol,timestamp,close\nETH/USDT,1,2000.123\nETHUSDT,2,2001\n")
    assert load_csv_series(per, MARKETS.values()) == {"ETHUSDT": [Decimal("2000.12"), Decimal("2001.00")]}
    for text in ("timestamp,close\n", "timestamp,open\n1,2\n", "close\n-5\n", "close\nnan\n"):
        shared.write_text(text)
        with pytest.raises(ConfigError, match="prices_csv"):
            load_csv_series(shared, MARKETS.values())
    with pytest.raises(ConfigError, match="cannot be read"):
        load_csv_series(tmp_path / "missing.csv", MARKETS.values())


@pytest.mark.parametrize("otype, qty, price, failure", [
    ("LIMIT", "0.001", "60000.005", "PRICE_FILTER"),
    ("LIMIT", "0.0010001", "60000", "LOT_SIZE"),
    ("MARKET", "100.5", None, "MARKET_LOT_SIZE"),
    ("MARKET", "0.00005", None, "NOTIONAL"),
    ("LIMIT", "200", "60000", "NOTIONAL"),  # above maxNotional
])
def test_filters(otype, qty, price, failure) -> None:
    m = market_for("BTC/USDT")
    with pytest.raises(PaperApiError, match=f"Filter failure: {failure}"):
        m.check(otype, Decimal(qty), Decimal(price) if price else None, Decimal("60000"))
    m.check("LIMIT", Decimal("0.001"), Decimal("60000.01"), Decimal("60000"))  # a valid one passes
