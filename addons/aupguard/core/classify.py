"""Classify: which categories a URL belongs to, and which list rule said so.

Lookups are constant time whatever the list size: a host is looked up once
per parent domain (bounded by its label count), a URL once per path segment
(only when its host has `urls` entries at all),
and every `expressions` file of every list is matched as one RE2 set in a
single linear-time pass, so no list entry can stall the proxy.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple, Protocol

import re2

from aupguard.base.urlnorm import NormalizedURL
from aupguard.lists.model import ListSource, url_host

log = logging.getLogger(__name__)

# Path segments looked at for `urls` entries: a URL with more is matched on its first ones.
MAX_PATH_PREFIXES = 32


class ListLookup(Protocol):
    """What the classifier needs from lists: the text-loaded `ListData` or a compiled index."""

    # Read-only here (properties), so a class that stores them as lists satisfies the protocol.
    @property
    def sources(self) -> Sequence[ListSource]: ...

    @property
    def expressions(self) -> Sequence[tuple[int, str]]: ...

    def domain_mask(self, key: str) -> int: ...

    def url_mask(self, key: str) -> int: ...

    def url_host_mask(self, host: str) -> int: ...


# Match, Classification and engine.Verdict are made for every request: NamedTuples, immutable
# like frozen dataclasses but built in a fifth of the time (a frozen dataclass sets each field
# through object.__setattr__), which is measurable at tens of thousands of URLs a second.
class Match(NamedTuple):
    category: str
    kind: str  # "domain" | "url" | "expression" | "signature" | "nested" | "heuristic" | "doh" | "tunnel"
    entry: str  # the list entry, pattern or signature name
    source: str  # e.g. "blocklists/adult/domains"

    def describe(self) -> str:
        return f"{self.source}: {self.entry}"


class Classification(NamedTuple):
    url: NormalizedURL
    matches: tuple[Match, ...]

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m.category for m in self.matches)) if self.matches else ()


class Classifier:
    def __init__(self, lookup: ListLookup):
        self.lookup = lookup
        self._sources = {s.id: s for s in lookup.sources}
        self._expression_set, self._expression_owner, self.expression_problems = _compile_expressions(
            lookup.expressions
        )

    def classify(self, url: NormalizedURL) -> Classification:
        return Classification(url, tuple(self.matches(url)))

    def matches(self, url: NormalizedURL) -> list[Match]:
        found: list[Match] = []
        domain_mask, url_mask = self.lookup.domain_mask, self.lookup.url_mask
        for candidate in url.domain_candidates():
            mask = domain_mask(candidate)
            if mask:
                found.extend(self._expand(mask, "domain", candidate, "domains"))
        key = url.squid_key()
        if self.lookup.url_host_mask(url_host(key)):  # most hosts have no `urls` entry: one lookup, not one a segment
            # Entries are keyed by the same url_list_key, so every server-equivalent spelling meets them.
            for prefix in url_prefixes(url.url_list_key()):
                mask = url_mask(prefix)
                if mask:
                    found.extend(self._expand(mask, "url", prefix, "urls"))
        if self._expression_set is not None:
            # squidGuard matches expressions against the URL without its scheme (UT1's are
            # written so: "^[0-9]+\\..../search"); the squid key is that form, lower-cased.
            for index in self._expression_set.Match(key) or ():
                source_id, pattern = self._expression_owner[index]
                found.extend(self._expand(1 << source_id, "expression", pattern, "expressions"))
        return found

    def _expand(self, mask: int, kind: str, entry: str, filename: str) -> list[Match]:
        out = []
        while mask:
            low = mask & -mask
            source = self._sources[low.bit_length() - 1]
            out.append(Match(source.category, kind, entry, f"{source.name}/{filename}"))
            mask ^= low
        return out


def url_prefixes(key: str) -> list[str]:
    """The `urls` list keys a squid key can match: the host and each longer path prefix.

    squidGuard compares plain string prefixes; matching at segment boundaries
    instead means `example.com/pro` never blocks `example.com/products`.
    """
    host, slash, rest = key.partition("/")
    prefixes = [host]
    if not slash:
        return prefixes
    path, question, _query = rest.partition("?")
    so_far = host
    for segment in path.split("/")[:MAX_PATH_PREFIXES]:
        if not segment:
            continue
        so_far = f"{so_far}/{segment}"
        prefixes.append(so_far)
    if question and len(prefixes) <= MAX_PATH_PREFIXES:
        prefixes.append(key)
    return prefixes


def _compile_expressions(
    expressions: Sequence[tuple[int, str]],
) -> tuple[re2.Set | None, list[tuple[int, str]], list[str]]:
    if not expressions:
        return None, [], []
    options = re2.Options()
    options.case_sensitive = False
    options.max_mem = 256 << 20
    regex_set = re2.Set.SearchSet(options)
    owners: list[tuple[int, str]] = []
    problems: list[str] = []
    for source_id, pattern in expressions:
        try:
            regex_set.Add(pattern)
        except re2.error as exc:
            problems.append(f"expression {pattern[:80]!r}: {exc}")
            continue
        owners.append((source_id, pattern))
    if not owners:
        return None, [], problems
    regex_set.Compile()
    for problem in problems:
        log.warning("skipped list expression: %s", problem)
    return regex_set, owners, problems
