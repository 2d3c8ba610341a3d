"""Options and helpers the command groups share: files, times, who is asking, output format."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import click
import sqlite_utils

from aupguard.base import paths
from aupguard.core.engine import Engine
from aupguard.core.identify import Identity
from aupguard.report.output import FORMATS, OutputError, check_output
from aupguard.report.summary import check_period
from aupguard.runtime import load_engine
from aupguard.store.exemptions import DEFAULT_STORE, open_store
from aupguard.store.incidents import open_db

F = TypeVar("F", bound=Callable[..., Any])

policy_option = click.option(
    "--config",
    "policy_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=paths.DEFAULT_POLICY,
    show_default=True,
    help="Policy file (YAML).",
)
index_option = click.option(
    "--index",
    "index_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=paths.DEFAULT_INDEX,
    show_default=True,
    help="Compiled list index (`aupguard lists compile`); compiled first when missing or out of date.",
)
db_option = click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    default=paths.DEFAULT_DB,
    show_default=True,
    help="SQLite incident database.",
)
store_option = click.option(
    "--store",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The exemption store [default: DATA/exemptions.db, where the proxy looks].",
)


ROWS_AS = "table: for people (one line per row when piped); csv: for spreadsheets; json: one object per line."


def format_option(default: str = "table", help: str = ROWS_AS) -> Callable[[F], F]:
    """--format for a command that prints rows: report/output.py renders each format the same for every command."""
    return click.option("--format", "fmt", type=click.Choice(FORMATS), default=default, show_default=True, help=help)


class WhenType(click.ParamType):
    """A date or date-time; without a zone it is the school's local time (the policy's timezone)."""

    name = "DATE[THH:MM]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            self.fail(
                f"{value!r} is not an ISO-8601 date or date-time (e.g. 2026-11-23 or 2026-11-23T09:30)", param, ctx
            )


WHEN = WhenType()


def aware(when: datetime | None, zone: ZoneInfo) -> datetime | None:
    if when is None:
        return None
    return when if when.tzinfo else when.replace(tzinfo=zone)


def period(since: datetime | None, until: datetime | None, zone: ZoneInfo) -> tuple[datetime | None, datetime | None]:
    """--since and --until as aware times in the school's zone; a reversed period is a usage error (exit 2)."""
    since, until = aware(since, zone), aware(until, zone)
    try:
        check_period(since, until)
    except ValueError as exc:
        raise click.BadParameter(f"--since must be before --until: {exc}", param_hint="'--since'") from exc
    return since, until


def _check_out(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """Every --out: "-" is standard output; an existing target that is not a regular file is refused (exit 2)."""
    if value is not None:
        try:
            check_output(value)
        except OutputError as exc:
            raise click.BadParameter(str(exc), ctx, param) from exc
    return value


def out_option(help: str, required: bool = False) -> Callable[[F], F]:
    return click.option(
        "--out",
        type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
        required=required,
        default=None,
        callback=_check_out,
        help=f"{help} (mode 0600; - for standard output).",
    )


def who_and_when(command: F) -> F:
    """The options that say who is asking and when, shared by `classify` and `explain`."""
    for option in reversed(
        [
            click.option("--group", default=None, help="Decide as this group (skips identification)."),
            click.option("--user", default=None, help="Decide as this proxy-authenticated user."),
            click.option(
                "--ip", "client_ip", default="0.0.0.0", show_default=True, help="Client address to identify by."
            ),
            click.option(
                "--at",
                "at",
                type=WHEN,
                default=None,
                help="Decide as at this time (school local unless a zone is given).",
            ),
        ]
    ):
        command = option(command)
    return command


def decider(
    policy_path: Path,
    group: str | None,
    user: str | None,
    client_ip: str,
    at: datetime | None,
    index_path: Path | None = paths.DEFAULT_INDEX,
    store: Path | None = None,
) -> tuple[Engine, Identity, datetime | None]:
    """(engine, identity, when) for `classify` and `explain`; `when` is None when --at was not given.

    The engine is the one `run` builds (runtime.load_engine): the lists served from the compiled index
    (compiled first if out of date), with the exemptions and overrides active in the store at --at.
    """
    if group and user:
        raise click.UsageError("--group and --user are alternatives: give one")
    engine = load_engine(policy_path, index_path=index_path, exemptions_path=store or DEFAULT_STORE, when=at)
    if group and group not in engine.policy.groups:
        raise click.BadParameter(f"unknown group {group!r}; the policy has {', '.join(engine.policy.groups)}")
    identity = Identity(None, client_ip, group, "given with --group") if group else engine.identify(user, client_ip)
    return engine, identity, aware(at, engine.policy.timezone)


def open_existing_db(db: Path) -> sqlite_utils.Database:
    """The incident database at `db`; a mistyped --db is an error, not a new empty database."""
    if not db.is_file():
        raise click.ClickException(f"no incident database at {db} (has the proxy run? see --db)")
    return open_db(db)


def exemption_store(path: Path | None) -> sqlite_utils.Database:
    return open_store(path or DEFAULT_STORE)
