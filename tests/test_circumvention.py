"""aupguard.circumvention: signatures, nested URLs, the heuristic and DoH, on real encodings."""

from __future__ import annotations

import base64
import struct
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aupguard.base.urlnorm import URLError, normalize_url
from aupguard.core.circumvention import inspect_request, inspect_url
from aupguard.core.circumvention.decoders import MAX_DEPTH
from aupguard.core.circumvention.finding import Finding
from aupguard.core.circumvention.heuristic import HEURISTIC_THRESHOLD
from aupguard.core.circumvention.tunnel import MAX_REQUEST_LINE, FirstLine, first_line

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import circumvention_corpus as corpus

ATTEMPTS = corpus.attempts()


def findings_for(method: str, url: str, headers: dict[str, str] | None = None) -> tuple[Finding, ...]:
    lowered = {key.lower(): value for key, value in (headers or {}).items()}
    return inspect_request(normalize_url(url), method, lowered.get("content-type"), lowered.get("accept"))


def verdicts(findings) -> list[Finding]:
    return [finding for finding in findings if finding.technique in ("signature", "heuristic", "doh")]


# -- the corpus ----------------------------------------------------------------------------------


def test_corpus_is_large_distinct_and_covers_every_technique():
    assert len({(attempt.method, attempt.url, tuple(attempt.headers.items())) for attempt in ATTEMPTS}) >= 50
    assert {attempt.technique for attempt in ATTEMPTS} == {"signature", "nested", "heuristic", "doh"}
    names = {attempt.name for attempt in ATTEMPTS}
    for name in ("glype", "phproxy", "php-proxy-app", "cgiproxy", "ultraviolet", "scramjet", "translate.goog",
                 "web-cache", "archive", "param-url", "dns-message", "dns-json", "dns-query-get"):  # fmt: skip
        assert name in names


@pytest.mark.parametrize("attempt", ATTEMPTS, ids=[f"{a.name}-{i}" for i, a in enumerate(ATTEMPTS)])
def test_each_attempt_is_detected_with_its_technique_and_exact_inner_url(attempt):
    findings = findings_for(attempt.method, attempt.url, attempt.headers)
    expected = (attempt.technique, attempt.name, attempt.inner_url)
    assert expected in [(f.technique, f.name, f.inner_url) for f in findings], findings


@pytest.mark.parametrize("attempt", [a for a in ATTEMPTS if a.technique == "heuristic"])
def test_heuristic_findings_carry_a_score_at_or_over_the_threshold(attempt):
    scores = [f.score for f in findings_for(attempt.method, attempt.url) if f.technique == "heuristic"]
    assert scores and all(score is not None and HEURISTIC_THRESHOLD <= score <= 1.0 for score in scores)


def test_encoders_follow_the_tools_published_examples():
    # Ultraviolet's xor codec: "https://" becomes "hvtrs8/-" before encodeURIComponent.
    assert corpus.uv_xor_encode("https://a.b") == "hvtrs8%2F-a%2Cb"
    # PHProxy's default flags (everything but rotate13, strip_meta... as set) are sent as hex.
    assert "&hl=3ef" in corpus.phproxy_url("p.example", "http://x.example/", "base64")
    # Glype 1.1 path-info: 8-character chunks, '%' written '_', then /b<bitfield>/.
    assert corpus.glype_url("g.example", "http://x.example/", encode=True, path_info=True).endswith("/b29/")


# -- nested URLs are followed to a bounded depth -----------------------------------------------


def test_a_proxy_inside_an_archive_is_found_at_depth():
    proxied = corpus.glype_url("unknown.example", "https://www.youtube.com/", encode=True)
    findings = inspect_url(normalize_url(corpus.wayback(proxied)))
    assert ("nested", "archive", proxied) in [(f.technique, f.name, f.inner_url) for f in findings]
    assert ("signature", "glype", "https://www.youtube.com/") in [(f.technique, f.name, f.inner_url) for f in findings]


def test_nesting_stops_at_max_depth():
    url = "https://www.youtube.com/"
    for _ in range(MAX_DEPTH + 3):
        url = corpus.wayback(url)
    findings = inspect_url(normalize_url(url))
    assert 0 < len(findings) <= MAX_DEPTH


# -- benign look-alikes --------------------------------------------------------------------------

BENIGN = [
    "https://example.com/index.php?q=cats",
    "https://www.example.com/index.php?q=node/42",
    "https://shop.example.co.uk/search?q=school+shoes&page=2",
    "https://news.example.com/?s=election+results",
    "https://www.example.com/login?returnUrl=https%3A%2F%2Fwww.example.com%2Faccount",
    "https://www.example.com/login?next=/dashboard",
    "https://sso.example.ac.uk/cas/login?service=https%3A%2F%2Fvle.example.ac.uk%2F",
    "https://accounts.google.com/o/oauth2/v2/auth?client_id=1&redirect_uri=https%3A%2F%2Fapp.example.com%2Fcb",
    "https://www.google.com/url?q=https%3A%2F%2Fwww.bbc.co.uk%2Fnews&sa=D",
    "https://www.facebook.com/sharer/sharer.php?u=https%3A%2F%2Fwww.bbc.co.uk%2Fnews",
    "https://docs.google.com/viewer?url=https%3A%2F%2Fexample.org%2Fa.pdf&embedded=true",
    "https://developer.mozilla.org/en-US/docs/Web/JavaScript/Reference/Global_Objects/Proxy",
    "https://www.example.com/browse/categories?u=5&b=2",
    "https://search.example.com/?q=cats&hl=de",
    "https://www.example.com/cgi-bin/nph-search.cgi/en/results",
    "https://www.example.com/service/customer-support",
    "https://people.example.org/directory?name=John.Smith&type=student",
    "https://www.example.com/api?dns=notbase64!",
    "https://www.example.com/api?dns=AAAAAAAAAAAAAAAAAAAA",
    "https://surfline.com/surf-report/fistral/1234",
    "https://proxyvote.example.com/",
    # a proxy word in a subdomain, or a registered name under an ordinary TLD: one signal only
    "https://proxy.example.ac.uk/",
    "https://proxy.example.xyz/",
    "https://unblock.maths-club.top/",
    "https://www.proxysolutions.co.uk/",
    "https://unblocker.com/",
    "https://vpn-shop.xyz/",  # a weak word does not count the TLD
]


@pytest.mark.parametrize(
    "url",
    [
        "http://3.unblocker.xyz/",
        "https://unblock-proxy.top/",
        "https://www.free-bypass.click/",
        "https://mirror2.schoolproxy.online/watch",
        "https://anonymizer.tk/",
    ],
)
def test_a_registered_name_saying_proxy_under_a_cheap_tld_is_flagged_on_its_own(url):
    (finding,) = verdicts(findings_for("GET", url, {"Accept": "text/html"}))
    assert (finding.technique, finding.name) == ("heuristic", "web-proxy")
    assert finding.score == 0.7  # HOST_WORD 0.35 + CHEAP_NAME 0.35, as benchmarks/README.md weighs them


@pytest.mark.parametrize("url", BENIGN)
def test_benign_look_alikes_get_no_verdict(url):
    assert verdicts(findings_for("GET", url, {"Accept": "text/html"})) == []


def test_same_site_return_urls_are_not_even_nested():
    for url in BENIGN[4:7]:
        assert findings_for("GET", url) == ()


def test_redirect_targets_are_reported_for_classification_without_verdict():
    findings = findings_for("GET", "https://www.google.com/url?q=https%3A%2F%2Fwww.youtube.com%2F&sa=D")
    assert [(f.technique, f.inner_url) for f in findings] == [("nested", "https://www.youtube.com/")]


def test_a_dns_response_is_not_a_query():
    response = struct.pack("!6H", 0, 0x8180, 1, 1, 0, 0) + b"\x07example\x03com\x00\x00\x01\x00\x01" + b"\x00" * 16
    value = base64.urlsafe_b64encode(response).decode().rstrip("=")
    assert verdicts(findings_for("GET", f"https://x.example/dns-query?dns={value}")) == []


def test_dns_message_media_type_is_recognised_inside_lists_and_with_parameters():
    assert verdicts(findings_for("POST", "https://x.example/", {"Accept": "text/html, Application/DNS-Message;q=0.9"}))
    assert verdicts(findings_for("POST", "https://x.example/", {"Content-Type": "application/dns-message; x=1"}))
    assert not verdicts(findings_for("POST", "https://x.example/", {"Content-Type": "application/json"}))


# -- adversarial input: never raises, bounded output ---------------------------------------------

_url_text = st.one_of(
    st.text(max_size=300),
    st.builds(
        lambda host, path, query: f"http://{host}/{path}?{query}",
        st.from_regex(r"[a-z0-9-]{1,20}(\.[a-z]{2,6}){1,2}", fullmatch=True),
        st.text(alphabet=st.characters(codec="utf-8"), max_size=200),
        st.text(alphabet=st.characters(codec="utf-8"), max_size=400),
    ),
    st.sampled_from([attempt.url for attempt in ATTEMPTS]).flatmap(
        lambda url: st.integers(0, len(url)).map(lambda cut: url[:cut] + "%" + url[cut:])
    ),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_url_text, st.sampled_from(["GET", "POST"]), st.text(max_size=80), st.text(max_size=80))
def test_inspection_never_raises_and_is_bounded(raw, method, content_type, accept):
    try:
        url = normalize_url(raw)
    except URLError:
        return
    findings = inspect_request(url, method, content_type, accept)
    assert len(findings) <= 32
    for finding in findings:
        assert finding.technique in ("signature", "nested", "heuristic", "doh")
        assert finding.inner_url is None or len(finding.inner_url) <= 3 * 4096 + len(url.query)


# -- the measured false-positive rate on the benign set ----------------------------------------


def test_false_positives_on_the_benign_set_stay_within_half_a_percent(shared_dir):
    from benchmarks.circumvention_fp import measure_benign

    result = measure_benign(shared_dir / "blocklists-ut1")
    assert result["total"] >= 20_000
    assert result["rate"] <= 0.005, result["examples"]


# -- tunnels: is the first line an HTTP request line? ------------------------------------------


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", FirstLine.REQUEST),
        (b"GET http://example.com/a?b=c HTTP/1.0\n", FirstLine.REQUEST),  # a bare LF ends a line too
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", FirstLine.REQUEST),  # HTTP/2 with prior knowledge
        (b"GET /caf\xc3\xa9 HTTP/1.1\r\n", FirstLine.REQUEST),  # a raw UTF-8 path, as mitmproxy takes it
        (b"", FirstLine.PARTIAL),
        (b"abc", FirstLine.PARTIAL),
        (b"GET", FirstLine.PARTIAL),
        (b"GET /", FirstLine.PARTIAL),
        (b"GET / HTTP/1.", FirstLine.PARTIAL),
        (b"GET / HTTP/1.1\r", FirstLine.PARTIAL),
        (b"hello there\n", FirstLine.NOT_HTTP),  # a line, but no request line
        (b"HELLO\r\n", FirstLine.NOT_HTTP),
        (b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13\r\n", FirstLine.NOT_HTTP),
        (b"\x00\x0e\x38\xa1\xb2", FirstLine.NOT_HTTP),  # OpenVPN over TCP
        (b"GET  / HTTP/1.1\r\n", FirstLine.NOT_HTTP),  # RFC 9112: single spaces
        (b"GET / HTTPS", FirstLine.NOT_HTTP),
        (b"G(T", FirstLine.NOT_HTTP),  # "(" is no token character
        (b"GET /" + b"a" * MAX_REQUEST_LINE, FirstLine.NOT_HTTP),  # too long to wait for
    ],
)
def test_first_line_tells_a_request_line_from_what_can_never_be_one(data, expected):
    assert first_line(data) is expected


_TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_request_lines = st.builds(
    lambda method, target, major, minor, end: f"{method} {target} HTTP/{major}.{minor}{end}".encode(),
    st.text(_TCHARS, min_size=1, max_size=12),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=60),
    st.integers(0, 9),
    st.integers(0, 9),
    st.sampled_from(["\r\n", "\n"]),
)


@given(_request_lines, st.binary(max_size=40))
def test_every_request_line_is_http_and_every_beginning_of_one_is_waited_for(line, rest):
    assert first_line(line + rest) is FirstLine.REQUEST
    for cut in range(len(line)):  # before the LF: the line may still end well
        assert first_line(line[:cut]) is FirstLine.PARTIAL


@given(st.binary(max_size=60), st.binary(max_size=60))
def test_what_cannot_begin_a_request_line_never_becomes_one(data, more):
    """Cutting at once is safe: no later byte could have made the tunnel HTTP."""
    if first_line(data) is FirstLine.NOT_HTTP:
        assert first_line(data + more) is FirstLine.NOT_HTTP
