"""Reports for IT and the DSL export, on crafted incidents in a real SQLite file."""

from __future__ import annotations

import csv
import io
import json
import os
import stat
import unicodedata
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from aupguard.report.dsl import DSL_COLUMNS, dsl_export
from aupguard.report.output import OutputError, private_text_file, safe_cell, visible
from aupguard.report.summary import (
    build_report,
    build_requests_report,
    render_csv,
    render_json,
    render_table,
)
from aupguard.store.incidents import open_db
from conftest import incident_at, write_incidents

DAY1 = datetime(2025, 3, 10, 9, 0, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)
DAY3 = DAY1 + timedelta(days=2)
TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def crafted() -> list:
    return [
        # day 1: alice x2 adult, bob x1 gambling, an unauthenticated device x1 adult
        incident_at(DAY1, ref="AG-D1AA-0001", username="alice", host="porn.example", categories=("adult",)),
        incident_at(DAY1 + timedelta(minutes=1), ref="AG-D1AA-0002", username="alice", host="porn.example", categories=("adult",)),
        incident_at(DAY1 + timedelta(minutes=2), ref="AG-D1BB-0003", username="bob", client_ip="10.0.0.6",
           host="bet.example", categories=("gambling",)),
        incident_at(DAY1 + timedelta(minutes=3), ref="AG-D1UN-0004", username=None, client_ip="10.0.0.9",
           group="guests", host="porn.example", categories=("adult",)),
        # day 2: bob through a web proxy (blocked), alice's flagged self-harm search (refused)
        incident_at(DAY2, ref="AG-D2BB-0005", username="bob", client_ip="10.0.0.6", host="hide.example",
           url="http://hide.example/browse.php?u=http%3A%2F%2Fbet.example", categories=("anonymizers", "circumvention", "gambling"),
           technique="nested-url", inner_url="http://bet.example", severity="high"),
        incident_at(DAY2 + timedelta(hours=1), ref="AG-D2AA-0006", username="alice", host="search.example",
           categories=("self_harm",), action="refuse", severity="critical", search_term="how to hurt myself"),
        # day 3: a teacher's VPN allowed (an attempt all the same, but not a block); one more adult
        incident_at(DAY3, ref="AG-D3TT-0007", username="mr.smith", group="staff", client_ip="10.0.1.2",
           host="vpn.example", categories=("vpn",), action="allow", severity="high"),
        incident_at(DAY3 + timedelta(hours=2), ref="AG-D3AA-0008", username="alice", host="porn.example",
           categories=("adult",), severity="high"),
    ]  # fmt: skip


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "incidents.db"
    write_incidents(path, crafted())
    return open_db(path)


def test_sections_count_blocks(db):
    report = build_report(db, None, None)
    assert report["by_category"] == [
        {"category": "adult", "blocked": 4},
        {"category": "anonymizers", "blocked": 1},
        {"category": "circumvention", "blocked": 1},  # the web-proxy attempt counts under both
        {"category": "gambling", "blocked": 1},
        {"category": "self_harm", "blocked": 1},
    ]
    assert report["by_day"] == [
        {"local_date": "2025-03-10", "blocked": 4},
        {"local_date": "2025-03-11", "blocked": 2},
        {"local_date": "2025-03-12", "blocked": 1},
    ]
    assert report["by_user"] == [
        {"username": "alice", "user_group": "pupils", "blocked": 4},
        {"username": "bob", "user_group": "pupils", "blocked": 2},
        {"username": "(unauthenticated)", "user_group": "guests", "blocked": 1},
    ]
    assert report["by_client_ip"] == [
        {"client_ip": "10.0.0.5", "blocked": 4},
        {"client_ip": "10.0.0.6", "blocked": 2},
        {"client_ip": "10.0.0.9", "blocked": 1},
    ]
    assert report["top_hosts"][0] == {"host": "porn.example", "blocked": 4}
    assert "vpn.example" not in {row["host"] for row in report["top_hosts"]}  # allowed, not blocked


def test_every_circumvention_attempt_is_listed_with_its_circumvention_category(db):
    attempts = build_report(db, None, None)["anonymizer_attempts"]
    assert [(a["ref"], a["category"], a["technique"]) for a in attempts] == [
        ("AG-D2BB-0005", "anonymizers", "nested-url"),
        ("AG-D3TT-0007", "vpn", None),
    ]
    assert attempts[0] == {
        "ref": "AG-D2BB-0005", "local_date": "2025-03-11", "local_time": "09:00:00", "username": "bob",
        "client_ip": "10.0.0.6", "user_group": "pupils", "url": "http://hide.example/browse.php?u=http%3A%2F%2Fbet.example",
        "inner_url": "http://bet.example", "category": "anonymizers", "technique": "nested-url",
    }  # fmt: skip


def test_since_is_inclusive_and_until_exclusive(db):
    report = build_report(db, DAY2, DAY3)
    assert report["by_day"] == [{"local_date": "2025-03-11", "blocked": 2}]
    assert [a["ref"] for a in report["anonymizer_attempts"]] == ["AG-D2BB-0005"]
    # bounds in another zone mean the same instants
    bst = timezone(timedelta(hours=1))
    assert build_report(db, DAY2.astimezone(bst), DAY3.astimezone(bst))["by_day"] == report["by_day"]
    assert build_report(db, DAY3 + timedelta(hours=2), None)["by_day"] == [{"local_date": "2025-03-12", "blocked": 1}]
    assert build_report(db, None, DAY1 + timedelta(minutes=1))["by_user"] == [
        {"username": "alice", "user_group": "pupils", "blocked": 1}
    ]
    with pytest.raises(ValueError, match="timezone"):
        build_report(db, datetime(2025, 3, 10), None)


def test_top_hosts_keeps_the_twenty_most_blocked(tmp_path):
    path = tmp_path / "incidents.db"
    write_incidents(path, [incident_at(DAY1, host=f"h{n:02d}.example") for n in range(25) for _ in range(n + 1)])
    top = build_report(open_db(path), None, None)["top_hosts"]
    assert [row["host"] for row in top] == [f"h{n:02d}.example" for n in range(24, 4, -1)]
    assert top[0]["blocked"] == 25


def test_hostile_values_are_data_not_sql(tmp_path):
    path = tmp_path / "incidents.db"
    write_incidents(
        path,
        [
            incident_at(DAY1, username="x' OR '1'='1", host="a.example"),
            incident_at(DAY1, username="bob", host="b.example"),
        ],
    )
    users = {row["username"] for row in build_report(open_db(path), None, None)["by_user"]}
    assert users == {"x' OR '1'='1", "bob"}


# -- renderers ------------------------------------------------------------------------------------


def test_csv_parses_back_with_formulas_neutralised(tmp_path):
    path = tmp_path / "incidents.db"
    write_incidents(
        path, [*crafted(), incident_at(DAY1, username='=HYPERLINK("http://evil","x")', client_ip="10.0.0.7")]
    )
    report = build_report(open_db(path), None, None)
    out = io.StringIO(newline="")
    render_csv(report, out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue(), newline="")))
    assert len(rows) == sum(len(s.rows) for s in report.sections.values())
    assert list(rows[0]) == [
        "section", "category", "blocked", "local_date", "username", "user_group", "client_ip", "host", "ref",
        "local_time", "url", "inner_url", "technique",
    ]  # fmt: skip
    by_category = [r for r in rows if r["section"] == "by_category"]
    assert by_category[0]["category"] == "adult" and by_category[0]["blocked"] == "5" and by_category[0]["url"] == ""
    users = {r["username"] for r in rows if r["section"] == "by_user"}
    assert '\'=HYPERLINK("http://evil","x")' in users
    assert not any(cell.startswith(TRIGGERS) for row in rows for cell in row.values())


def test_json_parses_back(db):
    report = build_report(db, DAY1, None)
    out = io.StringIO()
    render_json(report, out)
    document = json.loads(out.getvalue())
    assert document["since"] == "2025-03-10T09:00:00.000000Z" and document["until"] is None
    assert datetime.fromisoformat(document["generated_at"]).tzinfo is not None
    for name, section in report.sections.items():
        assert document[name] == section.rows


def test_table_shows_every_section_and_never_obeys_hostile_text(tmp_path):
    path = tmp_path / "incidents.db"
    write_incidents(
        path, [incident_at(DAY1, url="http://x.example/\x1b]0;pwned\x07[bold red]hi[/]", categories=("vpn",))]
    )
    buffer = io.StringIO()
    render_table(build_report(open_db(path), None, None), Console(file=buffer, width=300, no_color=True))
    shown = buffer.getvalue()
    assert "\x1b" not in shown and "\x07" not in shown
    assert "\\x1b]0;pwned\\x07[bold red]hi[/]" in shown  # escaped, and markup shown literally
    for title in ("Blocked by category", "Blocked by day", "Blocked by user", "Blocked by client address",
                  "Most blocked hosts", "Anonymizer, VPN"):  # fmt: skip
        assert title in shown


@pytest.mark.parametrize("width", [80, 100])
def test_a_section_too_wide_for_the_terminal_is_shown_one_block_per_incident(db, width):
    buffer = io.StringIO()
    render_table(build_report(db, None, None), Console(file=buffer, width=width, no_color=True))
    shown = buffer.getvalue()
    # Every attempt whole, one line per field, instead of a table folded into slivers.
    assert "[1]" in shown and "[2]" in shown
    assert " url         http://hide.example/browse.php?u=http%3A%2F%2Fbet.example" in shown
    assert "┃ category " in shown  # the narrow sections stay tables
    wide = io.StringIO()
    render_table(build_report(db, None, None), Console(file=wide, width=300, no_color=True))
    assert "[1]" not in wide.getvalue() and "┃ ref " in wide.getvalue()


def test_an_empty_report_says_so(tmp_path):
    buffer = io.StringIO()
    render_table(build_report(open_db(tmp_path / "empty.db"), None, None), Console(file=buffer, width=200))
    assert buffer.getvalue().count("no incidents") == 6


# -- formula neutralisation -----------------------------------------------------------------------


@given(st.text())
def test_safe_cell_never_starts_a_formula_and_changes_nothing_else(text):
    cell = safe_cell(text)
    assert not cell.startswith(TRIGGERS)
    if visible(text).startswith(TRIGGERS):
        assert cell == "'" + visible(text)
    else:
        assert cell == visible(text)


def test_safe_cell_examples():
    assert safe_cell("=1+1") == "'=1+1"
    assert safe_cell("-2") == "'-2"
    assert safe_cell("@SUM(A1)") == "'@SUM(A1)"
    assert safe_cell("\tx") == "\\tx"  # a tab is shown, not kept: no trigger left
    assert safe_cell("plain") == "plain"
    assert safe_cell(None) == "" and safe_cell(3) == "3"


# -- DSL export -----------------------------------------------------------------------------------


def read_export(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == DSL_COLUMNS
        return list(reader)


def test_dsl_export_lists_flagged_incidents_oldest_first(db, tmp_path):
    out = tmp_path / "reports" / "dsl.csv"
    assert dsl_export(db, out, None, None) == 4
    rows = read_export(out)
    assert [r["ref"] for r in rows] == ["AG-D2BB-0005", "AG-D2AA-0006", "AG-D3TT-0007", "AG-D3AA-0008"]
    assert rows[1] == {
        "ref": "AG-D2AA-0006", "date": "2025-03-11", "time": "10:00:00", "username": "alice",
        "client_ip": "10.0.0.5", "group": "pupils", "url": "http://example.org/page", "inner_url": "",
        "categories": "self_harm",
        "severity": "critical", "technique": "", "search_term": "how to hurt myself",
    }  # fmt: skip
    assert rows[0]["categories"] == "anonymizers; circumvention; gambling"
    assert rows[0]["inner_url"] == "http://bet.example"  # what the web proxy carried, not only its encoded URL


def test_dsl_export_filters_severity_and_dates(db, tmp_path):
    out = tmp_path / "dsl.csv"
    assert dsl_export(db, out, None, None, min_severity="critical") == 1
    assert [r["ref"] for r in read_export(out)] == ["AG-D2AA-0006"]
    assert dsl_export(db, out, DAY2 + timedelta(minutes=1), DAY3 + timedelta(hours=2)) == 2
    assert [r["ref"] for r in read_export(out)] == ["AG-D2AA-0006", "AG-D3TT-0007"]
    assert dsl_export(db, out, DAY1, DAY2) == 0
    assert read_export(out) == []
    with pytest.raises(ValueError, match="min_severity"):
        dsl_export(db, out, None, None, min_severity="severe")


def test_dsl_export_neutralises_every_cell(tmp_path):
    path = tmp_path / "incidents.db"
    write_incidents(path, [incident_at(DAY1, severity="high", username="+44 7700 900000", search_term="=cmd|' /C calc'!A0",
                    url="http://x.example/", user_agent="-", technique="@nested")])  # fmt: skip
    out = tmp_path / "dsl.csv"
    dsl_export(open_db(path), out, None, None)
    (row,) = read_export(out)
    assert row["username"] == "'+44 7700 900000"
    assert row["search_term"] == "'=cmd|' /C calc'!A0"
    assert row["technique"] == "'@nested"


def test_dsl_export_is_private_and_replaces_the_old_file(db, tmp_path):
    old_umask = os.umask(0)
    try:
        out = tmp_path / "new-dir" / "dsl.csv"
        dsl_export(db, out, None, None)
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
        assert stat.S_IMODE(out.parent.stat().st_mode) == 0o700
        os.chmod(out, 0o644)
        out.write_text("stale")
        dsl_export(db, out, None, None, min_severity="critical")
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
        assert len(read_export(out)) == 1
        assert sorted(p.name for p in out.parent.iterdir()) == ["dsl.csv"]  # no temporary file left
    finally:
        os.umask(old_umask)


def test_a_failed_write_leaves_the_old_file_whole(tmp_path):
    out = tmp_path / "report.csv"
    out.write_text("the previous report\n")
    with pytest.raises(RuntimeError), private_text_file(out) as handle:
        handle.write("half a new report")
        raise RuntimeError("disk full")
    assert out.read_text() == "the previous report\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.csv"]


# -- control characters (issue 9.10) ---------------------------------------------------------------

HOSTILE = "ali\x1b]0;pwned\x07ce\u202egpj.exe\x9b31m\x00\x7f"
SHOWN = "ali\\x1b]0;pwned\\x07ce\\u202egpj.exe\\x9b31m\\x00\\x7f"  # written out by hand, not by visible()
# Independent of report/output.py's pattern: every control (Cc), surrogate (Cs), line/paragraph separator and
# bidi formatting character a terminal or viewer would obey rather than show.
BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def obeyed(text: str) -> list[str]:
    return [c for c in text if unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") or c in BIDI]


def test_every_export_and_table_shows_control_characters_instead_of_obeying_them(tmp_path):
    from aupguard.store.feedback import ensure_schema, record

    path = tmp_path / "incidents.db"
    write_incidents(path, [incident_at(DAY1, ref="AG-HOST-0001", username=HOSTILE, severity="high", categories=("vpn",),
                    url=f"http://x.example/{HOSTILE}", inner_url=f"http://y.example/{HOSTILE}", technique="nested")])  # fmt: skip
    db = open_db(path)
    ensure_schema(db)
    record(db, "AG-HOST-0001", "review", "it is for \u202eschool\u202c work\nhonest", when=DAY1)
    dsl = tmp_path / "dsl.csv"
    dsl_export(db, dsl, None, None)
    report_csv, report_json, requests_csv, table = io.StringIO(), io.StringIO(), io.StringIO(), io.StringIO()
    render_csv(build_report(db, None, None), report_csv)
    render_json(build_report(db, None, None), report_json)
    render_csv(build_requests_report(db, None, None), requests_csv)
    render_table(build_requests_report(db, None, None), Console(file=table, width=400, no_color=True))
    outputs = {
        "dsl.csv": dsl.read_text(encoding="utf-8-sig"), "report.csv": report_csv.getvalue(),
        "report.json": report_json.getvalue(), "requests.csv": requests_csv.getvalue(), "table": table.getvalue(),
    }  # fmt: skip
    for name, text in outputs.items():
        assert obeyed(text.replace("\r\n", "").replace("\n", "")) == [], name  # only the format's own line ends
    (row,) = read_export(dsl)
    assert row["username"] == SHOWN and row["url"].endswith(SHOWN) and row["inner_url"].endswith(SHOWN)
    users = [r["username"] for r in csv.DictReader(io.StringIO(outputs["report.csv"], newline="")) if r["username"]]
    assert users and set(users) == {SHOWN}
    assert json.loads(outputs["report.json"])["by_user"][0]["username"] == HOSTILE  # JSON escapes; data kept whole
    (request,) = csv.DictReader(io.StringIO(outputs["requests.csv"], newline=""))
    assert request["inner_url"] == f"http://y.example/{SHOWN}"  # the carried URL beside the request too
    assert request["reason"] == "it is for \\u202eschool\\u202c work\\nhonest"
    assert "it is for \\u202eschool\\u202c work\\nhonest" in outputs["table"]


@given(st.text())
def test_visible_and_safe_cell_leave_nothing_a_terminal_would_obey(text):
    assert obeyed(visible(text)) == [] and obeyed(safe_cell(text)) == []


@given(st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters="".join(BIDI))))
def test_visible_changes_no_ordinary_text(text):
    assert visible(text) == text  # backslashes too: a DOMAIN\user name reads as typed


def test_visible_examples():
    assert visible("SCHOOL\\alice") == "SCHOOL\\alice"
    assert visible("a\tb\r\nc") == "a\\tb\\r\\nc"
    assert visible("\u2028\u2067\ud800") == "\\u2028\\u2067\\ud800"
    assert visible(None) == ""


# -- periods and the header (issue 10.8) -----------------------------------------------------------


def test_a_period_that_ends_before_it_starts_is_an_error_not_an_empty_report(db, tmp_path):
    for since, until in ((DAY2, DAY1), (DAY1, DAY1)):
        with pytest.raises(ValueError, match="not before its end"):
            build_report(db, since, until)
        with pytest.raises(ValueError, match="not before its end"):
            dsl_export(db, tmp_path / "dsl.csv", since, until)
    assert not (tmp_path / "dsl.csv").exists()


def test_the_table_header_shows_the_period_in_the_schools_time_zone(db):
    london = ZoneInfo("Europe/London")
    since, until = datetime(2025, 6, 1, 8, 0, tzinfo=UTC), datetime(2025, 6, 2, 7, 30, tzinfo=UTC)
    buffer = io.StringIO()
    render_table(build_report(db, since, until, london), Console(file=buffer, width=200, no_color=True))
    header = buffer.getvalue().splitlines()[0]
    assert header.startswith("aupguard incidents from 2025-06-01 09:00:00+01:00 until 2025-06-02 08:30:00+01:00")
    assert "Europe/London" in header and "Z" not in header.split("generated")[0]


# -- where an export goes (issue 10.3) -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["symlink to /dev/null", "fifo", "directory", "symlink to a file"])
def test_an_existing_target_that_is_not_a_regular_file_is_refused_and_left_alone(db, tmp_path, kind):
    target = tmp_path / "out.csv"
    if kind == "symlink to /dev/null":
        target.symlink_to("/dev/null")
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "directory":
        target.mkdir()
    else:
        (tmp_path / "real.csv").write_text("kept\n")
        target.symlink_to(tmp_path / "real.csv")
    before = os.lstat(target)
    with pytest.raises(OutputError, match="not a regular file"):
        dsl_export(db, target, None, None)
    with pytest.raises(OutputError, match="not a regular file"), private_text_file(target) as handle:
        handle.write("never")
    after = os.lstat(target)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)  # not replaced by a regular file
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # refused before writing anything
