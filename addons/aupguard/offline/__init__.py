"""Offline tooling, run by `aupguard lists ...` and at start, never at request time: the list importers, the index compiler and `lists update`."""
