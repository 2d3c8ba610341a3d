"""Identify: which policy group a request belongs to, and why.

Precedence, first match wins:

1. the proxy-authenticated username, if identity.users lists it
   (compared ignoring case, as htpasswd and LDAP logins are typed both ways);
2. the same username, if a file in identity.user_files (the MIS export) lists it;
3. the client address, if a range in identity.networks holds it
   (the longest prefix wins);
4. identity.default_group.

An authenticated user who is not listed falls through to the address rules.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from typing import NamedTuple

from aupguard.base.addresses import AddressTable
from aupguard.config.policy import NetworkRule, Policy

# Distinct client addresses remembered per process; a school has a few thousand devices.
ADDRESS_CACHE_SIZE = 8192


@dataclass(frozen=True, slots=True)
class Identity:
    user: str | None
    client_ip: str  # IPv4-mapped IPv6 addresses unwrapped to IPv4
    group: str
    why: str


def identify(policy: Policy, user: str | None, client_ip: str) -> Identity:
    """The group for one request. Called per request: a dict probe and a cached address lookup."""
    place = _locate(policy.network_index, client_ip)
    user = user or None
    if user is not None:
        group = policy.users.get(user.casefold())
        if group is not None:
            return Identity(user, place.address, group, f"user {user!r} is listed in identity.users")
        member = policy.members.get(user.casefold())
        if member is not None:
            why = f"user {user!r} is listed at {member.where} (identity.user_files)"
            return Identity(user, place.address, member.group, why)
    lists = "identity.users or user_files" if policy.user_files else "identity.users"
    unlisted = f"user {user!r} is not listed in {lists}; " if user is not None else ""
    if place.rule is not None:
        why = f"{unlisted}address {place.address} is in {place.rule.network} (identity.networks)"
        return Identity(user, place.address, place.rule.group, why)
    if place.valid:
        why = f"{unlisted}no user or address rule matched: identity.default_group"
    else:
        why = f"{unlisted}client address {place.address!r} is not an IP address: identity.default_group"
    return Identity(user, place.address, policy.default_group, why)


def client_address(raw: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a client connected from, or None if `raw` is not one.

    A dual-stack listening socket reports IPv4 clients as IPv4-mapped IPv6
    (::ffff:10.20.1.5); rules are written in IPv4, so unwrap them.
    """
    try:
        address = ipaddress.ip_address(raw)
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class _Place(NamedTuple):
    address: str  # normalised, or the raw text when it is not an address
    valid: bool
    rule: NetworkRule | None


# Keyed by (index, address text): a reloaded policy has a new index, so stale entries
# are never hit and age out of the LRU.
@functools.lru_cache(maxsize=ADDRESS_CACHE_SIZE)
def _locate(index: AddressTable[NetworkRule], client_ip: str) -> _Place:
    address = client_address(client_ip)
    if address is None:
        return _Place(client_ip, False, None)
    return _Place(str(address), True, index.longest(address))
