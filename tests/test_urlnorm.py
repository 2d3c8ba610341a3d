"""URL normalisation: tables of browser-equivalent spellings, and properties on adversarial input."""

from __future__ import annotations

import ipaddress
import itertools
import re
import string
import unicodedata
from urllib.parse import quote_plus

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from aupguard.base.urlnorm import (
    DEFAULT_PORTS,
    NormalizedURL,
    URLError,
    from_parts,
    normalize_host,
    normalize_url,
    search_term,
    server_path,
)
from aupguard.core.classify import url_prefixes

PROPERTY = settings(max_examples=300, deadline=None)


# --- hosts --------------------------------------------------------------------

HOSTS = [
    # userinfo: the host is after the last '@' of the authority
    ("http://good.com@bad.com/", "bad.com", False),
    ("http://user:pass@bad.com:8080/", "bad.com", False),
    ("http://a@good.com@bad.com/", "bad.com", False),
    ("http://good.com/@bad.com", "good.com", False),
    ("http://good.com\\@bad.com/", "good.com", False),
    ("http://good.com?@bad.com/", "good.com", False),
    ("http://good.com#@bad.com/", "good.com", False),
    # case, trailing dots
    ("http://EXAMPLE.com./", "example.com", False),
    ("http://Example.COM../", "example.com", False),
    # percent-escapes in the host
    ("http://ex%61mple.com/", "example.com", False),
    ("http://%45XAMPLE%2ecom/", "example.com", False),
    ("http://%31%32%37.0.0.1/", "127.0.0.1", True),
    # IDN <-> punycode
    ("http://пример.рф/", "xn--e1afmkfd.xn--p1ai", False),
    ("http://ПРИМЕР.РФ/", "xn--e1afmkfd.xn--p1ai", False),
    ("http://xn--e1afmkfd.xn--p1ai/", "xn--e1afmkfd.xn--p1ai", False),
    ("http://XN--E1AFMKFD.XN--P1AI/", "xn--e1afmkfd.xn--p1ai", False),
    ("http://%D0%BF%D1%80%D0%B8%D0%BC%D0%B5%D1%80.%D1%80%D1%84/", "xn--e1afmkfd.xn--p1ai", False),
    ("http://faß.de/", "xn--fa-hia.de", False),  # non-transitional: ß stays ß
    ("http://ｅｘａｍｐｌｅ。com/", "example.com", False),  # fullwidth letters, ideographic dot
    ("http://ex\u00adample.com/", "example.com", False),  # soft hyphen is ignored by UTS46
    ("http://bücher.example./", "xn--bcher-kva.example", False),
    # ASCII names IDNA rejects but DNS has
    ("http://_dmarc.example.com/", "_dmarc.example.com", False),
    ("http://my_host.example.com/", "my_host.example.com", False),
    ("http://xn--zz.com/", "xn--zz.com", False),
    # IPv4 in WHATWG forms
    ("http://127.0.0.1/", "127.0.0.1", True),
    ("http://2130706433/", "127.0.0.1", True),
    ("http://0x7f000001/", "127.0.0.1", True),
    ("http://0X7F000001/", "127.0.0.1", True),
    ("http://017700000001/", "127.0.0.1", True),
    ("http://0x7f.1/", "127.0.0.1", True),
    ("http://127.1/", "127.0.0.1", True),
    ("http://3232235777/", "192.168.1.1", True),
    ("http://0xC0A80101/", "192.168.1.1", True),
    ("http://0300.0250.1.1/", "192.168.1.1", True),
    ("http://192.168.257/", "192.168.1.1", True),
    ("http://192.0xa8.0401/", "192.168.1.1", True),  # mixed decimal, hex, octal
    ("http://0x.0.0.0/", "0.0.0.0", True),  # a bare "0x" is zero
    ("http://0/", "0.0.0.0", True),
    ("http://255.255.255.255/", "255.255.255.255", True),
    ("http://4294967295/", "255.255.255.255", True),
    ("http://127.0.0.1./", "127.0.0.1", True),
    ("http://１２７.０.０.１/", "127.0.0.1", True),  # fullwidth digits map to ASCII first
    ("http://000000000000000000000177.0.0.1/", "127.0.0.1", True),  # leading zeros mean octal
    # IPv6 literals
    ("http://[::1]/", "::1", True),
    ("http://[2001:DB8:0:0:0:0:0:1]:8080/", "2001:db8::1", True),
    ("http://[2001:db8::0001]/", "2001:db8::1", True),
    ("http://[::ffff:127.0.0.1]/", "127.0.0.1", True),  # IPv4-mapped: same destination, one key
    ("http://[::FFFF:7f00:1]/", "127.0.0.1", True),
    # scheme-less and odd slashes, as browsers read them
    ("example.com", "example.com", False),
    ("example.com/path", "example.com", False),
    ("example.com:8080/path", "example.com", False),
    ("//example.com/path", "example.com", False),
    ("http:example.com/", "example.com", False),
    ("http:\\\\example.com\\x", "example.com", False),
    ("http:///example.com/", "example.com", False),
    ("  \thttp://exa\nmple.com/ \x00", "example.com", False),
    ("\x10\x1fhttp://example.com/\x01", "example.com", False),
    ("localhost", "localhost", False),
]


@pytest.mark.parametrize(("raw", "host", "is_ip"), HOSTS)
def test_host_normalisation(raw: str, host: str, is_ip: bool) -> None:
    url = normalize_url(raw)
    assert (url.host, url.is_ip) == (host, is_ip)


BAD_URLS = [
    "",
    "   ",
    "http://",
    "http:///",
    "/just/a/path",
    "\\just\\a\\path",
    "http://@/",
    "http://good.com@/",
    # ports
    "http://a.com:99999/",
    "http://a.com:65536/",
    "http://a.com:x/",
    "http://a.com:-1/",
    "http://a.com:8O/",
    "http://a.com:٨٠/",  # Arabic-Indic digits are digits to str.isdigit, not to a URL
    "http://a.com:80:80/",
    "http://a.com:" + "0" * 100 + "99999/",
    # IPv4 overflow and malformed numbers
    "http://4294967296/",
    "http://256.0.0.1/",
    "http://1.2.3.256/",
    "http://1.2.65536/",
    "http://1.2.3.4.5/",
    "http://0x100000000/",
    "http://08.0.0.1/",
    "http://0xg.0.0.1/",
    "http://1..2/",
    "http://example.123/",
    "http://example.0x/",
    "http://" + "9" * 2000 + "/",
    # IPv6
    "http://[::1/",
    "http://[::1]x/",
    "http://[1:2:3]/",
    "http://[fe80::1%25eth0]/",
    "http://::1/",
    # host characters
    "http://a b.com/",
    "http://a\x00b.com/",
    "http://a%00b.com/",
    "http://a%20b.com/",
    "http://a<b.com/",
    "http://a%2541.com/",  # double-encoded: '%' is left after one decode
    "http://a%3Ab.com/",
    "http://a%ff.com/",  # not UTF-8
    "http://a!b.com/",
    "http://a..b.com/",
    "http://.example.com/",
    "http://./",
    "http://a_b.пример/",  # invalid IDNA and not plain ASCII
    "http://\u2028.com/",
    # bounds
    "http://" + "a" * 64 + ".com/",
    "http://" + ("a" * 60 + ".") * 5 + "com/",
    "http://" + "a" * 3000 + "/",
    "http://a.com/" + "x" * 65536,
    # path that is not Unicode
    "http://a.com/\ud800",
]


@pytest.mark.parametrize("raw", BAD_URLS)
def test_bad_urls_raise_urlerror(raw: str) -> None:
    with pytest.raises(URLError):
        normalize_url(raw)


def test_urlerror_is_a_valueerror() -> None:
    assert issubclass(URLError, ValueError)


def test_host_length_limits_are_inclusive() -> None:
    label63 = "a" * 63
    host253 = ".".join([label63, label63, label63, "a" * 61])
    assert len(host253) == 253
    assert normalize_url(f"http://{label63}.com/").host == f"{label63}.com"
    assert normalize_url(f"http://{host253}/").host == host253
    with pytest.raises(URLError):
        normalize_url(f"http://{host253}a/")


def test_input_length_limit_is_inclusive() -> None:
    prefix = "http://a.com/"
    url = normalize_url(prefix + "x" * (65536 - len(prefix)))
    assert len(url.path) == 65536 - len("http://a.com")


@pytest.mark.parametrize(
    ("raw", "host"),
    [
        ("Example.COM.", "example.com"),
        ("пример.рф", "xn--e1afmkfd.xn--p1ai"),
        ("::1", "::1"),
        ("[::1]", "::1"),
        ("2001:DB8::1", "2001:db8::1"),
        ("::ffff:10.0.0.1", "10.0.0.1"),
        ("0x0A.1", "10.0.0.1"),
        ("ex%61mple.com", "example.com"),
    ],
)
def test_normalize_host(raw: str, host: str) -> None:
    assert normalize_host(raw) == host


@pytest.mark.parametrize("raw", ["", "example.com:80", "a b", "a/b", "user@host", "[::1", "1.2.3.4.5", "*.example.com"])
def test_normalize_host_rejects(raw: str) -> None:
    with pytest.raises(URLError):
        normalize_host(raw)


# --- scheme and port ------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "scheme", "port"),
    [
        ("http://a.com:80/", "http", None),
        ("https://a.com:443/", "https", None),
        ("HTTPS://a.com:443/", "https", None),
        ("http://a.com:443/", "http", 443),
        ("https://a.com:80/", "https", 80),
        ("ftp://a.com:21/", "ftp", None),
        ("ws://a.com:80/", "ws", None),
        ("wss://a.com:443/", "wss", None),
        ("http://a.com:0080/", "http", None),
        ("http://a.com:8080/", "http", 8080),
        ("http://a.com:/", "http", None),  # empty port means the default
        ("http://a.com:0/", "http", 0),
        ("http://a.com:65535/", "http", 65535),
        ("a.com:8443", "http", 8443),
        ("foo://a.com:80/", "foo", 80),  # not a scheme with a known default
    ],
)
def test_scheme_and_port(raw: str, scheme: str, port: int | None) -> None:
    url = normalize_url(raw)
    assert (url.scheme, url.port) == (scheme, port)


# --- path and query ---------------------------------------------------------------

PATHS = [
    ("http://a.com", "/", ""),
    ("http://a.com?x=1", "/", "x=1"),
    ("http://a.com/?", "/", ""),
    ("http://a.com/#frag", "/", ""),
    ("http://a.com/p?q=1#frag?x", "/p", "q=1"),
    ("http://a.com/p?a?b", "/p", "a?b"),
    # dot-segments (RFC 3986 5.2.4)
    ("http://a.com/b/../c/./d", "/c/d", ""),
    ("http://a.com/a/b/c/./../../g", "/a/g", ""),
    ("http://a.com/mid/content=5/../6", "/mid/6", ""),
    ("http://a.com/a/b/..", "/a/", ""),
    ("http://a.com/a/b/.", "/a/b/", ""),
    ("http://a.com/../../x", "/x", ""),
    ("http://a.com/..", "/", ""),
    ("http://a.com/./", "/", ""),
    ("http://a.com/.a/..b/...", "/.a/..b/...", ""),
    ("http://a.com/a//b/../c", "/a//c", ""),
    # encoded dots count as dots, as in browsers
    ("http://a.com/%2e%2e/x", "/x", ""),
    ("http://a.com/a/%2E%2e/x", "/x", ""),
    ("http://a.com/a/.%2e/x", "/x", ""),
    ("http://a.com/a/%2e/x", "/a/x", ""),
    ("http://a.com/a/..%2f/x", "/a/..%2F/x", ""),  # an encoded slash is not a separator
    # backslashes are slashes in special schemes
    ("http://a.com\\a\\..\\b", "/b", ""),
    ("https://a.com/a\\b?c\\d", "/a/b", "c\\d"),
    ("foo://a.com/a\\b", "/a\\b", ""),
    # percent-encoding: unreserved decoded, others upper-cased
    ("http://a.com/%7e%41%5a%30%2D%2e%5F", "/~AZ0-._", ""),
    ("http://a.com/%2f%3a%3F%23%25", "/%2F%3A%3F%23%25", ""),
    ("http://a.com/?q=%7euser%2fx", "/", "q=~user%2Fx"),
    ("http://a.com/?q=a+b", "/", "q=a+b"),
    # what browsers percent-encode
    ("http://a.com/a b", "/a%20b", ""),
    ('http://a.com/"<>`{}', "/%22%3C%3E%60%7B%7D", ""),
    ("http://a.com/é", "/%C3%A9", ""),
    ("http://a.com/?q=é", "/", "q=%C3%A9"),
    # lone '%' becomes %25, so no second decode can pair it with what follows
    ("http://a.com/100%", "/100%25", ""),
    ("http://a.com/%zz", "/%25zz", ""),
    ("http://a.com/%%341", "/%2541", ""),
    # case is kept
    ("http://a.com/CaseD/Path?Q=V", "/CaseD/Path", "Q=V"),
]


@pytest.mark.parametrize(("raw", "path", "query"), PATHS)
def test_path_and_query(raw: str, path: str, query: str) -> None:
    url = normalize_url(raw)
    assert (url.path, url.query) == (path, query)


# --- derived forms -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("HTTP://Good.com@Example.COM.:80/a/../b?x=1#f", "http://example.com/b?x=1"),
        ("https://a.com:8443", "https://a.com:8443/"),
        ("http://[2001:db8::1]:8080/x", "http://[2001:db8::1]:8080/x"),
        ("http://[::1]", "http://[::1]/"),
        ("http://0x7f.1/", "http://127.0.0.1/"),
        ("пример.рф/путь", "http://xn--e1afmkfd.xn--p1ai/%D0%BF%D1%83%D1%82%D1%8C"),
    ],
)
def test_url_property(raw: str, canonical: str) -> None:
    assert normalize_url(raw).url == canonical


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("http://example.com/", "example.com"),
        ("http://example.com", "example.com"),
        ("https://www.example.com:8443/", "example.com"),
        ("http://WWW2.Example.com/Foo/Bar.HTML", "example.com/foo/bar.html"),
        ("http://www.example.com/dir/", "example.com/dir/"),
        ("http://example.com/?Q=1", "example.com/?q=1"),
        ("http://example.com/a?b=C", "example.com/a?b=c"),
        ("http://wwwx.example.com/", "wwwx.example.com"),
        ("http://notwww.example.com/", "notwww.example.com"),
        ("http://www.www.example.com/", "www.example.com"),  # only the leading one
        ("http://10.0.0.1/a", "10.0.0.1/a"),
    ],
)
def test_squid_key(raw: str, key: str) -> None:
    assert normalize_url(raw).squid_key() == key


@pytest.mark.parametrize(
    ("raw", "candidates"),
    [
        ("http://a.b.example.co.uk/", ("a.b.example.co.uk", "b.example.co.uk", "example.co.uk", "co.uk", "uk")),
        ("http://example.com/", ("example.com", "com")),
        ("http://localhost/", ("localhost",)),
        ("http://10.0.0.1/", ("10.0.0.1",)),
        ("http://[2001:db8::1]/", ("2001:db8::1",)),
    ],
)
def test_domain_candidates(raw: str, candidates: tuple[str, ...]) -> None:
    assert normalize_url(raw).domain_candidates() == candidates


def test_domain_candidates_are_bounded() -> None:
    host = ".".join(["a"] * 127)  # 253 characters, the most labels a host can have
    candidates = normalize_url(f"http://{host}/").domain_candidates()
    assert len(candidates) == 127
    assert candidates[-1] == "a"


# --- from mitmproxy's request parts --------------------------------------------------


@pytest.mark.parametrize(
    ("parts", "raw"),
    [
        (("http", "example.com", 80, "/a/../b?x=1"), "http://example.com/b?x=1"),
        (("https", "Example.COM.", 443, "/"), "https://example.com/"),
        (("https", "example.com", 8443, "/p"), "https://example.com:8443/p"),
        (("http", "::1", 8080, "/"), "http://[::1]:8080/"),
        (("http", "[::1]", 80, "/"), "http://[::1]/"),
        (("HTTP", "пример.рф", 80, "/"), "http://xn--e1afmkfd.xn--p1ai/"),
        (("http", "example.com", 80, ""), "http://example.com/"),
        (("http", "example.com", 80, "*"), "http://example.com/*"),
        (("http", "example.com", 80, "/a\\..\\b"), "http://example.com/b"),
        (("http", "example.com", 80, "/\udcff"), "http://example.com/%FF"),  # mitmproxy's surrogateescape
    ],
)
def test_from_parts(parts: tuple[str, str, int, str], raw: str) -> None:
    url = from_parts(*parts)
    assert url.url == raw
    assert url == normalize_url(raw)


@pytest.mark.parametrize(
    "parts",
    [
        ("http", "", 80, "/"),
        ("http", "a b", 80, "/"),
        ("http", "example.com", 70000, "/"),
        ("http", "example.com", -1, "/"),
        ("ht tp", "example.com", 80, "/"),
        ("http", "example.com", 80, "/" + "x" * 65536),
    ],
)
def test_from_parts_rejects(parts: tuple[str, str, int, str]) -> None:
    with pytest.raises(URLError):
        from_parts(*parts)


# --- search terms ---------------------------------------------------------------------

SEARCHES = [
    ("https://www.google.com/search?q=hello+world", "hello world"),
    ("https://www.google.co.uk/search?client=firefox&q=how%20to%20revise", "how to revise"),
    ("https://google.de/search?q=%C3%BCber", "über"),
    ("https://www.google.com/search?tbm=isch&q=cats", "cats"),
    ("https://www.bing.com/search?q=weather+today&form=QBLH", "weather today"),
    ("https://www.bing.com/images/search?q=dogs", "dogs"),
    ("https://duckduckgo.com/?q=privacy&t=h_", "privacy"),
    ("https://html.duckduckgo.com/html/?q=lite", "lite"),
    ("https://search.yahoo.com/search?p=news", "news"),
    ("https://uk.search.yahoo.com/search?p=football", "football"),
    ("https://www.youtube.com/results?search_query=minecraft+lets+play", "minecraft lets play"),
    ("https://m.youtube.com/results?search_query=maths", "maths"),
    ("https://www.ecosia.org/search?q=trees", "trees"),
    ("https://yandex.ru/search/?text=%D0%BF%D1%80%D0%B8%D0%B2%D0%B5%D1%82", "привет"),
    ("https://www.baidu.com/s?wd=python", "python"),
    ("https://en.wikipedia.org/w/index.php?search=Tudor+history&title=Special:Search", "Tudor history"),
    ("https://www.amazon.co.uk/s?k=lego&ref=nb", "lego"),
    ("https://example.org/search?q=site+search", "site search"),
    ("https://example.org/forum/search/?q=x", "x"),
    # cleaning: controls and bidi overrides out, whitespace collapsed, bounded
    ("https://www.google.com/search?q=a%00b%0Ac%E2%80%AEd", "a b c d"),
    ("https://www.google.com/search?q=++spaced++out++", "spaced out"),
    ("https://www.google.com/search?q=" + "x" * 1000, "x" * 256),
    ("https://www.google.com/search?q=%FF", "\ufffd"),
    # first non-empty value wins
    ("https://www.google.com/search?q=&q=second", "second"),
]


@pytest.mark.parametrize(("raw", "term"), SEARCHES)
def test_search_term(raw: str, term: str) -> None:
    assert search_term(normalize_url(raw)) == term


NOT_SEARCHES = [
    "https://www.google.com/",
    "https://www.google.com/maps?q=london",  # not the search path
    "https://www.google.com/search?query=x",
    "https://www.google.com/search?q=",
    "https://www.google.com/search?q=%00%01",  # nothing printable left
    "https://mail.yahoo.com/?p=inbox",  # not search.yahoo.com
    "https://www.youtube.com/watch?v=abc&search_query=x",
    "https://example.org/?q=not+a+search+path",
    "https://example.org/searching?q=x",
    "https://notgoogle.com/?text=x",
    "https://10.0.0.1/search?x=1",
    "https://www.bing.com/search",
]


@pytest.mark.parametrize("raw", NOT_SEARCHES)
def test_not_a_search(raw: str) -> None:
    assert search_term(normalize_url(raw)) is None


def test_search_term_on_an_ip_uses_the_generic_rule_only() -> None:
    assert search_term(normalize_url("http://10.0.0.1/search?q=x")) == "x"
    assert search_term(normalize_url("http://10.0.0.1/?q=x")) is None


# --- properties -----------------------------------------------------------------------


def _ipv4_forms(number: int, parts: int, radixes: list[str]) -> str:
    """Write a 32-bit number as `parts` WHATWG IPv4 parts, each in the given radix."""
    octets = list(number.to_bytes(4, "big"))
    values = octets[: parts - 1] + [int.from_bytes(bytes(octets[parts - 1 :]), "big")]
    written = []
    for value, radix in zip(values, radixes):
        if radix == "hex":
            written.append(hex(value))
        elif radix == "octal":
            written.append("0" + format(value, "o"))
        else:
            written.append(str(value))
    return ".".join(written)


@PROPERTY
@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 4),
    st.lists(st.sampled_from(["dec", "hex", "octal"]), min_size=4, max_size=4),
)
def test_every_ipv4_spelling_reaches_the_same_address(number: int, parts: int, radixes: list[str]) -> None:
    expected = str(ipaddress.IPv4Address(number))
    host = _ipv4_forms(number, parts, radixes)
    assert normalize_host(host) == expected
    assert normalize_url(f"http://{host.upper()}./").host == expected


_label = st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=1, max_size=12)
_unicode_label = st.text(alphabet=st.characters(codec="utf-8", categories=["L", "N", "M"]), min_size=1, max_size=8)
_host = st.one_of(
    st.lists(_label, min_size=1, max_size=5).map(".".join),
    st.lists(st.one_of(_label, _unicode_label), min_size=1, max_size=4).map(".".join),
    st.integers(0, 2**32 - 1).map(str),
    st.integers(0, 2**32 - 1).map(hex),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda address: f"[{address}]"),
    st.lists(_label, min_size=1, max_size=3).map(lambda labels: "".join(f"%{ord(c):02x}" for c in ".".join(labels))),
    st.text(max_size=20),
)
_segment = st.one_of(
    st.sampled_from(
        ["", ".", "..", "%2e", "%2E%2e", ".%2e", "a", "B", "%41", "%7e", "%2f", "%", "%zz", "é", " ", "\\", "@", ":"]
    ),
    st.text(max_size=6),
)
_url = st.builds(
    lambda scheme, userinfo, host, port, segments, query, fragment: (
        f"{scheme}{userinfo}{host}{port}/{'/'.join(segments)}{query}{fragment}"
    ),
    st.sampled_from(["http://", "https://", "HTTP://", "ftp://", "ws://", "foo://", "http:", "http:\\\\", "//", ""]),
    st.sampled_from(["", "user@", "user:pw@", "good.com@", "a@b@"]),
    _host,
    st.one_of(st.just(""), st.integers(0, 70000).map(lambda port: f":{port}"), st.sampled_from([":", ":x"])),
    st.lists(_segment, max_size=6),
    st.one_of(st.just(""), st.text(max_size=15).map(lambda text: "?" + text)),
    st.one_of(st.just(""), st.text(max_size=5).map(lambda text: "#" + text)),
)
_any_input = st.one_of(_url, st.text(max_size=80))


def _normalized_or_none(raw: str) -> NormalizedURL | None:
    try:
        return normalize_url(raw)
    except URLError:
        return None


@PROPERTY
@given(_any_input)
@example("http://[::ffff:1.2.3.4]:80/")
@example("http://%%341/")
@example("http://a.com/%%341")
def test_only_urlerror_escapes(raw: str) -> None:
    _normalized_or_none(raw)  # any other exception fails the test


@PROPERTY
@given(_any_input)
@example("http://a.com/%%341/./%2e%2e/")
@example("http://a.com/a/..//b")
def test_normalisation_is_idempotent(raw: str) -> None:
    url = _normalized_or_none(raw)
    if url is not None:
        assert normalize_url(url.url) == url
        assert normalize_host(url.host) == url.host


@PROPERTY
@given(_any_input)
def test_normalised_host_shape(raw: str) -> None:
    url = _normalized_or_none(raw)
    if url is None:
        return
    host = url.host
    assert host and host.isascii() and len(host) <= 253
    assert "@" not in host and "%" not in host and not host.endswith(".")
    assert host == host.lower()
    assert url.path.startswith("/")
    assert "#" not in url.path + url.query and "?" not in url.path
    segments = url.path.split("/")
    assert "." not in segments and ".." not in segments
    assert url.port is None or (0 <= url.port <= 65535 and url.port != DEFAULT_PORTS.get(url.scheme))


@PROPERTY
@given(_any_input)
def test_domain_candidates_run_from_host_to_tld(raw: str) -> None:
    url = _normalized_or_none(raw)
    if url is None:
        return
    candidates = url.domain_candidates()
    assert candidates[0] == url.host
    if url.is_ip:
        assert candidates == (url.host,)
        return
    assert candidates[-1] == url.host.rsplit(".", 1)[-1]
    assert len(candidates) == url.host.count(".") + 1
    for longer, shorter in itertools.pairwise(candidates):
        assert longer.endswith("." + shorter)


@PROPERTY
@given(_any_input)
def test_from_parts_agrees_with_normalize_url(raw: str) -> None:
    url = _normalized_or_none(raw)
    if url is None or url.scheme not in ("http", "https"):
        return
    port = url.port if url.port is not None else DEFAULT_PORTS[url.scheme]
    path = url.path + ("?" + url.query if url.query else "")
    assert from_parts(url.scheme, url.host, port, path) == url


@PROPERTY
@given(_any_input)
def test_squid_key_is_lower_case_and_schemeless(raw: str) -> None:
    url = _normalized_or_none(raw)
    if url is None:
        return
    key = url.squid_key()
    host = url.host if url.is_ip else re.sub(r"^www\d*\.", "", url.host)
    assert key == key.lower()
    assert key.startswith(host)
    if url.path == "/" and not url.query:
        assert key == host
    else:
        assert key[len(host) :].startswith("/")  # no scheme, no port


_BIDI_CONTROLS = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _as_reported(typed: str) -> str | None:
    """What a reader of the report should see: controls as spaces, whitespace collapsed."""
    visible = "".join(" " if unicodedata.category(char) == "Cc" or char in _BIDI_CONTROLS else char for char in typed)
    return " ".join(visible.split()) or None


@PROPERTY
@given(
    st.sampled_from(["www.google.com/search", "www.bing.com/search", "duckduckgo.com/", "example.org/search"]),
    st.text(max_size=200),
)
def test_search_term_round_trips_what_was_typed(prefix: str, typed: str) -> None:
    url = normalize_url(f"https://{prefix}?q={quote_plus(typed)}&other=1")
    assert search_term(url) == _as_reported(typed)


@PROPERTY
@given(st.text(min_size=257, max_size=600))
def test_search_term_is_bounded(typed: str) -> None:
    term = search_term(normalize_url(f"https://www.google.com/search?q={quote_plus(typed)}"))
    assert term is None or len(term) <= 256


# --- the path as servers resolve it (urls matching) ---------------------------

SERVER_PATHS = [
    # (the request's path, the path every listed server serves for it)
    ("/adultpage", "/adultpage"),
    ("/adultpage/", "/adultpage"),  # a trailing slash is the list format's "same entry"
    ("/", "/"),
    ("/adultpage;x", "/adultpage"),  # servlet path parameters (Tomcat, Jetty)
    ("/adultpage;jsessionid=0123ABC", "/adultpage"),
    ("/a;x/b;y=1", "/a/b"),
    ("/a/..;/b", "/b"),  # Tomcat strips the parameter first: "..;" is ".."
    ("/adultpage%3bx", "/adultpage"),  # decoded by a front proxy, then stripped behind it
    ("/adultpage%2f", "/adultpage"),  # encoded slash (IIS, Apache AllowEncodedSlashes, nginx)
    ("/s%2Fmalware.html", "/s/malware.html"),
    ("/s%5Cmalware.html", "/s/malware.html"),  # encoded backslash: a separator on IIS
    ("/a%2f..%2fb", "/b"),  # dot segments that only appear after decoding
    ("/adultpage.", "/adultpage"),  # Windows drops trailing dots and spaces
    ("/adultpage%20", "/adultpage"),
    ("/adultpage.%20.", "/adultpage"),
    ("/dir./page", "/dir/page"),
    ("/a/..%20/b", "/b"),  # ".. " is ".." once Windows trims the space
    ("/...", "/..."),  # three dots are a file name, not a dot segment
    ("/adultpage%00", "/adultpage"),  # NUL ends the path in old CGI and Windows stacks
    ("/adultpage%00.jpg", "/adultpage"),
    ("//adultpage", "/adultpage"),  # nginx merge_slashes
    ("/a///b//", "/a/b"),
    ("/ADULTPAGE", "/adultpage"),  # IIS is case-insensitive, as squidGuard's keys are
    ("/%C3%89T%C3%89", "/%c3%a9t%c3%a9"),  # ÉTÉ -> été: the case of non-ASCII letters too
    ("/a%21b", "/a!b"),  # a sub-delimiter escaped or not is one file name
    ("/a%3Fb", "/a%3fb"),  # an escaped '?' stays in the path, never starts the query
    ("/a%23b", "/a%23b"),
    # one decoding layer, as servers do: %252e is the file name "%2e", not "."
    ("/a/%252e%252e/b", "/a/%252e%252e/b"),
    ("/Ssa%2520Viewer", "/ssa%2520viewer"),
    ("/a%252fb", "/a%252fb"),
    ("/100%25", "/100%25"),
    ("/%FF%FE", "/%ff%fe"),  # bytes that are not UTF-8 are kept
]


@pytest.mark.parametrize(("raw", "resolved"), SERVER_PATHS)
def test_server_path(raw: str, resolved: str) -> None:
    assert server_path(normalize_url("http://h.test" + raw).path).lower() == resolved


def test_url_list_key_keeps_the_query_and_the_recorded_path() -> None:
    url = normalize_url("http://www.Host.test/Adultpage;x/?Q=1")
    assert url.url_list_key() == "host.test/adultpage?q=1"
    assert url.path == "/Adultpage;x/" and url.squid_key() == "host.test/adultpage;x/?q=1"


_plain_segment = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_~!$&'()*+,=:@-]{0,8}", fullmatch=True)


def _respell(draw, segment: str) -> str:
    """One spelling of `segment` that some mainstream server serves as the same file."""
    chars = []
    for char in segment:
        form = draw(st.sampled_from(["same", "case", "escape"]))
        if form == "case":
            char = char.swapcase()
        elif form == "escape":
            char = "".join(f"%{byte:02{draw(st.sampled_from('xX'))}}" for byte in char.encode())
        chars.append(char)
    spelled = "".join(chars)
    spelled += draw(st.sampled_from(["", ".", "%20", "..", ". ", "%2E"]))
    spelled += draw(st.sampled_from(["", ";x", ";jsessionid=AB12", "%3bv=1"]))
    return spelled


@st.composite
def _path_and_respelling(draw):
    segments = draw(st.lists(_plain_segment, min_size=1, max_size=5))
    separators = st.sampled_from(["/", "//", "%2f", "%2F", "%5C", "\\", "/./", "/x/../", "/x%2f..%2f"])
    respelled = "".join(draw(separators) + _respell(draw, segment) for segment in segments)
    respelled += draw(st.sampled_from(["", "/", "//", "%00", "%00.jpg", "%2f"]))
    return "/" + "/".join(segments), respelled


@PROPERTY
@given(_path_and_respelling())
@example(("/adultpage", "/adultpage;x"))
@example(("/adultpage", "/adultpage%2f"))
@example(("/s/malware.html", "/s%2Fmalware.html"))
def test_every_server_equivalent_spelling_has_the_entrys_key(pair: tuple[str, str]) -> None:
    path, respelled = pair
    assert (
        normalize_url("http://h.test/" + respelled).url_list_key()
        == normalize_url("http://h.test" + path).url_list_key()
    )


@PROPERTY
@given(st.lists(_plain_segment, min_size=1, max_size=4), st.lists(_plain_segment, min_size=1, max_size=4))
@example(["adultpage"], ["adultpages"])
def test_an_entry_matches_no_path_outside_it(entry: list[str], other: list[str]) -> None:
    entry, other = [segment.lower() for segment in entry], [segment.lower() for segment in other]
    key = normalize_url("http://h.test/" + "/".join(entry)).url_list_key()
    prefixes = url_prefixes(normalize_url("http://h.test/" + "/".join(other)).url_list_key())
    assert (key in prefixes) == (other[: len(entry)] == entry)


@PROPERTY
@given(_any_input)
def test_url_list_key_is_a_fixed_point(raw: str) -> None:
    url = _normalized_or_none(raw)
    if url is None or url.scheme not in ("http", "https"):
        return
    path = server_path(url.path)
    assert server_path(normalize_url("http://h.test" + path).path) == path
