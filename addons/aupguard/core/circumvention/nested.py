"""Nested services: Google Translate's proxy hosts, web caches and archive snapshots, which show another site's page.

A nested finding is not a verdict on its own: the caller classifies its `inner_url` too.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from aupguard.base.urlnorm import NormalizedURL
from aupguard.core.circumvention.decoders import MAX_DECODED, absolute_url, carried_url
from aupguard.core.circumvention.finding import Finding
from aupguard.core.circumvention.urlparts import Params, param_value, with_query

_TRANSLATE_GOOG = ".translate.goog"
_GOOGLE_TRANSLATE_HOST = re.compile(r"translate\.google(?:usercontent)?\.[a-z.]+\Z")
_GOOGLE_CACHE_HOST = "webcache.googleusercontent.com"
_CACHE_TERM = re.compile(r"cache:(?:[A-Za-z0-9_-]{12}:)?(?P<url>\S+)", re.IGNORECASE)
_OTHER_CACHE_HOSTS = frozenset({"yandexwebcache.net", "cachedview.nl", "cachedview.com", "cachedpages.com"})
_WAYBACK_HOSTS = frozenset({"web.archive.org", "wayback.archive.org", "arquivo.pt"})
_WAYBACK_PATH = re.compile(r"/(?:web|wayback)/(?:[0-9]{1,14}|\*)(?:[a-z]{2}_)?/(?P<url>.+)\Z", re.DOTALL)
_ARCHIVE_TODAY_HOSTS = frozenset(
    {"archive.today", "archive.ph", "archive.is", "archive.li", "archive.vn", "archive.fo", "archive.md"}
)
_ARCHIVE_TODAY_PATH = re.compile(
    r"/(?:(?:newest|oldest|[0-9]{14}|[0-9]{4}\.[0-9]{2}\.[0-9]{2}-[0-9]{6}|o/[A-Za-z0-9]+)/)?(?P<url>.+)\Z",
    re.DOTALL,
)
_SCHEMELESS_HOST = re.compile(r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+(?:[:/?]|\Z)")


def _archived_url(text: str) -> str | None:
    """An archive's target, which archives also accept without a scheme."""
    text = text[:MAX_DECODED]
    url = absolute_url(text)
    if url is None and "%" in text:
        text = unquote(text)
        url = absolute_url(text)
    if url is None and _SCHEMELESS_HOST.match(text):
        url = absolute_url("http://" + text)
    return url


def _translate_goog_host(label: str) -> str:
    # Google writes "." as "-" and a real "-" as "--".
    return label.replace("--", "\0").replace("-", ".").replace("\0", "-")


def nested_service(url: NormalizedURL, params: Params) -> Finding | None:
    host = url.host
    if host.endswith(_TRANSLATE_GOOG):
        label = host[: -len(_TRANSLATE_GOOG)]
        if not label or "." in label:
            return None
        kept = [pair for pair in url.query.split("&") if pair and not pair.startswith("_x_tr_")]
        scheme = "http" if param_value(params, "_x_tr_sch") == "http" else "https"
        inner = absolute_url(with_query(f"{scheme}://{_translate_goog_host(label)}{url.path}", "&".join(kept)))
        return Finding("nested", "translate.goog", inner) if inner else None
    if _GOOGLE_TRANSLATE_HOST.match(host):
        value = param_value(params, "u")
        found = carried_url(value) if value else None
        return Finding("nested", "google-translate", found[0]) if found else None
    if host == _GOOGLE_CACHE_HOST:
        match = _CACHE_TERM.search(param_value(params, "q") or "")
        inner = _archived_url(match.group("url")) if match else None
        return Finding("nested", "web-cache", inner) if inner else None
    if host in _OTHER_CACHE_HOSTS:
        value = param_value(params, "url")
        inner = _archived_url(value) if value else None
        return Finding("nested", "web-cache", inner) if inner else None
    if host in _WAYBACK_HOSTS:
        match = _WAYBACK_PATH.match(url.path)
        inner = _archived_url(with_query(match.group("url"), url.query)) if match else None
        return Finding("nested", "archive", inner) if inner else None
    if host in _ARCHIVE_TODAY_HOSTS:
        match = _ARCHIVE_TODAY_PATH.match(url.path)
        inner = _archived_url(with_query(match.group("url"), url.query)) if match else None
        return Finding("nested", "archive", inner) if inner else None
    return None
