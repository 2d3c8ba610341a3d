"""End to end: real HTTP and HTTPS requests through a real `aupguard run` to a local origin."""

from __future__ import annotations

import html
import http.client
import re
import ssl
import subprocess
import sys

import pytest
import requests

from conftest import (
    REPO,
    Proxy,
    allow_tunnels_to,
    free_port,
    incidents,
    start_proxy,
    tls_request,
    wait_listening,
    with_list_root,
    write_htpasswd,
    write_policy,
)  # fmt: skip

REF = re.compile(r"AG-[A-Z2-9]{4}-[A-Z2-9]{4}")


def get(proxy, url, **kwargs):
    kwargs.setdefault("timeout", 15)
    kwargs.setdefault("proxies", proxy.proxies)
    kwargs.setdefault("verify", str(proxy.ca))
    return requests.get(url, **kwargs)


def connect_status(proxy, host: str, port: int = 443, auth: str | None = None) -> int:
    """The proxy's answer to a bare CONNECT, as a browser's proxy code sees it."""
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=15)
    headers = {"Proxy-Authorization": auth} if auth else {}
    conn.request("CONNECT", f"{host}:{port}", headers=headers)
    status = conn.getresponse().status
    conn.close()
    return status


# -- the bundled policy ---------------------------------------------------------------------------


def test_allowed_http_reaches_the_origin(proxy, origin):
    response = get(proxy, origin.url("/lesson/plan"))
    assert response.status_code == 200
    assert response.text == "origin says hello: /lesson/plan"


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_alt_svc_is_stripped_so_browsers_do_not_try_quic_around_the_proxy(proxy, origin, scheme):
    url = origin.url("/alt-svc") if scheme == "http" else origin.https_url("/alt-svc")
    direct = requests.get(url, timeout=15, verify=False) if scheme == "http" else None
    if direct is not None:
        assert direct.headers["Alt-Svc"] == 'h3=":443"; ma=86400'  # the origin does announce it
    response = get(proxy, url)
    assert response.status_code == 200 and response.text == "origin says hello: /alt-svc"
    assert "alt-svc" not in response.headers


def test_blocked_http_gets_the_block_page(proxy):
    response = get(proxy, "http://www.pornhub.com/view?x=1", headers={"Accept": "text/html"})
    assert response.status_code == 403
    assert response.headers["Content-Type"].startswith("text/html")
    page = response.text
    assert "This page is blocked" in page
    assert "Pornographic" in page or "adult" in page.lower()  # the category in plain words
    assert 'name="viewport"' in page  # readable on a phone
    ref = response.headers["X-Aupguard-Incident"]
    assert REF.fullmatch(ref) and ref in page
    assert re.search(r"\d{4}-\d{2}-\d{2}", page) and re.search(r"\d{2}:\d{2}:\d{2}", page)


def test_block_page_escapes_what_it_reflects_and_is_sent_inert(proxy):
    # The shown URL is normalised first (< > " arrive percent-encoded); ' and & stay and must be escaped.
    # Every other field: test_blockpage.py.
    response = get(proxy, "http://pornhub.com/it's&more=<b>")
    assert response.status_code == 403
    assert "pornhub.com/it&#39;s&amp;more=%3Cb%3E" in response.text
    assert "it's&more" not in response.text
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "style-src 'unsafe-inline'" in csp
    action = html.unescape(re.search(r'<form method="post" action="([^"]+)"', response.text).group(1))
    assert f"form-action {action};" in csp  # the report forms may still post


def test_clients_that_do_not_accept_html_get_one_line(proxy):
    response = get(proxy, "http://bet365.com/", headers={"Accept": "application/json"})
    assert response.status_code == 403
    assert response.headers["Content-Type"].startswith("text/plain")
    body = response.text
    assert (body.count("\n") == 1 and "Gambling" in body) or "gambling" in body.lower()
    assert REF.search(body)


def test_blocked_https_with_interception_gets_the_block_page(proxy):
    response = get(proxy, "https://www.pornhub.com/some/video")
    assert response.status_code == 403
    assert "This page is blocked" in response.text


def test_allowed_https_is_decrypted_and_passed(proxy, origin):
    response = get(proxy, origin.https_url("/secure"))
    assert response.status_code == 200
    assert response.text == "origin says hello: /secure"


def test_pupils_by_default_cannot_reach_social_networks(proxy):
    assert get(proxy, "https://www.instagram.com/").status_code == 403


# -- incidents are recorded and flushed on shutdown ---------------------------------------------------


def test_every_blocked_attempt_is_in_the_db_after_an_immediate_stop(tmp_path):
    running = start_proxy(tmp_path)
    refs = []
    try:
        for i in range(40):
            response = get(running, f"http://pornhub.com/{i}", headers={"User-Agent": "test-agent/1.0"})
            assert response.status_code == 403
            refs.append(response.headers["X-Aupguard-Incident"])
    finally:
        assert running.stop() == 0
    rows = incidents(running.db)
    assert sorted(r["ref"] for r in rows) == sorted(refs)
    row = rows[0]
    assert row["client_ip"] == "127.0.0.1"
    assert row["user_group"] == "pupils"
    assert row["method"] == "GET"
    assert row["host"] == "pornhub.com"
    assert row["url"].startswith("http://pornhub.com/")
    assert row["category"] == "adult"
    assert "adult" in row["rule"] and "pornhub.com" in row["rule"]
    assert row["action"] == "block"
    assert row["user_agent"] == "test-agent/1.0"
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", row["local_date"])
    assert oct(running.db.stat().st_mode & 0o777) == "0o600"


def test_search_terms_are_recorded(tmp_path):
    block_search = with_list_root(tmp_path / "lists")

    (tmp_path / "lists" / "self_harm").mkdir(parents=True)
    (tmp_path / "lists" / "self_harm" / "expressions").write_text("(^|[^a-z])self.?harm([^a-z]|$)\n")
    running = start_proxy(tmp_path, write_policy(tmp_path / "policy.yaml", block_search))
    try:
        response = get(running, "http://www.google.co.uk/search?q=how+to+self+harm&hl=en")
        assert response.status_code == 403
    finally:
        running.stop()
    (row,) = incidents(running.db)
    assert row["search_term"] == "how to self harm"
    assert row["category"] == "self_harm"
    assert row["severity"] in ("high", "critical")


# -- identity: proxy authentication and address ranges ---------------------------------------------------


def staff_social_networks_all_week(policy):
    """The bundled staff may use social networks at breaks and lunch only; these tests must not depend on the clock."""
    staff = policy["groups"]["staff"]
    staff["block"] = [c for c in staff["block"] if c not in ("social_networks", "webmail")]
    del staff["allow_during"]


def test_staff_log_in_and_get_their_own_policy(tmp_path, origin):
    htpasswd = write_htpasswd(tmp_path / "htpasswd", {"ms.teacher": "correct horse", "a.pupil": "battery staple"})

    def staff_user(policy):
        policy["identity"]["users"] = {"ms.teacher": "staff"}
        staff_social_networks_all_week(policy)
        # Treat the local origin as a social network, so "allowed for staff" can reach a real server.
        with_list_root(tmp_path / "lists")(policy)

    (tmp_path / "lists" / "social_networks").mkdir(parents=True)
    (tmp_path / "lists" / "social_networks" / "domains").write_text("localhost\n")
    running = start_proxy(
        tmp_path, write_policy(tmp_path / "policy.yaml", staff_user), extra=("--proxyauth", f"@{htpasswd}")
    )
    try:
        url = origin.url("/feed", host="localhost")
        assert get(running, url).status_code == 407  # no login: mitmproxy's proxyauth asks for one
        teacher = get(running, url, proxies={"http": f"http://ms.teacher:correct%20horse@127.0.0.1:{running.port}"})
        assert teacher.status_code == 200
        pupil = get(running, url, proxies={"http": f"http://a.pupil:battery%20staple@127.0.0.1:{running.port}"})
        assert pupil.status_code == 403
    finally:
        running.stop()
    (row,) = incidents(running.db)
    assert row["username"] == "a.pupil" and row["user_group"] == "pupils"
    assert "staple" not in str(row)


def test_address_ranges_choose_the_group(tmp_path, origin):
    def loopback_is_staff(policy):
        policy["identity"]["networks"] = [{"cidr": "127.0.0.0/8", "group": "staff"}]
        staff_social_networks_all_week(policy)

    running = start_proxy(tmp_path, write_policy(tmp_path / "policy.yaml", loopback_is_staff))
    try:
        assert get(running, "http://pornhub.com/").status_code == 403  # harmful: blocked for staff too
        response = get(running, "http://www.instagram.com/", timeout=15)
        assert response.status_code != 403  # social networks are allowed for staff (no internet here: 502)
    finally:
        running.stop()
    (row,) = incidents(running.db)
    assert row["user_group"] == "staff"


# -- TLS: no_decrypt and interception off --------------------------------------------------------------


def test_no_decrypt_hosts_pass_through_with_their_own_certificate(tmp_path, origin):
    def localhost_no_decrypt(policy):
        policy["tls"]["no_decrypt"] = list(policy["tls"].get("no_decrypt", [])) + ["127.0.0.1"]
        allow_tunnels_to(origin, bare_ip=True)(policy)

    running = start_proxy(tmp_path, write_policy(tmp_path / "policy.yaml", localhost_no_decrypt))
    try:
        # The client trusts only the origin's own certificate: it works only if nothing decrypted it.
        with pytest.raises(requests.exceptions.SSLError):
            get(running, origin.https_url("/bank", host="127.0.0.1"), verify=str(running.ca))
        response = get(running, origin.https_url("/bank", host="127.0.0.1"), verify=str(origin.cert))
        assert response.text == "origin says hello: /bank"
    finally:
        running.stop()


def test_blocked_no_decrypt_category_is_refused_at_connect(tmp_path):
    def pupils_block_banking(policy):
        policy["groups"]["pupils"]["block"].append("banking")

    running = start_proxy(tmp_path, write_policy(tmp_path / "policy.yaml", pupils_block_banking))
    try:
        assert connect_status(running, "www.barclays.co.uk") == 403
    finally:
        running.stop()
    (row,) = incidents(running.db)
    assert row["action"] == "refuse" and row["category"] == "banking"


def tls_in_tunnel(proxy: Proxy, target: str, sni: str) -> bytes:
    """CONNECT to `target`, then TLS naming `sni` (trusting the proxy's CA) and one GET; the answer."""
    return tls_request(proxy, target, sni, "/x", sni)


def test_a_blocked_no_decrypt_host_named_by_sni_in_an_allowed_tunnel_is_refused_never_decrypted(tmp_path, origin):
    def pupils_block_banking(policy):
        policy["groups"]["pupils"]["block"].append("banking")
        allow_tunnels_to(origin)(policy)

    running = start_proxy(tmp_path, write_policy(tmp_path / "policy.yaml", pupils_block_banking))
    target = f"localhost:{origin.https_port}"  # an allowed tunnel
    try:
        # A client that trusts the school's CA still gets no handshake: nothing was decrypted.
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            tls_in_tunnel(running, target, "www.barclays.co.uk")
        # An ordinary blocked name in the same kind of tunnel is still decrypted, to show the block page.
        assert tls_in_tunnel(running, target, "www.pornhub.com").startswith(b"HTTP/1.1 403")
    finally:
        running.stop()
    refused, blocked = incidents(running.db)
    assert (refused["action"], refused["category"], refused["host"]) == ("refuse", "banking", "www.barclays.co.uk")
    assert (blocked["action"], blocked["host"]) == ("block", "www.pornhub.com")


def test_without_interception_a_blocked_connect_is_refused_and_logged(tmp_path, origin):
    def no_interception(policy):
        policy["tls"]["intercept"] = False
        allow_tunnels_to(origin)(policy)

    running = start_proxy(tmp_path, write_policy(tmp_path / "policy.yaml", no_interception))
    try:
        assert connect_status(running, "pornhub.com") == 403
        # Allowed HTTPS still works, undecrypted: the client sees the origin's own certificate.
        context = ssl.create_default_context(cafile=str(origin.cert))
        conn = http.client.HTTPSConnection("127.0.0.1", running.port, timeout=15, context=context)
        conn.set_tunnel("localhost", origin.https_port)
        conn.request("GET", "/plain")
        assert conn.getresponse().read() == b"origin says hello: /plain"
    finally:
        running.stop()
    (row,) = incidents(running.db)
    assert row["action"] == "refuse" and row["host"] == "pornhub.com"


# -- start-up ------------------------------------------------------------------------------------------


def test_a_broken_policy_stops_the_start_with_file_line_and_reason(tmp_path):
    broken = write_policy(tmp_path / "policy.yaml", lambda p: p["groups"]["pupils"]["block"].append("no_such_category"))
    result = subprocess.run(
        [sys.executable, "-m", "aupguard.cli", "run", "--config", str(broken), "--listen-port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert re.search(rf"{re.escape(str(broken))}:\d+: .*no_such_category", result.stderr)


def test_the_addon_loads_the_mitmproxy_way(tmp_path):
    port = free_port()
    db = tmp_path / "incidents.db"
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from mitmproxy.tools.main import mitmdump; mitmdump()",
            "-s",
            str(REPO / "addons" / "webfilter.py"),
            "--listen-host",
            "127.0.0.1",
            "--listen-port",
            str(port),
            "--set",
            f"confdir={tmp_path / 'mitmproxy'}",
            "--set",
            f"aupguard_policy={REPO / 'config' / 'policy.yaml'}",
            "--set",
            f"aupguard_db={db}",
            "--set",
            "connection_strategy=lazy",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    running = Proxy(process, port, tmp_path / "mitmproxy", db, tmp_path / "none.log")
    try:
        wait_listening(process, port)
        assert get(running, "http://pornhub.com/").status_code == 403
    finally:
        running.stop()
    assert len(incidents(db)) == 1
