"""Strategy loading by dotted path and file path, its errors, and the shipped strategies."""
from __future__ import annotations

import pytest

from bot.strategies.demo import LIMIT_TAG, DemoStrategy
from bot.strategies.sma import SmaCross
from bot.strategy import Cancel, MarketData, OpenOrder, Order, Target, TickContext, load_strategy, to_actions
from tradeguard.exceptions import StrategyLoadError

USER_STRATEGY = """
from bot.strategy import Order, Strategy

class Buyer(Strategy):
    def __init__(self, amount=0.001):
        self.amount = amount

    def on_tick(self, ctx):
        return [Order(s, "buy", self.amount) for s in ctx.market]
"""


def test_load_dotted_path_with_params():
    s = load_strategy("bot.strategies.sma:SmaCross", {"fast": 3, "slow": 5})
    assert isinstance(s.instance, SmaCross) and s.instance.ohlcv_limit == 7


def test_load_file_path(tmp_path):
    f = tmp_path / "mine.py"
    f.write_text(USER_STRATEGY)
    s = load_strategy(f"{f}:Buyer", {"amount": 0.5})
    ctx = TickContext(0.0, {"BTC/USDT": MarketData("BTC/USDT", 100.0)}, {}, (), "running")
    assert to_actions(s.instance.on_tick(ctx)) == [Order("BTC/USDT", "buy", 0.5)]


@pytest.mark.parametrize("spec, words", [
    ("bot.strategies.demo", "expected 'package.module:Class'"),
    ("no_such_pkg.mod:X", "module 'no_such_pkg' not found"),
    ("/nowhere/strategy.py:X", "does not exist"),
    ("bot.strategies.demo:Nope", "has no 'Nope'"),
    ("bot.strategy:Strategy", "does not implement on_tick"),
    ("bot.strategy:MarketData", "on_tick"),
])
def test_load_errors_name_the_problem(spec, words):
    with pytest.raises(StrategyLoadError, match=words):
        load_strategy(spec)


def test_broken_file_and_bad_params(tmp_path):
    f = tmp_path / "broken.py"
    f.write_text("def (:\n")
    with pytest.raises(StrategyLoadError, match="failed to load: SyntaxError"):
        load_strategy(f"{f}:X")
    with pytest.raises(StrategyLoadError, match="strategy_params do not fit"):
        load_strategy("bot.strategies.demo:DemoStrategy", {"nope": 1})
    with pytest.raises(StrategyLoadError, match="max_quote"):
        load_strategy("bot.strategies.demo:DemoStrategy", {"max_quote": 1.0})


def test_to_actions_rejects_foreign_objects():
    with pytest.raises(TypeError, match="expected Order, Target or Cancel"):
        to_actions([{"symbol": "BTC/USDT"}])


def _ctx(now, positions=None, orders=(), price=100.0, degradation="running"):
    market = {s: MarketData(s, price) for s in ("BTC/USDT", "ETH/USDT")}
    return TickContext(now, market, positions or {}, tuple(orders), degradation)


def test_demo_buys_sells_rests_and_cancels():
    demo = DemoStrategy(interval_s=1.0, limit_probability=0.3, seed=3)
    positions: dict[str, float] = {}
    kinds = set()
    for i in range(60):
        for a in demo.on_tick(_ctx(float(i), positions)):
            assert isinstance(a, Order)
            kinds.add((a.side, a.type))
            if a.type == "market":
                delta = a.amount if a.side == "buy" else -a.amount
                positions[a.symbol] = positions.get(a.symbol, 0.0) + delta
                assert positions[a.symbol] >= -1e-12
                assert positions[a.symbol] * 100.0 <= demo.max_quote + 1e-9
    assert kinds == {("buy", "market"), ("sell", "market"), ("buy", "limit")}
    resting = OpenOrder("tg-a-1", "BTC/USDT", "buy", "limit", 0.2, 98.0, 0.0, "OPEN", "entry", 0.0, LIMIT_TAG)
    assert Cancel("tg-a-1", "demo: resting entry expired") in demo.on_tick(_ctx(100.0, orders=[resting]))


def test_demo_only_exits_when_degraded():
    demo = DemoStrategy(interval_s=0.1)
    for i in range(20):
        for a in demo.on_tick(_ctx(float(i), {"BTC/USDT": 1.0, "ETH/USDT": 1.0}, degradation="degraded")):
            assert a.side == "sell"


def _bars(closes):
    return tuple((i * 60000.0, c, c, c, c, 1.0) for i, c in enumerate(closes))


def test_sma_acts_on_crossings_only():
    s = SmaCross(fast=2, slow=4, quote_amount=100.0)

    def tick(closes):
        md = MarketData("BTC/USDT", closes[-1], ohlcv=_bars(closes + [closes[-1]]))
        return s.on_tick(TickContext(0.0, {"BTC/USDT": md}, {}, (), "running"))

    assert tick([10, 10, 10, 9, 8]) == []  # first look: fast below slow, nothing to do
    assert tick([10, 10, 9, 8, 8]) == []
    up = tick([8, 8, 8, 10, 12])
    assert up == [Target("BTC/USDT", 100.0 / 12, "sma-cross")]
    assert tick([8, 8, 10, 12, 13]) == up  # the held target, not resized at the new price
    assert tick([13, 13, 12, 10, 8]) == [Target("BTC/USDT", 0.0, "sma-cross")]
    restored = SmaCross(fast=2, slow=4)
    restored.restore(s.snapshot())
    assert restored.snapshot() == s.snapshot()


def test_demo_waits_after_its_stop_fills_before_entering_again():
    from bot.strategies.demo import DemoStrategy
    from bot.strategy import FillEvent, MarketData, Order, TickContext

    def buys(s: DemoStrategy, now: float) -> list:
        s._last_trade = float("-inf")
        ctx = TickContext(now, {"BTC/USDT": MarketData("BTC/USDT", 50000.0)}, {}, (), "running")
        return [a for a in s.on_tick(ctx) if isinstance(a, Order) and a.side == "buy"]

    s = DemoStrategy(stop_cooldown_s=60.0, limit_probability=0.0)
    s.on_fill(FillEvent("tg-tg1-9", "BTC/USDT", "sell", 0.001, 47000.0, 0.05, "USDT", "exit", 1000.0))
    assert buys(s, 1001.0)  # an ordinary exit: entries go on
    s.on_fill(FillEvent("tg-tg1-10", "BTC/USDT", "sell", 0.001, 47000.0, 0.05, "USDT", "protective", 1000.0))
    assert buys(s, 1030.0) == []  # stopped out: no entry within the cooldown
    assert buys(s, 1061.0)


def test_stop_loss_pct_is_checked_where_it_is_given():
    from bot.strategy import Order, Target

    assert Order("BTC/USDT", "buy", 0.01, stop_loss_pct=2.5).stop_loss_pct == 2.5
    assert Target("BTC/USDT", 0.01, stop_loss_pct=3).stop_loss_pct == 3
    for bad in (0, -1, 51):
        with pytest.raises(ValueError, match="stop_loss_pct"):
            Order("BTC/USDT", "buy", 0.01, stop_loss_pct=bad)
    with pytest.raises(ValueError, match="for buys"):
        Order("BTC/USDT", "sell", 0.01, stop_loss_pct=2)


def test_take_profit_pct_is_checked_like_the_stop():
    from bot.strategy import Order, Target

    assert Order("BTC/USDT", "buy", 0.01, take_profit_pct=3).take_profit_pct == 3
    assert Target("BTC/USDT", 0.01, take_profit_pct=150.0).take_profit_pct == 150.0
    for bad in (0, -1, 1001, True, "3"):
        with pytest.raises(ValueError, match="take_profit_pct"):
            Order("BTC/USDT", "buy", 0.01, take_profit_pct=bad)
        with pytest.raises(ValueError, match="take_profit_pct"):
            Target("BTC/USDT", 0.01, take_profit_pct=bad)
    with pytest.raises(ValueError, match="for buys"):
        Order("BTC/USDT", "sell", 0.01, take_profit_pct=2)


def test_position_view_falls_back_to_the_plain_amount():
    from bot.strategy import PositionView

    ctx = TickContext(0.0, {}, {"BTC/USDT": 0.5}, (), "running")  # the old 5-field form still works
    assert ctx.position("BTC/USDT") == PositionView(0.5)
    assert ctx.position("ETH/USDT") == PositionView(0.0)
    assert ctx.balances == {}
    view = PositionView(0.5, 100.0, 5.0, 95.0, 103.0)
    assert TickContext(0.0, {}, {"BTC/USDT": 0.5}, (), "running", {"BTC/USDT": view}).position(
        "BTC/USDT") is view


def _dip_ctx(last, position=None, balances=None, orders=(), degradation="running"):
    from bot.strategy import Balance

    md = MarketData("BTC/USDT", last, ohlcv=_bars([100.0] * 21 + [last]))
    views = {"BTC/USDT": position} if position else {}
    return TickContext(0.0, {"BTC/USDT": md}, {"BTC/USDT": position.amount} if position else {},
                       tuple(orders), degradation, views,
                       {"USDT": Balance(*balances)} if balances else {})


def test_dip_buyer_sizes_from_the_free_balance_and_sets_stop_and_take_profit():
    from bot.strategies.dip import DipBuyer
    from bot.strategy import PositionView

    s = DipBuyer(dip_pct=2.0, lookback=20, quote_amount=50.0, max_free_fraction=0.25,
                 stop_loss_pct=4.0, take_profit_pct=3.0)
    assert s.on_tick(_dip_ctx(99.0, balances=(1000.0, 1000.0))) == []  # not a dip
    assert s.on_tick(_dip_ctx(97.0)) == []  # no balance read yet: no guess
    [buy] = s.on_tick(_dip_ctx(97.0, balances=(100.0, 1000.0)))  # 25 % of what is free: 25
    assert (buy.side, buy.stop_loss_pct, buy.take_profit_pct) == ("buy", 4.0, 3.0)
    assert buy.amount == pytest.approx(25.0 / 97.0)
    [buy] = s.on_tick(_dip_ctx(97.0, balances=(1000.0, 1000.0)))
    assert buy.amount == pytest.approx(50.0 / 97.0)
    assert s.on_tick(_dip_ctx(97.0, balances=(1000.0, 1000.0), degradation="degraded")) == []
    held = PositionView(0.5, 100.0, -1.5, 96.0, 103.0)
    assert s.on_tick(_dip_ctx(97.0, held, (1000.0, 1000.0))) == []  # never adds
    assert s.on_tick(_dip_ctx(95.0, held, (1000.0, 1000.0))) == []  # the stop on the exchange acts
    bare = PositionView(0.5, 100.0, -2.5, None, 103.0)
    assert s.on_tick(_dip_ctx(97.0, bare, (1000.0, 1000.0))) == []  # above where the stop would be
    [sell] = s.on_tick(_dip_ctx(95.0, bare, (1000.0, 1000.0)))  # no stop and below it: sells itself
    assert (sell.side, sell.amount) == ("sell", 0.5)
    s.on_start(_dip_ctx(95.0, held))
    assert s.taken_over == {"BTC/USDT": held}
    s.on_stop()
    with pytest.raises(ValueError, match="take_profit_pct"):
        DipBuyer(take_profit_pct=0)


def test_dip_buyer_loads_from_the_configuration():
    loaded = load_strategy("bot.strategies.dip:DipBuyer", {"dip_pct": 3.0, "take_profit_pct": 5.0})
    assert (loaded.instance.dip_pct, loaded.instance.take_profit_pct) == (3.0, 5.0)
    with pytest.raises(StrategyLoadError, match="lookback"):
        load_strategy("bot.strategies.dip:DipBuyer", {"lookback": 40})
