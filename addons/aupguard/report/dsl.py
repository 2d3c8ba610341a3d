"""The DSL export: flagged incidents as a CSV file for the Designated Safeguarding Lead (`aupguard dsl-export`)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import sqlite_utils

from aupguard.base.vocabulary import SEVERITIES
from aupguard.report.output import private_text_file, write_csv
from aupguard.report.summary import period_condition

DSL_COLUMNS = (
    "ref", "date", "time", "username", "client_ip", "group", "url", "inner_url", "categories", "severity",
    "technique", "search_term",
)  # fmt: skip


def dsl_export(
    db: sqlite_utils.Database,
    out: Path | str,
    since: datetime | None,
    until: datetime | None,
    min_severity: str = "high",
) -> int:
    """Write incidents of `min_severity` or worse, oldest first, as CSV for the DSL; return the row count.

    UTF-8 with a byte order mark, so Excel shows pupils' names correctly. `out` "-" is standard output.
    """
    if min_severity not in SEVERITIES:
        raise ValueError(f"min_severity must be one of {SEVERITIES}, not {min_severity!r}")
    period, params = period_condition(since, until)
    params["severities"] = json.dumps(SEVERITIES[SEVERITIES.index(min_severity) :])
    rows = db.query(
        f"""SELECT ref, local_date AS date, local_time AS time, username, client_ip, user_group AS "group",
                   url, inner_url, categories, severity, technique, search_term
            FROM incidents
            WHERE {period} AND severity IN (SELECT value FROM json_each(:severities))
            ORDER BY ts_utc, ref""",
        params,
    )
    count = 0

    def flattened(row: dict) -> dict:
        nonlocal count
        count += 1
        return row | {"categories": "; ".join(json.loads(row["categories"]))}

    with private_text_file(out, encoding="utf-8-sig") as handle:
        write_csv(DSL_COLUMNS, map(flattened, rows), handle)
    return count
