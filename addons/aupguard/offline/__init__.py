"""Offline tooling: list importers, the index compiler and `lists update`.

Run by `aupguard lists ...` commands, and by `runtime.load_engine` at start when the
index is missing or stale; never by a request. `lists/` never imports this package.
"""
