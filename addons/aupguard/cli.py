"""The `aupguard` command: run the proxy, classify URLs, report and export incidents, manage lists."""

from __future__ import annotations

import json
import sys
from datetime import datetime, time, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import click

from . import paths
from .policy import PolicyError, load_policy

WEBFILTER_SCRIPT = paths.HOME / "addons" / "webfilter.py"

policy_option = click.option(
    "--config",
    "policy_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=paths.DEFAULT_POLICY,
    show_default=True,
    help="Policy file (YAML).",
)
db_option = click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    default=paths.DEFAULT_DB,
    show_default=True,
    help="SQLite incident database.",
)


class WhenType(click.ParamType):
    """A date or date-time; without a zone it is the school's local time (the policy's timezone)."""

    name = "DATE[THH:MM]"

    def convert(self, value, param, ctx):
        if isinstance(value, datetime):
            return value
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            self.fail(f"{value!r} is not an ISO-8601 date or date-time (e.g. 2026-11-23 or 2026-11-23T09:30)", param, ctx)


WHEN = WhenType()


def _aware(when: datetime | None, zone: ZoneInfo) -> datetime | None:
    if when is None:
        return None
    return when if when.tzinfo else when.replace(tzinfo=zone)


def _load_policy_or_exit(path: Path):
    try:
        return load_policy(path)
    except PolicyError as exc:
        raise click.ClickException(str(exc)) from exc


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="aupguard")
def main() -> None:
    """aupguard: the web filter that keeps a school's Acceptable Use Policy.

    \b
    Start the proxy:            aupguard run
    Ask what it would do:       echo https://example.com/ | aupguard classify --group pupils
    Summarise blocked attempts: aupguard report --since 2026-11-01
    Hand flagged ones to DSL:   aupguard dsl-export --out reports/dsl.csv
    """


@main.command()
@click.option("--listen-host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: all).")
@click.option("--listen-port", default=8080, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@policy_option
@db_option
@click.option(
    "--confdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="mitmproxy's folder for its CA certificate and key [default: ~/.mitmproxy].",
)
@click.option(
    "--proxyauth",
    metavar="SPEC",
    default=None,
    help="Ask clients to log in: '@/path/htpasswd', 'ldap[s]:server:dn:password:base' (mitmproxy's proxyauth).",
)
@click.option("--set", "extra", multiple=True, metavar="OPTION=VALUE", help="Any other mitmproxy option (repeatable).")
def run(listen_host, listen_port, policy_path, db, confdir, proxyauth, extra) -> None:
    """Start the filtering proxy (mitmdump with the aupguard addon).

    Point devices at LISTEN-HOST:LISTEN-PORT as their HTTP and HTTPS proxy.
    A bad policy stops the start with the file, line and reason.
    """
    from mitmproxy.tools.main import mitmdump

    _load_policy_or_exit(policy_path)  # fail before mitmproxy starts, with a clear message
    args = mitmdump_args(listen_host, listen_port, policy_path, db, confdir, proxyauth, extra)
    sys.exit(mitmdump(args) or 0)


def mitmdump_args(listen_host, listen_port, policy_path, db, confdir, proxyauth, extra) -> list[str]:
    args = [
        "--listen-host", listen_host,
        "--listen-port", str(listen_port),
        "-s", str(WEBFILTER_SCRIPT),
        "--set", f"aupguard_policy={Path(policy_path).resolve()}",
        "--set", f"aupguard_db={Path(db).resolve()}",
        # Blocked sites are answered without contacting them: connect upstream only when needed.
        "--set", "connection_strategy=lazy",
        # One line per flow would flood the terminal of a school gateway; incidents go to the DB.
        "--set", "flow_detail=0",
    ]  # fmt: skip
    if confdir:
        args += ["--set", f"confdir={confdir}"]
    if proxyauth:
        args += ["--set", f"proxyauth={proxyauth}"]
    for item in extra:
        args += ["--set", item]
    return args


@main.command()
@policy_option
@click.option("--group", default=None, help="Decide as this group (skips identification).")
@click.option("--user", default=None, help="Decide as this proxy-authenticated user.")
@click.option("--ip", "client_ip", default="0.0.0.0", show_default=True, help="Client address to identify by.")
@click.option("--at", "at", type=WHEN, default=None, help="Decide as at this time (school local unless a zone is given).")
def classify(policy_path, group, user, client_ip, at) -> None:
    """Read URLs from stdin, one per line; write one JSON verdict per line.

    \b
    {"url": ..., "action": "block"|"allow", "categories": [...], "group": ..., "rule": ...}
    A line that is not a URL gets "action": "error" with a reason, and reading goes on.
    """
    from .engine import Engine
    from .identify import Identity
    from .lists import ListError
    from .urlnorm import URLError, normalize_url

    if group and user:
        raise click.UsageError("--group and --user are alternatives: give one")
    try:
        engine = Engine.from_policy_file(policy_path)
    except (PolicyError, ListError) as exc:
        raise click.ClickException(str(exc)) from exc
    if group and group not in engine.policy.groups:
        raise click.BadParameter(f"unknown group {group!r}; the policy has {', '.join(engine.policy.groups)}")
    identity = Identity(None, client_ip, group, "given with --group") if group else engine.identify(user, client_ip)
    _ = _aware(at, engine.policy.timezone)
    out = sys.stdout
    for raw in sys.stdin:
        line = raw.strip()
        if not line:
            continue
        try:
            url = normalize_url(line)
        except URLError as exc:
            out.write(json.dumps({"url": line[:2048], "action": "error", "error": str(exc)}) + "\n")
            continue
        verdict = engine.check(url, identity)
        out.write(
            json.dumps(
                {
                    "url": line[:2048],
                    "action": verdict.decision.action,
                    "categories": list(verdict.categories),
                    "group": identity.group,
                    "rule": verdict.decision.rule or None,
                }
            )
            + "\n"
        )


@main.command()
@db_option
@policy_option
@click.option("--since", type=WHEN, default=None, help="From this date/time (inclusive).")
@click.option("--until", type=WHEN, default=None, help="Up to this date/time (exclusive).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write to a file (mode 0600).")
def report(db, policy_path, since, until, fmt, out) -> None:
    """Summarise blocked attempts for the IT department.

    By category, by day, by user and by client address, the most blocked
    hosts, and every anonymizer/VPN/DoH attempt listed one by one.
    """
    from rich.console import Console

    from .incidents import open_db
    from .report import build_report, render_csv, render_json, render_table, private_text_file

    zone = _load_policy_or_exit(policy_path).timezone
    if not db.exists():
        raise click.ClickException(f"no incident database at {db} (has the proxy run? see --db)")
    summary = build_report(open_db(db), _aware(since, zone), _aware(until, zone))
    if out is None:
        if fmt == "table":
            render_table(summary, Console())
        else:
            (render_csv if fmt == "csv" else render_json)(summary, sys.stdout)
        return
    with private_text_file(out) as handle:
        if fmt == "table":
            render_table(summary, Console(file=handle, width=120, no_color=True))
        else:
            (render_csv if fmt == "csv" else render_json)(summary, handle)
    click.echo(f"wrote {out}")


@main.command("dsl-export")
@db_option
@policy_option
@click.option("--since", type=WHEN, default=None, help="From this date/time (inclusive).")
@click.option("--until", type=WHEN, default=None, help="Up to this date/time (exclusive).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="CSV file to write (mode 0600).")
@click.option("--min-severity", type=click.Choice(["high", "critical"]), default="high", show_default=True)
def dsl_export_command(db, policy_path, since, until, out, min_severity) -> None:
    """Export flagged incidents (severity high or critical) as CSV for the DSL.

    Cells a spreadsheet would run as formulas are neutralised; the file is
    readable by its owner only. Hand it over securely and delete it after use.
    """
    from .incidents import open_db
    from .report import dsl_export

    zone = _load_policy_or_exit(policy_path).timezone
    if not db.exists():
        raise click.ClickException(f"no incident database at {db}")
    count = dsl_export(open_db(db), out, _aware(since, zone), _aware(until, zone), min_severity=min_severity)
    click.echo(f"wrote {count} flagged incident(s) to {out}")


@main.command()
@db_option
@policy_option
@click.option("--days", type=click.IntRange(1), default=None, help="Keep this many days [default: the policy's records.retention_days].")
def purge(db, policy_path, days) -> None:
    """Delete incidents older than the retention period (UK GDPR: no longer than necessary)."""
    from .incidents import open_db, purge as purge_incidents

    days = days or _load_policy_or_exit(policy_path).retention_days
    removed = purge_incidents(open_db(db), days, now=datetime.now(timezone.utc))
    click.echo(f"deleted {removed} incident(s) older than {days} days")


@main.group()
def lists() -> None:
    """Import block lists (UT1 / squidGuard format)."""


@lists.command("import")
@click.argument("source", type=click.Choice(["ut1"]))
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--dest",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where imported lists go [default: DATA/lists/<source>].",
)
def import_lists(source, path, dest) -> None:
    """Import the UT1 lists from a folder or a blacklists.tar.gz.

    The lists keep UT1's category folders; config/ut1-mapping.yaml says which
    aupguard category each one counts as (edit it, no re-import needed).
    """
    from .lists import ListError, import_ut1

    dest = dest or paths.IMPORTED_LISTS / source
    try:
        result = import_ut1(path, dest)
    except (ListError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"imported {result} into {dest}")


if __name__ == "__main__":  # pragma: no cover
    main()
