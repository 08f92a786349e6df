"""Strategies shipped with tradeguard: ``demo`` (exercises every code path on the paper
exchange) and ``sma`` (an SMA crossover for real use)."""
