"""Every listing command offers --format table|csv|json, and a table survives pipes and narrow terminals (issue 11.6)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner
from rich.console import Console

from aupguard.cli.main import main
from aupguard.report.output import Section, write_table
from conftest import incident_at, write_incidents

DAY1 = datetime(2025, 3, 10, 9, 0, tzinfo=UTC)
REASON = "coding lesson with Year 8 in room 14, agreed with the head of computing on Monday"
FORMULA = '=HYPERLINK("http://evil.test","click")'
LONG_URL = "http://hide.example/browse.php?u=http%3A%2F%2Fbet.example%2Fa-long-path%2Fthat-goes-on-and-on"


def invoke(*args: str, columns: str | None = None) -> str:
    result = CliRunner(env={"COLUMNS": columns}).invoke(main, list(args))  # CliRunner's stdout is not a terminal
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "exemptions.db"
    invoke("exempt", "add", "--store", str(path), "--group", "pupils", "--site", "scratch.mit.edu",
           "--until", "+1h", "--by", "Ms Khan", "--reason", REASON)  # fmt: skip
    invoke("classroom", "set", "--store", str(path), "--ip", "10.20.4.0/24", "--mode", "block-all",
           "--until", "+1h", "--by", "Mr Jones", "--reason", FORMULA)  # fmt: skip
    return path


@pytest.mark.parametrize("columns", [None, "40"])
def test_a_piped_exemption_list_keeps_each_row_on_one_line(store, columns):
    table = invoke("exempt", "list", "--store", str(store), columns=columns)
    (khan,) = [line for line in table.splitlines() if "Ms Khan" in line]  # `aupguard exempt list | grep 'Ms Khan'`
    assert "scratch.mit.edu" in khan and REASON in khan and "pupils" in khan
    (jones,) = [line for line in table.splitlines() if "Mr Jones" in line]
    assert "10.20.4.0/24" in jones and FORMULA in jones


@pytest.mark.parametrize("command", [("exempt", "list"), ("classroom", "list")])
def test_listings_as_csv_neutralise_formulas(store, command):
    rows = list(csv.DictReader(io.StringIO(invoke(*command, "--store", str(store), "--format", "csv"))))
    jones = [row for row in rows if row["by"] == "Mr Jones"]
    assert len(jones) == 1 and jones[0]["reason"] == "'" + FORMULA and jones[0]["what"] == "block all"
    assert list(rows[0]) == ["id", "kind", "who", "what", "until", "by", "os_user", "reason", "revoked"]
    assert {row["by"] for row in rows} == ({"Ms Khan", "Mr Jones"} if command[0] == "exempt" else {"Mr Jones"})


def test_the_audit_as_csv_and_json_lines(store):
    audit = list(csv.DictReader(io.StringIO(invoke("exempt", "audit", "--store", str(store), "--format", "csv"))))
    assert [(row["actor"], row["action"], row["exemption_id"]) for row in audit] == [
        ("Ms Khan", "add", "1"),
        ("Mr Jones", "add", "2"),
    ]
    assert audit[1]["reason"] == "'" + FORMULA
    lines = invoke("exempt", "audit", "--store", str(store), "--format", "json").splitlines()
    assert [json.loads(line)["actor"] for line in lines] == ["Ms Khan", "Mr Jones"]
    table = invoke("exempt", "audit", "--store", str(store), "--format", "table", columns="40")
    assert len([line for line in table.splitlines() if "Ms Khan" in line and REASON in line]) == 1


def test_listings_as_json_lines(store):
    lines = invoke("classroom", "list", "--store", str(store), "--format", "json").splitlines()
    (override,) = [json.loads(line) for line in lines]
    assert (override["id"], override["who"], override["reason"]) == (2, "addresses 10.20.4.0/24", FORMULA)
    assert len(invoke("exempt", "list", "--store", str(store), "--format", "json").splitlines()) == 2


def test_an_empty_listing_in_each_format(tmp_path):
    empty = str(tmp_path / "none.db")
    assert invoke("exempt", "list", "--store", empty).strip() == "none"
    assert invoke("exempt", "list", "--store", empty, "--format", "json") == ""
    assert invoke("classroom", "list", "--store", empty, "--format", "csv").strip() == (
        "id,kind,who,what,until,by,os_user,reason,revoked"
    )


@pytest.mark.parametrize("columns", [None, "40"])
@pytest.mark.parametrize("requests", [(), ("--requests",)])
def test_a_piped_report_never_breaks_a_value(tmp_path, columns, requests):
    db = tmp_path / "incidents.db"
    write_incidents(db, [incident_at(DAY1, ref="AG-LONG-0001", username="a.pupil.with.a.long.name", url=LONG_URL,
                  host="hide.example", categories=("anonymizers", "circumvention"), technique="nested-url")])  # fmt: skip
    table = invoke("report", "--db", str(db), *requests, columns=columns)
    assert table.splitlines()[0].startswith("aupguard incidents from the beginning until now")
    if not requests:
        assert len([line for line in table.splitlines() if LONG_URL in line and "AG-LONG-0001" in line]) == 1


def test_a_row_too_wide_for_a_terminal_is_one_line_per_field(tmp_path):
    section = Section("attempts", "Attempts", ("ref", "url"), [{"ref": "AG-1", "url": LONG_URL}])
    narrow = io.StringIO()
    write_table(section, Console(file=narrow, width=40))
    shown = narrow.getvalue()
    assert "[1]" in shown and f" url  {LONG_URL}\n" in shown  # the terminal wraps it on screen; the text does not


def test_a_reader_that_stops_early_ends_the_command_quietly(tmp_path):
    """`aupguard classify < urls | head -1`: no "Broken pipe" error and no traceback, as Unix tools do."""
    urls = tmp_path / "urls.txt"
    urls.write_text("".join(f"http://site{n}.example/\n" for n in range(50_000)))
    with urls.open("rb") as stdin:
        process = subprocess.Popen(
            [sys.executable, "-m", "aupguard.cli", "classify", "--group", "pupils"],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert process.stdout is not None and process.stderr is not None
        first = process.stdout.readline()
        process.stdout.close()  # the reader goes away, as `head -1` does
        errors = process.stderr.read().decode()
        assert process.wait(timeout=120) == 1
    assert first.startswith(b'{"url": "http://site0.example/"')
    assert "Broken pipe" not in errors and "Traceback" not in errors and "Error" not in errors, errors
