"""Lists at scale: streamed list reading, the index's recompile rule, list formats, updates,
and through a running proxy: hot reload of a recompiled index and several workers on one port."""

from __future__ import annotations

import functools
import hashlib
import http.client
import http.server
import io
import json
import os
import re
import sqlite3
import tarfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aupguard.config.loader import load_policy
from aupguard.lists import read as lists
from aupguard.lists.index import load_index
from aupguard.lists.model import ListError, ListRoot, Problems
from aupguard.lists.read import load_lists
from aupguard.offline.compile import compile_from_folders, ensure_index, why_recompile
from aupguard.offline.importers import NarrowedRule, domain_list_entries, import_domain_list
from conftest import aupguard as run_aupguard
from conftest import listening_pids, proxied_status, rewrite_header, start_proxy, wait_for, write_policy, write_tree

REF = re.compile(r"AG-[A-Z2-9]{4}-[A-Z2-9]{4}(?:-\d+)?")


# These tests read the exit status and stderr of the commands themselves.
aupguard = functools.partial(run_aupguard, check=False)


def write_list(root: Path, category: str, domains: list[str]) -> None:
    """The `domains` file of `category` under `root`, one name a line."""
    write_tree(root, {f"{category}/domains": "".join(f"{d}\n" for d in domains)})


def policy_with_local(tmp_path: Path, local: Path) -> Path:
    """The bundled policy with one more list root, `local`, read last."""
    return write_policy(
        tmp_path / "policy.yaml", lambda d: d["lists"].append({"name": "local", "path": str(local), "optional": True})
    )


# -- reading list files in chunks ------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    lines=st.lists(
        st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"), max_size=12), max_size=30
    ),
    chunk=st.integers(1, 9),
    trailing_newline=st.booleans(),
)
def test_chunked_reading_sees_every_line_as_one_read_would(tmp_path_factory, lines, chunk, trailing_newline):
    path = tmp_path_factory.mktemp("chunks") / "domains"
    text = "\n".join(lines) + ("\n" if trailing_newline else "")
    path.write_text(text, encoding="utf-8")
    old = lists._READ_CHUNK
    lists._READ_CHUNK = chunk  # tiny chunks put line ends on every boundary
    try:
        got = list(lists.read_lines(path, Problems()))
    finally:
        lists._READ_CHUNK = old
    assert got == list(enumerate(text.split("\n"), 1))


def test_an_overlong_line_is_skipped_and_reported_even_across_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(lists, "_READ_CHUNK", 1000)
    path = tmp_path / "domains"
    path.write_text("a.example\n" + "x" * 50_000 + "\nb.example")
    problems = Problems()
    assert list(lists.read_lines(path, problems)) == [(1, "a.example"), (3, "b.example")]
    assert problems.count == 1 and ":2: line longer" in problems.shown[0]


# -- the compiled index and when it is recompiled --------------------------------------------------


def test_a_file_that_cannot_be_read_stops_the_compile_and_keeps_the_index(tmp_path, monkeypatch):
    root = tmp_path / "lists"
    write_list(root, "adult", ["porn.example"])
    roots = [ListRoot(root, "local")]
    out = tmp_path / "lists.idx"
    compile_from_folders(roots, out)
    before = out.read_bytes()
    write_list(root, "gambling", ["bet-" + "x" * 40 + ".example"] * 10)
    monkeypatch.setattr(lists, "MAX_LIST_FILE_BYTES", 200)  # the new gambling list is now "too large"
    with pytest.raises(ListError, match="gambling/domains: larger than"):
        compile_from_folders(roots, out)
    assert out.read_bytes() == before
    assert load_lists(roots).domains == {"porn.example": 1}  # text loading skips it, and says so


def test_the_index_is_recompiled_when_lists_or_mappings_change(tmp_path):
    root = tmp_path / "lists"
    write_list(root, "adult", ["porn.example"])
    roots = [ListRoot(root, "local")]
    out = tmp_path / "lists.idx"
    assert "no compiled index" in why_recompile(out, roots)
    compile_from_folders(roots, out)
    assert why_recompile(out, roots) is None
    assert "folders or category mappings changed" in why_recompile(
        out, [ListRoot(root, "local", mapping={"adult": "adult"})]
    )
    assert "changed" in why_recompile(out, [ListRoot(tmp_path / "elsewhere", "local", optional=True)])
    time.sleep(0.01)
    (root / "adult" / "domains").write_text("porn.example\nmore.example\n")
    assert "adult/domains changed after" in why_recompile(out, roots)
    out.write_bytes(b"not an index")
    assert "cannot be used" in why_recompile(out, roots)


def test_an_index_of_the_previous_format_is_recompiled_not_misread(tmp_path):
    root = tmp_path / "lists"
    write_list(root, "adult", ["porn.example"])
    (root / "adult" / "urls").write_text("example.org/adult\n")
    roots = [ListRoot(root, "local")]
    out = tmp_path / "lists.idx"
    compile_from_folders(roots, out)
    rewrite_header(out, version=1)  # as aupguard before the url_hosts table wrote it
    assert "format version 1" in why_recompile(out, roots)
    index, why = ensure_index(roots, out)
    with index:
        assert "format version 1" in why
        assert index.url_host_mask("example.org") and not index.url_host_mask("porn.example")


# -- list formats ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt, line, expected",
    [
        ("hosts", "0.0.0.0 ads.Example.com tracker.example.net # ads", ["ads.example.com", "tracker.example.net"]),
        ("hosts", "127.0.0.1 localhost", []),
        ("hosts", "::1 ip6-localhost ip6-loopback", []),
        ("hosts", "# comment", []),
        ("domains", "Bücher.example", ["xn--bcher-kva.example"]),
        ("domains", "*.wild.example  # note", ["wild.example"]),
        ("adblock", "||ads.example.com^", ["ads.example.com"]),
        ("adblock", "||ads.example.com^$important", ["ads.example.com"]),
        ("adblock", "||ads.example.com^$all,important", ["ads.example.com"]),
        ("hosts", "0.0.0.0 one.example", ["one.example"]),
        ("domains", "co.uk.example", ["co.uk.example"]),
        ("domains", "blogspot.com", ["blogspot.com"]),
        ("adblock", "@@||good.example.com^", []),
        ("adblock", "! comment", []),
        ("adblock", "[Adblock Plus 2.0]", []),
    ],
)
def test_domain_list_lines(fmt, line, expected):
    assert domain_list_entries(fmt, line) == expected


@pytest.mark.parametrize(
    "fmt, line",
    [
        ("hosts", "ads.example.com"),
        ("adblock", "example.com##.banner"),
        ("adblock", "||x.com/path^"),
        ("domains", "bad..name"),
    ],
)
def test_lines_that_name_no_domain_are_refused(fmt, line):
    with pytest.raises(ValueError):
        domain_list_entries(fmt, line)


@pytest.mark.parametrize(
    "fmt, line, reason",
    [
        ("domains", "not a domain", "exactly one name"),
        ("domains", "uk", "single label"),
        ("domains", "not", "single label"),
        ("domains", "co.uk", "public suffix"),
        ("domains", "*.co.uk", "public suffix"),
        ("domains", "xn--p1ai", "single label"),
        ("domains", "gov.uk", "public suffix"),
        ("hosts", "0.0.0.0 uk", "single label"),
        ("hosts", "0.0.0.0 ads.example.com co.uk", "public suffix"),
        ("hosts", "0.0.0.0", "no name"),
        ("adblock", "||co.uk^", "public suffix"),
    ],
)
def test_lines_that_would_block_a_whole_namespace_are_refused(fmt, line, reason):
    with pytest.raises(ValueError, match=reason):
        domain_list_entries(fmt, line)


@pytest.mark.parametrize(
    "option", ["third-party", "domain=example.org", "script", "~third-party", "important,third-party", "popup"]
)
def test_adblock_rules_narrowed_by_options_are_not_whole_domain_blocks(option):
    with pytest.raises(NarrowedRule, match="narrows"):
        domain_list_entries("adblock", f"||ads.example.com^${option}")


def test_an_import_counts_and_reports_the_lines_it_refuses(tmp_path):
    src = tmp_path / "feed.txt"
    src.write_text("||good.example^\n||narrow.example^$third-party\n||co.uk^\n||script.example^$script\n")
    result = import_domain_list("adblock", src, tmp_path / "lists" / "feeds", "ads")
    assert result.categories == {"ads": {"domains": 1}} and (result.skipped, result.narrowed) == (3, 2)
    assert [p.split(": ", 1)[0] for p in result.problems] == [f"{src}:2", f"{src}:3", f"{src}:4"]
    assert "3 lines skipped, 2 of them Adblock rules narrowed by $options" in str(result)
    plain = tmp_path / "plain.txt"
    plain.write_text("not a domain\nuk\nfine.example\n")
    result = import_domain_list("domains", plain, tmp_path / "lists" / "feeds", "ads")
    assert (tmp_path / "lists" / "feeds" / "ads" / "domains").read_text().splitlines()[1:] == ["fine.example"]
    assert result.skipped == 2


def test_cli_import_names_refused_lines_and_unknown_categories(tmp_path):
    data = tmp_path / "var"
    feed = tmp_path / "domains.txt"
    feed.write_text("not a domain\nuk\nfine.example\n")
    done = aupguard("lists", "import", "domains", str(feed), "--category", "gambling", data=data)
    assert done.returncode == 0, done.stderr
    assert "2 lines skipped" in done.stdout
    assert f"skipped {feed}:1:" in done.stderr and f"skipped {feed}:2: 'uk' is a single label" in done.stderr
    unknown = aupguard("lists", "import", "domains", str(feed), "--category", "gamblnig", data=data)
    assert unknown.returncode == 2
    assert "unknown category 'gamblnig'" in unknown.stderr and "gambling" in unknown.stderr
    assert not (data / "lists" / "imported" / "gamblnig").exists()


def test_an_imported_list_replaces_only_its_category(tmp_path):
    dest = tmp_path / "lists" / "feeds"
    write_list(dest, "gambling", ["kept.example"])
    src = tmp_path / "hosts.txt"
    src.write_text("0.0.0.0 a.example\n0.0.0.0 b.example\nnot a hosts line\n")
    result = import_domain_list("hosts", src, dest, "ads")
    assert result.categories == {"ads": {"domains": 2}} and result.skipped == 1
    data = load_lists([ListRoot(dest, "feeds")])
    assert set(data.domains) == {"a.example", "b.example", "kept.example"}
    src.write_text("# nothing but a comment\n")
    with pytest.raises(ListError, match="no hosts entries"):
        import_domain_list("hosts", src, dest, "ads")
    assert "a.example" in (dest / "ads" / "domains").read_text()  # a failed import leaves the old list


def test_local_deny_and_allow_lists_override_imports_but_never_the_mandatory_tier(tmp_path):
    data = tmp_path / "var"
    feed = tmp_path / "feed.txt"
    feed.write_text("||imported-bet.example^\n||homework-help.example^\n")
    done = aupguard("lists", "import", "adblock", str(feed), "--category", "gambling", "--name", "feeds", data=data)
    assert done.returncode == 0, done.stderr
    # A licensed illegal-content feed, imported where the bundled policy's `mandatory` list root reads it.
    iwf = tmp_path / "iwf-domains.txt"
    iwf.write_text("illegal-feed.example\n")
    done = aupguard("lists", "import", "domains", str(iwf), "--category", "illegal", "--name", "mandatory", data=data)
    assert done.returncode == 0, done.stderr
    assert (data / "lists" / "mandatory" / "illegal" / "domains").read_text().splitlines()[1:] == [
        "illegal-feed.example"
    ]
    local = tmp_path / "local"
    write_list(local, "games", ["local-deny.example"])  # a local deny list: a folder of the school's own
    # The local allow list: a site and an adult-list false positive (in the bundled adult list here).
    write_list(local, "school_allow", ["homework-help.example", "pornhub.com", "illegal-feed.example"])

    def edit(doc):
        doc["lists"].append({"name": "feeds", "path": "{data}/lists/feeds", "optional": True})
        doc["lists"].append({"name": "local", "path": str(local)})

    policy_path = write_policy(tmp_path / "policy.yaml", edit)
    urls = [
        "http://imported-bet.example/", "http://homework-help.example/", "http://local-deny.example/",
        "http://pornhub.com/", "http://www.illegal-feed.example/page", "http://xvideos.com/",
    ]  # fmt: skip
    # An allow entry for a site in the illegal feed would let the mandatory tier through: refused at load.
    refused = aupguard("classify", "--config", str(policy_path), "--group", "pupils", data=data, stdin=urls[0] + "\n")
    assert refused.returncode != 0
    assert "allow entry 'illegal-feed.example' (school_allow) is in the mandatory category illegal" in refused.stderr
    write_list(local, "school_allow", ["homework-help.example", "pornhub.com"])
    for group in ("pupils", "visitors", "early_years"):
        done = aupguard(
            "classify", "--config", str(policy_path), "--group", group, data=data, stdin="\n".join(urls) + "\n"
        )
        assert done.returncode == 0, done.stderr
        verdicts = [json.loads(line) for line in done.stdout.splitlines()]
        assert [v["url"] for v in verdicts] == urls
        actions = [v["action"] for v in verdicts]
        # imported block; local allow beats an imported block; local deny (games: visitors may play); the
        # allow list corrects an adult false positive; the mandatory tier is blocked; adult without
        # an allow is blocked. The early years' walled garden does not take school_allow at all.
        expected = {
            "pupils": ["block", "allow", "block", "allow", "block", "block"],
            "visitors": ["block", "allow", "allow", "allow", "block", "block"],
            "early_years": ["block"] * 6,
        }
        assert actions == expected[group], group
        assert verdicts[4]["categories"] == ["illegal"]
        assert verdicts[4]["rule"] == "mandatory/illegal/domains: illegal-feed.example"
        assert "adult" in verdicts[5]["categories"]
    policy = load_policy(policy_path)
    assert policy.mandatory == {"illegal"} and "adult" not in policy.mandatory


def test_import_refuses_the_allow_category_and_needs_one(tmp_path):
    feed = tmp_path / "d.txt"
    feed.write_text("example.com\n")
    assert (
        "allow list is local"
        in aupguard("lists", "import", "domains", str(feed), "--category", "school_allow", data=tmp_path).stderr
    )
    assert "needs --category" in aupguard("lists", "import", "domains", str(feed), data=tmp_path).stderr


# -- lists update ut1 ------------------------------------------------------------------------------


def ut1_tarball(path: Path, adult: list[str]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, text in (
            ("blacklists/adult/domains", "".join(f"{d}\n" for d in adult)),
            ("blacklists/gambling/domains", "bet.example\n"),
        ):
            raw = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            archive.addfile(info, io.BytesIO(raw))
    return path


@pytest.fixture
def ut1_setup(tmp_path):
    data = tmp_path / "var"
    policy = write_policy(tmp_path / "policy.yaml")
    index = data / "index" / "lists.idx"
    first = ut1_tarball(tmp_path / "first.tar.gz", ["first-adult.example"])
    done = aupguard("lists", "update", "ut1", "--file", str(first), "--config", str(policy), data=data)
    assert done.returncode == 0, done.stderr
    return tmp_path, data, policy, index


def blocked(index: Path, host: str) -> bool:
    with load_index(index) as idx:
        return bool(idx.domain_mask(host))


def test_update_from_a_file_imports_compiles_and_swaps(ut1_setup):
    tmp_path, data, policy, index = ut1_setup
    assert blocked(index, "first-adult.example")
    second = ut1_tarball(tmp_path / "second.tar.gz", ["second-adult.example"])
    digest = hashlib.sha256(second.read_bytes()).hexdigest()
    done = aupguard(
        "lists", "update", "ut1", "--file", str(second), "--sha256", digest, "--config", str(policy), data=data
    )
    assert done.returncode == 0, done.stderr
    assert blocked(index, "second-adult.example") and not blocked(index, "first-adult.example")
    assert (data / "lists" / "ut1" / "adult" / "domains").read_text() == "second-adult.example\n"
    served = aupguard("classify", "--config", str(policy), data=data, stdin="http://second-adult.example/\n")
    assert '"action": "block"' in served.stdout
    assert "compiled the list index" not in served.stderr  # the update left an index that is up to date
    assert not [p for p in (data / "lists").iterdir() if p.name.startswith(".")]  # no staging left behind


@pytest.mark.parametrize("failure", ["checksum", "damaged", "download"])
def test_a_failed_update_leaves_lists_and_index_as_they_were(ut1_setup, failure):
    tmp_path, data, policy, index = ut1_setup
    before = (index.read_bytes(), (data / "lists" / "ut1" / "adult" / "domains").read_text())
    new = ut1_tarball(tmp_path / "new.tar.gz", ["new-adult.example"])
    if failure == "checksum":
        args = ["--file", str(new), "--sha256", "0" * 64]
    elif failure == "damaged":
        new.write_bytes(new.read_bytes()[:60])
        args = ["--file", str(new)]
    else:
        args = ["--url", "http://127.0.0.1:9/blacklists.tar.gz"]  # the discard port: connection refused
    done = aupguard("lists", "update", "ut1", *args, "--config", str(policy), data=data)
    assert done.returncode == 1
    assert "unchanged" in done.stderr
    assert (index.read_bytes(), (data / "lists" / "ut1" / "adult" / "domains").read_text()) == before


def test_update_fetches_from_a_url(ut1_setup):
    tmp_path, data, policy, index = ut1_setup
    served = tmp_path / "www"
    served.mkdir()
    tarball = ut1_tarball(served / "blacklists.tar.gz", ["fetched-adult.example"])

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(served), **k)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/blacklists.tar.gz"
        digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
        done = aupguard("lists", "update", "ut1", "--url", url, "--sha256", digest, "--config", str(policy), data=data)
    finally:
        server.shutdown()
    assert done.returncode == 0, done.stderr
    assert blocked(index, "fetched-adult.example")


# -- through a running proxy -----------------------------------------------------------------------


def test_a_recompiled_index_is_served_without_dropping_connections(tmp_path, origin):
    local = tmp_path / "local"
    write_list(local, "gambling", ["first-bet.test"])
    policy = policy_with_local(tmp_path, local)
    data = tmp_path / "var"
    proxy = start_proxy(tmp_path, policy)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=15)  # one keep-alive connection
        assert proxied_status(conn, "first-bet.test") == 403
        origin_host = f"127.0.0.1:{origin.port}"
        assert proxied_status(conn, origin_host) == 200
        sock = conn.sock

        # A list edit and `lists compile`: the running proxy switches over, on the same connection.
        write_list(local, "gambling", ["first-bet.test", "second-bet.test"])
        done = aupguard("lists", "compile", "--config", str(policy), data=data)
        assert done.returncode == 0, done.stderr
        assert wait_for(lambda: proxied_status(conn, "second-bet.test") == 403)
        assert proxied_status(conn, origin_host) == 200 and conn.sock is sock

        # An invalid list set: compile fails with status 1, and the index in service stays.
        broken = write_policy(
            tmp_path / "broken.yaml", lambda d: d["lists"].append({"name": "gone", "path": str(tmp_path / "gone")})
        )
        done = aupguard("lists", "compile", "--config", str(broken), data=data)
        assert done.returncode == 1 and "does not exist" in done.stderr and "unchanged" in done.stderr

        # A corrupt index put in place: reported, and the previous index keeps serving.
        index = data / "index" / "lists.idx"
        corrupt = bytearray(index.read_bytes())
        corrupt[-1] ^= 0xFF
        (tmp_path / "corrupt.idx").write_bytes(corrupt)
        os.replace(tmp_path / "corrupt.idx", index)
        assert wait_for(lambda: "cannot be used" in proxy.log.read_text())
        assert proxied_status(conn, "second-bet.test") == 403
        assert proxied_status(conn, "first-bet.test") == 403
        assert proxied_status(conn, origin_host) == 200 and conn.sock is sock
        conn.close()
    finally:
        assert proxy.stop() == 0


def test_two_workers_share_one_port_and_record_every_incident_once(tmp_path):
    proxy = start_proxy(tmp_path, extra=("--workers", "2"))
    refs: list[str] = []
    try:
        for _ in range(120):  # a new connection each: the kernel spreads them over the workers
            conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=15)
            conn.request("GET", "http://www.pornhub.com/", headers={"Accept": "text/plain"})
            response = conn.getresponse()
            response.read()
            assert response.status == 403
            refs.append(response.headers["X-Aupguard-Incident"])
            conn.close()
        assert len(listening_pids(proxy.port)) == 2
    finally:
        assert proxy.stop() == 0  # clean shutdown: both workers flush and exit
    with sqlite3.connect(proxy.db) as db:
        stored = [row[0] for row in db.execute("select ref from incidents")]
    assert sorted(stored) == sorted(refs) and len(set(refs)) == 120
