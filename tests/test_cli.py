"""The `aupguard` command as an IT technician runs it: classify, lists import, report, dsl-export."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import requests

from conftest import start_proxy, write_policy


def aupguard(*args, stdin: str | None = None, env: dict | None = None, check: bool = True):
    result = subprocess.run(
        [sys.executable, "-m", "aupguard.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"aupguard {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def verdicts(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines()]


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


def test_classify_identifies_by_address_and_user(tmp_path):
    def identities(policy):
        policy["identity"]["users"] = {"ms.teacher": "staff"}
        policy["identity"]["networks"] = [{"cidr": "10.30.0.0/16", "group": "visitors"}]

    policy = write_policy(tmp_path / "policy.yaml", identities)
    url = "https://www.instagram.com/\n"
    assert verdicts(aupguard("classify", "--config", str(policy), "--user", "ms.teacher", stdin=url).stdout)[0][
        "group"
    ] == "staff"
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
    for (url, category), verdict in zip(lines, out, strict=True):
        assert verdict["action"] == "block", verdict
        assert category in verdict["categories"], verdict


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A real proxy run: a few blocked attempts of different severities, then a clean stop."""
    tmp = tmp_path_factory.mktemp("recorded")
    lists = tmp / "lists" / "self_harm"
    lists.mkdir(parents=True)
    (lists / "domains").write_text("selfharm.test\n")

    def with_test_lists(policy):
        policy["lists"].append({"name": "testlists", "path": str(tmp / "lists")})

    running = start_proxy(tmp, write_policy(tmp / "policy.yaml", with_test_lists))
    urls = [
        "http://www.pornhub.com/a",
        "http://bet365.com/",
        "http://selfharm.test/=HYPERLINK(\"http://evil.test\")",
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
