"""A local exchange that speaks the Binance spot REST API (with fault injection) for paper trading."""
