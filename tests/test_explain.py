"""`aupguard explain`: the whole decision, from the same Engine.check the proxy calls."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from aupguard.report.explain import explain, render_text
from aupguard.runtime import load_engine
from conftest import aupguard, verdicts, write_policy

INSTAGRAM = "https://www.instagram.com/some.user"


def explained(*args, env=None) -> dict:
    return json.loads(aupguard("explain", *args, "--format", "json", env=env).stdout)


def test_explain_shows_group_matches_window_and_action(tmp_path):
    own = ("--store", str(tmp_path / "exemptions.db"))  # no exemptions: a store of its own
    lesson = explained(INSTAGRAM, "--group", "staff", "--at", "2026-11-23T09:30", *own)
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
    lunch = explained(INSTAGRAM, "--group", "staff", "--at", "2026-07-06T12:45", *own)
    assert (lunch["window"], lunch["action"], lunch["time"]) == ("lunch", "allow", "2026-07-06T12:45+01:00")
    assert lunch["matches"][0]["effect"] == "not blocked for this group now"


def test_explain_agrees_with_classify(tmp_path):
    own = ("--store", str(tmp_path / "exemptions.db"))  # no exemptions: a store of its own
    for at in ("2026-11-23T09:30", "2026-11-23T10:55", "2026-11-28T12:00"):
        for url in (INSTAGRAM, "https://www.pornhub.com/", "https://www.bbc.co.uk/bitesize"):
            shown = explained(url, "--group", "staff", "--at", at, *own)
            (classified,) = verdicts(aupguard("classify", "--group", "staff", "--at", at, *own, stdin=url).stdout)
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
    assert adult["category"] == "adult" and adult["matches"][0]["effect"] == "blocked for this group"
    # A licensed illegal-content feed, where the bundled policy's `mandatory` list root reads it.
    (tmp_path / "lists" / "mandatory" / "illegal").mkdir(parents=True)
    (tmp_path / "lists" / "mandatory" / "illegal" / "domains").write_text("illegal-feed.example\n")
    illegal = explained("https://illegal-feed.example/x", "--config", str(policy), "--user", "little.one", env=env)
    assert illegal["category"] == "illegal" and illegal["matches"][0]["effect"] == "mandatory: blocked for everyone"


def test_explain_lists_the_exemptions_considered(tmp_path):
    store = tmp_path / "exemptions.db"
    aupguard(
        "exempt", "add", "--store", str(store), "--group", "pupils", "--site", "instagram.com",
        "--until", "+2h", "--by", "Ms Teacher", "--reason", "media studies lesson"
    )  # fmt: skip
    out = explained(INSTAGRAM, "--store", str(store))
    assert out["group"] == "pupils" and out["action"] == "allow"
    (considered,) = out["exemptions"]
    assert "#1" in considered and "instagram.com" in considered and "Ms Teacher" in considered
    assert out["exemption_applied"] == considered
    text = aupguard("explain", INSTAGRAM, "--store", str(store)).stdout
    assert "exemptions: considered:" in text and "decision:   ALLOW" in text


def test_explain_text_for_a_person(tmp_path):
    feed = tmp_path / "feeds" / "illegal"
    feed.mkdir(parents=True)
    (feed / "domains").write_text("illegal-feed.example\n")
    policy = write_policy(
        tmp_path / "policy.yaml", lambda d: d["lists"].append({"name": "feeds", "path": str(tmp_path / "feeds")})
    )
    engine = load_engine(policy, index_path=None, exemptions_path=None)
    identity = engine.identify("nobody", "10.9.8.7")
    when = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
    text = render_text(explain(engine, "http://www.pornhub.com/<script>", identity, when))
    assert text.splitlines() == [
        "URL:        http://www.pornhub.com/%3Cscript%3E",
        "time:       2026-11-23T09:30+00:00 (Europe/London)",
        "window:     lessons",
        "who:        user 'nobody' at 10.9.8.7",
        "group:      pupils",
        "  because   user 'nobody' is not listed in identity.users; no user or address rule matched: identity.default_group",
        "matched:",
        "  adult: blocklists/adult/domains: pornhub.com (domain) -> blocked for this group",
        "exemptions: none active",
        "decision:   BLOCK (adult, severity high)",
        "  because   category adult is blocked for group pupils during lessons",
    ]
    text = render_text(explain(engine, "http://www.illegal-feed.example/<script>", identity, when))
    assert text.splitlines()[6:] == [
        "matched:",
        "  illegal: feeds/illegal/domains: illegal-feed.example (domain) -> mandatory: blocked for everyone",
        "exemptions: none active",
        "decision:   BLOCK (illegal, severity critical)",
        "  because   category illegal is mandatory: blocked for everyone",
    ]


def test_explain_refuses_what_is_not_a_url(tmp_path):
    result = aupguard("explain", "http://[::1", check=False)
    assert result.returncode == 2 and "URL" in result.stderr


GLYPE_TO_PORNHUB = "https://x.example/browse.php?u=aHR0cHM6Ly93d3cucG9ybmh1Yi5jb20v&b=4"  # base64 of pornhub


def test_explain_shows_a_web_proxys_target_and_the_entry_that_blocked_it(tmp_path):
    """Each match's effect comes from the decision that used it: the proxy page's own, or its target's."""
    own = ("--store", str(tmp_path / "exemptions.db"))  # no exemptions: a store of its own
    out = explained(GLYPE_TO_PORNHUB, "--group", "pupils", "--at", "2026-11-23T09:30", *own)
    assert out["matches"] == [
        {
            "category": "anonymizers",
            "kind": "signature",
            "rule": "aupguard/signatures: glype",
            "effect": "blocked for this group",
        }
    ]
    assert (out["technique"], out["inner_url"]) == ("signature", "https://www.pornhub.com/")
    assert out["carried"] == [
        {
            "url": "https://www.pornhub.com/",
            "decides": True,
            "action": "block",
            "category": "adult",
            "matches": [
                {
                    "category": "adult",
                    "kind": "domain",
                    "rule": "blocklists/adult/domains: pornhub.com",
                    "effect": "blocked for this group",
                }
            ],
        }
    ]
    assert (out["action"], out["category"]) == ("block", "adult")
    text = aupguard("explain", GLYPE_TO_PORNHUB, "--group", "pupils", "--at", "2026-11-23T09:30", *own).stdout
    assert text.splitlines()[6:12] == [
        "matched:",
        "  anonymizers: aupguard/signatures: glype (signature) -> blocked for this group",
        "carries:    https://www.pornhub.com/ -> BLOCK (adult) (this decides)",
        "  adult: blocklists/adult/domains: pornhub.com (domain) -> blocked for this group",
        "technique:  signature (an attempt to get round the filter)",
        "exemptions: none active",
    ]


def test_explain_shows_a_nested_url_that_decides_for_an_allowed_page(tmp_path):
    own = ("--store", str(tmp_path / "exemptions.db"))  # no exemptions: a store of its own
    url = "https://www.google.com/url?q=https://www.pornhub.com/"
    out = explained(url, "--group", "pupils", "--at", "2026-11-23T09:30", *own)
    assert out["matches"] == [] and (out["technique"], out["action"], out["category"]) == ("nested", "block", "adult")
    ((carried),) = out["carried"]
    assert carried["decides"] and carried["matches"][0]["effect"] == "blocked for this group"
    # Where the carried site is allowed, it is shown and does not decide.
    fine = explained("https://www.google.com/url?q=https://www.bbc.co.uk/bitesize", "--group", "pupils", *own)
    (carried,) = fine["carried"]
    assert (carried["url"], carried["action"], carried["decides"]) == ("https://www.bbc.co.uk/bitesize", "allow", False)
    assert (fine["action"], fine["technique"], fine["inner_url"]) == ("allow", None, None)


def test_explain_text_shows_control_characters_instead_of_obeying_them(tmp_path):
    """Issue 9.10: a teacher's name or reason on an exemption, a URL, an error: shown, never run by the terminal."""
    engine = load_engine(write_policy(tmp_path / "policy.yaml"), index_path=None, exemptions_path=None)
    identity = engine.identify("nobody", "10.9.8.7")
    explanation = explain(engine, INSTAGRAM, identity, datetime(2026, 11, 23, 9, 30, tzinfo=UTC))
    explanation["exemptions"] = ["exemption #1 (group pupils: site instagram.com; by Ms \x1b]0;pwned\x07T\u202eeacher)"]
    explanation["error"] = "ValueError: bad \x9b2J"
    text = render_text(explanation)
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text and "\x9b" not in text
    assert "  exemption #1 (group pupils: site instagram.com; by Ms \\x1b]0;pwned\\x07T\\u202eeacher)\n" in text
    assert "error:      ValueError: bad \\x9b2J\n" in text
