"""`aupguard explain`: the whole decision, from the same Engine.check the proxy calls."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from aupguard.engine import Engine
from aupguard.explain import explain, render_text

from conftest import BUNDLED_POLICY, write_policy
from test_cli import aupguard, verdicts

INSTAGRAM = "https://www.instagram.com/some.user"


def explained(*args, env=None) -> dict:
    return json.loads(aupguard("explain", *args, "--format", "json", env=env).stdout)


def test_explain_shows_group_matches_window_and_action(tmp_path):
    env = {"AUPGUARD_DATA": str(tmp_path)}
    lesson = explained(INSTAGRAM, "--group", "staff", "--at", "2026-11-23T09:30", env=env)
    assert lesson["window"] == "lessons" and lesson["time"] == "2026-11-23T09:30+00:00"
    assert lesson["group"] == "staff" and lesson["group_why"] == "given with --group"
    assert lesson["matches"] == [
        {
            "category": "social_networks",
            "kind": "domain",
            "rule": "blocklists/social_networks/domains: instagram.com",
            "effect": "blocked for this group",
        }
    ]
    assert (lesson["action"], lesson["category"]) == ("block", "social_networks")
    assert lesson["why"] == "category social_networks is blocked for group staff during lessons"
    assert lesson["exemptions"] == []
    # At lunch the same match no longer blocks; summer time is shown in the school's zone.
    lunch = explained(INSTAGRAM, "--group", "staff", "--at", "2026-07-06T12:45", env=env)
    assert (lunch["window"], lunch["action"], lunch["time"]) == ("lunch", "allow", "2026-07-06T12:45+01:00")
    assert lunch["matches"][0]["effect"] == "not blocked for this group now"


def test_explain_agrees_with_classify(tmp_path):
    env = {"AUPGUARD_DATA": str(tmp_path)}
    for at in ("2026-11-23T09:30", "2026-11-23T10:55", "2026-11-28T12:00"):
        for url in (INSTAGRAM, "https://www.pornhub.com/", "https://www.bbc.co.uk/bitesize"):
            shown = explained(url, "--group", "staff", "--at", at, env=env)
            (classified,) = verdicts(aupguard("classify", "--group", "staff", "--at", at, stdin=url, env=env).stdout)
            assert shown["action"] == classified["action"], (url, at)


def test_explain_names_the_mis_line_and_the_walled_garden(tmp_path):
    (tmp_path / "mis.csv").write_text("username,group\nlittle.one,early_years\n")

    def mis(policy):
        policy["identity"]["user_files"] = [{"path": str(tmp_path / "mis.csv")}]

    policy = write_policy(tmp_path / "policy.yaml", mis)
    env = {"AUPGUARD_DATA": str(tmp_path)}
    out = explained("https://example.com/", "--config", str(policy), "--user", "Little.One", env=env)
    assert out["group"] == "early_years" and out["walled_garden"]
    assert out["group_why"] == f"user 'Little.One' is listed at {tmp_path / 'mis.csv'}:2 (identity.user_files)"
    assert (out["action"], out["category"], out["matches"]) == ("block", "not_in_walled_garden", [])
    adult = explained("https://www.pornhub.com/", "--config", str(policy), "--user", "little.one", env=env)
    assert adult["category"] == "adult" and adult["matches"][0]["effect"] == "mandatory: blocked for everyone"


def test_explain_lists_the_exemptions_considered(tmp_path):
    store = tmp_path / "exemptions.db"
    env = {"AUPGUARD_DATA": str(tmp_path)}
    aupguard(
        "exempt", "add", "--store", str(store), "--group", "pupils", "--site", "instagram.com",
        "--until", "+2h", "--by", "Ms Teacher", "--reason", "media studies lesson", env=env,
    )  # fmt: skip
    out = explained(INSTAGRAM, "--store", str(store), env=env)
    assert out["group"] == "pupils" and out["action"] == "allow"
    (considered,) = out["exemptions"]
    assert "#1" in considered and "instagram.com" in considered and "Ms Teacher" in considered
    assert out["exemption_applied"] == considered
    text = aupguard("explain", INSTAGRAM, "--store", str(store), env=env).stdout
    assert "exemptions: considered:" in text and "decision:   ALLOW" in text


def test_explain_text_for_a_person():
    engine = Engine.from_policy_file(BUNDLED_POLICY)
    identity = engine.identify("nobody", "10.9.8.7")
    when = datetime(2026, 11, 23, 9, 30, tzinfo=timezone.utc)
    text = render_text(explain(engine, "http://www.pornhub.com/<script>", identity, when))
    assert text.splitlines() == [
        "URL:        http://www.pornhub.com/%3Cscript%3E",
        "time:       2026-11-23T09:30+00:00 (Europe/London)",
        "window:     lessons",
        "who:        user 'nobody' at 10.9.8.7",
        "group:      pupils",
        "  because   user 'nobody' is not listed in identity.users; no user or address rule matched: identity.default_group",
        "matched:",
        "  adult: blocklists/adult/domains: pornhub.com (domain) -> mandatory: blocked for everyone",
        "exemptions: none active",
        "decision:   BLOCK (adult, severity high)",
        "  because   category adult is mandatory: blocked for everyone",
    ]


def test_explain_refuses_what_is_not_a_url(tmp_path):
    result = aupguard("explain", "http://[::1", env={"AUPGUARD_DATA": str(tmp_path)}, check=False)
    assert result.returncode == 2 and "URL" in result.stderr
