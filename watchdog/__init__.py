"""The watchdog: a separate process that judges the bot from its pid file and heartbeat,
restarts it through its manager, and closes its positions when it cannot be brought back."""
