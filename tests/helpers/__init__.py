"""Shared test helpers: free ports, deadline polling, child processes. Fixture modules named
``fixtures_*.py`` in this folder are loaded by tests/conftest.py automatically."""
