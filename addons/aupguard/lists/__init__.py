"""Lists: the block and allow lists on disk, their importers, and the compiled index the proxy serves."""
