"""`python -m aupguard.cli`: the same as the `aupguard` command."""

from aupguard.cli.main import main

main()
