"""The trading bot: strategy, risk limits, order lifecycle, reconciliation (DESIGN.md)."""
