"""Circumvention in the decision core, the policy's `circumvention:` section and the DoH/VPN list import."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aupguard.config.loader import load_policy
from aupguard.config.policy import CircumventionRules, PolicyError
from aupguard.core.engine import Engine
from aupguard.core.identify import Identity
from aupguard.core.incident import RepeatRule
from aupguard.lists.model import ListError
from aupguard.offline.importers import host_entry, import_host_list
from conftest import with_list_root, write_policy

sys.path.insert(0, str(Path(__file__).resolve().parent))
import circumvention_corpus as corpus
from aupguard.runtime import load_engine

PUPIL = Identity(None, "10.1.2.3", "pupils", "test")
STAFF = Identity("ms.t", "10.9.9.9", "staff", "test")
T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Engine:
    tmp = tmp_path_factory.mktemp("engine")
    (tmp / "lists" / "school_allow").mkdir(parents=True)
    (tmp / "lists" / "school_allow" / "domains").write_text("vle.example.sch.uk\n")

    def edit(policy):
        policy["lists"] = [root for root in policy["lists"] if not str(root["path"]).startswith("{data}")]
        with_list_root(tmp / "lists")(policy)

    return load_engine(write_policy(tmp / "policy.yaml", edit), index_path=None, exemptions_path=None)


# -- the engine --------------------------------------------------------------------------------------


def test_a_nested_blocked_url_makes_the_request_blocked_with_both_urls(engine):
    verdict = engine.check(corpus.translate_goog("https://www.pornhub.com/view"), PUPIL)
    assert verdict.blocked and verdict.technique == "nested"
    assert verdict.url.host == "www-pornhub-com.translate.goog"
    assert verdict.inner_url == "https://www.pornhub.com/view"
    assert verdict.decision.category == "adult"  # the stricter of the two explains the block


def test_a_nested_allowed_url_is_allowed(engine):
    verdict = engine.check(corpus.translate_goog("https://www.bbc.co.uk/news"), PUPIL)
    assert not verdict.blocked and verdict.technique is None


def test_the_school_allow_list_on_the_outer_url_does_not_open_a_carried_blocked_url(engine):
    verdict = engine.check("https://vle.example.sch.uk/login?next=https%3A%2F%2Fwww.pornhub.com%2F", PUPIL)
    assert verdict.blocked and verdict.technique == "nested" and verdict.inner_url == "https://www.pornhub.com/"


def test_a_signature_beats_a_more_severe_target_as_the_technique(engine):
    verdict = engine.check(corpus.glype_url("maths.example.net", "https://www.pornhub.com/"), PUPIL)
    assert verdict.blocked and verdict.technique == "signature" and verdict.inner_url == "https://www.pornhub.com/"


def test_doh_is_recognised_by_the_request_not_only_the_url(engine):
    assert not engine.check("https://resolver.example.org/", PUPIL).blocked
    verdict = engine.check(
        "https://resolver.example.org/", PUPIL, method="POST", content_type="application/dns-message"
    )
    assert verdict.blocked and verdict.technique == "doh" and verdict.decision.category == "doh"


def test_a_circumvention_list_block_is_technique_list_and_other_blocks_are_not_circumvention(engine):
    assert engine.check("https://www.hidemyass.com/", PUPIL).technique == "list"
    adult = engine.check("https://www.pornhub.com/", PUPIL)
    assert adult.blocked and adult.technique is None


def test_connect_port_bare_ip_and_group_rules(engine):
    refused = engine.check_connect("example.org", 22, STAFF)
    assert refused.blocked and refused.technique == "tunnel" and "port 22" in refused.decision.rule
    bare = engine.check_connect("203.0.113.9", 443, PUPIL)
    assert bare.blocked and "bare-ip" in bare.decision.rule
    assert not engine.check_connect("203.0.113.9", 443, STAFF).blocked  # staff: bare_ip allow
    assert not engine.check_connect("2001:db8::1", 443, STAFF).blocked
    assert engine.check_connect("2001:db8::1", 443, PUPIL).blocked
    assert not engine.check_connect("www.bbc.co.uk", 443, PUPIL).blocked


@pytest.mark.parametrize("spelling", ["2130706433", "0x7f.1", "127.1", "0177.0.0.1", "127.0.0.1.", "0x7F000001"])
def test_every_spelling_of_an_ipv4_address_is_a_bare_ip(engine, spelling):
    """Browsers and connect() accept these for 127.0.0.1: the bare-IP rule must see through them."""
    verdict = engine.check_connect(spelling, 443, PUPIL)
    assert verdict.blocked and verdict.technique == "tunnel" and "bare-ip" in verdict.decision.rule
    assert str(verdict.url.host) == "127.0.0.1"


def test_incidents_are_filed_under_circumvention_and_the_writer_is_told_what_a_repeat_is(engine):
    verdict = engine.check(corpus.phproxy_url("p.example.org", "https://discord.com/"), PUPIL)
    for minute in range(4):  # repeats are raised as they are recorded, by the incident writer (test_incidents)
        incident = engine.incident(
            verdict, method="GET", user_agent=None, action="block", when=T0 + timedelta(minutes=minute)
        )
        assert incident.categories[:2] == ("anonymizers", "circumvention")  # what decided, and that it was an attempt
        assert incident.technique == "signature" and incident.inner_url == "https://discord.com/"
        assert incident.severity == "medium"
    assert engine.repeat_rule == RepeatRule("circumvention", timedelta(minutes=10), 3, "high")


# -- the policy's circumvention section ------------------------------------------------------------


def test_the_section_is_optional_with_safe_defaults(tmp_path):
    policy = load_policy(write_policy(tmp_path / "p.yaml", lambda p: p.pop("circumvention")))
    assert policy.circumvention == CircumventionRules()
    assert policy.circumvention.connect_ports == {443} and not policy.circumvention.bare_ip_allowed


def test_per_group_rules_with_a_default(tmp_path):
    def edit(policy):
        policy["circumvention"] = {"connect_ports": [443, 8443], "bare_ip": {"default": "allow", "pupils": "block"},
                                   "no_sni": "allow", "repeat_threshold": 5}  # fmt: skip

    rules = load_policy(write_policy(tmp_path / "p.yaml", edit)).circumvention
    assert rules.connect_ports == {443, 8443} and rules.repeat_threshold == 5
    assert "pupils" not in rules.bare_ip_allowed and {"staff", "visitors"} <= rules.bare_ip_allowed
    assert {"pupils", "staff"} <= rules.no_sni_allowed


@pytest.mark.parametrize(
    "section, reason",
    [
        ({"connect_ports": [0]}, "not a TCP port"),
        ({"connect_ports": []}, "at least one port"),
        ({"bare_ip": {"pupills": "allow"}}, "unknown group 'pupills' (did you mean 'pupils'?)"),
        ({"no_sni": "maybe"}, "expected block or allow"),
        ({"repeat_threshold": 1}, "between 2 and"),
        ({"repeat_window": 5}, "unknown key 'repeat_window'"),
    ],
)
def test_mistakes_name_the_line_and_reason(tmp_path, section, reason):
    path = write_policy(tmp_path / "p.yaml", lambda p: p.__setitem__("circumvention", section))
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert caught.value.line is not None and reason in caught.value.reason


# -- importing DoH and VPN host lists ----------------------------------------------------------------


@pytest.mark.parametrize(
    "line, host",
    [
        ("dns.google", "dns.google"),
        ("1.1.1.1             # 1dot1dot1dot1.cloudflare-dns.com, one.one.one.one", "1.1.1.1"),
        ("2001:148f:fffe::1                       # odvr.nic.cz", "2001:148f:fffe::1"),
        ("2.56.190.2 # nordvpn", "2.56.190.2"),
        ("||express-vpn.app^", "express-vpn.app"),
        ("DNS.Example.ORG.", "dns.example.org"),
        ("# Updated 2025-08-31", None),
        ("", None),
        ("@@||allowed.example^", None),
        ("! an AdGuard comment", None),
    ],
)
def test_host_list_lines(line, host):
    assert host_entry(line) == host


def test_a_bad_host_line_raises_and_is_skipped_by_the_import(tmp_path):
    for bad in ("not a host name", "0.0.0.0 two.example", "com", "exa_mple!.com"):
        with pytest.raises(ValueError):
            host_entry(bad)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "doh-domains_overall.txt").write_text("dns.example.net\nnot a host name\n")
    result = import_host_list("doh", tmp_path / "src", tmp_path / "doh")
    assert result.categories == {"doh": {"domains": 1}}
    assert "not a host name" in (tmp_path / "doh" / "SOURCE.md").read_text()


def test_vpn_import_applies_upstreams_allow_lists(tmp_path):
    src = tmp_path / "vpn_ip"
    (src / "output").mkdir(parents=True)
    (src / "input" / "hostname_only").mkdir(parents=True)
    (src / "output" / "hostname.txt").write_text("# generated\nnode1.vpn.example\nfonts.cdn.example\n")
    (src / "output" / "adguard.txt").write_text("||vpn.example^\n")
    (src / "output" / "ip.txt").write_text("192.0.2.7 # brand\n8.8.8.8 # wrongly listed\n")
    (src / "input" / "hostname_only" / "proxy.txt").write_text("free-proxy.example\n")
    (src / "input" / "allowlist_hostname_only.txt").write_text("||cdn.example^\n")
    (src / "input" / "allowlist_ip.txt").write_text("8.8.8.0/24\n")
    (src / "LICENSE").write_text("GPL")
    result = import_host_list("vpn", src, tmp_path / "out")
    domains = (tmp_path / "out" / "vpn" / "domains").read_text().split("\n")
    assert [d for d in domains if d and not d.startswith("#")] == ["192.0.2.7", "node1.vpn.example", "vpn.example"]
    assert (tmp_path / "out" / "anonymizers" / "domains").read_text().endswith("free-proxy.example\n")
    assert (tmp_path / "out" / "LICENSE").read_text() == "GPL"
    assert "az0/vpn_ip" in str(result)


def test_a_folder_that_is_no_checkout_is_refused_and_the_old_lists_stay(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "doh" / "doh").mkdir(parents=True)
    (tmp_path / "doh" / "doh" / "domains").write_text("kept.example\n")
    with pytest.raises(ListError, match="not a dibdot/DoH-IP-blocklists checkout"):
        import_host_list("doh", tmp_path / "empty", tmp_path / "doh")
    assert (tmp_path / "doh" / "doh" / "domains").read_text() == "kept.example\n"


def test_the_cli_imports_the_shared_lists(shared_dir, tmp_path):
    from click.testing import CliRunner

    from aupguard.cli.main import main

    result = CliRunner().invoke(
        main,
        [
            "lists",
            "import",
            "doh",
            str(shared_dir / "blocklists-extra" / "dibdot-doh"),
            "--dest",
            str(tmp_path / "doh"),
        ],
    )
    assert result.exit_code == 0, result.output
    entries = set((tmp_path / "doh" / "doh" / "domains").read_text().split())
    assert {"dns.google", "1.1.1.1", "2606:4700:4700::1111"} <= entries


def test_a_proxy_named_host_on_a_cheap_tld_is_blocked_for_pupils(engine):
    verdict = engine.check("http://3.unblocker.xyz/", PUPIL)
    assert verdict.blocked and verdict.technique == "heuristic"
