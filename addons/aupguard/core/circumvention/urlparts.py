"""The parts of a URL the circumvention checks share: query parameters as PHP reads them, a host's registrable site."""

from __future__ import annotations

import functools
from urllib.parse import unquote_plus

from aupguard.base.urlnorm import NormalizedURL, URLError, normalize_url, suffix_parts
from aupguard.core.circumvention.decoders import MAX_DECODED

MAX_PARAMS = 64

Params = tuple[tuple[str, str], ...]  # (lower-case name, decoded value), in query order


def query_params(query: str) -> Params:
    """(lower-case name, decoded value) for the first MAX_PARAMS parameters, as PHP's $_GET reads them."""
    if not query:
        return ()
    pairs = []
    for pair in query.split("&", MAX_PARAMS)[:MAX_PARAMS]:
        if pair:
            name, _, value = pair.partition("=")
            pairs.append((unquote_plus(name[:128]).lower(), unquote_plus(value[: MAX_DECODED * 3])))
    return tuple(pairs)


def param_value(params: Params, name: str) -> str | None:
    for key, value in params:
        if key == name:
            return value
    return None


def with_query(url: str, query: str) -> str:
    return f"{url}?{query}" if query else url


@functools.lru_cache(maxsize=8192)
def site_parts(host: str) -> tuple[str, tuple[str, ...]]:
    """(registrable domain, labels left of the public suffix) of a host."""
    parts = suffix_parts(host)
    if not parts.suffix or not parts.domain:
        return host, tuple(host.split("."))
    labels = tuple(label for label in (*parts.subdomain.split("."), parts.domain) if label)
    return f"{parts.domain}.{parts.suffix}", labels


def _inner_host(url: str) -> str | None:
    try:
        return normalize_url(url).host
    except URLError:
        return None


def cross_site(outer: NormalizedURL, inner_url: str) -> bool:
    host = _inner_host(inner_url)
    if host is None:
        return False
    if outer.is_ip or host == outer.host:
        return host != outer.host
    return site_parts(host)[0] != site_parts(outer.host)[0]
