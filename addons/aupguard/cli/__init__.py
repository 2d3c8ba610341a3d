"""The `aupguard` command."""
