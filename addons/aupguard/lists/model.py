"""The list model: block lists in UT1/squidGuard format, their sources, and how an entry becomes a key.

A list root is a folder with one sub-folder per category, each holding up to
three files (squidGuard's formats):

* `domains`: a domain or bare IP per line; an entry matches itself and its subdomains.
* `urls`: host + path without scheme; an entry matches that page and everything below it.
* `expressions`: regular expressions over the whole URL.

Every (root, folder) pair becomes one `ListSource`, whose id is a bit position:
`ListData.domains` and `ListData.urls` map each normalised entry to the OR of
the bits of every source listing it, so a lookup is one dict probe whatever
the number of lists. List files are untrusted text: a line that cannot be
read is skipped and reported in `ListData.problems`, never fatal.

`lists.read` reads list folders into this model, `lists.mapping` reads the UT1
category mapping, `lists.index` is the compiled form; importing third-party lists
is offline work (`offline.importers`).

UT1's `adult/very_restrictive_expression` is deliberately not read (nor
imported): upstream ships it as an opt-in extra that squidGuard configs leave
off, and its bare-word terms (teen, gay, lesb, mature, sex...) would block
sex-education, LGBT+ support and plain words such as "Middlesex": the
over-blocking KCSIE warns schools against.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from aupguard.base.errors import AupguardError
from aupguard.base.urlnorm import is_public_suffix, normalize_host, normalize_url

LIST_FILES = ("domains", "urls", "expressions")

MAX_PROBLEMS = 1000  # problems kept for the report; the rest are counted
_LABEL = r"(?![a-z0-9]{2}--)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
# Hosts already in normalize_host's output form (nearly every real list line):
# taking them as they are skips ~2 s of parsing on the UT1 lists. The
# property test in tests/test_lists.py holds normalize_host(h) == h for all of them.
# "ab--" labels (punycode and friends) always take the full path.
_CANONICAL_HOST = re.compile(rf"(?:{_LABEL}\.)+[a-z]{{2,63}}|(?:{_OCTET}\.){{3}}{_OCTET}")
_URL_SCHEME = re.compile(r"^https?://", re.IGNORECASE)


class ListError(AupguardError, ValueError):
    """A list root, mapping or import source that cannot be used at all."""


@dataclass(frozen=True, slots=True)
class ListSource:
    id: int  # bit position in the masks below
    category: str  # aupguard category
    name: str  # how a rule is shown, e.g. "blocklists/adult" or "ut1/redirector"
    path: Path
    skip: frozenset[str] = frozenset()  # list files (of LIST_FILES) of the folder that are not read


@dataclass(frozen=True, slots=True)
class MappedFolder:
    """A category mapping's long form: the folder counts as `category`, but its `skip` files are not read.

    `strict_redirector: {category: anonymizers, skip: [expressions]}` takes UT1's web-proxy
    sites without the expressions that would block ordinary searches.
    """

    category: str
    skip: frozenset[str]  # names from LIST_FILES, never all of them (that is `null`)


def mapped(value: str | MappedFolder | None) -> tuple[str | None, frozenset[str]]:
    """(category, list files not read) of a mapping value in either form; category None: not loaded."""
    if isinstance(value, MappedFolder):
        return value.category, value.skip
    return value, frozenset()


@dataclass
class ListData:
    sources: Sequence[ListSource]
    domains: dict[str, int]  # normalised domain or IP -> bit mask of source ids
    urls: dict[str, int]  # squid key (no trailing "/") -> bit mask of source ids
    expressions: Sequence[tuple[int, str]]  # (source id, regex)
    problems: list[str]  # lines skipped, "file:line: reason"

    # The classifier's lookup protocol, shared with the compiled index.
    def domain_mask(self, key: str) -> int:
        return self.domains.get(key, 0)

    def url_mask(self, key: str) -> int:
        return self.urls.get(key, 0)

    def url_host_mask(self, host: str) -> int:
        """Non-zero when some `urls` entry is on `host` (a squid key's host): else no url lookup can match."""
        return self._url_hosts.get(host, 0)

    @functools.cached_property
    def _url_hosts(self) -> dict[str, int]:
        hosts: dict[str, int] = {}
        for key, mask in self.urls.items():
            host = url_host(key)
            hosts[host] = hosts.get(host, 0) | mask
        return hosts


@dataclass(frozen=True)
class ListRoot:
    """A folder of category folders, e.g. the bundled `blocklists/` or an imported UT1 copy."""

    path: Path
    name: str  # prefixes rule sources: "blocklists/adult/domains"
    # Folder name -> aupguard category, or a MappedFolder that also skips some of its
    # files (None or absent: the folder is ignored); without a mapping the folder name
    # is the category.
    mapping: Mapping[str, str | MappedFolder | None] | None = None
    optional: bool = False  # a missing folder is skipped instead of an error


class Problems:
    """The first MAX_PROBLEMS problems, and how many there were in all."""

    def __init__(self) -> None:
        self.shown: list[str] = []
        self.count = 0
        self.unreadable: list[str] = []  # whole files that could not be read: fatal to a compile

    def add_unreadable(self, path: Path, reason: str) -> None:
        self.unreadable.append(f"{path}: {reason}")
        self.add(str(path), reason)

    def add(self, where: str, reason: str) -> None:
        self.count += 1
        if len(self.shown) < MAX_PROBLEMS:
            self.shown.append(f"{where}: {reason[:200]}")

    def as_list(self) -> list[str]:
        hidden = self.count - len(self.shown)
        return self.shown + [f"... and {hidden} more problems not shown"] if hidden else self.shown


def domain_key(entry: str) -> str:
    """The lookup key of a `domains` entry: "*.example.com" and ".example.com" mean example.com."""
    if entry.startswith("*."):
        entry = entry[2:]
    elif entry.startswith("."):
        entry = entry[1:]
    if len(entry) <= 253 and _CANONICAL_HOST.fullmatch(entry):
        return entry
    return normalize_host(entry)


def one_site(name: str) -> str:
    """A host name or address that names one site (a registrable domain or a host below one), normalised.

    Every entry that can let a whole namespace through goes through this: lines of
    imported third-party lists, allow-list entries, exemption and classroom sites.
    Raises ValueError (URLError) for anything that is not one site: an invalid host,
    a single label (`uk`, `not`) or a bare public suffix (`co.uk`, `COM.`, `.com`),
    any of which would match every site under it.
    """
    host = domain_key(name)
    if "." not in host and ":" not in host:
        raise ValueError(f"{host!r} is a single label, not a host name: it would match every site under it")
    if is_public_suffix(host):
        raise ValueError(f"{host!r} is a public suffix, not one site: it would match every site under it")
    return host


def url_host(key: str) -> str:
    """The host of a `urls` key (a squid key: host, then the path and query if any)."""
    return key.partition("/")[0]


def url_key(entry: str) -> str:
    """The squid key of a `urls` entry, as the classifier builds it for a request."""
    # The format has no scheme, but a pasted "https://..." means the same page.
    entry = _URL_SCHEME.sub("", entry, count=1)
    # url_list_key drops a trailing slash: "example.com/dir/" and "example.com/dir" are one entry.
    return normalize_url("http://" + entry).url_list_key()
