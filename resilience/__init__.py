"""The library the bot and the watchdog stand on: error classes, breakers, retry budgets,
degradation, the kill switch, and the encrypted WAL-mode state store."""
