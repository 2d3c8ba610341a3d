"""aupguard's addons in-process, with mitmproxy's own test helpers (taddons, tflow): no proxy process, no sockets.

The real-proxy tests (test_proxy, test_failclosed, test_downloads, ...) show the same behaviour end to end;
these pin each addon's hook on its own, the runtime snapshot's replacement, and the version fence.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime

import pytest
from mitmproxy import http
from mitmproxy import version as mitmproxy_version
from mitmproxy.test import taddons, tflow

from aupguard.core.engine import Engine
from aupguard.core.exemption import EXEMPTION, Exemption
from aupguard.core.exemptions import ExemptionSet
from aupguard.proxy import blockpage, mitm_internals
from aupguard.proxy.blocking import BLOCKED, Blocking
from aupguard.proxy.current import Current
from aupguard.proxy.downloads import Downloads
from aupguard.proxy.http_requests import Requests
from aupguard.proxy.responses import Responses
from aupguard.proxy.tunnels import Tunnels
from aupguard.proxy.watch import ExemptionRefresh, IndexSwap
from aupguard.runtime import load_engine
from conftest import with_list_root, write_policy

REF_HEADER = "X-Aupguard-Incident"


@pytest.fixture
def engine(tmp_path, monkeypatch) -> Engine:
    """The bundled policy with games.example listed as an online game (blocked for pupils, the default group)."""
    monkeypatch.setenv("AUPGUARD_DATA", str(tmp_path / "var"))
    (tmp_path / "lists" / "games").mkdir(parents=True)
    (tmp_path / "lists" / "games" / "domains").write_text("games.example\n")

    listed = with_list_root(tmp_path / "lists")

    return load_engine(write_policy(tmp_path / "policy.yaml", listed), index_path=None, exemptions_path=None)


@pytest.fixture
def current(engine) -> Current:
    installed = Current()
    installed.install_loaded(engine, None)
    return installed


def request_to(url: str, method: str = "GET") -> http.HTTPFlow:
    flow = tflow.tflow()
    flow.request.method = method
    flow.request.url = url
    flow.request.headers["host"] = flow.request.host
    flow.request.timestamp_start = datetime(2026, 3, 4, 10, 0, tzinfo=UTC).timestamp()  # a Wednesday lesson
    return flow


def test_a_blocked_request_gets_the_block_page_with_its_incident_reference(current):
    addon = Requests(current, Blocking(current))
    flow = request_to("http://games.example/play")
    with taddons.context(addon):
        addon.requestheaders(flow)
    assert flow.response is not None and flow.response.status_code == 403
    ref = flow.response.headers[REF_HEADER]
    assert ref.startswith("AG-") and ref.encode() in flow.response.content
    assert b"games.example/play" in flow.response.content
    assert flow.metadata[BLOCKED] is True


def test_an_allowed_request_passes_untouched(current):
    addon = Requests(current, Blocking(current))
    flow = request_to("http://school.example/homework")
    before = flow.request.get_state()
    with taddons.context(addon):
        addon.requestheaders(flow)
    assert flow.response is None and BLOCKED not in flow.metadata
    assert flow.request.get_state() == before


def test_a_request_whose_check_fails_is_blocked_for_a_group_that_fails_closed(current, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("injected")

    monkeypatch.setattr(Engine, "check_request", broken)
    addon = Requests(current, Blocking(current))
    flow = request_to("http://school.example/homework")
    with taddons.context(addon):
        addon.requestheaders(flow)
    assert flow.response is not None and flow.response.status_code == 403  # pupils fail closed


def connect_through(current: Current, url: str) -> http.HTTPFlow:
    """A CONNECT to `url`'s host and port, as the tunnel addon sees it."""
    addon = Tunnels(current, Blocking(current))
    flow = request_to(url, method="CONNECT")
    flow.request.path = ""
    with taddons.context(addon):
        addon.http_connect(flow)
    return flow


def test_a_connect_to_a_port_the_policy_forbids_is_refused(current):
    flow = connect_through(current, "http://mail.example:25/")
    assert flow.response is not None and flow.response.status_code == 403
    assert REF_HEADER in flow.response.headers
    assert flow.response.headers["content-type"].startswith("text/plain")


def test_a_refused_connect_stays_refused_when_its_page_cannot_be_made(current, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("injected")

    monkeypatch.setattr(Blocking, "page", broken)
    flow = connect_through(current, "http://mail.example:25/")
    assert flow.response is not None and flow.response.status_code == 403
    assert flow.response.content == b"Blocked by the school's web filter.\n"


def test_a_connect_to_an_allowed_host_and_port_goes_on(current):
    assert connect_through(current, "http://school.example:443/").response is None


def test_a_program_download_is_replaced_by_the_block_page_and_an_ordinary_file_is_not(current):
    blocking = Blocking(current)
    downloads, responses = Downloads(current, blocking), Responses(current)
    program = request_to("http://school.example/files/setup.exe")
    program.response = tflow.tresp(headers=http.Headers(content_type="application/octet-stream"))
    sheet = request_to("http://school.example/files/sheet.pdf")
    sheet.response = tflow.tresp(headers=http.Headers(content_type="application/pdf", alt_svc='h3=":443"'))
    with taddons.context(responses, downloads):
        for flow in (program, sheet):
            responses.responseheaders(flow)
            downloads.responseheaders(flow)
    assert program.response.status_code == 403 and REF_HEADER in program.response.headers
    assert b"setup.exe" in program.metadata["aupguard_page"]
    assert sheet.response.status_code == 200 and BLOCKED not in sheet.metadata
    assert "alt-svc" not in sheet.response.headers  # no invitation to reach the site over QUIC


def test_every_addon_reads_the_snapshot_in_force(current, engine):
    addon = Requests(current, Blocking(current))
    exempted = ExemptionSet([exemption(1, sites=("games.example",), group="pupils")])
    current.change(lambda now: now.replace(exemptions=exempted))
    flow = request_to("http://games.example/play")
    with taddons.context(addon):
        addon.requestheaders(flow)
    assert flow.response is None  # the exemption, installed in one assignment, is honoured at once


def test_a_reload_keeps_an_exemption_and_an_index_swap_that_arrived_while_it_was_built(current, engine):
    built_from = current.engine
    assert built_from is not None
    reloaded = built_from.replace()  # what load_engine(previous=...) gives for the same lists: same classifier
    exempted = ExemptionSet([])
    newer_classifier = type(engine.classifier)(engine.classifier.lookup)
    # While the reload was building, the exemption watcher and the index swap each installed a change:
    current.change(lambda now: now.replace(exemptions=exempted))
    current.change(lambda now: now.replace(classifier=newer_classifier))
    installed = current.install_loaded(reloaded, built_from)
    assert installed.exemptions is exempted
    assert installed.classifier is newer_classifier
    assert installed.policy is reloaded.policy


def test_concurrent_replacers_lose_no_change(current):
    """Fifty threads each add one exemption to the snapshot in force: every one of them is in the end result."""

    def add(number: int) -> None:
        item = exemption(number, sites=(f"site{number}.example",), group="pupils")

        def with_it(now):
            items = [*now.exemptions.items, item]
            time.sleep(0.002)  # a replacer that takes its time: another one running meanwhile would be lost
            return now.replace(exemptions=ExemptionSet(items))

        current.change(with_it)

    threads = [threading.Thread(target=add, args=(number,)) for number in range(1, 51)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert current.engine is not None
    assert sorted(item.id for item in current.engine.exemptions.items) == list(range(1, 51))


def exemption(number: int, **who) -> Exemption:
    return Exemption(
        id=number,
        kind=EXEMPTION,
        until=datetime(2027, 1, 1, tzinfo=UTC),
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        created_by="Ms Khan",
        reason="a lesson on game design",
        **who,
    )


# -- the fence around mitmproxy's internals ------------------------------------------------------------


@pytest.fixture
def untested_mitmproxy(monkeypatch):
    monkeypatch.setattr(mitmproxy_version, "VERSION", "12.0.0")
    monkeypatch.setattr(mitm_internals, "_fell_back", set())


def test_the_installed_mitmproxy_is_in_the_tested_range():
    assert mitm_internals.fenced("anything")


def test_outside_the_tested_versions_the_block_page_is_made_by_response_make_and_said_once(
    untested_mitmproxy, monkeypatch, caplog
):
    made = []
    real = http.Response.make
    monkeypatch.setattr(http.Response, "make", lambda *args: made.append(args) or real(*args))
    page = blockpage.BlockPage(403, "text/plain; charset=utf-8", b"blocked")
    with caplog.at_level(logging.WARNING, logger=mitm_internals.__name__):
        first = mitm_internals.page_response(page, ((b"content-type", b"text/plain; charset=utf-8"),))
        mitm_internals.page_response(page, ())
    assert len(made) == 2 and first.status_code == 403 and first.content == b"blocked"
    assert [record.getMessage() for record in caplog.records].count(caplog.records[0].getMessage()) == 1
    assert "12.0.0" in caplog.records[0].getMessage() and len(caplog.records) == 1


def test_outside_the_tested_versions_mitmproxys_own_dispatch_and_http1_stay(untested_mitmproxy):
    with taddons.context() as tctx:
        manager = tctx.master.addons
        dispatch = manager.trigger_event
        assert mitm_internals.HandlerTable(manager).install() is False
        assert manager.trigger_event == dispatch
    assert mitm_internals.install_head_fixes() is False
    assert mitm_internals.set_idle_timeout(5) is False
    assert not mitm_internals.tunnel_layers_fenced()


def test_outside_the_tested_versions_a_raw_tcp_tunnel_relays_nothing_and_is_recorded(
    untested_mitmproxy, current, monkeypatch
):
    blocking = Blocking(current)
    recorded = []
    monkeypatch.setattr(blocking, "submit", lambda engine, verdict, **kw: recorded.append(verdict))
    addon = Tunnels(current, blocking)
    flow = tflow.ttcpflow()
    with taddons.context(addon):
        addon.tcp_message(flow)
        addon.tcp_message(flow)
    assert flow.messages[-1].content == b""
    assert len(recorded) == 1 and recorded[0].blocked and recorded[0].technique == "tunnel"


# -- the watcher's policy reaction, driven by hand -----------------------------------------------------


def test_a_broken_policy_keeps_the_old_one_and_is_reported_once_per_broken_version(current, tmp_path, caplog):
    from aupguard.proxy.watch import PolicyReload

    path = tmp_path / "policy.yaml"
    reload = PolicyReload(current, lambda: path, lambda: None)
    reload.begin()
    before = current.engine
    good = path.read_text()
    path.write_text(good.replace("  - games\n", "  - gamez\n", 1))
    with caplog.at_level(logging.ERROR):
        assert reload.check() is False
        assert reload.check() is False  # the same broken version: not reported again
    assert current.engine is before
    assert len([r for r in caplog.records if "the previous policy stays in force" in r.getMessage()]) == 1
    path.write_text(good + "\n# fixed\n")
    assert reload.check() is True and current.engine is not before
    assert current.engine.policy.groups.keys() == before.policy.groups.keys()
    reload.request("SIGHUP")  # asked for: reloaded though nothing changed
    reloaded = current.engine
    assert reload.check() is True and current.engine is not reloaded


def test_a_mitmproxy_without_the_idle_timeout_constant_still_loads_aupguard():
    """What the fence guards is read only behind it: a missing internal never stops the addons loading."""
    code = (
        "import mitmproxy.proxy.server as server; del server.TCP_TIMEOUT\n"
        "from aupguard.proxy import mitm_internals, wiring\n"
        "print(mitm_internals.IDLE_TIMEOUT_DEFAULT, len(wiring.addons()))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["600", "5"]


def test_an_index_that_will_not_close_does_not_stop_later_swaps(current, caplog):
    class Unclosable:
        def close(self) -> None:
            raise BufferError("cannot close a memory map with exported pointers")

    class Retired:
        lookup = Unclosable()

    swap = IndexSwap(current)
    swap._retiring = [(0.0, Retired())]  # long past its close time
    with caplog.at_level(logging.ERROR):
        assert swap.check() is False  # the text-loaded lists of this engine: nothing to swap
        assert swap.check() is False  # and the next look does not fail again on the same index
    assert swap._retiring == []
    assert sum("closing a retired list index failed" in r.getMessage() for r in caplog.records) == 1


def test_an_unreadable_exemption_store_is_a_warning_not_an_error(current, tmp_path, caplog):
    """mitmproxy stops a worker that logs an error while it starts; missing exemptions only make it stricter."""
    store = tmp_path / "exemptions.db"
    store.mkdir()  # not a database
    with caplog.at_level(logging.WARNING):
        ExemptionRefresh(current, store).check()
    failures = [r for r in caplog.records if "reading the exemption store" in r.getMessage()]
    assert [r.levelno for r in failures] == [logging.WARNING]
