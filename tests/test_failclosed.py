"""Fail closed, proven through a running proxy with faults injected by tests/fault_injection.py."""

from __future__ import annotations

import http.client
import time

import pytest

from conftest import REPO, fetch_text, incidents, start_proxy, write_policy

FAULTS = REPO / "tests" / "fault_injection.py"
STAFF_IP = "127.0.0.2"  # loopback addresses are all local: a second client address for free


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")

    def staff_address(policy):
        policy["identity"]["networks"] = [{"cidr": f"{STAFF_IP}/32", "group": "staff"}]

    feed = tmp / "var" / "lists" / "mandatory" / "illegal"  # where the bundled policy reads a licensed feed
    feed.mkdir(parents=True)
    (feed / "domains").write_text("illegal-feed.example\n")
    running = start_proxy(tmp, write_policy(tmp / "policy.yaml", staff_address), extra=("--script", str(FAULTS)))
    yield running
    running.stop()


def test_pupils_get_the_filter_error_page_and_an_incident(faulty, origin):
    status, headers, page = fetch_text(faulty, origin.url("/fault-classify/lesson"))
    assert status == 403
    assert "The filter could not check this page" in page
    ref = headers["X-Aupguard-Incident"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not [r for r in incidents(faulty.db) if r["ref"] == ref]:
        time.sleep(0.2)
    (row,) = [r for r in incidents(faulty.db) if r["ref"] == ref]
    assert row["category"] == "filter_error" and row["user_group"] == "pupils" and row["action"] == "block"


def test_staff_who_fail_open_reach_the_site(faulty, origin):
    status, _, body = fetch_text(faulty, origin.url("/fault-inspect/staffroom"), source_ip=STAFF_IP)
    assert status == 200 and body == "origin says hello: /fault-inspect/staffroom"


def test_a_failure_never_opens_the_mandatory_tier_for_staff(faulty):
    # The failure comes after the list lookup: the mandatory tier is looked up again, and blocks.
    status, _, page = fetch_text(faulty, "http://illegal-feed.example/fault-inspect/x", source_ip=STAFF_IP)
    assert status == 403 and "Illegal content" in page


def test_a_failing_hook_still_checks_the_mandatory_tier_for_staff(faulty, origin):
    # The request hook itself fails around the engine: the names it was given are still looked up.
    status, _, page = fetch_text(faulty, "http://illegal-feed.example/fault-hook/x", source_ip=STAFF_IP)
    assert status == 403 and "Illegal content" in page
    status, _, body = fetch_text(faulty, origin.url("/fault-hook/staffroom"), source_ip=STAFF_IP)
    assert status == 200 and body == "origin says hello: /fault-hook/staffroom"  # the staff failure rule


def test_a_failing_connect_hook_still_refuses_the_mandatory_tier_for_staff(faulty):
    conn = http.client.HTTPConnection("127.0.0.1", faulty.port, timeout=15, source_address=(STAFF_IP, 0))
    try:
        conn.request("CONNECT", "fault-hook.illegal-feed.example:443")
        response = conn.getresponse()
        assert response.status == 403
    finally:
        conn.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not [r for r in incidents(faulty.db) if r["host"].startswith("fault-hook.")]:
        time.sleep(0.2)
    (row,) = [r for r in incidents(faulty.db) if r["host"].startswith("fault-hook.")]
    assert row["category"] == "illegal" and row["user_group"] == "staff" and row["action"] == "refuse"


def test_staff_are_blocked_when_the_mandatory_tier_itself_cannot_be_checked(faulty, origin):
    status, _, page = fetch_text(faulty, origin.url("/fault-classify/staffroom"), source_ip=STAFF_IP)
    assert status == 403 and "The filter could not check this page" in page


def test_a_block_page_that_fails_to_render_still_blocks(faulty, origin):
    status, _headers, body = fetch_text(faulty, origin.url("/fault-page/x"))
    assert status == 403
    assert body == "Blocked by the school's web filter.\n"
    assert "origin says hello" not in body


def test_a_failing_incident_writer_does_not_unblock(faulty, origin):
    status, _, body = fetch_text(faulty, origin.url("/fault-writer/x"))
    assert status == 403 and "The filter could not check this page" in body


def test_the_proxy_keeps_serving_after_the_faults(faulty, origin):
    for _ in range(3):
        assert fetch_text(faulty, origin.url("/fault-classify/again"))[0] == 403
    status, _, body = fetch_text(faulty, origin.url("/after"))
    assert status == 200 and body == "origin says hello: /after"
    assert fetch_text(faulty, "http://pornhub.com/")[0] == 403  # and still filters
    assert faulty.process.poll() is None
