"""The authenticated health endpoint the watchdog serves (DESIGN.md, "Health endpoint")."""
