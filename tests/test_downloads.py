"""Downloads: blocked file types and sizes, decided on headers and on streamed bytes."""

from __future__ import annotations

import gzip
import http.client
import http.server
import io
import sqlite3
import threading
import time
import zipfile

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aupguard.base.vocabulary import DOWNLOAD_TYPES
from aupguard.config.policy import Group
from aupguard.core import downloads
from aupguard.proxy import downloads as proxy_downloads
from aupguard.proxy.downloads import BodyCheck, decoded_prefix
from conftest import fetch, start_proxy, write_policy

MB = 1024 * 1024
PUPILS = Group(
    "pupils", "", frozenset(), frozenset(), True, frozenset({"executable", "apk", "torrent", "disk_image"}), MB
)
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
    limit = BodyCheck(10, frozenset(), over.append)
    assert limit(b"12345") == b"12345"
    assert limit(b"12345") == b"12345"
    assert limit(b"1") == [] and [block.detail for block in over] == ["11 bytes is over the limit of 0.0 MB"]
    assert limit(b"more") == [] and limit(b"") == [] and len(over) == 1  # [], not b"": that would end a chunked body


# Files built here byte by byte from their formats' specifications, not by the code under test.
PE = b"MZ" + b"\0" * 0x3A + (0x80).to_bytes(4, "little") + b"\0" * 0x40 + b"PE\0\0" + b"\0" * 200
ELF = b"\x7fELF\x02\x01\x01" + b"\0" * 300
ISO = b"\0" * 0x8001 + b"CD001\x01" + b"\0" * 2000
MSI = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 22 + (9).to_bytes(2, "little") + b"\0" * 16
MSI += (0).to_bytes(4, "little") + b"\0" * (512 - len(MSI) - 4)  # directory in sector 0, at byte 512
MSI += b"\0" * 0x50 + bytes.fromhex("84100c000000000000c0000000000046") + b"\0" * 100
DOC = MSI.replace(bytes.fromhex("84100c000000000000c0000000000046"), bytes.fromhex("0609020000000000c000000000000046"))


def zipped(*names: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in names:
            archive.writestr(name, PE if name.endswith(".exe") else b"text")
    return buffer.getvalue()


class _Unseekable(io.RawIOBase):
    """A write-only stream: zipfile then writes each entry's sizes after its data (a data descriptor)."""

    def __init__(self):
        self.data = bytearray()

    def writable(self):
        return True

    def write(self, chunk):
        self.data += chunk
        return len(chunk)


def streamed_zip(*names: str) -> bytes:
    out = _Unseekable()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in names:
            with archive.open(name, "w") as entry:
                entry.write(PE if name.endswith(".exe") else b"text " * 50)
    assert out.data[6] & 0x08  # the general purpose flag: data descriptor
    return bytes(out.data)


@pytest.mark.parametrize(
    "body, expected",
    [
        (PE, "executable"),
        (ELF, "executable"),
        (b"\xcf\xfa\xed\xfe" + b"\0" * 40, "executable"),
        (b"\xca\xfe\xba\xbe\0\0\0\x02" + b"\0" * 40, "executable"),  # fat Mach-O, two architectures
        (MSI, "installer"),
        (b"!<arch>\ndebian-binary   ", "installer"),
        (b"\xed\xab\xee\xdb\x03\x00", "installer"),
        (b"xar!\0\x1c", "installer"),
        (ISO, "disk_image"),
        (zipped("readme.txt", "bin/setup.exe"), "executable"),
        (streamed_zip("readme.txt", "notes.txt", "setup.exe"), "executable"),
        (zipped("AndroidManifest.xml", "classes.dex"), "apk"),
        (zipped("META-INF/MANIFEST.MF", "a/B.class"), "script"),
        (zipped("notes.txt"), "archive"),
        (b"Rar!\x1a\x07\x01\x00", "archive"),
        (b"7z\xbc\xaf\x27\x1c\0\x04", "archive"),
        (b"d8:announce35:udp://tracker.example:1337/announce4:infod", "torrent"),
    ],
)
def test_types_shown_by_the_first_bytes(body, expected):
    assert expected in [name for name, _ in downloads.content_type_of(body)]
    blocked = downloads.content_block(frozenset({expected}), body)
    assert blocked is not None and blocked.reason == "type"
    other = "script" if expected == "torrent" else "torrent"
    assert downloads.content_block(frozenset({other}), body) is None  # only for groups that block the type


@pytest.mark.parametrize(
    "body",
    [
        b"MZ is where this essay starts, and it goes on for a while. " * 5,  # "MZ" without a PE header
        b"\xca\xfe\xba\xbe\0\0\0\x34" + b"\0" * 40,  # a Java class file (version 52), not Mach-O
        DOC,  # an old Word document: Compound File, but not an installer
        zipped("[Content_Types].xml", "word/document.xml"),  # a .docx is a zip, not an archive to block
        b"%PDF-1.7\n" + b"x" * 40000,
        b"",
    ],
)
def test_ordinary_files_show_no_type(body):
    assert downloads.content_type_of(body) == []


def test_a_compressed_body_is_judged_decoded_decoding_only_its_start():
    big = PE + b"\0" * (10 * MB)
    packed = gzip.compress(big)
    assert decoded_prefix(packed, "gzip") == big[: downloads.SNIFF_BYTES]
    assert decoded_prefix(packed[:200], "gzip").startswith(PE[:100])  # the start of a stream
    assert decoded_prefix(b"not gzip", "gzip") == b"not gzip"  # undecodable: judged as sent
    blocked: list[downloads.DownloadBlock] = []
    check = BodyCheck(None, frozenset({"executable"}), blocked.append, "gzip")
    assert check(packed[:500]) == [] and blocked and blocked[0].detail == "executable (Windows program (PE))"


def test_body_check_holds_back_the_first_bytes_until_they_tell():
    refused = []
    check = BodyCheck(None, frozenset({"disk_image"}), refused.append)
    passed = [check(ISO[start : start + 4096]) for start in range(0, 0x8000, 4096)]
    assert passed == [[]] * 8  # nothing sent before "CD001" could have been seen
    assert check(ISO[0x8000:]) == [] and refused[0].detail == "disk image (ISO 9660 image)"
    assert check(b"more") == [] and check(b"") == [] and len(refused) == 1


def test_a_body_sent_a_byte_a_chunk_is_judged_a_few_times_not_once_a_byte(monkeypatch):
    judged = []
    real = downloads.content_block
    monkeypatch.setattr(
        proxy_downloads, "content_block", lambda types, prefix: judged.append(len(prefix)) or real(types, prefix)
    )
    check = BodyCheck(None, frozenset({"disk_image"}), pytest.fail)
    body = b"x" * (downloads.SNIFF_BYTES + 10)
    out = [check(body[i : i + 1]) for i in range(len(body))] + [check(b"")]
    sent = b"".join(b"".join(part) if isinstance(part, list) else part for part in out)
    assert sent == body  # passed whole, in order
    assert len(judged) <= 20  # 1, 2, 4, ... 32768 and the whole prefix: not 32,774 judgements


def test_body_check_passes_an_ordinary_body_whole_and_in_order():
    check = BodyCheck(None, frozenset({"disk_image", "executable"}), pytest.fail)
    body = bytes(range(256)) * 200  # 51,200 bytes: past SNIFF_BYTES in the middle of a chunk
    out = []
    for start in range(0, len(body), 5000):
        sent = check(body[start : start + 5000])
        out += [sent] if isinstance(sent, bytes) else sent
    sent = check(b"")
    out += [sent] if isinstance(sent, bytes) else sent
    assert b"".join(out) == body and b"" not in out[:-1]


def test_body_check_sends_a_short_body_at_its_end():
    check = BodyCheck(None, frozenset({"executable"}), pytest.fail)
    assert check(b"short page") == []
    assert check(b"") == [b"short page"]


@given(st.text(max_size=300), st.one_of(st.none(), st.text(max_size=300)), st.one_of(st.none(), st.text(max_size=100)))
def test_adversarial_headers_never_raise(path, disposition, content_type):
    downloads.check_headers(PUPILS, path, content_type, disposition, None)


# -- through the proxy ---------------------------------------------------------------------------------


SERVED = {
    "/homework.txt": (PE, "text/plain", False),
    "/setup": (ELF, "application/octet-stream", True),
    "/tools": (zipped("readme.txt", "setup.exe"), "application/octet-stream", False),
    "/game": (zipped("AndroidManifest.xml", "classes.dex"), "application/octet-stream", True),
    "/disk": (ISO, "application/octet-stream", True),
    "/notes.zip": (zipped("notes.txt", "more.txt"), "application/zip", False),
    "/essay": (b"MZ is where this essay starts. " * 2000, "text/plain", True),
    "/packed.txt": (gzip.compress(PE), "text/plain", False),  # sent with Content-Encoding: gzip
    "/packed-stream": (gzip.compress(ELF), "text/plain", True),
}


class DownloadHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path in SERVED:  # (body, Content-Type, chunked)
            body, content_type, chunked = SERVED[self.path]
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            if self.path.startswith("/packed"):
                self.send_header("Content-Encoding", "gzip")
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                if not chunked:
                    self.wfile.write(body)
                    return
                for start in range(0, len(body), 4096):
                    chunk = body[start : start + 4096]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass
            return
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
        policy["groups"]["pupils"]["downloads"] = {"block_types": ["executable", "apk", "disk_image"], "max_size_mb": 1}

    running = start_proxy(tmp, write_policy(tmp / "policy.yaml", one_megabyte))
    yield running
    running.stop()


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
    assert b"because of its type: executable" in body and b"because of its size" not in body
    (row,) = incidents(proxy.db, headers["X-Aupguard-Incident"])
    assert row["category"] == "download" and "executable" in row["rule"]


def test_an_announced_size_over_the_limit_is_blocked(proxy, files):
    status, headers, body = fetch(proxy, f"http://127.0.0.1:{files}/big.pdf")
    assert status == 403 and len(body) < MB
    assert b"because of its size: 3,145,728 bytes is over the limit of 1.0 MB" in body
    (row,) = incidents(proxy.db, headers["X-Aupguard-Incident"])
    assert "over the limit" in row["rule"]


def test_a_streamed_body_over_the_limit_is_cut(proxy, files):
    with pytest.raises(http.client.IncompleteRead) as cut:
        fetch(proxy, f"http://127.0.0.1:{files}/stream")
    assert len(cut.value.partial) <= MB
    with sqlite3.connect(proxy.db) as conn:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            rows = conn.execute(
                "select rule from incidents where url like '%/stream' and category = 'download'"
            ).fetchall()
            if rows:
                break
            time.sleep(0.2)
    assert rows and "over the limit" in rows[0][0]


def test_small_files_pass(proxy, files):
    status, _, body = fetch(proxy, f"http://127.0.0.1:{files}/notes.pdf")
    assert status == 200 and body == b"MZ fake program"


@pytest.mark.parametrize("path", ["/homework.txt", "/tools", "/packed.txt"])
def test_a_program_by_its_bytes_gets_the_block_page(proxy, files, path):
    """Buffered responses: an exe served as text/plain "homework.txt", a zip holding setup.exe."""
    status, headers, body = fetch(proxy, f"http://127.0.0.1:{files}{path}")
    assert status == 403 and b"PE\0\0" not in body and b"PK\x03\x04" not in body
    (row,) = incidents(proxy.db, headers["X-Aupguard-Incident"])
    assert row["category"] == "download" and "executable" in row["rule"]


@pytest.mark.parametrize(
    "path, kind",
    [("/setup", "executable"), ("/game", "apk"), ("/disk", "disk image"), ("/packed-stream", "executable")],
)
def test_a_streamed_program_by_its_bytes_is_cut_before_any_byte(proxy, files, path, kind):
    with pytest.raises(http.client.IncompleteRead) as cut:
        fetch(proxy, f"http://127.0.0.1:{files}{path}")
    assert cut.value.partial == b""  # held back, then dropped: not one byte of the file reached the client
    with sqlite3.connect(proxy.db) as conn:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            rows = conn.execute(
                "select rule from incidents where url like ? and category = 'download'", [f"%{path}"]
            ).fetchall()
            if rows:
                break
            time.sleep(0.2)
    assert rows and kind in rows[0][0]


@pytest.mark.parametrize("path", ["/notes.zip", "/essay"])
def test_files_whose_bytes_show_no_blocked_type_pass_whole(proxy, files, path):
    status, _, body = fetch(proxy, f"http://127.0.0.1:{files}{path}")
    assert status == 200 and body == SERVED[path][0]


@given(
    st.binary(max_size=2000),
    st.sampled_from([b"", b"MZ", b"PK\x03\x04", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", b"\xca\xfe\xba\xbe"]),
)
def test_hostile_first_bytes_never_raise(tail, head):
    for name, _ in downloads.content_type_of(head + tail):
        assert name in downloads.SNIFFED_TYPES


@given(st.binary(max_size=70000), st.lists(st.integers(1, 9000), min_size=1, max_size=40))
def test_body_check_sends_a_passing_body_unchanged_however_it_is_cut(body, sizes):
    refused = []
    check = BodyCheck(None, frozenset({"disk_image", "executable", "apk"}), refused.append)
    out, start = [], 0
    for size in sizes * (len(body) // sum(sizes) + 1):
        if start >= len(body):
            break
        sent = check(body[start : start + size])
        out += [sent] if isinstance(sent, bytes) else sent
        start += size
    sent = check(b"")
    out += [sent] if isinstance(sent, bytes) else sent
    # Passed whole and in order, or (refused while held back) not one byte of it.
    assert b"".join(out) == (b"" if refused else body) and len(refused) <= 1
