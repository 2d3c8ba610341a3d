"""Identify: user beats address beats default; longest prefix; IPv4-mapped clients; never raises."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aupguard.base.addresses import AddressTable
from aupguard.config.policy import Group, NetworkRule, Policy
from aupguard.core.identify import Identity, client_address, identify

GROUPS = ("pupils", "staff", "visitors", "sixth_form", "lab")


def make_policy(users: dict[str, str] | None = None, networks: dict[str, str] | None = None) -> Policy:
    """A policy built directly (test_policy covers the file); `users` casefolded, as load_policy leaves them."""
    return Policy(
        path=Path("policy.yaml"),
        school_name="Test School",
        timezone=ZoneInfo("Europe/London"),
        it_contact="IT",
        categories={},
        groups={name: Group(name, "", frozenset(), frozenset(), True) for name in GROUPS},
        default_group="pupils",
        users=users or {},
        networks=tuple(NetworkRule(ipaddress.ip_network(cidr), group) for cidr, group in (networks or {}).items()),
        lists=(),
        tls_intercept=True,
        no_decrypt_categories=frozenset(),
        no_decrypt_hosts=frozenset(),
        accidental_text="",
        retention_days=30,
    )


SCHOOL = make_policy(
    users={"jbloggs": "staff", "strasse.k": "lab"},
    networks={
        "10.0.0.0/8": "visitors",
        "10.20.0.0/16": "staff",
        "10.20.5.0/24": "sixth_form",
        "10.20.5.7/32": "lab",
        "2001:db8::/32": "visitors",
        "2001:db8:20::/48": "staff",
    },
)


def test_listed_user_beats_address():
    who = identify(SCHOOL, "jbloggs", "10.30.1.1")
    assert who == Identity("jbloggs", "10.30.1.1", "staff", "user 'jbloggs' is listed in identity.users")


def test_usernames_are_compared_ignoring_case():
    assert identify(SCHOOL, "JBloggs", "192.0.2.1").group == "staff"
    assert identify(SCHOOL, "JBloggs", "192.0.2.1").user == "JBloggs"  # recorded as typed
    assert identify(SCHOOL, "Straße.K", "192.0.2.1").group == "lab"  # casefold, not just lower()


def test_unlisted_user_falls_to_the_address_rule():
    who = identify(SCHOOL, "visitor1", "10.20.1.5")
    assert (who.user, who.group) == ("visitor1", "staff")
    assert who.why == (
        "user 'visitor1' is not listed in identity.users; address 10.20.1.5 is in 10.20.0.0/16 (identity.networks)"
    )


def test_unlisted_user_and_address_fall_to_the_default():
    who = identify(SCHOOL, "visitor1", "192.0.2.1")
    assert who.group == "pupils"
    assert who.why.endswith("no user or address rule matched: identity.default_group")


def test_no_user():
    who = identify(SCHOOL, None, "10.20.1.5")
    assert who == Identity(None, "10.20.1.5", "staff", "address 10.20.1.5 is in 10.20.0.0/16 (identity.networks)")
    assert identify(SCHOOL, "", "10.20.1.5") == who  # an empty proxy-auth username is no username


def test_default_group():
    who = identify(SCHOOL, None, "192.0.2.1")
    assert who == Identity(None, "192.0.2.1", "pupils", "no user or address rule matched: identity.default_group")
    assert identify(make_policy(), None, "10.20.1.5").group == "pupils"  # no rules at all


@pytest.mark.parametrize(
    ("client_ip", "group", "network"),
    [
        ("10.20.5.7", "lab", "10.20.5.7/32"),
        ("10.20.5.8", "sixth_form", "10.20.5.0/24"),
        ("10.20.6.1", "staff", "10.20.0.0/16"),
        ("10.99.0.1", "visitors", "10.0.0.0/8"),
        ("10.20.5.255", "sixth_form", "10.20.5.0/24"),
        ("10.21.0.0", "visitors", "10.0.0.0/8"),
        ("2001:db8:20::1", "staff", "2001:db8:20::/48"),
        ("2001:db8:21::1", "visitors", "2001:db8::/32"),
        ("2001:0DB8:0020:0000::0001", "staff", "2001:db8:20::/48"),
    ],
)
def test_most_specific_network_wins(client_ip, group, network):
    who = identify(SCHOOL, None, client_ip)
    assert who.group == group
    assert f"is in {network} (identity.networks)" in who.why


@pytest.mark.parametrize(
    ("reported", "unwrapped", "group"),
    [
        ("::ffff:10.20.1.5", "10.20.1.5", "staff"),  # how a dual-stack socket reports an IPv4 client
        ("::FFFF:10.20.5.7", "10.20.5.7", "lab"),
        ("::ffff:a14:507", "10.20.5.7", "lab"),
        ("::ffff:192.0.2.1", "192.0.2.1", "pupils"),
    ],
)
def test_ipv4_mapped_ipv6_is_unwrapped(reported, unwrapped, group):
    who = identify(SCHOOL, None, reported)
    assert (who.client_ip, who.group) == (unwrapped, group)
    assert identify(SCHOOL, None, unwrapped) == who


def test_ipv4_rules_do_not_match_ipv6_addresses_with_the_same_bits():
    # 10.20.0.0 as the top 32 bits of an IPv6 address is 0a14::, not an IPv4 client.
    assert identify(SCHOOL, None, "a14::1").group == "pupils"
    # ::10.20.1.5 (IPv4-compatible, deprecated) is not a mapped address either.
    assert identify(SCHOOL, None, "::10.20.1.5").group == "pupils"


def test_ipv6_is_normalised():
    assert identify(SCHOOL, None, "2001:DB8:0:0:0:0:0:1").client_ip == "2001:db8::1"


@pytest.mark.parametrize("raw", ["", "localhost", "10.20.1", "10.20.1.5:8080", "[::1]", "10.20.1.5 ", "/run/sock", "ǆ"])
def test_not_an_address_gets_the_default_group(raw):
    who = identify(SCHOOL, None, raw)
    assert (who.client_ip, who.group) == (raw, "pupils")
    assert who.why == f"client address {raw!r} is not an IP address: identity.default_group"
    assert identify(SCHOOL, "jbloggs", raw).group == "staff"  # a listed user still counts


def test_zero_length_prefix_matches_everything_of_its_family():
    policy = make_policy(networks={"0.0.0.0/0": "visitors", "10.0.0.0/8": "staff"})
    assert identify(policy, None, "203.0.113.9").group == "visitors"
    assert identify(policy, None, "10.1.1.1").group == "staff"
    assert identify(policy, None, "2001:db8::1").group == "pupils"


def test_a_reloaded_policy_is_not_answered_from_the_old_cache():
    before = make_policy(networks={"10.20.0.0/16": "staff"})
    after = make_policy(networks={"10.20.0.0/16": "visitors"})
    assert identify(before, None, "10.20.1.1").group == "staff"
    assert identify(after, None, "10.20.1.1").group == "visitors"


def test_client_address():
    assert client_address("::ffff:10.0.0.1") == ipaddress.IPv4Address("10.0.0.1")
    assert client_address("fe80::1%eth0") == ipaddress.IPv6Address("fe80::1%eth0")
    assert client_address("nonsense") is None


# -- properties ---------------------------------------------------------------------------------

addresses = st.ip_addresses()


@given(addresses, st.one_of(st.none(), st.text(max_size=20)))
def test_identify_never_raises_for_any_address(address, user):
    who = identify(SCHOOL, user, str(address))
    assert who.group in SCHOOL.groups
    assert who.why


@given(st.text(max_size=60), st.one_of(st.none(), st.text(max_size=20)))
def test_identify_never_raises_for_any_text(raw, user):
    assert identify(SCHOOL, user, raw).group in SCHOOL.groups


@given(st.ip_addresses(v=4))
def test_mapped_and_plain_ipv4_agree(address):
    mapped = ipaddress.IPv6Address(f"::ffff:{address}")
    assert identify(SCHOOL, None, str(mapped)) == identify(SCHOOL, None, str(address))


def _network(version: int, bits: int) -> st.SearchStrategy[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    # Short prefixes as well as long ones, so that networks nest.
    return st.builds(
        lambda address, length: ipaddress.ip_network(f"{address}/{length}", strict=False),
        st.ip_addresses(v=version),
        st.integers(0, bits),
    )


networks = st.one_of(_network(4, 32), _network(6, 128))


@given(st.lists(networks, max_size=12, unique=True), st.lists(addresses, min_size=1, max_size=8))
def test_index_finds_the_longest_matching_prefix(nets, probes):
    """The per-prefix-length index agrees with a plain scan for the longest containing network."""
    rules = [NetworkRule(net, f"g{i}") for i, net in enumerate(nets)]
    index = AddressTable((rule.network, rule) for rule in rules)
    # Probe inside the networks too, not only at random.
    probes = probes + [net.network_address for net in nets] + [net.broadcast_address for net in nets]
    for address in probes:
        containing = [r for r in rules if r.network.version == address.version and address in r.network]
        expected = max(containing, key=lambda r: r.network.prefixlen, default=None)
        assert index.longest(address) == expected


@given(st.lists(networks, max_size=12), st.lists(addresses, min_size=1, max_size=8))
def test_address_table_lists_every_covering_range_most_specific_first(nets, probes):
    """What exemptions for address ranges read: every range holding the address, longest prefix first,
    a range given twice with both of its values in order (a plain scan says which)."""
    entries = [(net, i) for i, net in enumerate(nets)]
    table = AddressTable(entries)
    assert bool(table) == bool(nets)
    probes = probes + [net.network_address for net in nets] + [net.broadcast_address for net in nets]
    for address in probes:
        containing = [(net, i) for net, i in entries if net.version == address.version and address in net]
        expected = [i for _, i in sorted(containing, key=lambda entry: -entry[0].prefixlen)]
        assert list(table.covering(address)) == expected
