"""The per-request shortcuts decide exactly what the general code decides.

Each fast path (benchmarks/README.md: "Classifier side by side", "Proxy overhead") is checked
against the general code it skips, on adversarial input.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import zoneinfo

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from aupguard.base.urlnorm import URLError, _parse_url, normalize_url
from aupguard.cli.main import main as cli_main
from aupguard.config.timetable import Span, Timetable
from aupguard.core import circumvention
from aupguard.core.circumvention import heuristic, urlparts
from aupguard.proxy import lean, mitm_internals

# --- URL normalisation: the plain-URL fast path ------------------------------------------------

_PIECES = ["http", "https", "HTTP", "://", ":/", "a.com", "A.Com", "www.x.co.uk", "0x7f.1", "127.0.0.1", "[::1]",
           "xn--bcher-kva.de", "bücher.de", ":80", ":8080", "u@", "/", "/a", "/./", "/../", "/%2e%2e/", "%41", "%",
           "?", "?q=1&u=http://b.org/", "#frag", "\\", " ", "\t", "é", "_", "-", ".", "..", "/x.php/", '"', "<"]  # fmt: skip


@settings(max_examples=3000)
@given(st.lists(st.sampled_from(_PIECES), min_size=1, max_size=8).map("".join))
def test_normalize_url_fast_path_equals_the_general_parser(raw):
    try:
        expected = _parse_url(raw)
    except URLError:
        expected = None
    try:
        got = normalize_url(raw)
    except URLError:
        got = None
    assert got == expected


def test_the_fast_path_leaves_what_needs_work_to_the_general_parser():
    assert normalize_url("http://A.com/a/./b/../c?x=%7e") == _parse_url("http://A.com/a/./b/../c?x=%7e")
    assert normalize_url("http://a.com/c").path == "/c"
    assert normalize_url("http://a.com/a/../c").path == "/c"
    assert normalize_url("http://a.com").path == "/"


# --- circumvention: the host-word gate before the public-suffix lookup --------------------------


def _host_weight_reference(host: str) -> float:
    labels = urlparts.site_parts(host)[1]
    if any(heuristic._HOST_WORDS.search(label) for label in labels):
        return heuristic.HOST_WORD
    if any(heuristic._HOST_WEAK_WORDS.search(label) for label in labels):
        return heuristic.HOST_WEAK_WORD
    return 0.0


_LABELS = ["proxy", "vpn", "hide", "anon", "surf", "unblock", "mask", "x", "1", "-", "co", "uk", "com", "github",
           "io", "my", "free", "tunnel", "stealthy", "unlocker", "bypass"]  # fmt: skip


@settings(max_examples=2000)
@given(st.lists(st.lists(st.sampled_from(_LABELS), min_size=1, max_size=3).map("".join), min_size=1, max_size=4))
def test_host_words_are_found_with_or_without_the_gate(labels):
    try:
        url = normalize_url(f"http://{'.'.join(labels)}/")
    except URLError:
        return  # no host to weigh
    # The root path, no parameters, nothing carried: the public score is the (gated) host weight alone.
    assert heuristic.heuristic_score(url, (), None, False) == _host_weight_reference(url.host)


def test_the_gate_knows_every_host_word():
    for word in (*heuristic._HOST_WORD_LIST, *heuristic._HOST_WEAK_WORD_LIST):
        assert heuristic._ANY_HOST_WORD.search(f"my{word}site.com")


def test_a_proxy_named_host_with_a_proxy_path_is_still_flagged():
    findings = circumvention.inspect_url(normalize_url("http://bestproxy.example.com/browse.php"))
    assert [f.technique for f in findings] == ["heuristic"]
    assert circumvention.inspect_url(normalize_url("http://bestfood.example.com/browse.php")) == ()


# --- timetable: the answer remembered for the minute ------------------------------------------


def _timetable(zone: zoneinfo.ZoneInfo) -> Timetable:
    spans = [Span("lessons", day, 9 * 60, 12 * 60, 1) for day in range(5)]
    spans += [Span("lunch", day, 12 * 60, 13 * 60, 2) for day in range(5)]
    spans += [Span("late", day, 1 * 60 + 30, 2 * 60 + 1, 3) for day in range(7)]  # crosses DST changes
    return Timetable(zone, spans, holidays=[dt.date(2026, 3, 30)])


@settings(max_examples=2000)
@given(st.integers(0, 3 * 365 * 24 * 3600), st.sampled_from(["Europe/London", "Asia/Kolkata", "America/St_Johns"]))
def test_window_at_remembered_equals_computed(offset, zone_name):
    zone = zoneinfo.ZoneInfo(zone_name)
    cached = _timetable(zone)
    start = dt.datetime(2025, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=offset)
    for step in (0, 1, 59, 60, 61, 3600):  # the same minute, the next, and a later one
        when = start + dt.timedelta(seconds=step)
        assert cached.window_at(when) == _timetable(zone).window_at(when)


def test_window_at_across_a_daylight_saving_change():
    zone = zoneinfo.ZoneInfo("Europe/London")
    table = _timetable(zone)
    # 2026-03-29 01:00 UTC: clocks go from 01:00 GMT to 02:00 BST.
    before = dt.datetime(2026, 3, 29, 0, 59, 30, tzinfo=dt.UTC)  # 00:59 local
    after = dt.datetime(2026, 3, 29, 1, 0, 30, tzinfo=dt.UTC)  # 02:00 local
    assert table.window_at(before) is None
    assert table.window_at(after) == "late"
    assert table.window_at(before) is None


# --- classify: the JSON line is what json.dumps writes ------------------------------------------


def test_classify_lines_are_exactly_json_dumps(tmp_path, monkeypatch):
    monkeypatch.setenv("AUPGUARD_DATA", str(tmp_path / "var"))
    urls = [
        "http://www.pornhub.com/",
        'http://example.com/a"b\\c',
        "http://bücher.de/ü?q=é",
        "http://example.com/\x7f",
        "https://translate.google.com/translate?u=https%3A%2F%2Fwww.pornhub.com%2F",
        "not a url at all /",
    ]
    result = CliRunner().invoke(
        cli_main, ["classify", "--group", "pupils", "--index", str(tmp_path / "idx")], input="\n".join(urls) + "\n"
    )
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == len(urls)
    for line in lines:
        assert json.dumps(json.loads(line)) == line
    assert json.loads(lines[0])["action"] == "block"


# --- mitmproxy: idle default addons left out ------------------------------------------------------


def _master(**options):
    from mitmproxy import options as mitm_options
    from mitmproxy.tools.dump import DumpMaster

    async def make():
        opts = mitm_options.Options()
        master = DumpMaster(opts, with_termlog=False, with_dumper=True)
        opts.update(**options)
        return master

    return asyncio.run(make())


def test_idle_addons_are_left_out_and_used_ones_stay():
    master = _master(flow_detail=0)
    removed = lean.prune_idle(master)
    assert {"anticache", "modifyheaders", "stickycookie", "save", "dumper", "upstreamauth"} <= set(removed)
    for needed in ("proxyserver", "nextlayer", "tlsconfig", "proxyauth", "onboarding", "disableh2c", "block"):
        assert master.addons.get(needed) is not None


def test_an_addon_whose_option_is_set_is_kept():
    master = _master(flow_detail=1, anticache=True, modify_headers=["/~q/Host/example.org"], mode=["reverse:http://a"])
    removed = lean.prune_idle(master)
    assert not {"anticache", "modifyheaders", "dumper", "updatealtsvc"} & set(removed)
    assert master.addons.get("anticache") is not None
    assert "anticache" in lean.options_of(["anticache"])


@settings(max_examples=500, deadline=None)
@given(
    st.floats(min_value=-4e9, max_value=4e9),
    st.sampled_from(["Europe/London", "Europe/Amsterdam", "Asia/Kolkata", "America/St_Johns", "UTC"]),
)
def test_the_incident_local_time_is_what_astimezone_gives(timestamp, zone_name):
    """engine.local_date_time caches per minute; Amsterdam before 1937 (+00:19:32) takes the slow path."""
    from aupguard.core.engine import local_date_time

    zone = zoneinfo.ZoneInfo(zone_name)
    when = dt.datetime.fromtimestamp(timestamp, dt.UTC)
    local = when.astimezone(zone)
    assert local_date_time(when, zone) == (local.strftime("%Y-%m-%d"), local.strftime("%H:%M:%S"))


def test_events_reach_the_same_handlers_in_the_same_order_when_idle_addons_are_skipped():
    from mitmproxy import exceptions
    from mitmproxy.proxy.layers.http import HttpRequestHook
    from mitmproxy.test import tflow

    calls = []

    class Handler:
        def __init__(self, name, halt=False, fail=False):
            self.name, self.halt, self.fail = name, halt, fail

        async def request(self, flow):  # async handlers are awaited, as mitmproxy does
            calls.append(self.name)
            if self.fail:
                raise ValueError("a broken addon")  # logged by safecall; its siblings under the parent are skipped
            if self.halt:
                raise exceptions.AddonHalt

    class Idle:
        pass

    class NotCallable:  # mitmproxy logs an error for it on every event, and goes on
        request = "not a handler"

    class Parent:  # like mitmproxy's ScriptLoader: no handler itself, children that have one
        def __init__(self, *children):
            self.addons = list(children)

    async def both_ways():
        from mitmproxy import options
        from mitmproxy.tools.dump import DumpMaster

        master = DumpMaster(options.Options(), with_termlog=False, with_dumper=False)  # logs need a running loop
        master.addons.chain = [
            Idle(), Handler("a"), Parent(Handler("b"), Handler("b-broken", fail=True), Handler("b-skipped"), Idle()),
            NotCallable(), Handler("b2"), Handler("c", halt=True), Handler("d"),
        ]  # fmt: skip
        await master.addons.trigger_event(HttpRequestHook(tflow.tflow()))  # mitmproxy's own dispatch
        mitmproxys = list(calls)
        calls.clear()
        mitm_internals.HandlerTable(master.addons).install()
        await master.addons.trigger_event(HttpRequestHook(tflow.tflow()))
        return mitmproxys

    assert asyncio.run(both_ways()) == calls == ["a", "b", "b-broken", "b2", "c"]  # AddonHalt from c stops the event


def test_the_handler_table_follows_addons_added_removed_and_options_set():
    from mitmproxy import options
    from mitmproxy.proxy.layers.http import HttpResponseHook
    from mitmproxy.test import tflow
    from mitmproxy.tools.dump import DumpMaster

    calls = []

    class Seen:
        def __init__(self, name):
            self.name = name

        def response(self, flow):
            calls.append(self.name)

        def update(self, flows):
            calls.append(f"update {self.name}")

    class Holder:  # like a loaded Script: its sub-addons change through register() and remove()
        def __init__(self):
            self.addons = []

    async def steps():
        master = DumpMaster(options.Options(), with_termlog=False, with_dumper=False)
        master.addons.chain = []  # only this test's addons
        mitm_internals.HandlerTable(master.addons).install()
        fire = lambda: master.addons.handle_lifecycle(HttpResponseHook(tflow.tflow()))  # noqa: E731
        seen = []
        await fire()
        seen.append(list(calls))
        first = Seen("first")
        master.addons.add(first)
        await fire()
        seen.append(list(calls))  # update is sent for a flow once something handles it
        master.addons.remove(first)
        calls.clear()
        await fire()
        seen.append(list(calls))
        holder = Holder()
        master.addons.add(holder)
        await fire()
        holder.addons.append(Seen("script"))
        master.addons.register(holder.addons[0])
        await fire()
        seen.append(list(calls))
        calls.clear()
        holder.addons.insert(0, Seen("reordered"))  # the scripts option reorders scripts without register()
        master.options.update(anticache=True)
        await fire()
        seen.append(list(calls))
        return seen

    assert asyncio.run(steps()) == [
        [],
        ["first", "update first"],
        [],
        ["script", "update script"],
        ["reordered", "script", "update reordered", "update script"],
    ]


# --- the block page's Response, built without mitmproxy's per-field type check ---------------------


@pytest.mark.parametrize("content_type", ["text/html; charset=utf-8", "text/plain; charset=utf-8"])
@pytest.mark.parametrize("report_url", [None, "http://aupguard.invalid/report"])
@pytest.mark.parametrize("ref", [None, "AG-7F3K-2Q9M"])
def test_the_page_response_is_what_response_make_gives(content_type, report_url, ref):
    from mitmproxy import http

    from aupguard.proxy import blockpage
    from aupguard.proxy.blocking import page_fields
    from aupguard.proxy.mitm_internals import page_response

    page = blockpage.BlockPage(403, content_type, "<p>blocked – école</p>".encode())
    made = page_response(page, page_fields(page, report_url, report_url is not None, ref))
    made.data.__post_init__()  # mitmproxy's type check, skipped when building it: it passes
    expected = http.Response.make(page.status, page.body, made.headers.fields)
    state, expected_state = made.get_state(), expected.get_state()
    for timestamp in ("timestamp_start", "timestamp_end"):
        assert abs(state.pop(timestamp) - expected_state.pop(timestamp)) < 5
    assert state == expected_state
    assert (made.status_code, made.reason, made.content) == (403, "Forbidden", page.body)
    assert made.headers["content-length"] == str(len(page.body)) and made.headers["content-type"] == content_type
    assert ("X-Aupguard-Incident" in made.headers) == (ref is not None)
