"""The policy file: the bundled default, and every kind of mistake reported with its line and reason."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aupguard.base import paths
from aupguard.base.vocabulary import CATEGORIES, SEVERITIES, severity_rank
from aupguard.config.loader import load_policy
from aupguard.config.policy import Policy, PolicyError
from aupguard.config.yamlfile import MAX_POLICY_BYTES
from aupguard.core.identify import identify
from aupguard.lists.model import ListError, mapped
from aupguard.runtime import load_engine
from conftest import write_policy, write_tree
from policy_cases import BASE, assert_refused, edit_once, line_of, write

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "config" / "policy.yaml"

HARMFUL = {"adult", "gambling", "hate", "violence", "drugs", "self_harm", "extremism", "malware", "phishing"}
CIRCUMVENTION = {"anonymizers", "vpn", "doh", "remote_access", "circumvention"}


def edited(old: str, new: str) -> str:
    return edit_once(BASE, old, new)


# -- the bundled policy -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundled() -> Policy:
    return load_policy(BUNDLED)


def test_bundled_policy_groups_and_blocks(bundled):
    assert set(bundled.groups) == {"early_years", "pupils", "sixth_form", "staff", "governors", "visitors"}
    assert bundled.default_group == "pupils"  # the most restricted group: unknown devices get it
    pupils, staff, visitors = (bundled.groups[name] for name in ("pupils", "staff", "visitors"))
    sixth_form, governors = bundled.groups["sixth_form"], bundled.groups["governors"]
    assert "social_networks" in pupils.block
    # Staff may use social networks and personal email at breaks and lunch only.
    assert {"social_networks", "webmail"} <= staff.block
    assert staff.allow_during == {"breaks": {"social_networks", "webmail"}, "lunch": {"social_networks", "webmail"}}
    assert "social_networks" not in staff.blocks("breaks") and "social_networks" in staff.blocks("lessons")
    assert "games" in sixth_form.blocks("lessons") and "games" not in sixth_form.blocks("after_school")
    for group in (pupils, sixth_form, staff, governors, visitors):
        assert group.block >= HARMFUL | CIRCUMVENTION, group.name
        assert group.allow == {"school_allow"} and not group.walled_garden
    assert pupils.fail_closed and visitors.fail_closed and sixth_form.fail_closed
    assert not staff.fail_closed and not governors.fail_closed
    assert {"webmail", "chat", "games", "dating"} <= pupils.block


def test_bundled_early_years_is_a_walled_garden(bundled):
    early = bundled.groups["early_years"]
    assert early.walled_garden and early.fail_closed and early.allow == {"early_years_allow"}
    assert bundled.mandatory <= early.block  # listed or not, the mandatory tier is blocked


def test_bundled_mandatory_tier(bundled):
    # Only the illegal-content feeds (IWF, CTIRU) are beyond the school's own allow list and exemptions.
    assert bundled.mandatory == {"illegal"}
    for group in bundled.groups.values():
        assert bundled.mandatory <= group.block
        assert not bundled.mandatory & group.allow
    illegal = bundled.categories["illegal"]
    assert illegal.severity == "critical" and illegal.label == "Illegal content"
    # The block page stays calm and never describes the content it stops.
    assert not re.search(r"abuse|sexual|terror|\bchild\b|imag", illegal.reason, re.IGNORECASE)
    # The harmful categories are still blocked for every group, but the school can correct their
    # false positives with its allow list or the Head's written permission.
    for name in HARMFUL:
        assert not bundled.categories[name].mandatory, name


def test_bundled_timetable(bundled):
    from datetime import datetime

    table = bundled.timetable
    assert table.windows == {"lessons", "breaks", "lunch", "after_school", "weekends", "holidays"}
    monday = datetime(2026, 11, 23)  # naive: school-local
    expected = {"08:49": None, "08:50": "lessons", "10:50": "breaks", "11:09": "breaks", "11:10": "lessons",
                "12:45": "lunch", "15:20": "after_school", "17:59": "after_school", "18:00": None}  # fmt: skip
    for clock, window in expected.items():
        hour, minute = map(int, clock.split(":"))
        assert table.window_at(monday.replace(hour=hour, minute=minute)) == window, clock
    assert table.window_at(datetime(2026, 11, 28, 12, 0)) == "weekends"


def test_bundled_download_rules(bundled):
    pupils = bundled.groups["pupils"]
    assert {"executable", "installer", "apk", "torrent"} <= pupils.download_block_types
    assert pupils.max_download_bytes == 200 * 1024 * 1024
    assert bundled.groups["staff"].download_block_types == frozenset()
    assert bundled.groups["staff"].max_download_bytes is None
    for name in ("download", "filter_error", "not_in_walled_garden", "early_years_allow"):
        assert bundled.categories[name].label and bundled.categories[name].reason
    assert bundled.categories["download"].label == "Blocked download"


def test_bundled_policy_explains_every_category(bundled):
    assert set(CATEGORIES) <= set(bundled.categories)
    for category in bundled.categories.values():
        assert category.label and category.reason and category.severity in {"low", "medium", "high", "critical"}
    for name in HARMFUL | CIRCUMVENTION - {"circumvention"} | {"social_networks", "games"}:
        assert "Acceptable Use Policy" in bundled.categories[name].reason, name
    assert "bypass the filtering" in bundled.categories["anonymizers"].reason
    assert "social media sites with permission" in bundled.categories["social_networks"].reason
    severities = {name: c.severity for name, c in bundled.categories.items()}
    assert {severities[n] for n in ("adult", "hate", "violence", "self_harm", "extremism")} == {"high"}
    assert {severities[n] for n in ("anonymizers", "vpn", "doh", "remote_access", "circumvention")} == {"medium"}
    assert severities["filter_error"] == severities["social_networks"] == "low"


def test_bundled_policy_settings(bundled):
    assert bundled.school_name and bundled.it_contact and bundled.accidental_text
    assert str(bundled.timezone) == "Europe/London"
    assert bundled.no_decrypt_categories == {"banking", "health"}
    assert bundled.tls_intercept is True
    assert bundled.retention_days == 90
    assert bundled.exemption_max_days == 31  # documented in config/README.md
    assert bundled.users == {} and bundled.networks == ()  # examples only: nobody is staff by accident


def test_bundled_list_paths(monkeypatch, tmp_path):
    monkeypatch.setattr(paths, "DATA_DIR", tmp_path / "data")
    policy = load_policy(BUNDLED)
    blocklists, ut1, doh, vpn, mandatory = policy.lists
    assert (blocklists.name, blocklists.path, blocklists.mapping, blocklists.optional) == (
        "blocklists",
        REPO / "blocklists",
        None,
        False,
    )
    assert (ut1.name, ut1.path, ut1.optional) == ("ut1", tmp_path / "data" / "lists" / "ut1", True)
    assert ut1.mapping and {mapped(value)[0] for value in ut1.mapping.values()} - {None} <= set(policy.categories)
    assert mapped(ut1.mapping["strict_redirector"]) == ("anonymizers", frozenset({"expressions"}))
    # `aupguard lists import doh|vpn` folders: category folders named as aupguard's, no mapping.
    assert [(r.name, r.path, r.mapping, r.optional) for r in (doh, vpn)] == [
        ("doh", tmp_path / "data" / "lists" / "doh", None, True),
        ("vpn", tmp_path / "data" / "lists" / "vpn", None, True),
    ]
    # Licensed illegal-content feeds: aupguard category folders (`illegal/domains`), no mapping.
    assert (mandatory.name, mandatory.path, mandatory.mapping, mandatory.optional) == (
        "mandatory",
        tmp_path / "data" / "lists" / "mandatory",
        None,
        True,
    )


# -- a valid policy, read in detail -------------------------------------------------------------


def test_base_policy_reads(tmp_path):
    policy = load_policy(write(tmp_path, BASE))
    assert policy.path == tmp_path / "policy.yaml"
    assert policy.groups["staff"].description == "Staff"
    assert policy.groups["visitors"].fail_closed is True  # fail_closed defaults to the safe side
    assert policy.groups["visitors"].allow == frozenset()
    assert policy.users == {"head.teacher": "staff"}  # usernames are casefolded
    # most specific range first
    assert [str(rule.network) for rule in policy.networks] == ["10.20.5.0/24", "10.20.0.0/16"]
    assert policy.lists[0].path == tmp_path / "lists"
    assert policy.no_decrypt_hosts == {"example-bank.co.uk"}
    assert policy.no_decrypt_categories == frozenset()
    assert identify(policy, "HEAD.teacher", "10.20.5.1").group == "staff"


def test_empty_collections_may_be_left_blank(tmp_path):
    """`users:` with every example commented out is an empty mapping, not an error."""
    text = edited("  users:\n    Head.Teacher: staff\n", "  users:\n    # jbloggs: staff\n")
    text = text.replace("  no_decrypt: [Example-Bank.CO.UK.]\n", "  no_decrypt:\n")
    policy = load_policy(write(tmp_path, text))
    assert policy.users == {} and policy.no_decrypt_hosts == frozenset()


def test_data_placeholder_and_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "DATA_DIR", tmp_path / "var")
    text = edited(
        "  - {name: local, path: lists}\n",
        f"  - {{name: ut1, path: '{{data}}/lists/ut1', optional: true}}\n  - {{name: abs, path: {tmp_path}/x/../y}}\n",
    )
    ut1, absolute = load_policy(write(tmp_path, text)).lists
    assert ut1.path == tmp_path / "var" / "lists" / "ut1" and ut1.optional
    assert absolute.path == tmp_path / "y" and not absolute.optional


def test_mapping_is_loaded_relative_to_the_policy(tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "map.yaml").write_text("agressif: violence\nbitcoin: null\n")
    text = edited("  - {name: local, path: lists}\n", "  - {name: ut1, path: ut1, mapping: map.yaml}\n")
    (root,) = load_policy(write(tmp_path / "conf", text)).lists
    assert root.mapping == {"agressif": "violence", "bitcoin": None}
    assert root.path == tmp_path / "conf" / "ut1"


def test_severity_rank():
    assert SEVERITIES == ("low", "medium", "high", "critical")
    assert [severity_rank(s) for s in ("low", "medium", "high", "critical")] == [0, 1, 2, 3]
    assert severity_rank("critical") > severity_rank("high") > severity_rank("low")
    with pytest.raises(ValueError):
        severity_rank("urgent")


# -- broken policies ----------------------------------------------------------------------------

# (id, text to replace, replacement, a unique marker on the line the error must name, reason pattern)
BROKEN = [
    ("yaml-syntax", "  name: Test School", "  name: Test: School", "Test: School", r"invalid YAML: .*mapping values are not allowed"),
    ("yaml-unclosed", "  accidental: It's OK.", '  accidental: "It\'s OK.', "It's OK.", r"invalid YAML: while scanning a quoted scalar found unexpected end of stream \(line \d+\)"),
    ("top-level-key", "tls:\n", "grups: {}\ntls:\n", "grups", r"unknown top-level key 'grups' \(did you mean 'groups'\?\)"),
    ("section-key", "  name: Test School", "  nmae: Test School", "nmae", r"^school: unknown key 'nmae' \(did you mean 'name'\?\)"),
    ("key-no-hint", "  intercept: true", "  intercept: true\n  colour: blue", "colour", r"^tls: unknown key 'colour' \(expected intercept, no_decrypt\)"),
    ("missing-key", "  timezone: Europe/London\n", "", "school:", r"^school: missing key 'timezone'"),
    ("missing-section", "block_page:\n  accidental: It's OK.\n", "", "version: 1", r"^missing top-level key 'block_page'"),
    ("version", "version: 1", "version: 2  # v2", "# v2", r"^unknown version 2 \(this aupguard reads version 1\)"),
    ("version-type", "version: 1", "version: one  # v", "# v", r"^version: expected a whole number, got text"),
    ("int-type", "  retention_days: 30", "  retention_days: ninety", "ninety", r"^records.retention_days: expected a whole number, got text"),
    ("int-range", "  retention_days: 30", "  retention_days: 0", "retention_days", r"records.retention_days must be between 1 and 3650"),
    # aupguard records blocked attempts only (minimum personal data): there is no switch to log allowed browsing.
    ("no-log-allowed", "  retention_days: 30", "  retention_days: 30\n  log_allowed: true", "log_allowed", r"^records: unknown key 'log_allowed' \(expected retention_days\)"),
    ("bool-type", "  intercept: true", "  intercept: maybe", "maybe", r"^tls.intercept: expected true or false, got text"),
    ("text-type", "  name: Test School", "  name: 1234", "1234", r"^school.name: expected text, got a number \(put it in quotes to mean the text '1234'\)"),
    ("text-empty", "  it_contact: it@example.sch.uk", "  it_contact: ''", "it_contact", r"^school.it_contact: must not be empty"),
    ("text-list", "  name: Test School", "  name: [a, b]", "[a, b]", r"^school.name: expected text, got a list"),
    ("section-type", "school:\n  name: Test School\n  timezone: Europe/London\n  it_contact: it@example.sch.uk\n", "school: Test School\n", "school:", r"^school: expected a mapping \(key: value lines\), got text"),
    ("list-type", "    block: [adult]\n", "    block: adult\n", "block: adult", r"^groups.staff.block: expected a list, got text"),
    ("timezone", "  timezone: Europe/London", "  timezone: Europe/Londn", "Londn", r"^school.timezone: unknown time zone 'Europe/Londn' \(did you mean 'Europe/London'\?\)"),
    ("timezone-path", "  timezone: Europe/London", "  timezone: /etc/passwd", "passwd", r"^school.timezone: unknown time zone '/etc/passwd'"),
    ("severity", "  gambling: {label: gambling sites, severity: low,", "  gambling: {label: gambling sites, severity: hgh,", "hgh", r"^categories.gambling.severity: unknown severity 'hgh' \(one of low, medium, high, critical\)"),
    ("category-key", "  gambling: {label: gambling sites,", "  gambling: {colour: red, label: gambling sites,", "colour", r"^categories.gambling: unknown key 'colour'"),
    ("category-name", "  gambling: {label", "  Gambling!: {label", "Gambling!", r"'Gambling!' is not a category name"),
    ("category-missing", "  gambling: {label", "  local_block: {label", "categories:", r"^categories: missing gambling \(every aupguard category"),
    ("block-unknown", "    block: [adult, social_networks]", "    block: [adlut, social_networks]", "adlut", r"^groups.pupils.block: unknown category 'adlut' \(did you mean 'adult'\?\)"),
    ("allow-unknown", "    allow: [school_allow]", "    allow: [school_alow]", "school_alow", r"^groups.pupils.allow: unknown category 'school_alow' \(did you mean 'school_allow'\?\)"),
    ("block-and-allow", "    allow: [school_allow]", "    allow: [school_allow, adult]", "school_allow, adult", r"^groups.pupils: adult is both blocked and allowed"),
    ("group-key", "    fail_closed: false", "    fail_close: false", "fail_close:", r"^groups.staff: unknown key 'fail_close' \(did you mean 'fail_closed'\?\)"),
    ("group-name", "  visitors:", "  'visitors and guests':", "visitors and", r"is not a group name"),
    ("no-groups", BASE[BASE.index("groups:") : BASE.index("identity:")], "groups: {}\n", "groups: {}", r"^groups: at least one group is needed"),
    ("default-group", "  default_group: pupils", "  default_group: pupil", "pupil\n", r"^identity.default_group: unknown group 'pupil' \(did you mean 'pupils'\?\)"),
    ("user-group", "    Head.Teacher: staff", "    Head.Teacher: staf", "staf\n", r"^identity.users.Head.Teacher: unknown group 'staf'"),
    ("user-number", "    Head.Teacher: staff", "    20190123: staff", "20190123", r"^identity.users: key: expected text, got a number \(put it in quotes"),
    ("user-twice", "    Head.Teacher: staff", "    Head.Teacher: staff\n    head.teacher: visitors", "head.teacher", r"^identity.users: 'head.teacher' is listed twice \(first at line \d+; usernames are compared ignoring case\)"),
    ("network-group", "group: visitors}", "group: guests}", "guests", r"^identity.networks entry 2: group: unknown group 'guests'"),
    ("cidr-prefix", "10.20.5.0/24", "10.0.0.0/33", "/33", r"^identity.networks entry 2: cidr: '10.0.0.0/33' is not an address range such as 10.20.0.0/16"),
    ("cidr-text", "10.20.5.0/24", "staffroom", "staffroom", r"is not an address range"),
    ("cidr-host-bits", "10.20.5.0/24", "10.0.0.1/8", "10.0.0.1/8", r"^identity.networks entry 2: cidr: '10.0.0.1/8' has host bits set; did you mean 10.0.0.0/8\?"),
    ("cidr-v6-host-bits", "10.20.5.0/24", "2001:db8::1/64", "2001:db8", r"did you mean 2001:db8::/64\?"),
    ("cidr-mapped", "10.20.5.0/24", "'::ffff:10.20.5.0/120'", "::ffff", r"write IPv4 ranges in IPv4 form: 10.20.5.0/24"),
    ("cidr-twice", "10.20.5.0/24, group: visitors}", "10.20.0.0/16, group: visitors}  # again", "# again", r"^identity.networks entry 2: 10.20.0.0/16 is listed twice \(first at line \d+\)"),
    ("network-key", "{cidr: 10.20.5.0/24,", "{cird: 10.20.5.0/24,", "cird", r"^identity.networks entry 2: unknown key 'cird' \(did you mean 'cidr'\?\)"),
    ("network-missing", "{cidr: 10.20.5.0/24, group: visitors}", "{group: visitors}", "{group: visitors}", r"^identity.networks entry 2: missing key 'cidr'"),
    ("no-decrypt-unknown", "[Example-Bank.CO.UK.]", "[bankng]", "bankng", r"^tls.no_decrypt: 'bankng' is neither a category nor a host name \(did you mean 'banking'\?\)"),
    ("no-decrypt-host", "[Example-Bank.CO.UK.]", "['bad host.example']", "bad host", r"^tls.no_decrypt: 'bad host.example' is not a valid host name"),
    ("list-key", "{name: local, path: lists}", "{name: local, paht: lists}", "paht", r"^lists entry 1: unknown key 'paht' \(did you mean 'path'\?\)"),
    ("list-name", "{name: local, path: lists}", "{name: 'a/b', path: lists}", "a/b", r"^lists entry 1: 'a/b' is not a list name"),
    ("list-twice", "  - {name: local, path: lists}", "  - {name: local, path: lists}\n  - {name: local, path: more}", "more", r"^lists entry 2: the list name 'local' is used twice"),
    ("list-optional", "{name: local, path: lists}", "{name: local, path: lists, optional: sometimes}", "sometimes", r"^lists.local.optional: expected true or false"),
    ("mapping-missing", "{name: local, path: lists}", "{name: local, path: lists, mapping: nowhere.yaml}", "nowhere", r"^lists.local.mapping: .*nowhere.yaml: cannot read the category mapping"),
    ("duplicate-top", "tls:\n", "version: 1  # again\ntls:\n", "# again", r"^duplicate key 'version' \(first at line 1\)"),
    ("duplicate-group", "  visitors:", "  pupils:  # again", "# again", r"^groups: duplicate key 'pupils' \(first at line \d+\)"),
    ("duplicate-field", "    fail_closed: false", "    fail_closed: false\n    fail_closed: true  # again", "# again", r"^groups.staff: duplicate key 'fail_closed'"),
    ("unsafe-tag", "  name: Test School", "  name: !!python/object/apply:os.system echo-hi", "python", r"^school.name: could not determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.system'"),
    ("binary-tag", "  name: Test School", "  name: !!binary aGk=", "binary", r"^school.name: expected text, got a value tagged tag:yaml.org,2002:binary"),
    ("unclosed-key", "  name: Test School\n", "  name: Test School\n  'it_contact\n", "'it_contact", r"invalid YAML: while scanning a simple key could not find expected ':' \(line \d+\)"),
    ("parser-error", "    fail_closed: false\n", "    fail_closed: false\n   - stray\n", "- stray", r"invalid YAML: while parsing a block mapping \(line \d+\) expected <block end>, but found '<block sequence start>'"),
    ("unknown-tag", "  name: Test School", "  name: !secret Test", "!secret", r"^school.name: could not determine a constructor for the tag '!secret'"),
    ("bool-key", "  pupils:\n", "  no:\n", "  no:", r"^groups: key: expected text, got true/false \(put it in quotes to mean the text 'no'\)"),
    ("max-days-low", "records:\n", "exemptions:\n  max_days: 0  # md\nrecords:\n", "# md", r"^exemptions.max_days must be between 1 and 366"),
    ("max-days-high", "records:\n", "exemptions:\n  max_days: 400  # md\nrecords:\n", "# md", r"^exemptions.max_days must be between 1 and 366"),
    ("max-days-key", "records:\n", "exemptions:\n  max_hours: 4\nrecords:\n", "max_hours", r"^exemptions: unknown key 'max_hours' \(expected max_days\)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("old", "new", "marker", "reason"), [case[1:] for case in BROKEN], ids=[case[0] for case in BROKEN]
)
def test_broken_policy_names_line_and_reason(tmp_path, old, new, marker, reason):
    assert_refused(tmp_path, edited(old, new), marker, reason)


def test_mapping_to_an_unknown_category(tmp_path):
    (tmp_path / "map.yaml").write_text("agressif: violence\nwarez: warez\n")
    text = edited("{name: local, path: lists}", "{name: ut1, path: ut1, mapping: map.yaml}")
    with pytest.raises(PolicyError) as caught:
        load_policy(write(tmp_path, text))
    assert caught.value.line == line_of(text, "map.yaml")
    assert re.search(r"^lists.ut1.mapping: .*map.yaml maps 'warez' to unknown category 'warez'", caught.value.reason)
    # The long form's category is checked the same way.
    (tmp_path / "map.yaml").write_text(
        "agressif: violence\nstrict_redirector: {category: anonymisers, skip: [expressions]}\n"
    )
    with pytest.raises(PolicyError) as caught:
        load_policy(write(tmp_path, text))
    assert caught.value.line == line_of(text, "map.yaml")
    assert re.search(
        r"maps 'strict_redirector' to unknown category 'anonymisers' \(did you mean 'anonymizers'\?\)",
        caught.value.reason,
    )


def test_broken_mapping_file_is_reported_at_its_policy_line(tmp_path):
    (tmp_path / "map.yaml").write_text("agressif: [violence]\n")
    text = edited("{name: local, path: lists}", "{name: ut1, path: ut1, mapping: map.yaml}")
    with pytest.raises(PolicyError) as caught:
        load_policy(write(tmp_path, text))
    assert caught.value.line == line_of(text, "map.yaml")
    assert "map.yaml:1:" in caught.value.reason  # the mapping file's own line, from lists.load_mapping


@pytest.mark.parametrize(
    ("content", "line", "reason"),
    [
        (b"", None, "the policy file is empty"),
        (b"# only a comment\n", None, "the policy file is empty"),
        (b"- just\n- a list\n", 1, "the policy file: expected a mapping"),
        (b"version: 1\nschool: caf\xe9\n", 2, "not valid UTF-8 text"),
        (b"version: 1\nschool: \x07\n", 2, "invalid YAML: special characters are not allowed"),
        (b"version: 1\n---\nversion: 1\n", 2, "invalid YAML: expected a single document"),
        (b"a: &x [1]\nb: *y\n", 2, "invalid YAML: found undefined alias"),
    ],
)
def test_broken_files(tmp_path, content, line, reason):
    path = tmp_path / "policy.yaml"
    path.write_bytes(content)
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert caught.value.line == line
    assert reason in caught.value.reason


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(PolicyError, match=r"nothing.yaml: cannot read the policy file: No such file"):
        load_policy(tmp_path / "nothing.yaml")
    with pytest.raises(PolicyError, match="cannot read the policy file"):
        load_policy(tmp_path)


def test_oversized_file_is_refused_unread(tmp_path):
    path = write(tmp_path, BASE + "#" * MAX_POLICY_BYTES + "\n")
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert caught.value.line is None and "larger than 1024 KiB" in caught.value.reason
    assert str(caught.value) == f"{path}: {caught.value.reason}"


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + BASE.encode())
    assert load_policy(path).school_name == "Test School"


def test_ipv6_networks(tmp_path):
    text = edited("10.20.5.0/24, group: visitors}", "'2001:db8:5::/48', group: visitors}")
    policy = load_policy(write(tmp_path, text))
    assert ipaddress.ip_network("2001:db8:5::/48") in {rule.network for rule in policy.networks}


# -- adversarial input --------------------------------------------------------------------------

LINES = BASE.splitlines(keepends=True)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    start=st.integers(0, len(LINES) - 1),
    removed=st.integers(0, 3),
    inserted=st.text(st.characters(codec="utf-8"), max_size=40),
)
def test_any_edit_gives_a_policy_or_a_policy_error(tmp_path, start, removed, inserted):
    """Deleting lines or typing anything anywhere never crashes the loader with another exception."""
    text = "".join(LINES[:start]) + inserted + "".join(LINES[start + removed :])
    path = write(tmp_path, text)
    try:
        policy = load_policy(path)
    except PolicyError as error:
        assert error.file == str(path) and error.reason
        assert error.line is None or 1 <= error.line <= text.count("\n") + 2
    else:
        assert policy.default_group in policy.groups


# -- mandatory tier, walled gardens, downloads ----------------------------------------------------------

MANDATORY = "  adult: {label: adult sites, severity: low,"

POLICY5_BROKEN = [
    ("allow-mandatory", "    allow: [school_allow]", "    allow: [school_allow, adult_mixed]", "adult_mixed]", r"^groups.pupils.allow: adult_mixed is mandatory \(blocked for everyone\): it cannot be allowed"),
    ("mandatory-type", MANDATORY, "  adult: {mandatory: always, label: adult sites, severity: low,", "always", r"^categories.adult.mandatory: expected true or false"),
    ("download-type", "    fail_closed: false", "    fail_closed: false\n    downloads: {block_types: [executable, exe]}", "[executable, exe]", r"^groups.staff.downloads.block_types: unknown file type 'exe' .*\(one of executable, installer, disk_image, apk, torrent, archive, script\)"),
    ("download-size", "    fail_closed: false", "    fail_closed: false\n    downloads: {max_size_mb: 0}", "max_size_mb", r"^groups.staff.downloads.max_size_mb must be between 1 and"),
    ("download-key", "    fail_closed: false", "    fail_closed: false\n    downloads: {max_size: 5}", "max_size:", r"^groups.staff.downloads: unknown key 'max_size' \(did you mean 'max_size_mb'\?\)"),
    ("walled-garden-type", "    fail_closed: false", "    fail_closed: false\n    walled_garden: yes please", "yes please", r"^groups.staff.walled_garden: expected true or false"),
    ("allow-during-no-timetable", "    fail_closed: false", "    fail_closed: false\n    allow_during: {lunch: [adult]}", "lunch", r"^groups.staff.allow_during: unknown window 'lunch' \(timetable.windows defines: holidays\)"),
    ("user-file-key", "  networks:\n", "  user_files:\n    - {path: mis.csv, user_col: username}\n  networks:\n", "user_col", r"^identity.user_files entry 1: unknown key 'user_col' \(did you mean 'user_column'\?\)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("old", "new", "marker", "reason"), [c[1:] for c in POLICY5_BROKEN], ids=[c[0] for c in POLICY5_BROKEN]
)
def test_broken_groups_and_categories_name_line_and_reason(tmp_path, old, new, marker, reason):
    base = BASE.replace("  adult_mixed: {label:", "  adult_mixed: {mandatory: true, label:", 1)
    assert_refused(tmp_path, edit_once(base, old, new), marker, reason)


def decide_for(policy: Policy, group: str, *categories: str, when=None):
    from aupguard.base.urlnorm import normalize_url
    from aupguard.core.classify import Classification, Match
    from aupguard.core.decide import decide
    from aupguard.core.identify import Identity

    url = normalize_url("http://site.example/")
    matches = tuple(Match(c, "domain", "site.example", f"test/{c}/domains") for c in categories)
    return decide(policy, Identity(None, "10.0.0.1", group, "test"), Classification(url, matches), when)


def test_mandatory_categories_are_blocked_for_every_group_whatever_allows_them(tmp_path):
    text = edited(MANDATORY, "  adult: {mandatory: true, label: adult sites, severity: low,")
    text = text.replace("    block: [adult, dating]\n", "    block: [dating]\n")  # visitors no longer list adult
    policy = load_policy(write(tmp_path, text))
    assert policy.mandatory == {"adult"} and "adult" in policy.groups["visitors"].block
    visitors = decide_for(policy, "visitors", "adult")
    assert visitors.blocked and visitors.category == "adult" and "mandatory" in visitors.why
    # The school's allow list overrides ordinary blocks, never the mandatory tier.
    assert decide_for(policy, "pupils", "social_networks", "school_allow").action == "allow"
    both = decide_for(policy, "pupils", "adult", "social_networks", "school_allow")
    assert both.blocked and both.category == "adult" and [m.category for m in both.blocked_by] == ["adult"]


def test_a_walled_garden_blocks_everything_not_allowed(tmp_path):
    text = edited("  visitors:\n", "  infants:\n    walled_garden: true\n    allow: [school_allow]\n  visitors:\n")
    policy = load_policy(write(tmp_path, text))
    nothing = decide_for(policy, "infants")
    assert nothing.blocked and nothing.category == "not_in_walled_garden"
    assert decide_for(policy, "infants", "games").category == "not_in_walled_garden"
    assert decide_for(policy, "infants", "school_allow").action == "allow"
    assert decide_for(policy, "pupils").action == "allow"  # other groups are not walled


def test_bundled_walled_garden_holds_childrens_sites(bundled):
    from aupguard.base.urlnorm import normalize_url
    from aupguard.core.classify import Classifier
    from aupguard.core.decide import decide
    from aupguard.core.identify import Identity
    from aupguard.lists.read import load_lists

    classifier = Classifier(load_lists(bundled.lists[:1]))
    child = Identity(None, "10.0.0.1", "early_years", "test")

    def action(url):
        return decide(bundled, child, classifier.classify(normalize_url(url))).action

    pornography = decide(bundled, child, classifier.classify(normalize_url("https://www.pornhub.com/")))
    # Recorded (and sent to the DSL) as what it is, not as "not in the walled garden".
    assert pornography.category == "adult" and pornography.severity == "high"

    assert action("https://www.topmarks.co.uk/maths-games") == "allow"
    assert action("https://www.bbc.co.uk/cbeebies/games") == "allow"
    assert action("https://www.bbc.co.uk/news") == "block"  # only CBeebies of the BBC
    assert action("https://www.wikipedia.org/") == "block"


def test_exemptions_max_days_is_read_and_defaults_to_a_month(tmp_path):
    assert load_policy(write(tmp_path, BASE, "default.yaml")).exemption_max_days == 31
    week = edited("records:\n", "exemptions:\n  max_days: 7\nrecords:\n")
    assert load_policy(write(tmp_path, week, "week.yaml")).exemption_max_days == 7


@pytest.mark.parametrize("entry", ["co.uk", "com", ".com", "*.co.uk", "com.bd"])
def test_an_allow_list_naming_a_public_suffix_is_refused_at_load(tmp_path, entry):
    # A public suffix on an allow list would let every site under it through (all of .co.uk for
    # pupils): the policy is refused, naming the file and line, as a mandatory entry is.
    local = write_tree(tmp_path / "local", {"school_allow/domains": f"vle.example.co.uk\n{entry}\n"})
    policy = write_policy(
        tmp_path / "policy.yaml", lambda doc: doc["lists"].append({"name": "local", "path": str(local)})
    )
    with pytest.raises(
        ListError, match=re.escape(f"{local / 'school_allow' / 'domains'}:2: allow entry {entry!r}")
    ) as refused:
        load_engine(policy, index_path=None, exemptions_path=None)
    assert "it would match every site under it" in str(refused.value)
    (local / "school_allow" / "domains").write_text("vle.example.co.uk\n")
    engine = load_engine(policy, index_path=None, exemptions_path=None)
    assert not engine.check("https://vle.example.co.uk/", engine.identify(None, "10.20.4.7")).blocked
