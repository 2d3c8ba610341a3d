"""Report a mistake: the block page's forms, answered by the proxy itself on its reserved host."""

from __future__ import annotations

import json
import os
import re
import stat
import time

import pytest
import requests

from aupguard.proxy import feedback
from aupguard.store import feedback as feedback_store
from conftest import aupguard, blocked, start_proxy

REPORT = f"http://{feedback.DEFAULT_HOST}{feedback.PATH}"


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    running = start_proxy(tmp_path_factory.mktemp("feedback"))
    yield running
    running.stop()


def post(proxy, data, url=REPORT):
    return requests.post(url, data=data, proxies=proxy.proxies, timeout=15)


def wait_rows(proxy, count, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        out = aupguard("report", "--requests", "--db", str(proxy.db), "--format", "json").stdout
        rows = json.loads(out)["requests"]
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.3)


def test_token_is_bound_to_the_incident():
    key = b"k" * 32
    assert feedback.valid_token(key, "AG-2345-6789", feedback.token(key, "AG-2345-6789"))
    assert not feedback.valid_token(key, "AG-2345-678A", feedback.token(key, "AG-2345-6789"))
    assert not feedback.valid_token(b"j" * 32, "AG-2345-6789", feedback.token(key, "AG-2345-6789"))
    assert not feedback.valid_token(key, "AG-2345-6789", "é" * 32)


def test_the_key_is_private_and_kept(tmp_path):
    key = feedback.load_key(tmp_path / "var" / "feedback.key")
    assert stat.S_IMODE(os.stat(tmp_path / "var" / "feedback.key").st_mode) == 0o600
    assert feedback.load_key(tmp_path / "var" / "feedback.key") == key and len(key) == 32


def test_rate_limiter():
    limiter = feedback.RateLimiter(limit=2, window=10, max_keys=2)
    assert limiter.allow("a", 0) and limiter.allow("a", 1) and not limiter.allow("a", 2)
    assert limiter.allow("b", 2)
    assert limiter.allow("a", 11)  # the window moved on
    limiter.allow("c", 12)
    assert len(limiter._seen) == 2  # bounded


def test_accidental_and_review_requests_are_stored_and_listed(proxy):
    ref, token, action = blocked(proxy, "/first")
    assert action == REPORT
    thanks = post(proxy, {"ref": ref, "token": token, "kind": "accidental"})
    assert thanks.status_code == 200 and "not in trouble" in thanks.text
    reason = '=HYPERLINK("x") <script>alert(1)</script> needed for RE lesson' + "x" * 600
    assert post(proxy, {"ref": ref, "token": token, "kind": "review", "reason": reason}).status_code == 200
    rows = [r for r in wait_rows(proxy, 2) if r["ref"] == ref]
    assert sorted(r["kind"] for r in rows) == ["accidental", "review"]
    review = next(r for r in rows if r["kind"] == "review")
    assert len(review["reason"]) == 500 and review["reason"].startswith("=HYPERLINK")
    assert review["url"] == "http://pornhub.com/first" and review["category"] == "adult"  # joined to its incident
    out = aupguard("report", "--requests", "--db", str(proxy.db), "--format", "csv").stdout
    assert "'=HYPERLINK" in out  # neutralised for spreadsheets
    assert "requests,{ref}".replace("{ref}", ref) in out


def test_forged_and_malformed_posts_are_refused(proxy):
    ref, token, _ = blocked(proxy, "/second")
    other, _, _ = blocked(proxy, "/third")
    assert post(proxy, {"ref": other, "token": token, "kind": "review"}).status_code == 403
    assert post(proxy, {"ref": ref, "token": "0" * 32, "kind": "review"}).status_code == 403
    assert post(proxy, {"ref": ref, "token": token, "kind": "delete-everything"}).status_code == 400
    assert post(proxy, {"ref": "<b>x</b>", "token": token, "kind": "review"}).status_code == 400
    assert post(proxy, {"ref": ref, "token": token, "kind": "review", "reason": "x" * 5000}).status_code == 400
    assert requests.get(REPORT, proxies=proxy.proxies, timeout=15).status_code == 405
    assert not [r for r in wait_rows(proxy, 0, timeout=0) if r["ref"] in (ref, other)]


def test_posts_are_rate_limited_per_client(tmp_path):
    running = start_proxy(tmp_path)
    try:
        ref, token, _ = blocked(running)
        statuses = [post(running, {"ref": ref, "token": token, "kind": "accidental"}).status_code for _ in range(12)]
        assert statuses == [200] * 10 + [429] * 2
        assert (
            requests.get("http://pornhub.com/", proxies=running.proxies, timeout=15).status_code == 403
        )  # still filtering
    finally:
        running.stop()


def test_requests_go_when_their_incident_is_purged(proxy, tmp_path):
    from aupguard.store.incidents import open_db, purge

    db = open_db(tmp_path / "i.db")
    feedback_store.ensure_schema(db)
    db.execute(
        "INSERT INTO incidents (ref, ts_utc, local_date, local_time, client_ip, user_group, method, url, url_sha256,"
        " url_length, host, categories, rule, action, severity) VALUES ('AG-2222-3333', '2000-01-01T00:00:00.000000Z',"
        " '2000-01-01', '00:00:00', '1.2.3.4', 'pupils', 'GET', 'u', 'h', 1, 'h', '[]', '', 'block', 'low')"
    )
    feedback_store.record(db, "AG-2222-3333", "review", "please")
    db.conn.commit()
    assert purge(db, 30) == 1
    assert db.execute("SELECT COUNT(*) FROM incident_requests").fetchone()[0] == 0


def test_the_thank_you_page_is_framed_like_the_block_page_and_keeps_the_reference_whole(proxy):
    page = requests.get("http://pornhub.com/framed", proxies=proxy.proxies, timeout=15, headers={"Accept": "text/html"})
    ref = page.headers["X-Aupguard-Incident"]
    token = re.search(r'name="token" value="([0-9a-f]+)"', page.text).group(1)
    thanks = post(proxy, {"ref": ref, "token": token, "kind": "review"})
    assert thanks.status_code == 200
    style = re.compile(r"<style>(.*?)</style>", re.DOTALL)
    border = re.compile(r"border-top: 6px solid #[0-9a-f]{6}")  # the accent: red on the block page, green here
    assert border.sub("", style.search(thanks.text).group(1)) == border.sub("", style.search(page.text).group(1))
    assert '<div class="card">' in thanks.text
    assert f'<dd class="ref">{ref}</dd>' in thanks.text  # not inside a sentence where it could wrap
    assert re.search(r"\.ref \{[^}]*white-space: nowrap", thanks.text)
