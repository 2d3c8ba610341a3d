"""Signatures: the URL schemes of known web-proxy packages, whatever host serves them.

Glype, PHProxy, php-proxy-app, CGIProxy, Ultraviolet/Scramjet, Rammerhead, node-unblocker, Alloy and
CroxyProxy. Each decoder follows the package's own encoder; the source file and function are named beside it.
"""

from __future__ import annotations

import base64
import binascii
import re
from urllib.parse import unquote

from aupguard.base.urlnorm import NormalizedURL
from aupguard.core.circumvention.decoders import (
    BASE64,
    HEX,
    MAX_DECODED,
    absolute_url,
    decode_base64,
    decode_url,
    rot13,
    uv_xor,
)
from aupguard.core.circumvention.finding import Finding
from aupguard.core.circumvention.urlparts import Params, param_value, with_query

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
    url = absolute_url(value)
    if url is not None:
        return url
    match = _GLYPE_SALTED.match(value)
    if match:
        rest = decode_base64(match.group(1))
        if rest is not None:
            return absolute_url("http" + rest)
    return None


def _glype(url: NormalizedURL, params: Params) -> Finding | None:
    match = _GLYPE_PATH_INFO.search(url.path)
    if match:
        chunks = unquote(match.group("chunks").replace("/", "").replace("_", "%"))
        return Finding("signature", "glype", _glype_decode(chunks))
    value = param_value(params, "u")
    if value is None:
        return None
    bitfield = param_value(params, "b")
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
    if not BASE64.fullmatch(value) or len(value) < 12:
        return False
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        return False
    for plain in (b"https://", b"http://"):
        if len(raw) > len(plain) and all((c - p) % 256 in _HEX_KEY_BYTES for c, p in zip(raw, plain)):
            return True
    return False


def _php_proxy(url: NormalizedURL, params: Params) -> Finding | None:
    value = param_value(params, "q")
    if not value or not _SCRIPT_PATH.search(url.path):
        return None
    hl = param_value(params, "hl")
    flags = _phproxy_flags(hl) if hl is not None else None
    if flags is not None:
        rotate13, base64_on = flags
        text = rot13(value) if rotate13 else decode_base64(value) if base64_on else value
        inner = absolute_url(text) if text is not None else None
        return Finding("signature", "phproxy", inner) if inner is not None else None
    inner = absolute_url(value)
    if inner is not None:
        return Finding("signature", "php-proxy-app", inner)
    if value[:4] in ("uggc", "UGGC"):
        inner = absolute_url(rot13(value))
        return Finding("signature", "phproxy", inner) if inner is not None else None
    decoded = decode_base64(value)
    inner = absolute_url(decoded) if decoded is not None else None
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
        text = rot13(text)
    elif HEX.fullmatch(text):
        try:
            text = bytes.fromhex(text).decode("utf-8")
        except UnicodeDecodeError:
            return None
    match = _CGIPROXY_PLAIN.match(text)
    return absolute_url(f"{match.group(1)}://{match.group(2)}") if match else None


def _cgiproxy(url: NormalizedURL, params: Params) -> Finding | None:
    match = _CGIPROXY.search(url.path)
    if not match:
        return None
    segments = (match.group("rest") or "/").split("/")[1:]
    for skip in range(min(3, len(segments))):  # lang and flags segments come first
        inner = _cgiproxy_decode("/".join(segments[skip:])[:MAX_DECODED])
        if inner is not None:
            return Finding("signature", "cgiproxy", with_query(inner, url.query))
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


def carried_in_path(url: NormalizedURL) -> tuple[str | None, str] | None:
    """(proxy name or None, inner URL) when the path carries a URL."""
    path = url.path
    match = _UV_XOR.search(path)
    if match:
        prefix, tail = path[: match.start()], path[match.end() :]
        inner = absolute_url(uv_xor(unquote(tail[:MAX_DECODED])))
        if inner is not None:
            name = "scramjet" if prefix.lower().endswith("/scramjet") else "ultraviolet"
            return name, with_query(inner, url.query)
    match = _PATH_URL.search(path)
    if match:
        prefix, tail = path[: match.start()], path[match.end() :]
        inner = absolute_url(unquote(tail[:MAX_DECODED]))
        if inner is not None:
            return _path_proxy_name(prefix), with_query(inner, url.query)
    match = _SERVICE_BASE64.match(path)
    if match:
        found = decode_url(unquote(match.group("tail")[:MAX_DECODED]))
        if found is not None:
            return _path_proxy_name(match.group("prefix")), found[0]
    return None


def _alloy(url: NormalizedURL, params: Params) -> Finding | None:
    match = _ALLOY.search(url.path)
    if not match:
        return None
    origin = decode_base64(match.group("origin"))
    if origin is None or not _ORIGIN.match(origin):
        return None
    return Finding("signature", "alloy", absolute_url(with_query(origin + match.group("rest"), url.query)))


# CroxyProxy: the proxied path stays as it is, the origin rides in __cpo=<base64>.
def _croxyproxy(url: NormalizedURL, params: Params) -> Finding | None:
    value = param_value(params, "__cpo")
    if value is None:
        return None
    origin = decode_base64(value)
    if origin is None or not _ORIGIN.match(origin):
        return Finding("signature", "croxyproxy", None)
    query = "&".join(pair for pair in url.query.split("&") if not pair.lower().startswith("__cp"))
    return Finding("signature", "croxyproxy", absolute_url(with_query(origin + url.path, query)))


PARAM_SIGNATURES = (_glype, _php_proxy, _cgiproxy, _alloy, _croxyproxy)
