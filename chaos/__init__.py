"""The chaos harness: runs the whole system on the paper exchange, breaks it on purpose, and
proves from the exchange's ledger and state.db that nothing was lost or duplicated."""
