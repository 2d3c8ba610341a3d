"""Requests that name their destination badly or twice, through a real proxy (issue 9.2, 9.3, 9.4, 9.8, 9.11)."""

from __future__ import annotations

import json
import socket
import sqlite3
import ssl
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aupguard.base.urlnorm import URLError, from_parts
from aupguard.core.engine import Engine
from aupguard.core.identify import Identity
from aupguard.runtime import load_engine
from conftest import (
    BUNDLED_POLICY,
    allow_tunnels_to,
    start_proxy,
    tls_request,
    write_policy,
)

STAFF_IP = "127.0.0.2"  # loopback addresses are all local: a second client address for free


@pytest.fixture(scope="module")
def running(tmp_path_factory, origin):
    tmp = tmp_path_factory.mktemp("holes")

    def edit(policy):
        allow_tunnels_to(origin)(policy)
        policy["identity"]["networks"] = [{"cidr": f"{STAFF_IP}/32", "group": "staff"}]

    proxy = start_proxy(tmp, write_policy(tmp / "policy.yaml", edit))
    yield proxy
    proxy.stop()


def exchange(proxy, data: bytes, source_ip: str = "127.0.0.1") -> bytes:
    """Send raw bytes, read until the proxy closes or a whole answer head and body are in; what came back."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=15, source_address=(source_ip, 0)) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
            head, _, body = answer.partition(b"\r\n\r\n")
            length = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
            if length and len(body) >= int(length[0].split(b":")[1]):
                break
        return answer


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0


def incident(proxy, answer: bytes) -> dict:
    """The stored incident the answer's X-Aupguard-Incident names (the writer commits in the background)."""
    (ref,) = [
        line.split(b": ")[1].decode() for line in answer.split(b"\r\n") if line.startswith(b"X-Aupguard-Incident")
    ]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with sqlite3.connect(proxy.db) as conn:
            conn.row_factory = sqlite3.Row
            rows = [dict(r) for r in conn.execute("select * from incidents where ref = ?", (ref,))]
        if rows:
            return rows[0]
        time.sleep(0.2)
    raise AssertionError(f"incident {ref} was never stored")


# -- the engine's part, without the proxy --------------------------------------------------------------


@pytest.fixture(scope="module")
def engine() -> Engine:
    return load_engine(BUNDLED_POLICY, index_path=None, exemptions_path=None)


@pytest.mark.parametrize("group", ["pupils", "staff"])
def test_a_name_that_is_no_host_is_refused_and_carries_the_category_of_the_others(engine, group):
    identity = Identity(None, "10.0.0.1", group, "test")
    verdict = engine.check_request("http", ("pornhub.com", "pornhub.com:x"), 80, "/", identity)
    assert verdict.blocked and verdict.technique == "malformed" and verdict.decision.category == "adult"
    incident = engine.incident(verdict, method="GET", user_agent=None, action="refuse")
    assert (incident.url, incident.host, incident.severity) == ("http://pornhub.com/", "pornhub.com", "high")
    assert incident.categories[:2] == ("adult", "circumvention")  # what it decided on first, as for every attempt


def test_the_path_is_judged_under_every_name(engine):
    identity = Identity(None, "10.0.0.1", "pupils", "test")
    verdict = engine.check_request("https", ("example.com", "whoer.net"), 443, "/webproxy", identity)
    assert verdict.blocked and verdict.url.host == "whoer.net"
    assert not engine.check_request("https", ("example.com", "example.com"), 443, "/webproxy", identity).blocked


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=80))
def test_any_host_text_is_decided_never_let_through_unread(engine, name):
    identity = Identity(None, "10.0.0.1", "staff", "test")
    verdict = engine.check_request("http", ("example.com", name), 80, "/", identity)
    assert verdict.error is None  # bad input is never an internal error (which staff would pass)
    try:
        from_parts("http", name, 80, "/")
    except URLError:
        assert verdict.blocked and verdict.technique == "malformed" and verdict.url.host == "example.com"


# -- 9.2 / 9.8: a malformed Host header is bad input, refused for every group and recorded ------------------


@pytest.mark.parametrize("source_ip", ["127.0.0.1", STAFF_IP], ids=["pupils", "staff"])
def test_a_malformed_host_header_is_refused_with_400_and_recorded_with_its_url(running, source_ip):
    request = b"GET http://pornhub.com/ HTTP/1.1\r\nHost: pornhub.com:x\r\nConnection: close\r\n\r\n"
    answer = exchange(running, request, source_ip)
    assert status_of(answer) == 400, answer[:300]
    row = incident(running, answer)
    assert (row["url"], row["host"], row["action"]) == ("http://pornhub.com/", "pornhub.com", "refuse")
    assert "adult" in json.loads(row["categories"])  # what was asked for is carried to the DSL
    assert row["severity"] == "high" and row["technique"] == "malformed"
    assert row["user_group"] == ("staff" if source_ip == STAFF_IP else "pupils")


def test_a_malformed_host_inside_an_intercepted_tunnel_does_not_reach_the_origin(running, origin):
    answer = tls_request(running, f"localhost:{origin.https_port}", "localhost", "/secret", "localhost:x", STAFF_IP)
    assert status_of(answer) == 400 and b"origin says hello" not in answer


def test_malformed_requests_are_logged_once_per_interval_without_a_traceback(running):
    for _ in range(5):
        exchange(running, b"GET http://example.com/ HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n")
    log = running.log.read_text()
    assert "Traceback" not in log
    assert log.count("refused a request from") <= 2  # one per minute (the other tests may log the first)


# -- 9.3: a Host header naming another site than the URL or the SNI --------------------------------


def test_a_host_header_cannot_take_a_blocked_path_past_the_filter(running):
    request = b"GET http://whoer.net/webproxy HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n"
    answer = exchange(running, request)
    assert status_of(answer) == 403, answer[:300]
    assert incident(running, answer)["url"] == "http://whoer.net/webproxy"


def test_inside_intercepted_tls_the_sni_is_judged_with_the_path(running, origin):
    # The tunnel and the Host header name the allowed origin; the SNI names the site whose path is listed.
    answer = tls_request(running, f"localhost:{origin.https_port}", "whoer.net", "/webproxy", "localhost")
    assert status_of(answer) == 403 and b"origin says hello" not in answer


def test_inside_intercepted_tls_the_host_header_is_judged_with_the_path(running, origin):
    answer = tls_request(running, f"localhost:{origin.https_port}", "localhost", "/webproxy", "whoer.net")
    assert status_of(answer) == 403 and b"origin says hello" not in answer


def test_matching_names_still_reach_the_origin(running, origin):
    answer = tls_request(running, f"localhost:{origin.https_port}", "localhost", "/lesson", "localhost")
    assert status_of(answer) == 200 and answer.endswith(b"origin says hello: /lesson")


# -- 9.4: IPv4 spellings of a bare IP ------------------------------------------------------------------


@pytest.mark.parametrize("target", ["2130706433", "0x7f.1", "127.1", "0177.0.0.1", "127.0.0.1.", "127.0.0.1"])
def test_every_spelling_of_an_ip_address_is_refused_at_connect(running, target):
    answer = exchange(running, f"CONNECT {target}:443 HTTP/1.1\r\nHost: {target}:443\r\n\r\n".encode())
    assert status_of(answer) == 403, answer[:300]
    row = incident(running, answer)
    assert row["host"] == "127.0.0.1" and row["technique"] == "tunnel"


# -- 9.11: blank lines before a request ------------------------------------------------------------------


def test_blank_lines_before_a_request_are_ignored(running, origin):
    request = f"\r\n\r\nGET {origin.url('/after-blank')} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    answer = exchange(running, request.encode())
    assert status_of(answer) == 200 and answer.endswith(b"origin says hello: /after-blank")


# -- 9.9: request heads that never end -------------------------------------------------------------------


def test_half_sent_request_heads_are_closed_after_the_header_timeout(tmp_path, origin):
    proxy = start_proxy(tmp_path, write_policy(tmp_path / "policy.yaml"), extra=("--set", "aupguard_header_timeout=2"))
    clients = []
    try:
        for _ in range(800):
            sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=30)
            sock.sendall(f"GET {origin.url('/slow')} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode())  # no blank line
            clients.append(sock)
        answers = []
        for sock in clients:  # each is answered and closed by the proxy, not by this end
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
            answers.append(answer)
        assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers), {a[:40] for a in answers}
        # A head sent whole, even slowly within the deadline, is served as before.
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=15) as sock:
            sock.sendall(f"GET {origin.url('/whole')} HTTP/1.1\r\n".encode())
            time.sleep(0.5)
            sock.sendall(b"Host: 127.0.0.1\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert status_of(answer) == 200 and answer.endswith(b"origin says hello: /whole")
    finally:
        for sock in clients:
            sock.close()
        proxy.stop()


# -- 10.7: what tls.intercept false still decrypts ------------------------------------------------------


def test_without_interception_only_a_blocked_sni_in_an_allowed_tunnel_is_decrypted(tmp_path, origin):
    def no_interception(policy):
        policy["tls"]["intercept"] = False
        allow_tunnels_to(origin)(policy)

    proxy = start_proxy(tmp_path, write_policy(tmp_path / "policy.yaml", no_interception))
    target = f"localhost:{origin.https_port}"
    try:
        # The blocked name the handshake asks for is decrypted to get its block page (as README says) ...
        answer = tls_request(proxy, target, "www.pornhub.com", "/", "www.pornhub.com")
        assert status_of(answer) == 403 and b"origin says hello" not in answer
        # ... an allowed one is not: the proxy's CA cannot verify the origin's own certificate.
        with pytest.raises(ssl.SSLCertVerificationError):
            tls_request(proxy, target, "localhost", "/", "localhost")
    finally:
        proxy.stop()
