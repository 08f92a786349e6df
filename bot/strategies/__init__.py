"""Strategies shipped with tradeguard: ``demo`` (exercises every code path on the paper
exchange), ``sma`` (an SMA crossover for real use) and ``dip`` (buys dips with a stop and a
take-profit; shows the whole strategy API)."""
