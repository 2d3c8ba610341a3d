"""The `aupguard` command: the group of every command, and the one place errors become a message.

Each command group lives in a module of its own (run, classify + explain, lists, report + dsl-export
+ purge, exempt, classroom), sharing cli/options.py; this module puts them under one group.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from aupguard.base.errors import AupguardError
from aupguard.cli.classify import classify, explain
from aupguard.cli.classroom import classroom
from aupguard.cli.exempt import exempt
from aupguard.cli.lists import lists
from aupguard.cli.report import dsl_export_command, purge, report
from aupguard.cli.run import run

# What a command may fail with that a person can act on: said in one line (exit 1), never a traceback.
# Usage mistakes (a bad option, a reversed period, an --out that is not a regular file) stay click's
# own usage errors (exit 2). OSError is a file the command could not read or write, said as the
# system says it.
EXPLAINED_ERRORS: tuple[type[Exception], ...] = (AupguardError, OSError)


class AupguardGroup(click.Group):
    """The top group: runs every (sub)command inside the one error handler."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            # The reader went away (`aupguard report | head`): stop quietly, as Unix tools do, and keep
            # Python from complaining again when it flushes standard output at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(1)
        except EXPLAINED_ERRORS as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=AupguardGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="aupguard")
def main() -> None:
    """aupguard: the web filter that keeps a school's Acceptable Use Policy.

    \b
    Start the proxy:            aupguard run
    Ask what it would do:       echo https://example.com/ | aupguard classify --group pupils
    ... and why:                aupguard explain https://www.instagram.com/ --group pupils --at 2026-11-23T10:15
    Let a group reach a site:   aupguard exempt add --group pupils --site scratch.mit.edu \\
                                    --until +1h --by "Ms Khan" --reason "coding lesson"
    Lock one room for an exam:  aupguard classroom set --ip 10.20.4.0/24 --mode block-all \\
                                    --until +50m --by "Mr Jones" --reason "mock exam"
    Update the UT1 lists:       aupguard lists update ut1
    Summarise blocked attempts: aupguard report --since 2026-11-01
    Hand flagged ones to DSL:   aupguard dsl-export --out reports/dsl.csv
    Any listing for a program:  aupguard exempt list --format csv   (or json: one object per line)

    \b
    Environment:
      AUPGUARD_DATA  where incidents, exemptions, imported lists and the index go [default: var/]
      AUPGUARD_HOME  where the bundled config/ and blocklists/ are [default: the checkout]
    Run `aupguard COMMAND --help` for a command's options and examples.
    """


for command in (run, classify, explain, report, dsl_export_command, purge, lists, exempt, classroom):
    main.add_command(command)
