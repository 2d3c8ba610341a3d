"""Circumvention: web-proxy software, URLs carried inside URLs, unknown proxies, DNS over HTTPS.

Lists name yesterday's proxy sites; this module recognises a proxy by what its
URLs look like, so a site put up this morning is caught too. Four techniques:

- ``signature``: the URL scheme of a known web-proxy package (Glype, PHProxy,
  php-proxy-app, CGIProxy, Ultraviolet/Scramjet, Rammerhead, node-unblocker,
  CroxyProxy, Alloy), whatever host serves it. Each decoder follows the
  package's own encoder; the source file and function are named beside it.
- ``nested``: a URL carried inside another (a parameter or path holding a plain,
  percent-encoded, base64, rot13, hex or Ultraviolet-xor URL; Google Translate's
  *.translate.goog hosts; web caches; archive snapshots). A nested finding is not
  a verdict on its own: the caller classifies ``inner_url`` too and takes the
  stricter action of the two.
- ``heuristic``: a score for unknown web proxies from host name, path and
  parameters; flagged at ``HEURISTIC_THRESHOLD`` (see the weights below and
  benchmarks/README.md, "Circumvention" for the measured false-positive rate).
- ``doh``: a request carrying DNS over HTTPS (``inspect_request`` only).
- ``tunnel``: whether the first bytes in a CONNECT tunnel can be an HTTP request
  (``first_line``); the addon cuts a tunnel that carries neither TLS nor HTTP.

Hot path: regexes are compiled once, nothing does I/O, and work is bounded:
at most ``MAX_PARAMS`` query parameters are examined, values longer than
``MAX_DECODED`` are not decoded, decoding layers and nested URLs stop at depth
``MAX_DEPTH``. Findings for URLs found inside a URL follow the outer URL's own.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import enum
import functools
import re
import struct
from dataclasses import dataclass
from urllib.parse import unquote, unquote_plus

from aupguard.base.urlnorm import NormalizedURL, URLError, normalize_url, suffix_parts

__all__ = [
    "FIRST_LINE_WAIT",
    "HEURISTIC_THRESHOLD",
    "Finding",
    "FirstLine",
    "first_line",
    "inspect_request",
    "inspect_url",
]

MAX_PARAMS = 64
MAX_DECODED = 4096  # longest parameter value, path tail or decoded text worked on
MAX_DEPTH = 3  # decoding layers within one value, and URLs nested within URLs
MAX_NESTED_PARAMS = 4  # carried URLs reported per URL

# Heuristic weights. A score is the sum of the signals present, clipped to [0, 1].
# One signal never reaches the threshold alone, so a site is flagged only when
# several independent traits of a web proxy coincide (a proxy word in the name
# someone registered and a throwaway TLD are two).
HOST_WORD = 0.35  # a host label contains proxy, unblock, anonymi, bypass, ...
CHEAP_NAME = 0.35  # ... in the registered name itself, under a TLD sold for a dollar or two (xyz, top, ...)
HOST_WEAK_WORD = 0.15  # a host label token starts with hide, anon, vpn, tunnel, surf, ...
PATH_WORD = 0.35  # a path segment is exactly proxy, browse.php, unblock, webproxy, ...
CARRIED_URL = 0.4  # a parameter or the path carries an absolute URL of another site
OBFUSCATED = 0.15  # ... hidden by base64, rot13, hex or the Ultraviolet xor codec
PROXY_PARAM = 0.2  # ... in a parameter named like a proxy's (u, url, q, link, ...) or in the path
ENTRY_SCRIPT = 0.1  # ... sent to the site root or a single script (/, /index.php, /go.php)
PROXY_FLAGS = 0.2  # proxy option parameters beside it (Glype b=<bits>, PHProxy hl=<hex>, f=frame)
REDIRECT_CONTEXT = -0.3  # ... but named or placed like a login return, redirect or share link
HEURISTIC_THRESHOLD = 0.7


@dataclass(frozen=True, slots=True)
class Finding:
    technique: str  # "signature" | "nested" | "heuristic" | "doh"
    name: str  # e.g. "glype", "ultraviolet", "translate.goog", "archive", "param-url", "dns-message"
    inner_url: str | None  # the decoded carried URL, when there is one
    score: float | None = None  # heuristic score


# --- decoding carried URLs ----------------------------------------------------------------------

_ABSOLUTE_URL = re.compile(
    r"(?:https?|wss?|ftp)://(?:[^\s/?#@]+@)?"
    r"(?:[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)+\.?|\[[0-9A-Fa-f:.]+\])"
    r"(?::[0-9]{1,5})?(?:[/?#][^\x00-\x20\x7f]*)?",
    re.IGNORECASE,
)
# Cheap gate before any decoding: how an encoded URL starts in each encoding.
_MAYBE_URL = re.compile(r"://|:/|%3A|aHR0|uggc|hvtr|687474|d3M6|d3NzOi|Oi8v|czov", re.IGNORECASE)
_BASE64 = re.compile(r"[A-Za-z0-9+/_-]{8,}={0,2}")
_HEX = re.compile(r"(?:[0-9A-Fa-f]{2}){8,}")
_SINGLE_SLASH = re.compile(r"^([A-Za-z]+):/(?!/)")


def _absolute_url(text: str) -> str | None:
    text = _SINGLE_SLASH.sub(r"\1://", text, count=1)
    return text if _ABSOLUTE_URL.fullmatch(text) else None


def _b64decode(text: str) -> str | None:
    """Standard or URL-safe base64, padded or not, to text; None when it is not."""
    if not _BASE64.fullmatch(text):
        return None
    text = text.rstrip("=")
    if len(text) % 4 == 1:
        return None
    try:
        raw = base64.b64decode(text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4), validate=True)
        return raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def _uv_xor(text: str) -> str:
    """Ultraviolet's xor codec without its encodeURIComponent: every second character XOR 2.

    Follows src/rewrite/codecs.js `xor.encode`/`xor.decode` (titaniumnetwork-dev/Ultraviolet);
    the codec is its own inverse.
    """
    return "".join(chr(ord(char) ^ 2) if index % 2 else char for index, char in enumerate(text))


def _rot13(text: str) -> str:
    return codecs.encode(text, "rot13")


def _try_percent(text: str) -> str | None:
    return unquote(text) if "%" in text else None


def _try_base64(text: str) -> str | None:
    return _b64decode(text)


def _try_rot13(text: str) -> str | None:
    return _rot13(text) if text[:4] in ("uggc", "UGGC") else None


def _try_hex(text: str) -> str | None:
    if not _HEX.fullmatch(text):
        return None
    try:
        return bytes.fromhex(text).decode("utf-8")
    except UnicodeDecodeError:
        return None


def _try_uv_xor(text: str) -> str | None:
    return _uv_xor(text) if text.startswith("hvtr") else None


_DECODERS = (
    ("percent", _try_percent),
    ("base64", _try_base64),
    ("rot13", _try_rot13),
    ("hex", _try_hex),
    ("uv-xor", _try_uv_xor),
)


def _decode_url(text: str, depth: int = 0) -> tuple[str, str] | None:
    """(URL, outermost encoding) when `text` is, or decodes to, an absolute URL."""
    url = _absolute_url(text)
    if url is not None:
        return url, "plain"
    if depth >= MAX_DEPTH or len(text) > MAX_DECODED:
        return None
    for encoding, decode in _DECODERS:
        decoded = decode(text)
        if decoded is None or decoded == text:
            continue
        found = _decode_url(decoded, depth + 1)
        if found is not None:
            inner_encoding = found[1]
            return found[0], encoding if encoding != "percent" or inner_encoding == "plain" else inner_encoding
    return None


def _carried_url(value: str) -> tuple[str, str] | None:
    if len(value) < 8 or len(value) > MAX_DECODED or not _MAYBE_URL.search(value, 0, 48):
        return None
    return _decode_url(value)


# --- small helpers ------------------------------------------------------------------------------


def _params(query: str) -> tuple[tuple[str, str], ...]:
    """(lower-case name, decoded value) for the first MAX_PARAMS parameters, as PHP's $_GET reads them."""
    if not query:
        return ()
    pairs = []
    for pair in query.split("&", MAX_PARAMS)[:MAX_PARAMS]:
        if pair:
            name, _, value = pair.partition("=")
            pairs.append((unquote_plus(name[:128]).lower(), unquote_plus(value[: MAX_DECODED * 3])))
    return tuple(pairs)


def _param(params: tuple[tuple[str, str], ...], name: str) -> str | None:
    for key, value in params:
        if key == name:
            return value
    return None


def _with_query(url: str, query: str) -> str:
    return f"{url}?{query}" if query else url


@functools.lru_cache(maxsize=8192)
def _site(host: str) -> tuple[str, tuple[str, ...]]:
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


def _cross_site(outer: NormalizedURL, inner_url: str) -> bool:
    host = _inner_host(inner_url)
    if host is None:
        return False
    if outer.is_ip or host == outer.host:
        return host != outer.host
    return _site(host)[0] != _site(outer.host)[0]


# --- signatures ---------------------------------------------------------------------------------

# Glype 1.x, includes/init.php `proxyURL()`: with "encodeURL" on, "http" is cut
# off and the rest is base64'd with the session salt in front (Glype <= 1.1) or
# RC4-encrypted with a 128-character session key (`arcfour()`, Glype 1.4, not
# decodable without the session); then rawurlencode. Query form
# `browse.php?u=<url>&b=<bitfield>[&f=<flag>]`; path-info form
# `browse.php/<8-character chunks, '%' written '_'>/b<bitfield>/[f<flag>]`,
# parsed back by `deproxyURL()`.
_GLYPE_PATH_INFO = re.compile(
    r"(?P<script>/[^/]+\.php)/(?P<chunks>(?:[A-Za-z0-9_.~-]{1,8}/)+)b[0-9]{1,5}(?:/f[a-z]{1,10})?/?\Z"
)
_GLYPE_SALTED = re.compile(r"[0-9a-f]{0,20}?((?:Oi8v|czov)[A-Za-z0-9+/]*={0,2})\Z")
_GLYPE_ENCRYPTED = re.compile(r"[A-Za-z0-9+/]{16,}={0,2}")
_BITFIELD = re.compile(r"[0-9]{1,5}\Z")


def _glype_decode(value: str) -> str | None:
    """The target of a Glype `u` value (already rawurldecoded), None when encrypted."""
    url = _absolute_url(value)
    if url is not None:
        return url
    match = _GLYPE_SALTED.match(value)
    if match:
        rest = _b64decode(match.group(1))
        if rest is not None:
            return _absolute_url("http" + rest)
    return None


def _glype(url: NormalizedURL, params) -> Finding | None:
    match = _GLYPE_PATH_INFO.search(url.path)
    if match:
        value = unquote(match.group("chunks").replace("/", "").replace("_", "%"))
        return Finding("signature", "glype", _glype_decode(value))
    value = _param(params, "u")
    if value is None:
        return None
    bitfield = _param(params, "b")
    if not (url.path.endswith("/browse.php") or (bitfield is not None and _BITFIELD.match(bitfield))):
        return None
    inner = _glype_decode(value)
    if inner is None and not (url.path.endswith("/browse.php") or _GLYPE_ENCRYPTED.fullmatch(value)):
        return None
    return Finding("signature", "glype", inner)


# PHProxy 0.5, index.php: `encode_url()` is rawurlencode of the URL, its rot13
# (flag "rotate13") or its base64 (flag "base64_encode"); links are
# `index.php?q=<encoded>`, the form redirect adds `&hl=<flags as hex>`, the ten
# $_flags bits in order, first flag highest.
_PHPROXY_FLAG_COUNT = 10
_PHPROXY_ROTATE13 = 5
_PHPROXY_BASE64 = 6
_HEX_FLAGS = re.compile(r"[0-9a-f]{1,3}\Z")
# php-proxy-app (Athlon1600/php-proxy src/helpers.php `url_encrypt()`): url_mode 0
# is rawurlencode, 1 is base64url without padding, 2 and 3 first add the bytes
# of md5(app_key . client IP or session) to the URL (`str_rot_pass()`).
_HEX_KEY_BYTES = frozenset(b"0123456789abcdef")
_SCRIPT_PATH = re.compile(r"/(?:[^/]+\.php)?\Z")


def _phproxy_flags(hl: str) -> tuple[bool, bool] | None:
    if not _HEX_FLAGS.match(hl):
        return None
    bits = format(int(hl, 16), "b").zfill(_PHPROXY_FLAG_COUNT)
    if len(bits) != _PHPROXY_FLAG_COUNT:
        return None
    return bits[_PHPROXY_ROTATE13] == "1", bits[_PHPROXY_BASE64] == "1"


def _keyed_php_proxy_app(value: str) -> bool:
    """True when base64url `value` is a URL rotated by an md5-hex key (known plaintext "http")."""
    if not _BASE64.fullmatch(value) or len(value) < 12:
        return False
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        return False
    for plain in (b"https://", b"http://"):
        if len(raw) > len(plain) and all((c - p) % 256 in _HEX_KEY_BYTES for c, p in zip(raw, plain)):
            return True
    return False


def _php_proxy(url: NormalizedURL, params) -> Finding | None:
    value = _param(params, "q")
    if not value or not _SCRIPT_PATH.search(url.path):
        return None
    hl = _param(params, "hl")
    flags = _phproxy_flags(hl) if hl is not None else None
    if flags is not None:
        rotate13, base64_on = flags
        text = _rot13(value) if rotate13 else _b64decode(value) if base64_on else value
        inner = _absolute_url(text) if text is not None else None
        return Finding("signature", "phproxy", inner) if inner is not None else None
    inner = _absolute_url(value)
    if inner is not None:
        return Finding("signature", "php-proxy-app", inner)
    if value[:4] in ("uggc", "UGGC"):
        inner = _absolute_url(_rot13(value))
        return Finding("signature", "phproxy", inner) if inner is not None else None
    decoded = _b64decode(value)
    inner = _absolute_url(decoded) if decoded is not None else None
    if inner is not None:
        # php-proxy-app writes base64url without padding; PHProxy standard base64.
        name = "phproxy" if any(char in value for char in "+/=") else "php-proxy-app"
        return Finding("signature", name, inner)
    if _keyed_php_proxy_app(value):
        return Finding("signature", "php-proxy-app", None)
    return None


# CGIProxy, nph-proxy.cgi: `wrap_proxy_encode()` applies `proxy_encode()`
# ("http://x" -> "http/x", optionally each char -> 2 hex digits, or rot13, the
# samples in its comments), then writes = ? % & ; [ ] as =xx and "//" as
# "/=2f"; URLs are <script>/<flags>/<encoded> (2.0: flags from `pack_flags()`,
# six 0/1 digits and a type letter) or <script>/<lang>/<flags>/<encoded> (2.1,
# `one_run()` reads PATH_INFO as lang, flags, URL). The script is usually
# nph-proxy.cgi or nph-<something>.cgi/.pl; the embedded server uses /secret.
_CGIPROXY = re.compile(r"/(?P<script>nph-[A-Za-z0-9_.-]*)(?P<rest>/.*)?\Z")
_CGIPROXY_ESCAPE = re.compile(r"=([0-9A-Fa-f]{2})")
_CGIPROXY_PLAIN = re.compile(r"(https?|ftp)/(?!/)(.+)\Z", re.DOTALL)


def _cgiproxy_decode(encoded: str) -> str | None:
    text = _CGIPROXY_ESCAPE.sub(lambda match: chr(int(match.group(1), 16)), encoded)
    if text[:5] in ("uggc/", "uggcf") or text[:4] == "sgc/":
        text = _rot13(text)
    elif _HEX.fullmatch(text):
        try:
            text = bytes.fromhex(text).decode("utf-8")
        except UnicodeDecodeError:
            return None
    match = _CGIPROXY_PLAIN.match(text)
    return _absolute_url(f"{match.group(1)}://{match.group(2)}") if match else None


def _cgiproxy(url: NormalizedURL, params) -> Finding | None:
    match = _CGIPROXY.search(url.path)
    if not match:
        return None
    segments = (match.group("rest") or "/").split("/")[1:]
    for skip in range(min(3, len(segments))):  # lang and flags segments come first
        inner = _cgiproxy_decode("/".join(segments[skip:])[:MAX_DECODED])
        if inner is not None:
            return Finding("signature", "cgiproxy", _with_query(inner, url.query))
    if "proxy" in match.group("script").lower():
        return Finding("signature", "cgiproxy", None)
    return None


# Path-carrying proxies. Ultraviolet (src/rewrite/codecs.js, config prefix
# "/service/", often "/uv/service/"): prefix + xor.encode(url), i.e. every second
# character XOR 2, then encodeURIComponent; so "https://" starts "hvtrs8%2F-" and
# "http://" starts "hvtr%3A-%2F" whatever the prefix. Its plain and base64 codecs
# are encodeURIComponent and btoa(encodeURIComponent). Scramjet
# (src/controller/index.ts default codec, prefix "/scramjet/"): encodeURIComponent.
_UV_XOR = re.compile(r"/(?=hvtr(?:s8%2[Ff]-|%3[Aa]-%2[Ff]))")
_PATH_URL = re.compile(r"/(?=(?:https?|ftp)(?::|%3[Aa])(?:/|%2[Ff]))", re.IGNORECASE)
_SERVICE_BASE64 = re.compile(r"(?P<prefix>.*/(?:service|scramjet))/(?P<tail>aHR0[A-Za-z0-9+/=%]*)\Z")
# Rammerhead: /<32 hex session id>/<url>; node-unblocker: /proxy/<url>.
_RAMMERHEAD_SESSION = re.compile(r"/[0-9a-f]{32}\Z")
# Alloy: <prefix>/_<btoa(origin)>_/<path>.
_ALLOY = re.compile(r"/_(?P<origin>[A-Za-z0-9+]{8,}={0,2})_(?P<rest>/.*)\Z")
_ORIGIN = re.compile(r"https?://[A-Za-z0-9_.-]+(?::[0-9]{1,5})?\Z")


def _path_proxy_name(prefix: str) -> str | None:
    lowered = prefix.lower()
    if lowered.endswith("/service"):
        return "ultraviolet"
    if lowered.endswith("/scramjet"):
        return "scramjet"
    if lowered.endswith("/proxy"):
        return "node-unblocker"
    if _RAMMERHEAD_SESSION.search(prefix):
        return "rammerhead"
    return None


def _path_carried(url: NormalizedURL) -> tuple[str | None, str] | None:
    """(proxy name or None, inner URL) when the path carries a URL."""
    path = url.path
    match = _UV_XOR.search(path)
    if match:
        prefix, tail = path[: match.start()], path[match.end() :]
        inner = _absolute_url(_uv_xor(unquote(tail[:MAX_DECODED])))
        if inner is not None:
            name = "scramjet" if prefix.lower().endswith("/scramjet") else "ultraviolet"
            return name, _with_query(inner, url.query)
    match = _PATH_URL.search(path)
    if match:
        prefix, tail = path[: match.start()], path[match.end() :]
        inner = _absolute_url(unquote(tail[:MAX_DECODED]))
        if inner is not None:
            return _path_proxy_name(prefix), _with_query(inner, url.query)
    match = _SERVICE_BASE64.match(path)
    if match:
        found = _decode_url(unquote(match.group("tail")[:MAX_DECODED]))
        if found is not None:
            return _path_proxy_name(match.group("prefix")), found[0]
    return None


def _alloy(url: NormalizedURL, params) -> Finding | None:
    match = _ALLOY.search(url.path)
    if not match:
        return None
    origin = _b64decode(match.group("origin"))
    if origin is None or not _ORIGIN.match(origin):
        return None
    return Finding("signature", "alloy", _absolute_url(_with_query(origin + match.group("rest"), url.query)))


# CroxyProxy: the proxied path stays as it is, the origin rides in __cpo=<base64>.
def _croxyproxy(url: NormalizedURL, params) -> Finding | None:
    value = _param(params, "__cpo")
    if value is None:
        return None
    origin = _b64decode(value)
    if origin is None or not _ORIGIN.match(origin):
        return Finding("signature", "croxyproxy", None)
    query = "&".join(pair for pair in url.query.split("&") if not pair.lower().startswith("__cp"))
    return Finding("signature", "croxyproxy", _absolute_url(_with_query(origin + url.path, query)))


_PARAM_SIGNATURES = (_glype, _php_proxy, _cgiproxy, _alloy, _croxyproxy)


# --- nested: translators, caches, archives --------------------------------------------------

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
    url = _absolute_url(text)
    if url is None and "%" in text:
        text = unquote(text)
        url = _absolute_url(text)
    if url is None and _SCHEMELESS_HOST.match(text):
        url = _absolute_url("http://" + text)
    return url


def _translate_goog_host(label: str) -> str:
    # Google writes "." as "-" and a real "-" as "--".
    return label.replace("--", "\0").replace("-", ".").replace("\0", "-")


def _nested_service(url: NormalizedURL, params) -> Finding | None:
    host = url.host
    if host.endswith(_TRANSLATE_GOOG):
        label = host[: -len(_TRANSLATE_GOOG)]
        if not label or "." in label:
            return None
        kept = [pair for pair in url.query.split("&") if pair and not pair.startswith("_x_tr_")]
        scheme = "http" if _param(params, "_x_tr_sch") == "http" else "https"
        inner = _absolute_url(_with_query(f"{scheme}://{_translate_goog_host(label)}{url.path}", "&".join(kept)))
        return Finding("nested", "translate.goog", inner) if inner else None
    if _GOOGLE_TRANSLATE_HOST.match(host):
        value = _param(params, "u")
        found = _carried_url(value) if value else None
        return Finding("nested", "google-translate", found[0]) if found else None
    if host == _GOOGLE_CACHE_HOST:
        match = _CACHE_TERM.search(_param(params, "q") or "")
        inner = _archived_url(match.group("url")) if match else None
        return Finding("nested", "web-cache", inner) if inner else None
    if host in _OTHER_CACHE_HOSTS:
        value = _param(params, "url")
        inner = _archived_url(value) if value else None
        return Finding("nested", "web-cache", inner) if inner else None
    if host in _WAYBACK_HOSTS:
        match = _WAYBACK_PATH.match(url.path)
        inner = _archived_url(_with_query(match.group("url"), url.query)) if match else None
        return Finding("nested", "archive", inner) if inner else None
    if host in _ARCHIVE_TODAY_HOSTS:
        match = _ARCHIVE_TODAY_PATH.match(url.path)
        inner = _archived_url(_with_query(match.group("url"), url.query)) if match else None
        return Finding("nested", "archive", inner) if inner else None
    return None


# --- heuristic ----------------------------------------------------------------------------------

_HOST_WORD_LIST = (
    "proxy", "unblock", "anonymi", "anonymouse", "bypass", "unfilter", "hidemy", "hideme", "hideip", "croxy",
    "proxfree", "hidester",
)  # fmt: skip
# TLDs whose first year sells for about a dollar and that lead the abuse reports (Spamhaus's
# most-abused TLDs, Interisle's phishing studies): where throwaway proxy mirrors are registered.
# A name that says proxy under one is somebody's proxy, not a school's or a company's proxy host.
_CHEAP_TLDS = frozenset(
    {
        "xyz", "top", "click", "sbs", "cfd", "icu", "buzz", "cyou", "bond", "rest", "monster", "lol",
        "quest", "fun", "space", "site", "online", "website", "live", "store", "shop", "pw", "tk",
        "ml", "ga", "cf", "gq", "club", "link", "work",
    }
)  # fmt: skip
_HOST_WEAK_WORD_LIST = ("hide", "anon", "vpn", "tunnel", "surf", "mask", "incognito", "stealth", "unban", "unlock")
_HOST_WORDS = re.compile("|".join(_HOST_WORD_LIST))
_HOST_WEAK_WORDS = re.compile(rf"(?:^|[-0-9])(?:{'|'.join(_HOST_WEAK_WORD_LIST)})")
# Every word above anywhere in the host: most hosts have none, and skip the public-suffix lookup.
_ANY_HOST_WORD = re.compile("|".join(_HOST_WORD_LIST + _HOST_WEAK_WORD_LIST))
_PATH_WORDS = frozenset(
    {
        "proxy", "proxy.php", "webproxy", "browse.php", "unblock", "unblocker", "unblock.php",
        "anonymizer", "anonymiser", "anonymouse", "surf.php", "glype", "phproxy", "poxy",
        "miniproxy.php", "cgiproxy", "nph-proxy.cgi", "nph-proxy.pl",
    }
)  # fmt: skip
_PROXY_PARAMS = frozenset(
    {"u", "url", "q", "uri", "link", "site", "addr", "address", "go", "proxy", "web", "surf", "href"}
)
_REDIRECT_PARAMS = frozenset(
    {
        "next", "return", "returnto", "return_to", "returnurl", "return_url", "returnpath", "redirect",
        "redirect_uri", "redirect_url", "redirecturl", "redirect_to", "redirectto", "continue",
        "callback", "callback_url", "callbackurl", "service", "relaystate", "goto", "done",
        "success_url", "successurl", "cancel_url", "cancelurl", "error_url", "back", "backurl",
        "back_url", "referer", "referrer", "ref", "origin", "source", "from", "dest", "destination",
        "target", "login_redirect", "forward", "wreply", "post_logout_redirect_uri", "landing",
    }
)  # fmt: skip
_REDIRECT_SEGMENTS = frozenset(
    {
        "url", "l.php", "redirect", "redirect.php", "redir", "away", "away.php", "out", "out.php",
        "exit", "leave", "link", "linkfilter", "outbound", "click", "r.php", "share", "sharer",
        "sharer.php", "intent", "tweet", "submit", "share-offsite", "sharing", "login", "signin",
        "sign-in", "logout", "authorize", "auth", "oauth", "oauth2", "sso", "saml", "callback",
    }
)  # fmt: skip
_SCRIPT_NAME = re.compile(r"\.(?:php[0-9]?|cgi|pl|aspx?|jsp)\Z")
_FLAG_PARAMS = re.compile(r"(?:b=[0-9]{1,5}|hl=[0-9a-f]{1,3}|f=(?:frame|norefer))\Z")


@functools.lru_cache(maxsize=4096)
def _host_weight(host: str) -> float:
    """HOST_WORD (+ CHEAP_NAME), HOST_WEAK_WORD or 0 for a host's labels left of its public suffix."""
    registered, labels = _site(host)
    if any(_HOST_WORDS.search(label) for label in labels):
        # The registered name, not a subdomain: 3.unblocker.xyz, not proxy.university.ac.uk.
        name, _, suffix = registered.partition(".")
        if suffix in _CHEAP_TLDS and _HOST_WORDS.search(name):
            return HOST_WORD + CHEAP_NAME
        return HOST_WORD
    if any(_HOST_WEAK_WORDS.search(label) for label in labels):
        return HOST_WEAK_WORD
    return 0.0


def _segments(path: str) -> list[str]:
    return [segment for segment in path.lower().split("/", 16)[:16] if segment]


def _heuristic_score(url: NormalizedURL, params, carried: tuple[str, str, str] | None, path_carried: bool) -> float:
    """Sum of heuristic weights; `carried` is the strongest (param name, URL, encoding) of another site."""
    score = 0.0 if url.is_ip or not _ANY_HOST_WORD.search(url.host) else _host_weight(url.host)
    segments = _segments(url.path)
    if not _PATH_WORDS.isdisjoint(segments):
        score += PATH_WORD
    if carried is not None:
        name, _, encoding = carried
        score += CARRIED_URL
        if encoding not in ("plain", "percent"):
            score += OBFUSCATED
        if path_carried or name in _PROXY_PARAMS:
            score += PROXY_PARAM
        if not segments or (len(segments) == 1 and _SCRIPT_NAME.search(segments[0])):
            score += ENTRY_SCRIPT
        if name in _REDIRECT_PARAMS or not _REDIRECT_SEGMENTS.isdisjoint(segments):
            score += REDIRECT_CONTEXT
        if any(_FLAG_PARAMS.match(f"{key}={value}") for key, value in params if key in ("b", "hl", "f")):
            score += PROXY_FLAGS
    return round(min(1.0, max(0.0, score)), 3) if score else 0.0


# --- inspection ---------------------------------------------------------------------------------


def _inspect_one(url: NormalizedURL) -> list[Finding]:
    params = _params(url.query)
    service = _nested_service(url, params)
    if service is not None:
        # The carrier's parameters and path belong to the carried URL, inspected next.
        return [service]
    findings: list[Finding] = []
    for check in _PARAM_SIGNATURES:
        finding = check(url, params)
        if finding is not None:
            findings.append(finding)

    path_carried = _path_carried(url)
    carried: tuple[str, str, str] | None = None  # (param name, URL, encoding) of another site
    if path_carried is not None:
        name, inner = path_carried
        if name is not None:
            findings.append(Finding("signature", name, inner))
        elif _cross_site(url, inner):
            findings.append(Finding("nested", "path-url", inner))
            carried = ("", inner, "plain")

    known = {finding.inner_url for finding in findings}
    nested_count = 0
    for key, value in params:
        found = _carried_url(value)
        # A signature's target already covers the parameter it was decoded from (CroxyProxy's origin).
        if found is None or any(inner and inner.startswith(found[0]) for inner in known):
            continue
        if not _cross_site(url, found[0]):
            continue
        known.add(found[0])
        if nested_count < MAX_NESTED_PARAMS:
            findings.append(Finding("nested", "param-url", found[0]))
            nested_count += 1
        candidate = (key, found[0], found[1])
        if carried is None or _heuristic_score(url, params, candidate, False) > _heuristic_score(
            url, params, carried, carried[0] == ""
        ):
            carried = candidate

    if not any(finding.technique == "signature" for finding in findings):
        score = _heuristic_score(url, params, carried, carried is not None and carried[0] == "")
        if score >= HEURISTIC_THRESHOLD:
            findings.append(Finding("heuristic", "web-proxy", carried[1] if carried else None, score))
    return findings


def inspect_url(url: NormalizedURL) -> tuple[Finding, ...]:
    """Signatures, nested URLs and heuristic for one URL and, to depth MAX_DEPTH, the URLs inside it."""
    findings: list[Finding] = []
    seen: set[str] | None = None  # URLs already inspected; built when the first carried URL turns up
    pending = [(url, 0)]
    while pending:
        current, depth = pending.pop(0)
        for finding in _inspect_one(current):
            findings.append(finding)
            inner = finding.inner_url
            if inner is None or depth + 1 >= MAX_DEPTH:
                continue
            if seen is None:
                seen = {url.url}
            if inner in seen:
                continue
            seen.add(inner)
            try:
                pending.append((normalize_url(inner), depth + 1))
            except URLError:
                pass
    return tuple(findings)


# --- DNS over HTTPS (RFC 8484, and the JSON API of Google and Cloudflare) -----------------------

_DNS_MESSAGE = "application/dns-message"
_DNS_JSON = "application/dns-json"
_DOH_JSON_PATHS = re.compile(r"/(?:resolve|dns-query|dns-json)/?\Z")
_DOMAIN_NAME = re.compile(r"(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)+[A-Za-z0-9-]{1,63}\.?\Z")
_RR_TYPES = frozenset(
    [
        "A",
        "NS",
        "CNAME",
        "SOA",
        "PTR",
        "MX",
        "TXT",
        "AAAA",
        "SRV",
        "NAPTR",
        "DS",
        "RRSIG",
        "NSEC",
        "DNSKEY",
        "NSEC3",
        "TLSA",
        "SVCB",
        "HTTPS",
        "CAA",
        "ANY",
        "SPF",
    ]
)
_MAX_DNS_MESSAGE = 4096
_QCLASSES = frozenset({1, 3, 4, 254, 255})


def _media_types(header: str | None) -> set[str]:
    if not header:
        return set()
    return {item.split(";", 1)[0].strip().lower() for item in header[:1024].split(",")}


def _is_dns_query(message: bytes) -> bool:
    """A plausible DNS query: header of a query, then a well-formed first question."""
    if not 17 <= len(message) <= _MAX_DNS_MESSAGE:
        return False
    _, flags, qdcount, ancount, nscount, arcount = struct.unpack("!6H", message[:12])
    opcode = (flags >> 11) & 0xF
    if flags & 0x8000 or opcode not in (0, 1, 2, 4, 5) or flags & 0x40 or flags & 0xF:
        return False
    if not 1 <= qdcount <= 4 or ancount or nscount or arcount > 2:
        return False
    offset, name_length = 12, 0
    while True:
        if offset >= len(message):
            return False
        length = message[offset]
        if length == 0:
            offset += 1
            break
        if length > 63:  # compression pointers cannot appear in the first name
            return False
        name_length += length + 1
        if name_length > 255:
            return False
        offset += length + 1
    if name_length == 0 or offset + 4 > len(message):
        return False
    qtype, qclass = struct.unpack("!2H", message[offset : offset + 4])
    return qtype != 0 and qclass in _QCLASSES


def _dns_param(value: str) -> bool:
    if not _BASE64.fullmatch(value) or len(value) > _MAX_DNS_MESSAGE * 4 // 3 + 4:
        return False
    try:
        message = base64.urlsafe_b64decode(value.replace("+", "-").replace("/", "_") + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        return False
    return _is_dns_query(message)


def _doh(url: NormalizedURL, content_type: str | None, accept: str | None) -> Finding | None:
    accepted = _media_types(accept)
    if _DNS_MESSAGE in _media_types(content_type) or _DNS_MESSAGE in accepted:
        return Finding("doh", "dns-message", None)
    params = _params(url.query)
    value = _param(params, "dns")
    if value is not None and _dns_param(value):
        return Finding("doh", "dns-query-get", None)
    name = _param(params, "name")
    if name is None:
        return Finding("doh", "dns-json", None) if _DNS_JSON in accepted else None
    if _DNS_JSON in accepted:
        return Finding("doh", "dns-json", None)
    if not _DOMAIN_NAME.match(name):
        return None
    rrtype = _param(params, "type")
    known_type = rrtype is not None and (
        rrtype.upper() in _RR_TYPES or (rrtype.isdigit() and 0 < int(rrtype[:6]) < 65536)
    )
    if known_type or _DOH_JSON_PATHS.search(url.path):
        return Finding("doh", "dns-json", None)
    return None


def inspect_request(
    url: NormalizedURL, method: str, content_type: str | None, accept: str | None
) -> tuple[Finding, ...]:
    """inspect_url plus DNS over HTTPS, recognised by media type or query whatever the host.

    `method` is accepted for the caller's convenience: DoH is recognised by what a
    request carries, and a POST to /dns-query without the media type is no DNS.
    """
    doh = _doh(url, content_type, accept)
    findings = inspect_url(url)
    return (*findings, doh) if doh is not None else findings


# -- tunnels: the first line a client sends into a CONNECT tunnel --------------------------------------

FIRST_LINE_WAIT = 3.0  # seconds a tunnel may take to finish what could still be an HTTP request line
MAX_REQUEST_LINE = 16384  # bytes: twice the 8 KiB request line nginx and Apache accept by default

# RFC 9112 §3: request-line = method SP request-target SP HTTP-version, ended by CRLF or a bare
# LF (§2.2); the method is a token (RFC 9110 §5.6.2). The target is any run of non-blank bytes,
# as mitmproxy's own parser takes it, so that a raw UTF-8 path is no reason to cut.
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_TARGET = rb"[^\x00-\x20\x7f]"
_REQUEST_LINE = re.compile(_TOKEN + rb"+ " + _TARGET + rb"+ HTTP/[0-9]\.[0-9]\r?\n")
# The bytes so far could still become one: a method, a method and a target, or both and any leading
# part of the version ("H", "HT", ..., "HTTP/1.1\r").
_REQUEST_LINE_START = re.compile(
    _TOKEN
    + rb"*|"
    + _TOKEN
    + rb"+ "
    + _TARGET
    + rb"*|"
    + _TOKEN
    + rb"+ "
    + _TARGET
    + rb"+ (?:H(?:T(?:T(?:P(?:/(?:[0-9](?:\.(?:[0-9]\r?)?)?)?)?)?)?)?)?"
)


class FirstLine(enum.Enum):
    REQUEST = "an HTTP request line"
    PARTIAL = "what could still become one"
    NOT_HTTP = "no HTTP request line"


def first_line(data: bytes) -> FirstLine:
    """What the first bytes a client sends into a tunnel are, read as the start of an HTTP/1 request.

    A TLS record is not judged here (the caller sees TLS first); anything else is HTTP only if its
    first line is a request line, and can stay PARTIAL only until the line ends or grows past
    MAX_REQUEST_LINE bytes.
    """
    if _REQUEST_LINE.match(data):
        return FirstLine.REQUEST
    if b"\n" in data or len(data) > MAX_REQUEST_LINE or not _REQUEST_LINE_START.fullmatch(data):
        return FirstLine.NOT_HTTP
    return FirstLine.PARTIAL
