"""The one longest-prefix address table: address ranges (CIDR) -> values, looked up by a client address.

One dict per prefix length in use, tried longest first: a lookup costs at most
one dict probe per distinct prefix length, whatever the number of ranges. The
policy's `identity.networks` (the most specific range names the group) and the
exemptions for address ranges (every range covering the address counts) both
stand on it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_Value = TypeVar("_Value")


class AddressTable(Generic[_Value]):
    """Values by address range; immutable once built. A range given twice keeps its values in order."""

    def __init__(self, entries: Iterable[tuple[Network, _Value]]):
        by_length: dict[int, dict[int, dict[int, list[_Value]]]] = {4: {}, 6: {}}
        for network, value in entries:
            table = by_length[network.version].setdefault(network.prefixlen, {})
            key = int(network.network_address) >> (network.max_prefixlen - network.prefixlen)
            table.setdefault(key, []).append(value)
        bits = {4: 32, 6: 128}
        # per IP version: (shift, {network number >> shift: values}), longest prefix first
        self._tables = {
            version: tuple((bits[version] - length, tables[length]) for length in sorted(tables, reverse=True))
            for version, tables in by_length.items()
        }

    def __bool__(self) -> bool:
        return any(self._tables.values())

    def longest(self, address: Address) -> _Value | None:
        """The first value of the most specific range containing `address`, or None."""
        value = int(address)
        for shift, table in self._tables[address.version]:
            found = table.get(value >> shift)
            if found is not None:
                return found[0]
        return None

    def covering(self, address: Address) -> Iterator[_Value]:
        """Every value of every range containing `address`, the most specific range first."""
        value = int(address)
        for shift, table in self._tables[address.version]:
            yield from table.get(value >> shift, ())
