"""Report: summaries of the incident log for IT (`aupguard report`, and `--requests`).

Everything here reads untrusted text (URLs, user agents, search terms) back
out of the database, so each output escapes for its reader through report/output.py:
the terminal table and every CSV cell show control characters as escapes (`visible`:
a `cat` of an export obeys no terminal escape and no right-to-left override), CSV
cells that a spreadsheet would run as formulas are neutralised (`safe_cell`, OWASP
"CSV injection"), JSON is JSON (its \\u escapes already keep them out).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any, TextIO

import sqlite_utils
from rich.console import Console
from rich.text import Text

from aupguard.base.vocabulary import CIRCUMVENTION_CATEGORIES
from aupguard.report.output import Section, visible, write_csv, write_table
from aupguard.store.db import utc_iso
from aupguard.store.feedback import ensure_schema

BLOCKING_ACTIONS = ("block", "refuse")
UNAUTHENTICATED = "(unauthenticated)"
TOP_HOSTS = 20


@dataclass(frozen=True, slots=True)
class Report:
    since: datetime | None
    until: datetime | None
    generated_at: datetime
    sections: dict[str, Section]  # in display order
    zone: tzinfo = UTC  # the school's: the table's header shows its times there, like the rows

    def __getitem__(self, name: str) -> list[dict[str, Any]]:
        return self.sections[name].rows


# (name, title, columns, SQL). {where} is filled with fixed conditions only; values are parameters.
_QUERIES = (
    (
        "by_category",
        "Blocked by category",
        ("category", "blocked"),
        # An attempt to get round the filter counts under what it carried (its category, as the block
        # page said: adult hidden in a web proxy is adult) and under circumvention too.
        """SELECT category, COUNT(*) AS blocked FROM (
             SELECT COALESCE(category, '(none)') AS category FROM incidents WHERE {where}
             UNION ALL
             SELECT 'circumvention' FROM incidents
             WHERE {where} AND technique IS NOT NULL AND category IS NOT 'circumvention')
           GROUP BY category ORDER BY blocked DESC, category""",
    ),
    (
        "by_day",
        "Blocked by day",
        ("local_date", "blocked"),
        "SELECT local_date, COUNT(*) AS blocked FROM incidents WHERE {where} GROUP BY local_date ORDER BY local_date",
    ),
    (
        "by_user",
        "Blocked by user",
        ("username", "user_group", "blocked"),
        # Grouped by the stored name, so a user actually called "(unauthenticated)" stays apart.
        """SELECT COALESCE(username, :unauthenticated) AS username, user_group, COUNT(*) AS blocked
           FROM incidents WHERE {where} GROUP BY incidents.username, user_group
           ORDER BY blocked DESC, username, user_group""",
    ),
    (
        "by_client_ip",
        "Blocked by client address",
        ("client_ip", "blocked"),
        """SELECT client_ip, COUNT(*) AS blocked FROM incidents WHERE {where}
           GROUP BY client_ip ORDER BY blocked DESC, client_ip""",
    ),
    (
        "top_hosts",
        f"Most blocked hosts (top {TOP_HOSTS})",
        ("host", "blocked"),
        """SELECT host, COUNT(*) AS blocked FROM incidents WHERE {where}
           GROUP BY host ORDER BY blocked DESC, host LIMIT :top_hosts""",
    ),
    (
        "anonymizer_attempts",
        "Anonymizer, VPN, DoH and remote-access attempts",
        (
            "ref",
            "local_date",
            "local_time",
            "username",
            "client_ip",
            "user_group",
            "url",
            "inner_url",
            "category",
            "technique",
        ),
        # Every action, not only blocks: an allowed VPN is still an attempt IT must see.
        """SELECT ref, local_date, local_time, username, client_ip, user_group, url, inner_url,
                  (SELECT value FROM json_each(incidents.categories)
                   WHERE value IN (SELECT value FROM json_each(:circumvention)) ORDER BY key LIMIT 1) AS category,
                  technique
           FROM incidents
           WHERE {period} AND EXISTS (SELECT 1 FROM json_each(incidents.categories)
                                      WHERE value IN (SELECT value FROM json_each(:circumvention)))
           ORDER BY ts_utc, ref""",
    ),
)


def check_period(since: datetime | None, until: datetime | None) -> None:
    """Raise ValueError unless since < until (when both are given): a reversed period is a mistake, not "none"."""
    if since is not None and until is not None and since >= until:
        raise ValueError(f"the period's start ({since.isoformat()}) is not before its end ({until.isoformat()})")


def period_condition(since: datetime | None, until: datetime | None) -> tuple[str, dict[str, str]]:
    """The SQL condition for since <= ts_utc < until, and its parameters."""
    check_period(since, until)
    conditions, params = ["1 = 1"], {}
    if since is not None:
        conditions.append("ts_utc >= :since")
        params["since"] = utc_iso(since)
    if until is not None:
        conditions.append("ts_utc < :until")
        params["until"] = utc_iso(until)
    return " AND ".join(conditions), params


def build_report(
    db: sqlite_utils.Database, since: datetime | None, until: datetime | None, zone: tzinfo = UTC
) -> Report:
    """Every section for incidents with since <= ts_utc < until (either bound may be None).

    `zone` is the school's time zone, in which the table's header shows the period.
    """
    period, bounds = period_condition(since, until)
    params: dict[str, object] = bounds | {
        "blocking": json.dumps(BLOCKING_ACTIONS),
        "circumvention": json.dumps(CIRCUMVENTION_CATEGORIES),
        "unauthenticated": UNAUTHENTICATED,
        "top_hosts": TOP_HOSTS,
    }
    blocked = f"{period} AND action IN (SELECT value FROM json_each(:blocking))"
    sections = {}
    for name, title, columns, sql in _QUERIES:
        rows = list(db.query(sql.format(where=blocked, period=period), params))
        sections[name] = Section(name, title, columns, rows)
    return Report(since, until, datetime.now(UTC), sections, zone)


def build_requests_report(
    db: sqlite_utils.Database, since: datetime | None, until: datetime | None, zone: tzinfo = UTC
) -> Report:
    """The block page's "report a mistake" requests made since <= ts_utc < until, with their incidents."""
    ensure_schema(db)
    period, params = period_condition(since, until)
    period = period.replace("ts_utc", "r.ts_utc")
    columns = ("ref", "requested_utc", "kind", "reason", "local_date", "local_time", "username", "client_ip",
               "user_group", "url", "inner_url", "category")  # fmt: skip
    rows = list(
        db.query(
            f"""SELECT r.ref, r.ts_utc AS requested_utc, r.kind, r.reason, i.local_date, i.local_time, i.username,
                       i.client_ip, i.user_group, i.url, i.inner_url, i.category
                FROM incident_requests r LEFT JOIN incidents i ON i.ref = r.ref
                WHERE {period} ORDER BY r.ts_utc, r.ref""",
            params,
        )
    )
    section = Section("requests", "Reported mistakes and review requests", columns, rows)
    return Report(since, until, datetime.now(UTC), {"requests": section}, zone)


# -- output ---------------------------------------------------------------------------------------


def _when(value: datetime | None) -> str | None:
    return utc_iso(value) if value is not None else None


def _local(value: datetime, zone: tzinfo) -> str:
    """A header time as the rows show theirs: the school's local date and time, with its offset."""
    return value.astimezone(zone).isoformat(sep=" ", timespec="seconds")


def render_table(report: Report, console: Console) -> None:
    zone = report.zone
    since = _local(report.since, zone) if report.since else "the beginning"
    until = _local(report.until, zone) if report.until else "now"
    generated = _local(report.generated_at, zone)
    header = f"aupguard incidents from {since} until {until} ({zone}; generated {generated})"
    console.print(Text(visible(header)), soft_wrap=True)  # one line, however narrow the terminal
    for section in report.sections.values():
        if not section.rows:
            console.print(Text(f"{section.title}: no incidents"))
            continue
        write_table(section, console)  # wider than the terminal: one block per incident


def render_csv(report: Report, out: TextIO) -> None:
    """One CSV: a `section` column, then the union of all sections' columns (empty where not theirs)."""
    columns: list[str] = []
    for section in report.sections.values():
        columns += [column for column in section.columns if column not in columns]
    rows = ({"section": section.name, **row} for section in report.sections.values() for row in section.rows)
    write_csv(["section", *columns], rows, out)


def render_json(report: Report, out: TextIO) -> None:
    document: dict[str, Any] = {
        "since": _when(report.since),
        "until": _when(report.until),
        "generated_at": _when(report.generated_at),
    }
    document |= {name: section.rows for name, section in report.sections.items()}
    json.dump(document, out, indent=2)
    out.write("\n")
