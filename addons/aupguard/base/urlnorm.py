"""URL normalisation: one canonical form per destination before any list lookup.

A filter that compares strings is only as good as its normalisation: browsers
reach the same server through `http://GOOD.com@0x7f.1:80/a/%2e%2e/b` and
`http://127.0.0.1/b`. This module follows the WHATWG URL standard where browsers
do (host parsing, IPv4 number forms, backslashes, dot-segments) and RFC 3986
section 6 for percent-encoding, so a list entry and a request for the same page
produce the same `NormalizedURL`.

It runs on every request, so the common case (an ASCII host, a path with
nothing to fix) takes fast paths, and host normalisation is cached.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import NamedTuple
from urllib.parse import quote, unquote_plus, unquote_to_bytes

import idna

from aupguard.base.errors import AupguardError

__all__ = [
    "NormalizedURL",
    "URLError",
    "from_parts",
    "is_public_suffix",
    "normalize_host",
    "normalize_url",
    "search_term",
    "server_path",
    "suffix_parts",
]

MAX_URL_LENGTH = 65536
MAX_HOST_LENGTH = 253
MAX_LABEL_LENGTH = 63
MAX_SEARCH_TERM_LENGTH = 256
# Before decoding: generous for percent-encoded IDNs, and keeps int() of an
# IPv4 number far below Python's 4300-digit limit.
_MAX_RAW_HOST_LENGTH = 2048
# 253 characters hold at most 127 one-character labels.
_MAX_CANDIDATES = 127

DEFAULT_PORTS = {"http": 80, "https": 443, "ftp": 21, "ws": 80, "wss": 443}
# WHATWG "special" schemes: backslash is a path separator, slashes after the colon are optional.
_SPECIAL_SCHEMES = frozenset(DEFAULT_PORTS)


class URLError(AupguardError, ValueError):
    """The input cannot be read as a URL (or host) that a browser would visit."""


class NormalizedURL(NamedTuple):  # made for every request: a NamedTuple for speed (see classify.Match)
    scheme: str  # lower case; "http" when the input had none
    host: str  # ASCII lower case, IDNA/punycode, no trailing dot; IPv4 dotted quad; IPv6 without brackets
    port: int | None  # None when it is the scheme's default
    path: str  # starts with "/", dot-segments removed, percent-encoding normalised
    query: str  # without "?"; "" when none
    is_ip: bool

    def domain_candidates(self) -> tuple[str, ...]:
        """The host and each parent domain, longest first: what a domain list is asked about."""
        host = self.host
        if self.is_ip:
            return (host,)
        candidates = [host]
        dot = host.find(".")
        while dot != -1 and len(candidates) < _MAX_CANDIDATES:
            candidates.append(host[dot + 1 :])
            dot = host.find(".", dot + 1)
        return tuple(candidates)

    def squid_key(self) -> str:
        """The form squidGuard URL lists are written in: no scheme, port or leading www."""
        return self._squid_form(self.path)

    def url_list_key(self) -> str:
        """The squid key with the path as servers resolve it (server_path): what `urls` entries match on.

        List entries and requests both go through it, so every spelling of one resource meets one key.
        """
        return self._squid_form(server_path(self.path))

    def _squid_form(self, path: str) -> str:
        www = None if self.is_ip else _WWW_PREFIX.match(self.host)
        host = self.host[www.end() :] if www else self.host
        if self.query:
            return f"{host}{path}?{self.query}".lower()
        if path == "/":
            return host
        return f"{host}{path}".lower()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if self.is_ip and ":" in self.host else self.host
        port = "" if self.port is None else f":{self.port}"
        query = f"?{self.query}" if self.query else ""
        return f"{self.scheme}://{host}{port}{self.path}{query}"


_C0_AND_SPACE = "".join(map(chr, range(0x21)))
# The shape most requests have, which the general parser below would return unchanged but for
# the host: no userinfo, port, fragment, backslash, '%' or character browsers encode.
_PLAIN_URL = re.compile(r'(https?)://([A-Za-z0-9._-]+)(/[^%\\#\x00-\x20"<>`{}\x7f-\U0010ffff]*)?')
_WWW_PREFIX = re.compile(r"www\d*\.")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")
_AUTHORITY_END_SPECIAL = re.compile(r"[/\\?#]")
_AUTHORITY_END = re.compile(r"[/?#]")
_PORT = re.compile(r"[0-9]+")
# WHATWG forbidden domain code points, and whitespace.
_FORBIDDEN_HOST = re.compile(r"[\x00-\x20\x7f#/<>?@\[\\\]^|%:]")
_LDH_HOST = re.compile(r"[a-z0-9_\-]+(?:\.[a-z0-9_\-]+)*")
# WHATWG "ends in a number": the last label is decimal digits or 0x-hex.
_ENDS_IN_NUMBER = re.compile(r"(?:^|\.)(?:[0-9]+|0x[0-9a-f]*)\Z")
_DECIMAL = re.compile(r"[0-9]+")
_OCTAL = re.compile(r"[0-7]+")
_HEX = re.compile(r"[0-9a-f]*")

# One pass over a path or query: a %xx escape, a lone '%', or a character
# browsers send percent-encoded (controls, space, some punctuation, non-ASCII).
_ESCAPE_WORK = re.compile(r'%([0-9A-Fa-f]{2})|%|[\x00-\x20"<>`{}\x7f-\U0010ffff]')
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _escape_table() -> dict[str, str]:
    table = {}
    digits = "0123456789abcdefABCDEF"
    for high in digits:
        for low in digits:
            char = chr(int(high + low, 16))
            table[high + low] = char if char in _UNRESERVED else f"%{high}{low}".upper()
    return table


_ESCAPES = _escape_table()


def _escape_match(match: re.Match[str]) -> str:
    pair = match.group(1)
    if pair is not None:
        return _ESCAPES[pair]
    char = match.group()
    if char == "%":
        # A lone '%' means itself; writing it as %25 stops a later decode from
        # pairing it with the next characters ("%%341" must not become "%41" then "A").
        return "%25"
    # surrogateescape: mitmproxy hands over undecodable path bytes as lone surrogates.
    return "".join(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogateescape"))


def _normalize_escapes(text: str) -> str:
    """RFC 3986 6.2.2: decode unreserved characters, upper-case the rest, encode what browsers encode."""
    if _ESCAPE_WORK.search(text) is None:
        return text
    try:
        return _ESCAPE_WORK.sub(_escape_match, text)
    except UnicodeEncodeError as exc:
        raise URLError("URL is not valid Unicode") from exc


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4 for an absolute path; a trailing "." or ".." leaves a trailing slash."""
    segments = path.split("/")[1:]
    output: list[str] = []
    for segment in segments:
        if segment == "..":
            if output:
                output.pop()
        elif segment != ".":
            output.append(segment)
    if segments[-1] in (".", ".."):
        output.append("")
    return "/" + "/".join(output)


def _normalize_path(path: str) -> str:
    if not path:
        return "/"
    if path[0] != "/":
        path = "/" + path
    # Escapes first, so %2e counts as a dot the way browsers treat it.
    path = _normalize_escapes(path)
    if "/." in path:
        path = _remove_dot_segments(path)
    return path


# A normalised path that server_path would change: an escape, a path parameter, an empty
# segment, a segment ending in a dot, or a backslash (a separator on IIS).
_SERVER_PATH_WORK = re.compile(r"[%;\\]|//|\.(?:/|\Z)")
_SEPARATORS = re.compile(r"[/\\]")
# Kept literal when a resolved path is written back: unreserved and sub-delimiters but ';'
# (a decoded one starts a path parameter), so '%', '?' and '#' from escapes stay escaped.
_SERVER_PATH_SAFE = "!$&'()*+,=:@~"


def server_path(path: str) -> str:
    """A normalised path as the resource nginx, Apache, IIS and servlet containers serve for it.

    One spelling for what some mainstream server treats as the same path, for `urls` matching
    (the recorded URL keeps its own path). Escapes are decoded once, as servers do (%252e stays
    "%2e", never "."); then a NUL ends the path (old CGI and Windows stacks truncate there);
    '/', '\\' and their escapes separate segments (IIS, Apache's AllowEncodedSlashes, nginx);
    empty segments merge (nginx merge_slashes); each segment loses its ";parameters" (Tomcat and
    Jetty: /a;x/b is /a/b, and /a/..;/b is /b) and its trailing dots and spaces (Windows file
    names); dot segments, including decoded ones, are resolved; a trailing slash is dropped (the
    list format's own rule). Case folds, as IIS does and squidGuard's lower-casing already did.
    """
    if len(path) > 1 and path[-1] == "/":
        path = path.rstrip("/") or "/"
    if _SERVER_PATH_WORK.search(path) is None:
        return path
    raw = unquote_to_bytes(path)
    nul = raw.find(b"\0")
    if nul != -1:
        raw = raw[:nul]
    text = raw.decode("utf-8", "surrogateescape").lower()
    segments: list[str] = []
    for segment in _SEPARATORS.split(text):
        segment = segment.partition(";")[0]
        trimmed = segment.rstrip(". ")
        if not trimmed:
            # Only dots and spaces: "." and ".." (after Windows trims spaces) are dot segments,
            # "..." a valid file name.
            trimmed = segment.rstrip(" ")
            if trimmed in ("", "."):
                continue
            if trimmed == "..":
                if segments:
                    segments.pop()
                continue
        segments.append(quote(trimmed, safe=_SERVER_PATH_SAFE, errors="surrogateescape"))
    return "/" + "/".join(segments)


def _parse_ipv4(host: str) -> str:
    """WHATWG IPv4 parser: 1-4 parts, each decimal, 0x-hex or 0-octal; the last fills the remaining bytes."""
    parts = host.split(".")
    if len(parts) > 4:
        raise URLError(f"not an IPv4 address: {host[:100]!r}")
    numbers = []
    for part in parts:
        if part[:2] == "0x":
            digits, base, pattern = part[2:], 16, _HEX
        elif len(part) > 1 and part[0] == "0":
            digits, base, pattern = part[1:], 8, _OCTAL
        else:
            digits, base, pattern = part, 10, _DECIMAL
        if not pattern.fullmatch(digits):
            raise URLError(f"not an IPv4 address: {host[:100]!r}")
        numbers.append(int(digits, base) if digits else 0)
    last = numbers.pop()
    if any(number > 255 for number in numbers) or last >= 256 ** (4 - len(numbers)):
        raise URLError(f"IPv4 address out of range: {host[:100]!r}")
    value = last
    for index, number in enumerate(numbers):
        value += number << (8 * (3 - index))
    return str(ipaddress.IPv4Address(value))


def _parse_ipv6(literal: str) -> str:
    # ipaddress accepts "%zone" suffixes; browsers do not.
    if "%" in literal:
        raise URLError(f"zone identifiers are not allowed: {literal[:100]!r}")
    try:
        address = ipaddress.IPv6Address(literal)
    except ValueError as exc:
        raise URLError(f"not an IPv6 address: {literal[:100]!r}") from exc
    # One destination, one key: lists hold IPv4 addresses in dotted form.
    mapped = address.ipv4_mapped
    return str(mapped) if mapped is not None else str(address)


@functools.lru_cache(maxsize=4096)
def _host_info(raw: str) -> tuple[str, bool]:
    """(normalised host, is_ip) for a host as written in a URL, list entry, SNI or CONNECT."""
    if len(raw) > _MAX_RAW_HOST_LENGTH:
        raise URLError("host too long")
    if raw[:1] == "[":
        if raw[-1:] != "]":
            raise URLError(f"unterminated IPv6 literal: {raw[:100]!r}")
        return _parse_ipv6(raw[1:-1]), True
    if ":" in raw:
        # Only an IPv6 address may contain ':' (bare, as mitmproxy and list files write it).
        return _parse_ipv6(raw), True
    host = raw
    if "%" in host:
        try:
            host = unquote_to_bytes(host).decode("utf-8")
        except UnicodeError as exc:
            raise URLError(f"host is not UTF-8 after percent-decoding: {raw[:100]!r}") from exc
    if _FORBIDDEN_HOST.search(host):
        raise URLError(f"forbidden character in host: {raw[:100]!r}")
    host = host.rstrip(".")
    if not host.isascii():
        try:
            host = idna.encode(host, uts46=True, transitional=False).decode("ascii")
        except UnicodeError as exc:  # idna.IDNAError is a UnicodeError
            raise URLError(f"invalid international domain name: {raw[:100]!r}") from exc
        host = host.rstrip(".")
    else:
        host = host.lower()
    if not host:
        raise URLError("empty host")
    if _ENDS_IN_NUMBER.search(host):
        return _parse_ipv4(host), True
    # ASCII hosts skip IDNA validation: real DNS names carry '_' and odd hyphens.
    if not _LDH_HOST.fullmatch(host):
        raise URLError(f"invalid host: {raw[:100]!r}")
    if len(host) > MAX_HOST_LENGTH:
        raise URLError("host longer than 253 characters")
    if len(host) > MAX_LABEL_LENGTH and any(len(label) > MAX_LABEL_LENGTH for label in host.split(".")):
        raise URLError("host label longer than 63 characters")
    return host, False


def normalize_host(raw: str) -> str:
    """The canonical form of a bare host (no port): for list entries, SNI and CONNECT targets."""
    return _host_info(raw)[0]


def _parse_port(text: str) -> int | None:
    if not text:
        return None
    if not _PORT.fullmatch(text):
        raise URLError(f"invalid port: {text[:100]!r}")
    text = text.lstrip("0") or "0"
    if len(text) > 5 or int(text) > 65535:
        raise URLError(f"port out of range: {text[:100]!r}")
    return int(text)


def _build(scheme: str, raw_host: str, port: int | None, rest: str) -> NormalizedURL:
    """Shared by normalize_url and from_parts: `rest` is the path with query and fragment."""
    host, is_ip = _host_info(raw_host)
    if port == DEFAULT_PORTS.get(scheme):
        port = None
    fragment = rest.find("#")
    if fragment != -1:
        rest = rest[:fragment]
    path, _, query = rest.partition("?")
    if scheme in _SPECIAL_SCHEMES and "\\" in path:
        path = path.replace("\\", "/")
    return NormalizedURL(
        scheme=scheme,
        host=host,
        port=port,
        path=_normalize_path(path),
        query=_normalize_escapes(query),
        is_ip=is_ip,
    )


def normalize_url(raw: str) -> NormalizedURL:
    """Parse a URL, or a scheme-less "host/path" (read as http), into its canonical form."""
    if len(raw) > MAX_URL_LENGTH:
        raise URLError("URL longer than 65536 characters")
    plain = _PLAIN_URL.fullmatch(raw)
    if plain is not None:
        scheme, raw_host, rest = plain.groups()
        path, _, query = (rest or "/").partition("?")
        if "/." not in path:
            host, is_ip = _host_info(raw_host)
            return NormalizedURL(scheme, host, None, path, query, is_ip)
    return _parse_url(raw)


def _parse_url(raw: str) -> NormalizedURL:
    """normalize_url for any input: the WHATWG-style parser."""
    # As browsers do: trim C0 controls and spaces, drop tabs and newlines anywhere.
    text = raw.strip(_C0_AND_SPACE)
    if "\t" in text or "\n" in text or "\r" in text:
        text = text.replace("\t", "").replace("\n", "").replace("\r", "")

    match = _SCHEME.match(text)
    colon = match.end() if match else 0
    scheme = text[:colon].lower()
    # "host:port/path" also looks like "scheme:...": a scheme counts when it is
    # special (browsers accept "http:host") or followed by "//".
    if text[colon : colon + 1] == ":" and (scheme in _SPECIAL_SCHEMES or text.startswith("//", colon + 1)):
        rest = text[colon + 1 :]
    else:
        # A scheme-less "/path" has no host; "//host/path" has one.
        if text[:1] in ("/", "\\") and text[1:2] not in ("/", "\\"):
            raise URLError(f"no host in {raw[:100]!r}")
        scheme, rest = "http", text
    if scheme in _SPECIAL_SCHEMES:
        rest = rest.lstrip("/\\")
        end = _AUTHORITY_END_SPECIAL.search(rest)
    else:
        rest = rest[2:]
        end = _AUTHORITY_END.search(rest)
    split = end.start() if end else len(rest)
    authority, rest = rest[:split], rest[split:]

    # Userinfo is everything up to the last '@': http://good.com@bad.com/ goes to bad.com.
    hostport = authority[authority.rfind("@") + 1 :]
    if hostport[:1] == "[":
        close = hostport.find("]")
        if close == -1:
            raise URLError(f"unterminated IPv6 literal in {authority[:100]!r}")
        host, after = hostport[: close + 1], hostport[close + 1 :]
        if after and after[0] != ":":
            raise URLError(f"unexpected text after IPv6 literal: {authority[:100]!r}")
        port_text = after[1:]
    else:
        host, _, port_text = hostport.partition(":")
    if not host:
        raise URLError(f"no host in {raw[:100]!r}")
    return _build(scheme, host, _parse_port(port_text), rest)


def from_parts(scheme: str, host: str, port: int, path: str) -> NormalizedURL:
    """Normalise a URL given in pieces, as mitmproxy's Request has them (path includes the query)."""
    scheme = scheme.lower() or "http"
    if not _SCHEME.fullmatch(scheme):
        raise URLError(f"invalid scheme: {scheme[:100]!r}")
    if not 0 <= port <= 65535:
        raise URLError(f"port out of range: {port}")
    if len(host) + len(path) > MAX_URL_LENGTH:
        raise URLError("URL longer than 65536 characters")
    if not host:
        raise URLError("empty host")
    return _build(scheme, host, port, path)


# --- search terms -----------------------------------------------------------


@functools.cache
def _tld_extract():
    """tldextract with its bundled suffix list only (offline), imported and built on first use:
    it pulls in `requests`, a tenth of a second that `aupguard classify` would pay at every start."""
    import tldextract

    return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)


def suffix_parts(host: str):
    """tldextract's (subdomain, domain, suffix) split of a host, by the bundled public suffix list."""
    return _tld_extract()(host)


@functools.cache
def _icann_rules() -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
    """The ICANN section's rules as hosts are normalised: (explicit, wildcard parents, exceptions).

    `com`, `co.uk` are explicit; `*.sch.uk` makes every `lancs.sch.uk` a suffix (its
    schools register `myschool.lancs.sch.uk`), except as `!city.kawasaki.jp` says. The
    private section (blogspot.com, github.io) names companies' own domains: not used.
    """
    explicit, wildcard, exception = set(), set(), set()
    for rule in _tld_extract().tlds:
        if rule.startswith("*."):
            wildcard.add(rule[2:])
        elif rule.startswith("!"):
            exception.add(rule[1:])
        else:
            explicit.add(rule)
    explicit_set, wildcard_set, exception_set = (
        frozenset(rules).union(_punycode(rule) for rule in rules if not rule.isascii())
        for rules in (explicit, wildcard, exception)
    )
    return explicit_set, wildcard_set, exception_set


def _punycode(rule: str) -> str:
    """A suffix rule as hosts are normalised (рф -> xn--p1ai); the rule itself if idna refuses it."""
    try:
        return idna.encode(rule, uts46=True).decode("ascii")
    except idna.IDNAError:
        return rule


def is_public_suffix(host: str) -> bool:
    """Whether a normalised host is itself a public suffix (`uk`, `com`, `co.uk`, `com.bd`): no one site's name.

    A list entry for one would match every site under it. By the ICANN rules only,
    wildcards and exceptions included, so `blogspot.com` (a private-section suffix)
    and `myschool.lancs.sch.uk` stay sites. A few set probes: no tldextract call.
    """
    explicit, wildcard, exception = _icann_rules()
    if host in explicit:
        return True
    parent = host.partition(".")[2]
    return bool(parent) and parent in wildcard and host not in exception


def _path_ends_search(path: str) -> bool:
    return path.rstrip("/").endswith("/search")


def _any_path(path: str) -> bool:
    return True


def _is_results(path: str) -> bool:
    return path.rstrip("/") == "/results"


# Registered-domain name (without suffix, so google.co.uk is "google") ->
# (query parameter, which paths, required subdomain suffix or "").
_ENGINES = {
    "google": ("q", _path_ends_search, ""),
    "bing": ("q", _path_ends_search, ""),
    "duckduckgo": ("q", _any_path, ""),
    "yahoo": ("p", _any_path, "search"),
    "youtube": ("search_query", _is_results, ""),
    "ecosia": ("q", _any_path, ""),
    "yandex": ("text", _any_path, ""),
    "baidu": ("wd", _any_path, ""),
    "wikipedia": ("search", _any_path, ""),
    "amazon": ("k", _any_path, ""),
}
# C0/C1 controls and bidi overrides: a search term ends up in reports read by people.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# Enough raw text for 256 characters even when every one is four %xx bytes.
_MAX_RAW_TERM = MAX_SEARCH_TERM_LENGTH * 12


def _query_value(query: str, name: str) -> str | None:
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if key == name and value:
            return value
    return None


def _clean_term(value: str) -> str | None:
    term = unquote_plus(value[:_MAX_RAW_TERM], errors="replace")
    term = " ".join(_UNPRINTABLE.sub(" ", term).split())
    return term[:MAX_SEARCH_TERM_LENGTH] or None


def search_term(url: NormalizedURL) -> str | None:
    """The query typed into a known search engine or site search, or None."""
    if not url.query:
        return None
    value = None
    parts = None if url.is_ip else suffix_parts(url.host)
    engine = _ENGINES.get(parts.domain) if parts is not None and parts.suffix else None
    if engine is not None and parts is not None:
        param, path_matches, subdomain = engine
        if path_matches(url.path) and (
            not subdomain or parts.subdomain == subdomain or parts.subdomain.endswith("." + subdomain)
        ):
            value = _query_value(url.query, param)
    if value is None and _path_ends_search(url.path):
        value = _query_value(url.query, "q")
    return _clean_term(value) if value is not None else None
