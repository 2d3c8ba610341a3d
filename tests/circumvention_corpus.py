"""Circumvention attempts built the way each tool builds them, for unit and proxy tests.

Each encoder below re-implements the tool's own encoder (named beside it), not
aupguard's decoder, so a test that decodes these proves the decoder matches the
tool. `attempts()` returns the whole corpus: at least 50 distinct requests, every
technique, as `Attempt(method, url, headers, technique, inner_url, name)`.
"""

from __future__ import annotations

import base64
import codecs
import hashlib
import random
import struct
from typing import NamedTuple
from urllib.parse import quote


class Attempt(NamedTuple):
    method: str
    url: str
    headers: dict[str, str]
    technique: str  # the finding expected: "signature" | "nested" | "heuristic" | "doh"
    inner_url: str | None  # the decoded target expected, None when it cannot be decoded
    name: str  # the finding's name


# -- helpers with the semantics of the tools' languages -------------------------------------------


def php_rawurlencode(text: str) -> str:
    """PHP rawurlencode(): RFC 3986, everything but A-Za-z0-9-_.~ is %XX."""
    return quote(text, safe="-_.~")


def js_encode_uri_component(text: str) -> str:
    """JavaScript encodeURIComponent(): keeps A-Za-z0-9 - _ . ! ~ * ' ( )."""
    return quote(text, safe="-_.!~*'()")


def php_base64(data: str | bytes) -> str:
    raw = data.encode("latin-1") if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


# -- Glype -------------------------------------------------------------------------------------


def arcfour(key: str, data: str) -> str:
    """Glype 1.4 includes/init.php arcfour('encrypt', key, data): RC4, then base64."""
    state = list(range(256))
    j = 0
    for i in range(256):
        j = (j + state[i] + ord(key[i % len(key)])) % 256
        state[i], state[j] = state[j], state[i]
    out = bytearray()
    i = j = 0
    for char in data.encode("latin-1"):
        i = (i + 1) % 256
        j = (j + state[i]) % 256
        state[i], state[j] = state[j], state[i]
        out.append(char ^ state[(state[i] + state[j]) % 256])
    return php_base64(bytes(out))


def glype_url(
    proxy_host: str,
    target: str,
    encode: bool = False,
    path_info: bool = False,
    salt: str = "",
    bitfield: int = 29,
    flag: str = "",
    version: str = "1.1",
    script: str = "browse.php",
) -> str:
    """Glype includes/init.php proxyURL() (1.1: base64 + salt prefix; 1.4: arcfour with the session key)."""
    url = target
    if encode:
        url = url[4:]  # "remove HTTP (saves space and helps avoid detection)"
        url = arcfour(salt, url) if version == "1.4" else salt + php_base64(url)
    url = php_rawurlencode(url)
    browse = f"https://{proxy_host}/{script}"
    if path_info and encode:
        chunked = "".join(url[i : i + 8] + "/" for i in range(0, len(url), 8))  # PHP chunk_split($url, 8, '/')
        return f"{browse}/{chunked.replace('%', '_')}b{bitfield}/" + (f"f{flag}" if flag else "")
    return f"{browse}?u={url}&b={bitfield}" + (f"&f={flag}" if flag else "")


# -- PHProxy 0.5 and php-proxy-app --------------------------------------------------------------

PHPROXY_FLAGS = (
    "include_form", "remove_scripts", "accept_cookies", "show_images", "show_referer",
    "rotate13", "base64_encode", "strip_meta", "strip_title", "session_cookies",
)  # fmt: skip


def phproxy_url(proxy_host: str, target: str, mode: str = "base64", with_flags: bool = True) -> str:
    """PHProxy index.php: encode_url() per flags; the form redirect adds hl=base_convert(flags, 2, 16)."""
    flags = dict.fromkeys(PHPROXY_FLAGS, 1) | {"rotate13": int(mode == "rot13"), "base64_encode": int(mode == "base64")}
    if mode == "rot13":
        encoded = php_rawurlencode(codecs.encode(target, "rot13"))
    elif mode == "base64":
        encoded = php_rawurlencode(php_base64(target))
    else:
        encoded = php_rawurlencode(target)
    bits = "".join(str(flags[name]) for name in PHPROXY_FLAGS)
    hl = f"&hl={int(bits, 2):x}" if with_flags else ""
    return f"http://{proxy_host}/index.php?q={encoded}{hl}"


def str_rot_pass(text: str, key: str) -> bytes:
    """php-proxy src/helpers.php str_rot_pass(): add the key's bytes (PHP chr() wraps at 256)."""
    return bytes((ord(char) + ord(key[i % len(key)])) % 256 for i, char in enumerate(text))


def php_proxy_app_url(
    proxy_host: str, target: str, url_mode: int = 1, app_key: str = "aupguard-test", client_ip: str = "10.1.2.3"
) -> str:
    """php-proxy-app index.php + helpers.php url_encrypt(); modes 2/3 key with md5(app_key . IP/session)."""
    if url_mode == 0:
        encoded = php_rawurlencode(target)
    else:
        raw = target.encode("latin-1")
        if url_mode >= 2:
            raw = str_rot_pass(target, hashlib.md5((app_key + client_ip).encode()).hexdigest())
        encoded = base64.b64encode(raw).decode().translate(str.maketrans("+/", "-_")).rstrip("=")
    return f"https://{proxy_host}/index.php?q={encoded}"


# -- CGIProxy ----------------------------------------------------------------------------------


def cgiproxy_pack_flags_20(
    remove_cookies=0, remove_scripts=1, filter_ads=0, hide_referer=1, insert_form=1, frame=0
) -> str:
    """CGIProxy 2.0 pack_flags(): six 0/1 digits, then the MIME type id tr'd to [A-Za-z0-9+-] (0 -> 'A')."""
    return f"{remove_cookies}{remove_scripts}{filter_ads}{hide_referer}{insert_form}{frame}A"


def cgiproxy_url(
    proxy_host: str, target: str, encoding: str = "plain", script: str = "/cgi-bin/nph-proxy.cgi", lang: str = ""
) -> str:
    """CGIProxy nph-proxy.cgi wrap_proxy_encode(proxy_encode(url)), after <script>/[<lang>/]<flags>/."""
    uri, hash_, fragment = target.partition("#")
    scheme, _, rest = uri.partition("://")
    encoded = f"{scheme}/{rest}"  # proxy_encode: http://xxx -> http/xxx
    if encoding == "hex":
        encoded = "".join(f"{ord(char):02x}" for char in encoded)
    elif encoding == "rot13":
        encoded = codecs.encode(encoded, "rot13")
    for char, escape in (
        ("=", "=3d"),
        ("[", "=5b"),
        ("]", "=5d"),
        ("?", "=3f"),
        ("%", "=25"),
        ("&", "=26"),
        (";", "=3b"),
    ):
        encoded = encoded.replace(char, escape)
    while "//" in encoded:  # 1 while $uri=~ s#//#/=2f#g
        encoded = encoded.replace("//", "/=2f")
    prefix = f"/{lang}" if lang else ""
    return f"http://{proxy_host}{script}{prefix}/{cgiproxy_pack_flags_20()}/{encoded}{hash_}{fragment}"


# -- Ultraviolet family and other path-carrying proxies ----------------------------------------


def uv_xor_encode(target: str) -> str:
    """Ultraviolet src/rewrite/codecs.js xor.encode()."""
    return js_encode_uri_component("".join(chr(ord(c) ^ 2) if i % 2 else c for i, c in enumerate(target)))


def uv_url(proxy_host: str, target: str, prefix: str = "/service/", codec: str = "xor") -> str:
    """Ultraviolet config: prefix + encodeUrl(url)."""
    if codec == "xor":
        encoded = uv_xor_encode(target)
    elif codec == "base64":
        encoded = base64.b64encode(js_encode_uri_component(target).encode()).decode()  # btoa(encodeURIComponent)
    else:
        encoded = js_encode_uri_component(target)
    return f"https://{proxy_host}{prefix}{encoded}"


def scramjet_url(proxy_host: str, target: str) -> str:
    """Scramjet src/controller/index.ts encodeUrl(): "/scramjet/" + encodeURIComponent(url)."""
    return f"https://{proxy_host}/scramjet/{js_encode_uri_component(target)}"


def rammerhead_url(proxy_host: str, target: str, session: str = "5f2b8c0e9d1a4b7c8e3f6a2d1c0b9e8f") -> str:
    return f"https://{proxy_host}/{session}/{target}"


def node_unblocker_url(proxy_host: str, target: str) -> str:
    return f"https://{proxy_host}/proxy/{target}"


def croxyproxy_url(proxy_host: str, origin: str, path: str = "/") -> str:
    return f"https://{proxy_host}{path}?__cpo={base64.b64encode(origin.encode()).decode().rstrip('=')}"


def alloy_url(proxy_host: str, origin: str, path: str = "/") -> str:
    """Alloy: <prefix>/_<btoa(origin)>_/<path>."""
    return f"https://{proxy_host}/fetch/_{base64.b64encode(origin.encode()).decode()}_{path}"


# -- translators, caches, archives --------------------------------------------------------------


def translate_goog(target: str) -> str:
    """Google Translate's proxy host: '-' written '--', '.' written '-', under .translate.goog."""
    scheme, _, rest = target.partition("://")
    host, _slash, path = rest.partition("/")
    label = host.replace("-", "--").replace(".", "-")
    query = "_x_tr_sl=auto&_x_tr_tl=en&_x_tr_hl=en-GB&_x_tr_pto=wapp" + ("&_x_tr_sch=http" if scheme == "http" else "")
    path, _question, target_query = path.partition("?")
    joined = f"{target_query}&{query}" if target_query else query
    return f"https://{label}.translate.goog/{path}?{joined}"


def google_translate(target: str) -> str:
    return f"https://translate.google.com/translate?sl=auto&tl=en&u={quote(target, safe='')}"


def google_cache(target: str, docid: str = "") -> str:
    term = f"cache:{docid + ':' if docid else ''}{target}"
    return f"https://webcache.googleusercontent.com/search?q={quote(term, safe=':/')}&hl=en"


def wayback(target: str, timestamp: str = "20240131120000", flag: str = "") -> str:
    return f"https://web.archive.org/web/{timestamp}{flag}/{target}"


def archive_today(target: str, host: str = "archive.ph", kind: str = "newest") -> str:
    return f"https://{host}/{kind}/{target}" if kind else f"https://{host}/{target}"


# -- DNS over HTTPS ----------------------------------------------------------------------------

QTYPES = {"A": 1, "NS": 2, "CNAME": 5, "MX": 15, "TXT": 16, "AAAA": 28, "HTTPS": 65}


def dns_query(qname: str, qtype: str = "A", edns: bool = True, message_id: int = 0) -> bytes:
    """A DNS query message (RFC 1035), RD set, ID 0 as RFC 8484 recommends, optional EDNS OPT."""
    header = struct.pack("!6H", message_id, 0x0100, 1, 0, 0, 1 if edns else 0)
    name = b"".join(bytes([len(label)]) + label.encode() for label in qname.rstrip(".").split(".")) + b"\0"
    question = name + struct.pack("!2H", QTYPES[qtype], 1)
    opt = b"\0" + struct.pack("!HHIH", 41, 4096, 0, 0) if edns else b""
    return header + question + opt


def doh_get(resolver: str, qname: str, qtype: str = "A", path: str = "/dns-query") -> str:
    encoded = base64.urlsafe_b64encode(dns_query(qname, qtype)).decode().rstrip("=")
    return f"https://{resolver}{path}?dns={encoded}"


# -- the corpus --------------------------------------------------------------------------------

TARGETS = (
    "https://www.youtube.com/watch?v=dQw4w9WgXcQ",
    "http://www.example.com/",
    "https://discord.com/channels/@me",
    "https://www.tiktok.com/@someone/video/7234567890",
    "https://store.steampowered.com/app/730/",
    "https://www.reddit.com/r/gaming/",
)


def _h(accept: str | None = None, content_type: str | None = None) -> dict[str, str]:
    headers = {}
    if accept:
        headers["Accept"] = accept
    if content_type:
        headers["Content-Type"] = content_type
    return headers


def attempts() -> list[Attempt]:
    """The corpus: every technique, each encoding as the tool writes it."""
    yt, ex, dc, tt, steam, rd = TARGETS
    salt11 = "3f9a0c21be"  # Glype 1.1: substr(md5(uniqid(true)), rand(0,10), rand(11,20))
    salt14 = "".join(
        random.Random(14).choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") for _ in range(128)
    )
    get = "GET"
    cases = [
        # Glype
        Attempt(get, glype_url("maths-help.example.net", yt), {}, "signature", yt, "glype"),
        Attempt(get, glype_url("maths-help.example.net", ex, encode=True), {}, "signature", ex, "glype"),
        Attempt(get, glype_url("homework.example.org", dc, encode=True, salt=salt11), {}, "signature", dc, "glype"),
        Attempt(get, glype_url("homework.example.org", tt, encode=True, path_info=True), {}, "signature", tt, "glype"),
        Attempt(
            get,
            glype_url("site.example.com", steam, encode=True, path_info=True, salt=salt11, flag="frame"),
            {},
            "signature",
            steam,
            "glype",
        ),
        Attempt(
            get,
            glype_url("site.example.com", rd, encode=True, version="1.4", salt=salt14),
            {},
            "signature",
            None,
            "glype",
        ),
        Attempt(
            get,
            glype_url("site.example.com", yt, encode=True, version="1.4", salt=salt14, path_info=True),
            {},
            "signature",
            None,
            "glype",
        ),
        Attempt(
            get, glype_url("site.example.com", ex, script="surf.php", flag="norefer"), {}, "signature", ex, "glype"
        ),
        # PHProxy
        Attempt(get, phproxy_url("library-books.example.com", yt, "base64"), {}, "signature", yt, "phproxy"),
        Attempt(get, phproxy_url("library-books.example.com", dc, "rot13"), {}, "signature", dc, "phproxy"),
        Attempt(get, phproxy_url("library-books.example.com", tt, "plain"), {}, "signature", tt, "phproxy"),
        Attempt(
            get, phproxy_url("library-books.example.com", rd, "rot13", with_flags=False), {}, "signature", rd, "phproxy"
        ),
        # php-proxy-app
        Attempt(
            get, php_proxy_app_url("science-club.example.io", yt, url_mode=1), {}, "signature", yt, "php-proxy-app"
        ),
        Attempt(
            get,
            php_proxy_app_url("science-club.example.io", steam, url_mode=0),
            {},
            "signature",
            steam,
            "php-proxy-app",
        ),
        Attempt(
            get, php_proxy_app_url("science-club.example.io", dc, url_mode=2), {}, "signature", None, "php-proxy-app"
        ),
        Attempt(
            get,
            php_proxy_app_url(
                "science-club.example.io", "http://www.example.com/games", url_mode=3, client_ip="s3ss10n"
            ),
            {},
            "signature",
            None,
            "php-proxy-app",
        ),
        # CGIProxy
        Attempt(get, cgiproxy_url("old.example.edu", yt), {}, "signature", yt, "cgiproxy"),
        Attempt(
            get,
            cgiproxy_url("old.example.edu", "https://www.example.com/a//b;c?x=1&y=%20"),
            {},
            "signature",
            "https://www.example.com/a//b;c?x=1&y=%20",
            "cgiproxy",
        ),
        Attempt(get, cgiproxy_url("old.example.edu", dc, encoding="hex"), {}, "signature", dc, "cgiproxy"),
        Attempt(
            get,
            cgiproxy_url("old.example.edu", tt, encoding="rot13", script="/nph-go.pl"),
            {},
            "signature",
            tt,
            "cgiproxy",
        ),
        Attempt(
            get,
            cgiproxy_url("old.example.edu", rd, lang="en", script="/cgi/nph-proxy.cgi"),
            {},
            "signature",
            rd,
            "cgiproxy",
        ),
        # Ultraviolet family
        Attempt(get, uv_url("learn.example.app", yt), {}, "signature", yt, "ultraviolet"),
        Attempt(get, uv_url("learn.example.app", ex, prefix="/uv/service/"), {}, "signature", ex, "ultraviolet"),
        Attempt(get, uv_url("learn.example.app", dc, prefix="/~/uv/"), {}, "signature", dc, "ultraviolet"),
        Attempt(get, uv_url("learn.example.app", tt, codec="plain"), {}, "signature", tt, "ultraviolet"),
        Attempt(get, uv_url("learn.example.app", steam, codec="base64"), {}, "signature", steam, "ultraviolet"),
        Attempt(get, scramjet_url("learn.example.app", rd), {}, "signature", rd, "scramjet"),
        Attempt(get, rammerhead_url("rh.example.dev", yt), {}, "signature", yt, "rammerhead"),
        Attempt(get, node_unblocker_url("nu.example.dev", dc), {}, "signature", dc, "node-unblocker"),
        Attempt(
            get,
            croxyproxy_url("eu1.example-cdn.net", "https://www.tiktok.com", "/@someone/video/7234567890"),
            {},
            "signature",
            tt,
            "croxyproxy",
        ),
        Attempt(
            get,
            alloy_url("alloy.example.dev", "https://store.steampowered.com", "/app/730/"),
            {},
            "signature",
            steam,
            "alloy",
        ),
        # Nested: translators, caches, archives
        Attempt(get, translate_goog(yt), {}, "nested", yt, "translate.goog"),
        Attempt(
            get,
            translate_goog("https://my-game-site.example.co.uk/play"),
            {},
            "nested",
            "https://my-game-site.example.co.uk/play",
            "translate.goog",
        ),
        Attempt(
            get, translate_goog("http://www.example.com/"), {}, "nested", "http://www.example.com/", "translate.goog"
        ),
        Attempt(get, google_translate(dc), {}, "nested", dc, "google-translate"),
        Attempt(get, google_cache(rd), {}, "nested", rd, "web-cache"),
        Attempt(get, google_cache(tt, docid="AbCdEfGh12Ij"), {}, "nested", tt, "web-cache"),
        Attempt(get, wayback(steam), {}, "nested", steam, "archive"),
        Attempt(get, wayback(yt, flag="if_"), {}, "nested", yt, "archive"),
        Attempt(get, wayback("www.example.com/page"), {}, "nested", "http://www.example.com/page", "archive"),
        Attempt(get, archive_today(dc), {}, "nested", dc, "archive"),
        Attempt(get, archive_today(rd, host="archive.is", kind="20240101123456"), {}, "nested", rd, "archive"),
        # Nested: a URL in a parameter, in every encoding
        Attempt(get, f"https://news.example.com/article?ref={quote(yt, safe='')}", {}, "nested", yt, "param-url"),
        Attempt(get, f"https://news.example.com/article?data={php_base64(dc)}", {}, "nested", dc, "param-url"),
        Attempt(
            get,
            f"https://news.example.com/article?data={base64.urlsafe_b64encode(tt.encode()).decode().rstrip('=')}",
            {},
            "nested",
            tt,
            "param-url",
        ),
        Attempt(
            get, f"https://news.example.com/article?x={codecs.encode(steam, 'rot13')}", {}, "nested", steam, "param-url"
        ),
        Attempt(get, f"https://news.example.com/article?x={steam.encode().hex()}", {}, "nested", steam, "param-url"),
        Attempt(get, f"https://news.example.com/article?x={uv_xor_encode(rd)}", {}, "nested", rd, "param-url"),
        Attempt(
            get,
            f"https://news.example.com/article?x={quote(quote(yt, safe=''), safe='')}",
            {},
            "nested",
            yt,
            "param-url",
        ),
        Attempt(get, f"https://cdn.example.com/go/{yt}", {}, "nested", yt, "path-url"),
        # Heuristic: unknown web proxies
        Attempt(
            get,
            f"https://unblock-everything.example.xyz/index.php?url={quote(yt, safe='')}",
            {},
            "heuristic",
            yt,
            "web-proxy",
        ),
        Attempt(get, f"https://maths-revision.example.xyz/?u={php_base64(dc)}", {}, "heuristic", dc, "web-proxy"),
        Attempt(get, "https://free-proxy.example.xyz/proxy/", {}, "heuristic", None, "web-proxy"),
        Attempt(
            get,
            f"https://study.example.xyz/view.php?link={codecs.encode(tt, 'rot13')}",
            {},
            "heuristic",
            tt,
            "web-proxy",
        ),
        Attempt(
            get, f"https://hidemyass-clone.example.xyz/load?url={quote(rd, safe='')}", {}, "heuristic", rd, "web-proxy"
        ),
        # DNS over HTTPS
        Attempt(
            get,
            doh_get("dns.example.net", "www.youtube.com"),
            {"Accept": "application/dns-message"},
            "doh",
            None,
            "dns-message",
        ),
        Attempt(get, doh_get("dns.example.net", "discord.com", "AAAA"), {}, "doh", None, "dns-query-get"),
        Attempt(get, doh_get("203.0.113.53", "example.org", "HTTPS", path="/q"), {}, "doh", None, "dns-query-get"),
        Attempt(
            "POST",
            "https://doh.example.net/dns-query",
            _h(content_type="application/dns-message"),
            "doh",
            None,
            "dns-message",
        ),
        Attempt(
            "POST",
            "https://my-resolver.example.org/",
            _h("application/dns-message", "application/dns-message; charset=binary"),
            "doh",
            None,
            "dns-message",
        ),
        Attempt(
            get,
            "https://dns.example.net/dns-query?name=tiktok.com&type=AAAA",
            _h("application/dns-json"),
            "doh",
            None,
            "dns-json",
        ),
        Attempt(get, "https://dns.example.net/resolve?name=discord.com&type=A", {}, "doh", None, "dns-json"),
        Attempt(get, "https://dns.example.net/resolve?name=www.reddit.com", {}, "doh", None, "dns-json"),
        Attempt(get, "https://resolver.example.net/api?name=example.com&type=MX", {}, "doh", None, "dns-json"),
    ]
    return cases
