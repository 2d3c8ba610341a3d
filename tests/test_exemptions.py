"""Exemptions and classroom overrides: the store and its audit, the decision, the CLI, a running proxy."""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import sqlite3
import stat
import subprocess
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
import requests
import tldextract
from click.testing import CliRunner
from hypothesis import example, given, settings
from hypothesis import strategies as st

from aupguard.base.urlnorm import normalize_url
from aupguard.cli.main import main
from aupguard.config.loader import load_policy
from aupguard.core import exemption as exrec
from aupguard.core import exemptions as ex
from aupguard.core.classify import Classification, Match
from aupguard.core.decide import decide
from aupguard.core.identify import Identity
from aupguard.lists.model import one_site
from aupguard.runtime import load_engine
from aupguard.store import exemptions as exstore
from conftest import BUNDLED_POLICY, REPO, aupguard, start_proxy, wait_for_status, with_list_root, write_policy

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)
POLICY = load_policy(BUNDLED_POLICY)
PUPIL = Identity("a.pupil", "10.20.4.7", "pupils", "test")
OTHER_PUPIL = Identity(None, "10.99.0.1", "pupils", "test")


@pytest.fixture
def store(tmp_path):
    db = exstore.open_store(tmp_path / "data" / "exemptions.db")
    yield db
    db.close()


def classified(url: str, *categories: str) -> Classification:
    parsed = normalize_url(url)
    return Classification(parsed, tuple(Match(c, "domain", parsed.host, f"blocklists/{c}/domains") for c in categories))


def decided(items, identity, url, *categories, when=NOW):
    classification = classified(url, *categories)
    decision = decide(POLICY, identity, classification)
    return ex.ExemptionSet(items).apply(POLICY, identity, classification, decision, when)


def add(db, **kwargs):
    kwargs.setdefault("until", LATER)
    kwargs.setdefault("by", "Ms Khan")
    kwargs.setdefault("reason", "coding lesson")
    return exstore.add(db, POLICY, now=NOW, **kwargs)


# -- the store -------------------------------------------------------------------------------------


def test_the_store_is_private(tmp_path):
    exstore.open_store(tmp_path / "data" / "exemptions.db").close()
    assert stat.S_IMODE(os.stat(tmp_path / "data").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "data" / "exemptions.db").st_mode) == 0o600


def test_every_change_is_audited_and_the_audit_is_append_only(store):
    item = add(store, group="pupils", category="games")
    exstore.revoke(store, item.id, by="Mr Head", reason="lesson over", now=NOW + timedelta(minutes=5))
    trail = exstore.audit_trail(store)
    assert [(r["action"], r["actor"], r["exemption_id"]) for r in trail] == [
        ("add", "Ms Khan", item.id),
        ("revoke", "Mr Head", item.id),
    ]
    assert trail[0]["reason"] == "coding lesson" and json.loads(trail[0]["what"])["category"] == "games"
    assert trail[1]["reason"] == "lesson over"
    for statement in ("UPDATE audit SET actor = 'x'", "DELETE FROM audit"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            store.execute(statement)


def test_exemptions_expire_by_themselves(store):
    item = add(store, group="pupils", category="games")
    assert [i.id for i in exstore.listing(store, now=NOW)] == [item.id]
    assert exstore.listing(store, now=LATER) == []
    assert [i.id for i in exstore.listing(store, include_ended=True)] == [item.id]
    snapshot = ex.ExemptionSet(exstore.listing(store, now=NOW))
    assert decided(snapshot.items, PUPIL, "https://minecraft.net/", "games").action == "allow"
    assert decided(snapshot.items, PUPIL, "https://minecraft.net/", "games", when=LATER).action == "block"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"group": "pupils", "category": "illegal"}, "mandatory"),
        ({"group": "pupils", "site": "illegal-feed.example"}, "mandatory"),
        ({"group": "pupils", "site": "adult-and-illegal.example"}, "mandatory"),
        ({"group": "nobody", "category": "games"}, "unknown group"),
        ({"group": "pupils", "user": "x", "category": "games"}, "exactly one"),
        ({"group": "pupils"}, "either --site or --category"),
        ({"group": "pupils", "category": "games", "until": NOW}, "not in the future"),
        ({"group": "pupils", "category": "games", "by": " "}, "--by"),
        ({"group": "pupils", "category": "games", "reason": ""}, "--reason"),
        ({"ip": "10.20.4.0/33", "category": "games"}, "not an address"),
        ({"kind": exrec.ALLOW_ONLY, "ip": "10.20.4.0/24"}, "at least one --site"),
    ],
)
def test_bad_exemptions_are_refused_with_a_reason(store, kwargs, message):
    site = kwargs.pop("site", None)
    if "ip" in kwargs:
        kwargs["network"] = kwargs.pop("ip")
    categories = {"illegal-feed.example": ["illegal"], "adult-and-illegal.example": ["adult", "illegal"]}
    with pytest.raises(exrec.ExemptionError, match=message):
        add(store, sites=[site] if site else [], site_categories=lambda d: categories.get(d, []), **kwargs)
    assert exstore.audit_trail(store) == []


@pytest.mark.parametrize("network", ["0.0.0.0/0", "10.0.0.0/8", "10.20.0.0/15", "::/0", "2001:db8::/47"])
def test_a_classroom_override_wider_than_a_site_range_needs_whole_school(store, network):
    with pytest.raises(exrec.ExemptionError, match="--whole-school"):
        add(store, kind=exrec.BLOCK_ALL, network=network)
    assert exstore.audit_trail(store) == []
    wide = add(store, kind=exrec.BLOCK_ALL, network=network, whole_school=True)
    assert str(wide.network) == network


def test_room_sized_ranges_and_exemptions_need_no_whole_school(store):
    for network in ("10.20.0.0/16", "10.20.4.0/24", "10.20.4.7", "2001:db8::/48", "2001:db8:0:4::/64"):
        add(store, kind=exrec.BLOCK_ALL, network=network)
    add(store, network="10.0.0.0/8", category="games")  # an exemption only lets a site through


def test_cli_classroom_refuses_the_whole_internet_without_whole_school(tmp_path):
    env = {"AUPGUARD_DATA": str(tmp_path / "var")}
    args = ("classroom", "set", "--ip", "0.0.0.0/0", "--mode", "block-all", "--until", "+1h", "--by", "Mr Jones",
            "--reason", "exam")  # fmt: skip
    refused = aupguard(*args, env=env, check=False)
    assert refused.returncode != 0 and "wider than a /16" in refused.stderr and "--whole-school" in refused.stderr
    assert aupguard("classroom", "list", env=env).stdout.strip() == "none"
    assert "classroom override #1" in aupguard(*args, "--whole-school", env=env).stdout


# -- the decision ------------------------------------------------------------------------------------


def item(**kwargs) -> exrec.Exemption:
    defaults = dict(id=1, kind=exrec.EXEMPTION, until=LATER, created_at=NOW, created_by="Ms Khan", reason="r")
    return exrec.Exemption(**(defaults | kwargs))


def test_a_site_exemption_covers_its_subdomains_for_the_named_group_only():
    games = item(group="pupils", sites=("coolmath-games.com",))
    allowed = decided([games], PUPIL, "https://www.coolmath-games.com/play", "games")
    assert allowed.action == "allow" and allowed.exemption == games and "#1" in allowed.why
    assert decided([games], PUPIL, "https://coolmath-games.com.evil.net/", "games").action == "block"
    staff = Identity(None, "10.20.1.1", "visitors", "test")
    assert decided([games], staff, "https://poki.com/", "games").action == "allow"  # visitors do not block games
    assert decided([item(group="staff", sites=("poki.com",))], PUPIL, "https://poki.com/", "games").action == "block"


def test_user_and_address_exemptions():
    by_user = item(user="a.pupil", category="games")
    by_network = item(network=ipaddress.ip_network("10.20.4.0/24"), category="games")
    for exemption in (by_user, by_network):
        assert decided([exemption], PUPIL, "https://poki.com/", "games").action == "allow"
        assert decided([exemption], OTHER_PUPIL, "https://poki.com/", "games").action == "block"


def test_a_category_exemption_must_cover_every_blocking_category():
    games = item(group="pupils", category="games")
    assert decided([games], PUPIL, "https://x.example/", "games", "chat").action == "block"
    chat = item(id=2, group="pupils", category="chat")
    assert decided([games, chat], PUPIL, "https://x.example/", "games", "chat").action == "allow"


def test_nothing_lets_a_mandatory_category_through():
    mixed = "https://games-and-worse.example/"
    for exemption in (
        item(group="pupils", sites=("games-and-worse.example",)),
        item(
            kind=exrec.ALLOW_ONLY,
            network=ipaddress.ip_network("10.20.4.0/24"),
            sites=("games-and-worse.example",),
        ),
    ):
        decision = decided([exemption], PUPIL, mixed, "games", "illegal")
        assert decision.action == "block" and decision.category == "illegal"


def test_the_heads_permission_can_lift_an_adult_block(store):
    # Only the illegal-content tier is mandatory: an adult-list false positive (or material a lesson
    # needs, with the Head's written permission) can be exempted like any other block.
    categories = {"art-history.example": ["adult"]}
    added = add(store, group="pupils", sites=["art-history.example"], site_categories=lambda d: categories.get(d, []))
    assert added.sites == ("art-history.example",)
    assert add(store, user="a.pupil", category="adult").category == "adult"
    snapshot = ex.ExemptionSet(exstore.listing(store, now=NOW))
    assert decided([], PUPIL, "https://art-history.example/", "adult").action == "block"
    assert decided(snapshot.items, PUPIL, "https://art-history.example/", "adult").action == "allow"
    assert decided(snapshot.items, OTHER_PUPIL, "https://other.example/", "adult").action == "block"
    # ... but not when the page is also in the mandatory tier.
    assert decided(snapshot.items, PUPIL, "https://art-history.example/", "adult", "illegal").category == "illegal"


def test_classroom_block_all_and_allow_only():
    room = ipaddress.ip_network("10.20.4.0/24")
    lock = item(kind=exrec.BLOCK_ALL, network=room)
    locked = decided([lock], PUPIL, "https://www.bbc.co.uk/bitesize")
    assert locked.action == "block" and locked.category == "classroom_lock" and locked.exemption == lock
    assert "classroom override #1" in locked.rule
    assert decided([lock], OTHER_PUPIL, "https://www.bbc.co.uk/bitesize").action == "allow"
    only = item(kind=exrec.ALLOW_ONLY, network=room, sites=("bbc.co.uk", "kahoot.it"))
    assert decided([only], PUPIL, "https://www.bbc.co.uk/bitesize").action == "allow"
    assert decided([only], PUPIL, "https://kahoot.it/", "games").action == "allow"
    assert decided([only], PUPIL, "https://en.wikipedia.org/").category == "classroom_lock"
    # A classroom override beats an individual's exemption.
    games = item(id=2, user="a.pupil", category="games")
    assert decided([lock, games], PUPIL, "https://poki.com/", "games").category == "classroom_lock"


def test_filter_errors_are_not_lifted():
    from aupguard.core.decide import filter_error

    classification = classified("https://poki.com/", "games")
    snapshot = ex.ExemptionSet([item(group="pupils", sites=("poki.com",))])
    decision = snapshot.apply(POLICY, PUPIL, classification, filter_error(POLICY, PUPIL), NOW)
    assert decision.blocked and decision.category == "filter_error"


def test_active_for_lists_what_explain_shows():
    relevant = item(group="pupils", sites=("poki.com",))
    unrelated = item(id=2, group="pupils", sites=("kahoot.it",))
    expired = item(id=3, group="pupils", category="games", until=NOW)
    snapshot = ex.ExemptionSet([relevant, unrelated, expired])
    assert snapshot.active_for(PUPIL, normalize_url("https://poki.com/"), NOW) == (relevant,)


def test_parse_until():
    zone = POLICY.timezone
    assert exstore.parse_until("+45m", zone, NOW) == NOW + timedelta(minutes=45)
    assert exstore.parse_until("+2d", zone, NOW) == NOW + timedelta(days=2)
    summer = datetime(2026, 7, 1, 9, 0, tzinfo=UTC)
    assert exstore.parse_until("15:30", zone, summer) == datetime(2026, 7, 1, 14, 30, tzinfo=UTC)  # BST
    assert exstore.parse_until("2026-11-23T15:30", zone, NOW) == datetime(2026, 11, 23, 15, 30, tzinfo=UTC)
    with pytest.raises(exrec.ExemptionError):
        exstore.parse_until("tomorrow", zone, NOW)


# -- the command line --------------------------------------------------------------------------------


def test_cli_add_list_revoke(tmp_path):
    env = {"AUPGUARD_DATA": str(tmp_path / "var")}
    added = aupguard(
        "exempt", "add", "--group", "pupils", "--site", "https://www.poki.com/game", "--until", "+1h",
        "--by", "Ms Khan", "--reason", "maths games lesson", env=env,
    )  # fmt: skip
    assert "added exemption #1" in added.stdout and "site poki.com" in added.stdout
    (row,) = [json.loads(line) for line in aupguard("exempt", "list", "--format", "json", env=env).stdout.splitlines()]
    assert row["who"] == "group pupils" and row["by"] == "Ms Khan" and row["reason"] == "maths games lesson"
    refused = aupguard(
        "exempt", "add", "--group", "pupils", "--category", "illegal", "--until", "+1h", "--by", "x", "--reason", "y",
        env=env, check=False,
    )  # fmt: skip
    assert refused.returncode != 0 and "mandatory" in refused.stderr
    feed = tmp_path / "feed.txt"
    feed.write_text("illegal-feed.example\n")
    aupguard("lists", "import", "domains", str(feed), "--category", "illegal", "--name", "mandatory", env=env)
    refused = aupguard(
        "exempt", "add", "--group", "pupils", "--site", "www.illegal-feed.example", "--until", "+1h", "--by", "x",
        "--reason", "y", env=env, check=False,
    )  # fmt: skip
    assert refused.returncode != 0 and "mandatory category illegal" in refused.stderr
    assert "revoked" in aupguard("exempt", "revoke", "1", "--by", "Mr Head", env=env).stdout
    assert aupguard("exempt", "list", env=env).stdout.strip() == "none"
    assert len(aupguard("exempt", "list", "--all", "--format", "json", env=env).stdout.splitlines()) == 1
    audit = [json.loads(line) for line in aupguard("exempt", "audit", env=env).stdout.splitlines()]
    assert [(a["action"], a["actor"]) for a in audit] == [("add", "Ms Khan"), ("revoke", "Mr Head")]
    assert aupguard("exempt", "revoke", "1", "--by", "Mr Head", env=env, check=False).returncode != 0


def test_cli_list_shows_the_school_time_and_json_utc(tmp_path):
    def in_india(policy):  # no summer time: the offset is +05:30 whatever the date the test runs
        policy["school"]["timezone"] = "Asia/Kolkata"

    policy = str(write_policy(tmp_path / "policy.yaml", in_india))
    env = {"AUPGUARD_DATA": str(tmp_path / "var"), "COLUMNS": "200"}
    local = (datetime.now(timezone(timedelta(hours=5, minutes=30))) + timedelta(days=2)).replace(hour=15, minute=30)
    aupguard(
        "exempt", "add", "--config", policy, "--group", "staff", "--category", "games",
        "--until", f"{local:%Y-%m-%dT%H:%M}", "--by", "Ms Khan", "--reason", "club", env=env,
    )  # fmt: skip
    table = aupguard("exempt", "list", "--config", policy, env=env).stdout
    assert f"{local:%Y-%m-%d} 15:30" in table and "Z" not in table  # the school's time, as typed
    (row,) = [json.loads(line) for line in aupguard("exempt", "list", "--format", "json", env=env).stdout.splitlines()]
    assert row["until"] == f"{local:%Y-%m-%d}T10:00:00.000000Z"


def test_cli_shows_control_characters_in_names_and_reasons_instead_of_obeying_them(tmp_path):
    env = {"AUPGUARD_DATA": str(tmp_path / "var"), "COLUMNS": "300"}
    added = aupguard(
        "exempt", "add", "--group", "staff", "--category", "games", "--until", "+1h",
        "--by", "Ms Khan", "--reason", "club \u202egnissim \x9b31m", env=env,
    ).stdout  # fmt: skip
    table = aupguard("exempt", "list", env=env).stdout
    for shown in (added, table):
        assert "\u202e" not in shown and "\x9b" not in shown  # C0 controls are refused at input already
    assert "club \\u202egnissim \\x9b31m" in table


def test_cli_classroom(tmp_path):
    env = {"AUPGUARD_DATA": str(tmp_path / "var")}
    out = aupguard(
        "classroom", "set", "--ip", "10.20.4.0/24", "--mode", "allow-only", "--site", "bbc.co.uk",
        "--site", "kahoot.it", "--until", "+50m", "--by", "Mr Jones", "--reason", "mock exam", env=env,
    ).stdout  # fmt: skip
    assert "classroom override #1" in out and "allow only bbc.co.uk, kahoot.it" in out
    (row,) = [
        json.loads(line) for line in aupguard("classroom", "list", "--format", "json", env=env).stdout.splitlines()
    ]
    assert row["kind"] == "allow_only" and row["who"] == "addresses 10.20.4.0/24"
    assert aupguard("classroom", "end", "1", "--by", "Mr Jones", env=env).returncode == 0
    assert aupguard("classroom", "list", env=env).stdout.strip() == "none"


# -- a running proxy honours changes within seconds ----------------------------------------------------


def test_a_running_proxy_honours_exemptions_and_overrides_without_a_restart(tmp_path, origin):
    local_games = with_list_root(tmp_path / "lists")

    (tmp_path / "lists" / "games").mkdir(parents=True)
    # The game is the loopback address (an exemption names one site: a single label such as localhost is refused).
    (tmp_path / "lists" / "games" / "domains").write_text("127.0.0.1\n")
    running = start_proxy(tmp_path, write_policy(tmp_path / "policy.yaml", local_games))
    env = {"AUPGUARD_DATA": str(tmp_path / "var")}
    game, lesson = origin.url("/game"), origin.url("/lesson", host="localhost")
    try:
        assert requests.get(game, proxies=running.proxies, timeout=15).status_code == 403
        aupguard("exempt", "add", "--group", "pupils", "--site", "127.0.0.1", "--until", "+1h",
                 "--by", "Ms Khan", "--reason", "games lesson", env=env)  # fmt: skip
        wait_for_status(running, game, 200)
        aupguard("classroom", "set", "--ip", "127.0.0.1", "--mode", "block-all", "--until", "+1h",
                 "--by", "Mr Jones", "--reason", "exam", env=env)  # fmt: skip
        wait_for_status(running, lesson, 403)
        assert "Locked by your teacher" in requests.get(lesson, proxies=running.proxies, timeout=15).text
        aupguard("classroom", "end", "2", "--by", "Mr Jones", env=env)
        wait_for_status(running, lesson, 200)
        aupguard("exempt", "revoke", "1", "--by", "Ms Khan", env=env)
        wait_for_status(running, game, 403)
    finally:
        running.stop()


# -- one site, never a public suffix (issue 10.1) -------------------------------------------------------

PUBLIC_SUFFIXES = ["com", "co.uk", ".com", "COM.", "*.co.uk", "xn--p1ai", "рф", "com.bd", "lancs.sch.uk"]


@pytest.mark.parametrize("site", PUBLIC_SUFFIXES)
def test_an_exemption_or_classroom_site_is_never_a_public_suffix(store, site):
    # `lists import`'s words: a single-label suffix (com) is "a single label", co.uk "a public suffix".
    with pytest.raises(exrec.ExemptionError, match=r"is not one site: .* it would match every site under it"):
        add(store, group="pupils", sites=[site])
    with pytest.raises(exrec.ExemptionError, match="it would match every site under it"):
        add(store, kind=exrec.ALLOW_ONLY, network="10.20.4.0/24", sites=["bbc.co.uk", site])
    assert exstore.audit_trail(store) == []


def test_sites_below_a_public_suffix_are_one_site(store):
    sites = ["example.com", "www.example.co.uk", "myschool.lancs.sch.uk", "city.kawasaki.jp", "www.com", "10.0.0.1"]
    assert [add(store, group="pupils", sites=[site]).sites for site in sites] == [
        ("example.com",), ("example.co.uk",), ("myschool.lancs.sch.uk",), ("city.kawasaki.jp",), ("www.com",),
        ("10.0.0.1",),
    ]  # fmt: skip


def test_cli_refuses_a_public_suffix_site_and_accepts_one_below_it(tmp_path):
    env = {"AUPGUARD_DATA": str(tmp_path / "var")}
    common = ("--until", "+1h", "--by", "x", "--reason", "y")
    for site in ("com", "co.uk", ".com", "COM.", "xn--p1ai"):
        refused = aupguard("exempt", "add", "--group", "pupils", "--site", site, *common, env=env, check=False)
        assert refused.returncode == 1 and "it would match every site under it" in refused.stderr, site
    refused = aupguard("classroom", "set", "--ip", "10.20.4.0/24", "--mode", "allow-only", "--site", "kahoot.it",
                       "--site", "co.uk", *common, env=env, check=False)  # fmt: skip
    assert refused.returncode == 1 and "'co.uk' is a public suffix" in refused.stderr
    assert aupguard("exempt", "list", env=env).stdout.strip() == "none"
    for site in ("example.com", "www.example.co.uk"):
        aupguard("exempt", "add", "--group", "pupils", "--site", site, *common, env=env)
    listed = [
        json.loads(line)["what"] for line in aupguard("exempt", "list", "--format", "json", env=env).stdout.splitlines()
    ]
    assert listed == ["site example.co.uk", "site example.com"]


# Hosts made of public-suffix rules (explicit, wildcard and exception ones alike, markers dropped),
# with zero to two labels before them: what one_site must tell apart from a whole namespace.
_PUBLIC_SUFFIXES = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)  # bundled list, offline
_RULES = sorted({rule.lstrip("*.!") for rule in _PUBLIC_SUFFIXES.tlds})
_LABEL = st.one_of(st.sampled_from(["www", "city", "com", "co", "example", "xn--p1ai", "a-b"]),
                   st.from_regex(r"[a-z0-9]{1,10}", fullmatch=True))  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.lists(_LABEL, max_size=2), st.sampled_from(_RULES), st.sampled_from(["", ".", "CASE"]))
@example(["com"], "bd", "")  # com.bd: a suffix by the wildcard rule *.bd
@example(["city"], "kawasaki.jp", "")  # an exception rule's one site
def test_one_site_accepts_only_a_registrable_domain_or_a_host_below_one(labels, rule, spelling):
    host = ".".join([*labels, rule])
    written = host.upper() if spelling == "CASE" else host + spelling
    try:
        site = one_site(written)
    except ValueError:
        return
    # The oracle is tldextract's own reading of the public suffix list (ICANN section), not one_site's.
    parts = _PUBLIC_SUFFIXES(site)
    assert parts.domain, f"{written!r} accepted as {site!r}, but its registrable part is empty: {parts}"
    assert parts.suffix or "." in site, f"{site!r}: a bare unknown top-level domain"


def store_row(db, kind, sites, **columns):
    """An exemption as an older aupguard stored it, before public suffixes were refused."""
    row = {"kind": kind, "sites": json.dumps(sites), "until_utc": "2099-01-01T00:00:00.000000Z",
           "created_utc": "2026-01-01T00:00:00.000000Z", "created_by": "old", "reason": "before the fix", **columns}  # fmt: skip
    with db.conn:
        db.execute(
            f"INSERT INTO exemptions ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values())
        )


def test_a_stored_public_suffix_exemption_does_not_let_an_adult_site_through(tmp_path, caplog):

    adult_list = with_list_root(tmp_path / "lists")

    (tmp_path / "lists" / "adult").mkdir(parents=True)
    (tmp_path / "lists" / "adult" / "domains").write_text("adult-site.com\n")
    engine = load_engine(write_policy(tmp_path / "policy.yaml", adult_list), index_path=None, exemptions_path=None)
    path = tmp_path / "exemptions.db"
    db = exstore.open_store(path)
    store_row(db, exrec.EXEMPTION, ["com"], group_name="pupils")
    store_row(db, exrec.ALLOW_ONLY, ["co.uk", "kahoot.it"], network="10.20.5.0/24")
    db.close()
    with caplog.at_level("WARNING", logger="aupguard.store.exemptions"):
        engine = engine.replace(exemptions=exstore.load_active(path))
    warnings = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(warnings) == 1 and "#1 'com'" in warnings[0] and "#2 'co.uk'" in warnings[0]
    verdict = engine.check("https://www.adult-site.com/", engine.identify("a.pupil", "10.20.4.7"))
    assert verdict.blocked and verdict.decision.category == "adult" and verdict.decision.exemption is None
    # The allow-only override keeps its lock and its one real site: the room is not opened.
    room = "10.20.5.9"
    assert engine.check("https://www.bbc.co.uk/", engine.identify(None, room)).decision.category == "classroom_lock"
    assert not engine.check("https://kahoot.it/", engine.identify(None, room)).blocked
    env = {"AUPGUARD_DATA": str(tmp_path / "var")}
    rows = aupguard("exempt", "list", "--store", str(path), "--format", "json", env=env).stdout.splitlines()
    whats = [json.loads(line)["what"] for line in rows]
    assert whats[1].startswith("site com (refused, never applied: 'com' is a single label")
    assert whats[0].startswith("allow only co.uk, kahoot.it (refused, never applied: 'co.uk' is a public suffix")


# -- what may be exempted, and for how long; who ran the command (issue 10.2) ---------------------------


def test_only_the_mandatory_tier_is_not_exemptable_and_help_says_so():
    refused = sorted(name for name, category in POLICY.categories.items() if not category.exemptable)
    assert refused == sorted(POLICY.mandatory) == ["illegal"]
    help_text = " ".join(CliRunner().invoke(main, ["exempt", "--help"]).output.split())
    assert f"the bundled policy marks only {', '.join(refused)}" in help_text and "adult included" in help_text
    assert "can never be exempted" not in help_text


ADDING = ("exempt add", "classroom set")


def example_commands(text: str) -> list[list[str]]:
    """The arguments of each `aupguard exempt add` / `classroom set` line in `text` (continuations joined)."""
    lines = text.replace("\\\n", " ").splitlines()
    return [shlex.split(line)[1:] for line in lines if line.strip().startswith(tuple(f"aupguard {c} " for c in ADDING))]


def readme_examples(section: str) -> list[list[str]]:
    body = (REPO / "README.md").read_text().split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return example_commands("\n".join(body.split("```")[1::2]))


def help_examples(group: str) -> list[list[str]]:
    return example_commands(CliRunner().invoke(main, [group, "--help"]).output)


def test_the_readme_and_help_examples_run_against_the_bundled_policy(tmp_path):
    examples = readme_examples("Exemptions and classroom overrides")
    examples += help_examples("exempt") + help_examples("classroom")
    assert len(examples) >= 8 and any("adult" in e for e in examples) and any("pupils" in e for e in examples)
    env = {"AUPGUARD_DATA": str(tmp_path / "var")}
    for _number, args in enumerate(examples, 1):
        assert "added" in aupguard(*args, env=env).stdout, args
    assert len(aupguard("exempt", "list", "--format", "json", env=env).stdout.splitlines()) == len(examples)


def test_until_is_capped_by_exemptions_max_days(store, tmp_path):
    add(store, group="pupils", category="games", until=NOW + timedelta(days=31))
    with pytest.raises(exrec.ExemptionError, match=r"more than 31 days away: the policy's exemptions.max_days"):
        add(store, group="pupils", category="games", until=NOW + timedelta(days=31, minutes=1))
    with pytest.raises(exrec.ExemptionError, match="more than 31 days"):
        add(store, kind=exrec.BLOCK_ALL, network="10.20.4.0/24", until=NOW + timedelta(days=40))
    env = {"AUPGUARD_DATA": str(tmp_path / "var")}
    args = ("exempt", "add", "--group", "pupils", "--category", "games", "--by", "x", "--reason", "y")
    refused = aupguard(*args, "--until", "+400d", env=env, check=False)
    assert refused.returncode == 1 and "more than 31 days away" in refused.stderr

    def a_week(policy):
        policy["exemptions"] = {"max_days": 7}

    week = str(write_policy(tmp_path / "policy.yaml", a_week))
    assert aupguard(*args, "--config", week, "--until", "+8d", env=env, check=False).returncode == 1
    assert "added" in aupguard(*args, "--config", week, "--until", "+7d", env=env).stdout


def test_the_audit_trail_records_the_os_account_beside_by(tmp_path):
    account = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    env = {"AUPGUARD_DATA": str(tmp_path / "var"), "USER": "mallory", "LOGNAME": "mallory"}  # not what is recorded
    aupguard("exempt", "add", "--group", "pupils", "--category", "games", "--until", "+1h", "--by", "Ms Khan",
             "--reason", "lesson", env=env)  # fmt: skip
    aupguard("exempt", "revoke", "1", "--by", "Mr Head", env=env)
    audit = [json.loads(line) for line in aupguard("exempt", "audit", env=env).stdout.splitlines()]
    assert [(a["action"], a["actor"], a["os_user"]) for a in audit] == [
        ("add", "Ms Khan", account), ("revoke", "Mr Head", account),
    ]  # fmt: skip
    (row,) = [
        json.loads(line)
        for line in aupguard("exempt", "list", "--all", "--format", "json", env=env).stdout.splitlines()
    ]
    assert row["by"] == "Ms Khan" and row["os_user"] == account


def test_the_os_account_falls_back_to_the_uid(monkeypatch):
    def no_entry(uid):
        raise KeyError(uid)

    monkeypatch.setattr(exstore.pwd, "getpwuid", no_entry)
    monkeypatch.delenv("SUDO_USER", raising=False)
    assert exstore.current_os_user() == f"uid {os.getuid()}"


def test_an_older_store_gains_the_os_user_columns(tmp_path, monkeypatch):
    monkeypatch.setattr(exstore.pwd, "getpwuid", lambda uid: SimpleNamespace(pw_name="it-technician"))
    monkeypatch.delenv("SUDO_USER", raising=False)
    path = tmp_path / "exemptions.db"
    old = sqlite3.connect(path)
    old.executescript(
        """CREATE TABLE exemptions (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, group_name TEXT, username TEXT,
             network TEXT, sites TEXT NOT NULL, category TEXT, until_utc TEXT NOT NULL, created_utc TEXT NOT NULL,
             created_by TEXT NOT NULL, reason TEXT NOT NULL, revoked_utc TEXT, revoked_by TEXT, revoke_reason TEXT);
           CREATE TABLE audit (id INTEGER PRIMARY KEY, ts_utc TEXT NOT NULL, actor TEXT NOT NULL,
             action TEXT NOT NULL, exemption_id INTEGER NOT NULL, what TEXT NOT NULL, reason TEXT NOT NULL);
           INSERT INTO audit (ts_utc, actor, action, exemption_id, what, reason)
             VALUES ('2026-01-01T00:00:00Z', 'old', 'add', 1, '{}', 'r');"""
    )
    old.close()
    db = exstore.open_store(path)
    try:
        add(db, group="pupils", category="games")
        trail = exstore.audit_trail(db)
        assert trail[0]["os_user"] is None and trail[1]["os_user"] == "it-technician"
    finally:
        db.close()
