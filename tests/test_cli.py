"""The `aupguard` command as an IT technician runs it: classify, lists import, report, dsl-export."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import socket
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from aupguard.cli.main import main
from conftest import aupguard, start_proxy, verdicts, with_list_root, write_policy


def test_classify_reads_urls_and_writes_json_lines():
    urls = "https://www.pornhub.com/x\nhttps://www.bbc.co.uk/bitesize\nhttp://[::1\n\nhttps://www.instagram.com/\n"
    pupils = verdicts(aupguard("classify", "--group", "pupils", stdin=urls).stdout)
    assert [v["action"] for v in pupils] == ["block", "allow", "error", "block"]
    assert pupils[0] == {
        "url": "https://www.pornhub.com/x",
        "action": "block",
        "categories": ["adult"],
        "group": "pupils",
        "rule": "blocklists/adult/domains: pornhub.com",
    }
    assert pupils[1]["categories"] == [] and pupils[1]["rule"] is None
    assert pupils[2]["url"] == "http://[::1" and pupils[2]["error"]
    # Staff may use social networks at lunch (12:30-13:20 in the bundled timetable), not in lessons.
    lunch = verdicts(aupguard("classify", "--group", "staff", "--at", "2026-11-23T12:45", stdin=urls).stdout)
    assert [v["action"] for v in lunch] == ["block", "allow", "error", "allow"]
    lesson = verdicts(aupguard("classify", "--group", "staff", "--at", "2026-11-23T09:30", stdin=urls).stdout)
    assert [v["action"] for v in lesson] == ["block", "allow", "error", "block"]


def test_classify_says_how_a_circumvention_attempt_was_caught():
    urls = [
        "http://proxy.example/browse.php?u=https%3A%2F%2Fwww.pornhub.com%2F&b=4",  # Glype, carrying a blocked page
        "https://webcache.googleusercontent.com/search?q=cache:https://www.pornhub.com/",  # a Google cache page
        "https://croxyproxy.com/",  # a listed web proxy: nothing carried
        "https://www.google.com/search?q=cache+memory",  # an ordinary search
    ]
    glype, cache, listed, search = verdicts(aupguard("classify", "--group", "pupils", stdin="\n".join(urls)).stdout)
    assert glype == {
        "url": urls[0],
        "action": "block",
        "categories": ["adult", "anonymizers"],
        "group": "pupils",
        "rule": "blocklists/adult/domains: pornhub.com",
        "technique": "signature",
        "inner_url": "https://www.pornhub.com/",
    }
    assert (cache["action"], cache["technique"], cache["inner_url"]) == ("block", "nested", "https://www.pornhub.com/")
    assert (listed["action"], listed["technique"], listed["categories"]) == ("block", "list", ["anonymizers"])
    assert "inner_url" not in listed
    assert search == {"url": urls[3], "action": "allow", "categories": [], "group": "pupils", "rule": None}


def test_the_readme_classify_example_is_what_classify_prints():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("## Asking what the filter would do", 1)[1].split("```console\n", 1)[1].split("```", 1)[0]
    command, *shown = block.splitlines()
    stdin = re.search(r"printf '([^']*)' \| aupguard classify --group pupils$", command).group(1).replace("\\n", "\n")
    printed = verdicts(aupguard("classify", "--group", "pupils", stdin=stdin).stdout)
    assert len(printed) == len(shown) >= 3
    for example, real in zip(shown, printed):
        expected = json.loads(example)
        if expected.get("error") == "...":  # the README abbreviates the reason
            expected["error"] = real["error"]
        assert real == expected


def test_classify_identifies_by_address_and_user(tmp_path):
    def identities(policy):
        policy["identity"]["users"] = {"ms.teacher": "staff"}
        policy["identity"]["networks"] = [{"cidr": "10.30.0.0/16", "group": "visitors"}]

    policy = write_policy(tmp_path / "policy.yaml", identities)
    url = "https://www.instagram.com/\n"
    assert (
        verdicts(aupguard("classify", "--config", str(policy), "--user", "ms.teacher", stdin=url).stdout)[0]["group"]
        == "staff"
    )
    visitor = verdicts(aupguard("classify", "--config", str(policy), "--ip", "10.30.4.5", stdin=url).stdout)[0]
    assert visitor["group"] == "visitors"
    assert verdicts(aupguard("classify", "--config", str(policy), stdin=url).stdout)[0]["group"] == "pupils"


def test_classify_refuses_an_unknown_group():
    result = aupguard("classify", "--group", "nobody", stdin="https://a.test/\n", check=False)
    assert result.returncode != 0 and "nobody" in result.stderr


def test_ut1_import_blocks_real_entries(tmp_path, shared_dir):
    data = tmp_path / "var"
    env = {"AUPGUARD_DATA": str(data)}
    imported = aupguard("lists", "import", "ut1", str(shared_dir / "blocklists-ut1"), env=env)
    assert (data / "lists" / "ut1" / "redirector" / "domains").is_file(), imported.stdout
    assert "CC BY-SA" in (data / "lists" / "ut1" / "SOURCE.md").read_text()
    # Real lines of the snapshot, each under the aupguard category its UT1 category maps to.
    samples = {
        "redirector": "anonymizers",
        "gambling": "gambling",
        "agressif": "hate",
        "social_networks": "social_networks",
        "vpn": "vpn",
        "doh": "doh",
    }
    lines = []
    for ut1, category in samples.items():
        entries = (shared_dir / "blocklists-ut1" / ut1 / "domains").read_text().split()
        lines += [(f"http://{entry}/", category) for entry in entries[:: max(1, len(entries) // 5)][:5]]
    adult_urls = (shared_dir / "blocklists-ut1" / "adult" / "urls").read_text().split()[:5]
    lines += [(f"http://{entry}", "adult") for entry in adult_urls]
    out = verdicts(aupguard("classify", "--group", "pupils", stdin="\n".join(u for u, _ in lines), env=env).stdout)
    for (_url, category), verdict in zip(lines, out, strict=True):
        assert verdict["action"] == "block", verdict
        assert category in verdict["categories"], verdict


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A real proxy run: a few blocked attempts of different severities, then a clean stop."""
    tmp = tmp_path_factory.mktemp("recorded")
    lists = tmp / "lists" / "self_harm"
    lists.mkdir(parents=True)
    (lists / "domains").write_text("selfharm.test\n")

    with_test_lists = with_list_root(tmp / "lists")

    running = start_proxy(tmp, write_policy(tmp / "policy.yaml", with_test_lists))
    urls = [
        "http://www.pornhub.com/a",
        "http://bet365.com/",
        'http://selfharm.test/=HYPERLINK("http://evil.test")',
        "http://www.instagram.com/",
        "http://www.croxyproxy.com/",
        "http://www.instagram.com/reels",
    ]
    try:
        for url in urls:
            assert requests.get(url, proxies=running.proxies, timeout=15).status_code == 403, url
    finally:
        running.stop()
    return running


def test_report_formats(recorded):
    table = aupguard("report", "--db", str(recorded.db)).stdout
    for word in ("adult", "gambling", "social_networks", "127.0.0.1", "instagram.com"):
        assert word in table
    summary = json.loads(aupguard("report", "--db", str(recorded.db), "--format", "json").stdout)
    by_category = {row["category"]: row["blocked"] for row in summary["by_category"]}
    assert by_category["social_networks"] == 2 and by_category["adult"] == 1
    assert sum(row["blocked"] for row in summary["by_day"]) == 6
    assert summary["by_client_ip"][0] == {"client_ip": "127.0.0.1", "blocked": 6}
    assert summary["top_hosts"][0] == {"host": "www.instagram.com", "blocked": 2}
    (anonymizer,) = summary["anonymizer_attempts"]
    assert anonymizer["url"] == "http://www.croxyproxy.com/"
    rows = list(csv.DictReader(aupguard("report", "--db", str(recorded.db), "--format", "csv").stdout.splitlines()))
    assert {row["section"] for row in rows} >= {"by_category", "by_day", "by_user", "by_client_ip", "top_hosts"}


def test_report_date_bounds(recorded):
    empty = json.loads(aupguard("report", "--db", str(recorded.db), "--format", "json", "--until", "2000-01-01").stdout)
    assert empty["by_category"] == []


def test_dsl_export_has_only_flagged_incidents_and_is_safe_to_open(recorded, tmp_path):
    out = tmp_path / "dsl.csv"
    aupguard("dsl-export", "--db", str(recorded.db), "--out", str(out))
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    rows = list(csv.DictReader(out.open()))
    assert {row["severity"] for row in rows} <= {"high", "critical"}
    assert {row["categories"].split(";")[0].strip() for row in rows} == {"adult", "self_harm"}
    for row in rows:
        assert row["client_ip"] == "127.0.0.1" and row["group"] == "pupils"
        for cell in row.values():
            assert not cell.startswith(("=", "+", "-", "@")), cell


def test_purge_keeps_recent_incidents(recorded):
    result = aupguard("purge", "--db", str(recorded.db), "--days", "30")
    assert result.stdout.startswith("deleted 0 incident")


@pytest.mark.parametrize("command", ["purge", "report", "dsl-export"])
def test_a_mistyped_database_is_refused_not_created(tmp_path, command):
    typo = tmp_path / "incidnets.db"
    extra = ("--out", str(tmp_path / "out.csv")) if command == "dsl-export" else ()
    result = aupguard(command, "--db", str(typo), *extra, check=False)
    assert result.returncode == 1
    assert f"no incident database at {typo}" in result.stderr and "deleted" not in result.stdout
    assert not typo.exists()


def test_help_teaches_by_example():
    top = CliRunner().invoke(main, ["--help"]).output
    for needed in (
        "aupguard explain ",
        "aupguard exempt add ",
        "aupguard classroom set ",
        "AUPGUARD_DATA",
        "AUPGUARD_HOME",
    ):
        assert needed in top, needed
    # Every example names a real command.
    for command, sub in re.findall(r"aupguard ([a-z][a-z-]*)(?: ([a-z]+))?", main.help):
        group = main.commands[command]
        assert not hasattr(group, "commands") or sub in group.commands, (command, sub)
    lists = CliRunner().invoke(main, ["lists", "--help"]).output
    assert "aupguard lists update ut1" in lists and "aupguard lists compile" in lists and "import" in lists


# -- --out and the period, for every command that has them (issues 10.3, 10.8) -------------------------

OUT_COMMANDS = [("report", "--format", "csv"), ("dsl-export",)]


@pytest.mark.parametrize("command", OUT_COMMANDS)
def test_out_dash_is_standard_output(recorded, tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, [*command, "--db", str(recorded.db), "--out", "-"])
    assert result.exit_code == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout_bytes.decode("utf-8-sig"), newline="")))
    assert rows and "wrote" not in result.stdout_bytes.decode() and "wrote" in result.stderr_bytes.decode()
    assert list(tmp_path.iterdir()) == []  # no file called "-"


@pytest.mark.parametrize("command", OUT_COMMANDS)
@pytest.mark.parametrize("kind", ["symlink to /dev/null", "fifo"])
def test_out_refuses_an_existing_target_that_is_not_a_regular_file(recorded, tmp_path, command, kind):
    target = tmp_path / "out.csv"
    if kind == "fifo":
        os.mkfifo(target)
    else:
        target.symlink_to("/dev/null")  # as root, the rename would have replaced /dev/null itself
    before = os.lstat(target)
    result = aupguard(*command, "--db", str(recorded.db), "--out", str(target), check=False)
    assert result.returncode == 2 and "is not a regular file" not in result.stdout
    assert (
        f"{target} is {'a symbolic link' if kind != 'fifo' else 'a special file'}, not a regular file" in result.stderr
    )
    after = os.lstat(target)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


@pytest.mark.parametrize("command", [("report",), ("report", "--requests"), ("dsl-export", "--out", "-")])
def test_since_after_until_is_an_error_not_an_empty_report(recorded, command):
    result = aupguard(*command, "--db", str(recorded.db), "--since", "2026-11-02", "--until", "2026-11-01", check=False)
    assert result.returncode == 2 and "no incidents" not in result.stdout
    assert "--since must be before --until" in result.stderr


def test_the_report_header_shows_the_period_in_the_schools_time_zone(recorded):
    # 09:30 on a summer's day in Europe/London (the bundled policy's zone) is 08:30 UTC.
    table = aupguard("report", "--db", str(recorded.db), "--since", "2026-07-01T09:30", "--until", "2026-07-02").stdout
    assert table.splitlines()[0].startswith(
        "aupguard incidents from 2026-07-01 09:30:00+01:00 until 2026-07-02 00:00:00+01:00"
    )


# -- aupguard run: start-up ----------------------------------------------------------------------------


def run_on_a_busy_port(tmp_path, env: dict | None = None):
    """`aupguard run` as far as it gets with its port taken: everything it says before listening, then the error."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        return aupguard(
            "run", "--listen-port", str(port), "--db", str(tmp_path / "var" / "incidents.db"),
            env={"AUPGUARD_DATA": str(tmp_path / "var"), **(env or {})}, check=False,
        )  # fmt: skip


def test_a_busy_port_says_to_choose_another_with_listen_port(tmp_path):
    result = run_on_a_busy_port(tmp_path)
    assert result.returncode != 0
    assert "cannot listen on 127.0.0.1:" in result.stderr and "--listen-port" in result.stderr
    assert "regular@" not in result.stderr + result.stdout  # mitmproxy's own advice, about its --mode option


def test_the_start_says_what_is_loaded_and_how_to_import_ut1(tmp_path):
    result = run_on_a_busy_port(tmp_path)
    assert re.search(
        r"lists loaded: [\d,]+ domains, [\d,]+ urls and \d+ expressions from \d+ list folders \(blocklists \d+\)",
        result.stderr,
    )
    assert "only the bundled starter lists" in result.stderr and "aupguard lists update ut1" in result.stderr


def test_no_ut1_hint_once_ut1_is_imported(tmp_path):
    redirector = tmp_path / "var" / "lists" / "ut1" / "redirector"  # UT1's own folder layout
    redirector.mkdir(parents=True)
    (redirector / "domains").write_text("proxy-site.example\n")
    result = run_on_a_busy_port(tmp_path)
    assert re.search(r"list folders \(blocklists \d+, ut1 1\)", result.stderr), result.stderr
    assert "only the bundled starter lists" not in result.stderr


@pytest.mark.parametrize("verbosity", ["info", "debug"])
def test_requests_log_no_connection_lines_at_the_default_level(tmp_path, origin, verbosity):
    """mitmproxy's client connect / server connect / client disconnect lines only at termlog_verbosity=debug."""
    running = start_proxy(tmp_path, extra=("--set", f"termlog_verbosity={verbosity}"))
    try:
        for url in [origin.url("/lesson"), "http://pornhub.com/", origin.url("/notes")]:
            assert requests.get(url, proxies=running.proxies, timeout=30).status_code in (200, 403)
    finally:
        running.stop()
    after_start = running.log.read_text().split("proxy listening at", 1)[1]
    connection_lines = re.findall(r"client connect|server connect|client disconnect", after_start)
    if verbosity == "debug":
        assert len(connection_lines) >= 6
    else:
        assert connection_lines == []
        assert len(after_start.splitlines()) <= 2  # the rest of the "listening" line and lean's one line


# -- one error handler: every explained error is one line, exit 1, never a traceback ------------------


@pytest.mark.parametrize(
    "command",
    [
        ("classify", "--group", "pupils"),
        ("explain", "https://example.com/"),
        ("exempt", "add", "--group", "pupils", "--site", "example.com", "--until", "+1h", "--by", "A", "--reason", "B"),
        ("classroom", "set", "--ip", "10.0.0.0/24", "--mode", "block-all", "--until", "+1h", "--by", "A", "--reason", "B"),
        ("purge",),
        ("lists", "compile"),
    ],
)  # fmt: skip
def test_a_bad_policy_is_one_line_for_every_command(tmp_path, command):
    policy = tmp_path / "policy.yaml"
    policy.write_text("groups: [\n")
    result = aupguard(*command, "--config", str(policy), stdin="", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"Error: {policy}:")


@pytest.mark.parametrize("command", [("exempt", "list"), ("classroom", "list"), ("exempt", "audit")])
def test_a_store_that_cannot_be_opened_is_one_line_not_a_traceback(tmp_path, command):
    (tmp_path / "file").write_text("")
    store = tmp_path / "file" / "exemptions.db"  # under a regular file: no folder can be made there
    result = aupguard(*command, "--store", str(store), check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: ") and str(tmp_path / "file") in line
