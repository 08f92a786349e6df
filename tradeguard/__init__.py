"""tradeguard: run a trading bot unattended and keep it from hurting its owner."""
__version__ = "0.1.0"
