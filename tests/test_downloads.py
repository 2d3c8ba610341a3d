"""Downloads: blocked file types and sizes, decided on headers and on streamed bytes."""

from __future__ import annotations

import http.client
import http.server
import sqlite3
import threading
import time

import pytest
from hypothesis import given, strategies as st

from aupguard import downloads
from aupguard.policy import DOWNLOAD_TYPES, Group
from conftest import start_proxy, write_policy

MB = 1024 * 1024
PUPILS = Group("pupils", "", frozenset(), frozenset(), True, frozenset({"executable", "apk", "torrent", "disk_image"}), MB)
STAFF = Group("staff", "", frozenset(), frozenset(), False)


def test_every_policy_download_type_is_known():
    assert set(downloads.FILE_TYPES) == set(DOWNLOAD_TYPES)


@pytest.mark.parametrize(
    "path, content_type, disposition, expected",
    [
        ("/setup.exe", "application/octet-stream", None, "executable"),
        ("/get?id=7", "application/x-msdownload", None, "executable"),
        ("/get?id=7", "application/octet-stream", 'attachment; filename="Game Setup.EXE"', "executable"),
        ("/get", None, "attachment; filename*=UTF-8''%D0%B8%D0%B3%D1%80%D0%B0.apk", "apk"),
        ("/files/ubuntu.iso", None, None, "disk_image"),
        ("/x.torrent", "application/x-bittorrent", None, "torrent"),
        ("/lesson.pdf", "application/pdf", None, None),
        ("/app.js", "application/javascript", None, None),
        ("/setup.exe", "text/html; charset=utf-8", None, None),  # a download's landing page, not the file
        ("/installer.msi", None, None, None),  # installers are not blocked for this group
    ],
)
def test_file_types(path, content_type, disposition, expected):
    refused = downloads.check_headers(PUPILS, path, content_type, disposition, None)
    assert (refused is not None and refused.reason == "type") == (expected is not None)
    if expected:
        assert expected.replace("_", " ") in refused.detail
    assert downloads.check_headers(STAFF, path, content_type, disposition, None) is None


def test_sizes():
    assert downloads.check_headers(PUPILS, "/a.pdf", "application/pdf", None, str(MB)) is None
    refused = downloads.check_headers(PUPILS, "/a.pdf", "application/pdf", None, str(MB + 1))
    assert refused.reason == "size" and refused.detail == "1,048,577 bytes is over the limit of 1.0 MB"
    assert downloads.check_headers(PUPILS, "/a.pdf", "application/pdf", None, "lots") is None  # mitmproxy rejects it


def test_size_limit_drops_everything_past_the_limit():
    over = []
    limit = downloads.SizeLimit(10, over.append)
    assert limit(b"12345") == b"12345"
    assert limit(b"12345") == b"12345"
    assert limit(b"1") == [] and over == [11]  # [], not b"": that would end a chunked body
    assert limit(b"more") == [] and limit(b"") == [] and over == [11]


@given(st.text(max_size=300), st.one_of(st.none(), st.text(max_size=300)), st.one_of(st.none(), st.text(max_size=100)))
def test_adversarial_headers_never_raise(path, disposition, content_type):
    downloads.check_headers(PUPILS, path, content_type, disposition, None)


# -- through the proxy ---------------------------------------------------------------------------------


class DownloadHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/stream":  # 3 MB, chunked, no Content-Length
            self.send_response(200)
            self.send_header("Content-Type", "application/pdf")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"x" * 65536
            try:
                for _ in range(48):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass
            return
        body = {"/big.pdf": b"y" * (3 * MB)}.get(self.path, b"MZ fake program")
        content_type = "application/x-msdownload" if self.path == "/download" else "application/octet-stream"
        self.send_response(200)
        self.send_header("Content-Type", "application/pdf" if self.path.endswith(".pdf") else content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def files():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), DownloadHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("downloads")

    def one_megabyte(policy):
        policy["groups"]["pupils"]["downloads"] = {"block_types": ["executable", "apk"], "max_size_mb": 1}

    running = start_proxy(tmp, write_policy(tmp / "policy.yaml", one_megabyte))
    yield running
    running.stop()


def fetch(proxy, url):
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    try:
        conn.request("GET", url, headers={"Accept": "text/html"})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def incidents(db, ref):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with sqlite3.connect(db) as conn:
            conn.row_factory = sqlite3.Row
            rows = [dict(r) for r in conn.execute("select * from incidents where ref = ?", [ref])]
        if rows:
            return rows
        time.sleep(0.2)
    return []


@pytest.mark.parametrize("path", ["/setup.exe", "/download"])
def test_blocked_types_get_the_block_page_and_an_incident(proxy, files, path):
    status, headers, body = fetch(proxy, f"http://127.0.0.1:{files}{path}")
    assert status == 403 and b"MZ fake" not in body
    assert b"Blocked download" in body
    (row,) = incidents(proxy.db, headers["X-Aupguard-Incident"])
    assert row["category"] == "download" and "executable" in row["rule"]


def test_an_announced_size_over_the_limit_is_blocked(proxy, files):
    status, headers, body = fetch(proxy, f"http://127.0.0.1:{files}/big.pdf")
    assert status == 403 and len(body) < MB
    (row,) = incidents(proxy.db, headers["X-Aupguard-Incident"])
    assert "over the limit" in row["rule"]


def test_a_streamed_body_over_the_limit_is_cut(proxy, files):
    with pytest.raises(http.client.IncompleteRead) as cut:
        fetch(proxy, f"http://127.0.0.1:{files}/stream")
    assert len(cut.value.partial) <= MB
    with sqlite3.connect(proxy.db) as conn:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            rows = conn.execute("select rule from incidents where url like '%/stream' and category = 'download'").fetchall()
            if rows:
                break
            time.sleep(0.2)
    assert rows and "over the limit" in rows[0][0]


def test_small_files_pass(proxy, files):
    status, _, body = fetch(proxy, f"http://127.0.0.1:{files}/notes.pdf")
    assert status == 200 and body == b"MZ fake program"
