"""The order machinery the bot and the watchdog share: the ccxt exchange client and its per-venue
capability table, the order lifecycle (intent → exchange → fills), risk limits, the runtime that
binds them to the resilience manager and the state store. Imports neither ``bot`` nor
``watchdog`` (import-linter contracts in setup.cfg)."""
