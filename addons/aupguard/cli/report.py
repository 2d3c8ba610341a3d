"""`aupguard report`, `dsl-export` and `purge`: what the incident log says, and keeping it no longer than needed."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from aupguard.cli.options import WHEN, db_option, format_option, open_existing_db, out_option, period, policy_option
from aupguard.config.loader import load_policy
from aupguard.report.dsl import dsl_export
from aupguard.report.output import STDOUT, private_text_file, table_console
from aupguard.report.summary import build_report, build_requests_report, render_csv, render_json, render_table
from aupguard.store.incidents import purge as purge_incidents


@click.command()
@db_option
@policy_option
@click.option("--since", type=WHEN, default=None, help="From this date/time (inclusive).")
@click.option("--until", type=WHEN, default=None, help="Up to this date/time (exclusive).")
@format_option(help="table: for people (one line per row when piped); csv: for spreadsheets; json: one document.")
@out_option("Write to a file")
@click.option(
    "--requests", "requests", is_flag=True, help='List the block page\'s "report a mistake" requests instead.'
)
def report(
    db: Path,
    policy_path: Path,
    since: datetime | None,
    until: datetime | None,
    fmt: str,
    out: Path | None,
    requests: bool,
) -> None:
    """Summarise blocked attempts for the IT department.

    By category, by day, by user and by client address, the most blocked
    hosts, and every anonymizer/VPN/DoH attempt listed one by one.

    \b
    --format table  one table per section; piped or into a file, one line per row
    --format csv    one CSV, a `section` column first (for a spreadsheet)
    --format json   one document: "since", "until", "generated_at" and each section by name
    """
    zone = load_policy(policy_path).timezone
    since, until = period(since, until, zone)
    build = build_requests_report if requests else build_report
    summary = build(open_existing_db(db), since, until, zone)
    if out is None:
        if fmt == "table":
            render_table(summary, table_console())
        else:
            (render_csv if fmt == "csv" else render_json)(summary, sys.stdout)
        return
    with private_text_file(out) as handle:
        if fmt == "table":
            render_table(summary, table_console(handle))
        else:
            (render_csv if fmt == "csv" else render_json)(summary, handle)
    click.echo(f"wrote {out}", err=str(out) == STDOUT)


@click.command("dsl-export")
@db_option
@policy_option
@click.option("--since", type=WHEN, default=None, help="From this date/time (inclusive).")
@click.option("--until", type=WHEN, default=None, help="Up to this date/time (exclusive).")
@out_option("CSV file to write", required=True)
@click.option("--min-severity", type=click.Choice(["high", "critical"]), default="high", show_default=True)
def dsl_export_command(
    db: Path, policy_path: Path, since: datetime | None, until: datetime | None, out: Path, min_severity: str
) -> None:
    """Export flagged incidents (severity high or critical) as CSV for the DSL.

    Cells a spreadsheet would run as formulas are neutralised; the file is
    readable by its owner only. Hand it over securely and delete it after use.
    """
    zone = load_policy(policy_path).timezone
    since, until = period(since, until, zone)
    count = dsl_export(open_existing_db(db), out, since, until, min_severity=min_severity)
    click.echo(f"wrote {count} flagged incident(s) to {out}", err=str(out) == STDOUT)


@click.command()
@db_option
@policy_option
@click.option(
    "--days",
    type=click.IntRange(1),
    default=None,
    help="Keep this many days [default: the policy's records.retention_days].",
)
def purge(db: Path, policy_path: Path, days: int | None) -> None:
    """Delete incidents older than the retention period (UK GDPR: no longer than necessary)."""
    days = days or load_policy(policy_path).retention_days
    removed = purge_incidents(open_existing_db(db), days, now=datetime.now(UTC))
    click.echo(f"deleted {removed} incident(s) older than {days} days")
