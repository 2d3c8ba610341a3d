"""Shared fixtures: the real UT1 snapshot, a local origin server, and a real aupguard proxy.

Everything listens on 127.0.0.1 only. The proxy is the real `aupguard run`
command in a subprocess, with its own mitmproxy CA in a temporary confdir.
"""

from __future__ import annotations

import datetime as dt
import html
import http.client
import http.server
import ipaddress
import json
import os
import re
import signal
import socket
import sqlite3
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
# In-process code writes its data (compiled and served indexes, incident databases) into a folder of
# this test process's own, never into the checkout's var/, and parallel workers never share one.
# Set before any test module imports aupguard, which reads AUPGUARD_DATA once.
os.environ["AUPGUARD_DATA"] = tempfile.mkdtemp(prefix="aupguard-test-data-")
# Imported only now, once AUPGUARD_DATA says where this process's data goes.
from aupguard.cli.main import main as aupguard_main  # noqa: E402
from aupguard.core.incident import Incident, new_ref  # noqa: E402
from aupguard.lists import index as index_module  # noqa: E402
from aupguard.store.incidents import IncidentWriter  # noqa: E402

SHARED = REPO.parent / "shared"
BUNDLED_POLICY = REPO / "config" / "policy.yaml"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "blocklists-ut1").is_dir():
        pytest.skip(f"the shared UT1 snapshot is not at {SHARED} (it sits beside the checkout in CI)")
    return SHARED


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- origin servers -----------------------------------------------------------------------------


class OriginHandler(http.server.BaseHTTPRequestHandler):
    """Answers every request with a small page naming the path, so tests can tell they reached it."""

    def do_GET(self):
        body = f"origin says hello: {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        if "alt-svc" in self.path:  # as sites announcing HTTP/3 do
            self.send_header("Alt-Svc", 'h3=":443"; ma=86400')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET
    do_HEAD = do_GET

    def log_message(self, *args):
        pass


@dataclass
class Origin:
    port: int
    https_port: int
    cert: Path  # the HTTPS origin's self-signed certificate, for clients that must see it undecrypted

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def https_url(self, path: str = "/", host: str = "localhost") -> str:
        return f"https://{host}:{self.https_port}{path}"


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "origin.pem", tmp / "origin.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture(scope="session")
def origin(tmp_path_factory) -> Origin:
    plain = http.server.ThreadingHTTPServer(("127.0.0.1", 0), OriginHandler)
    secure = http.server.ThreadingHTTPServer(("127.0.0.1", 0), OriginHandler)
    cert, key = _self_signed(tmp_path_factory.mktemp("origin"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    secure.socket = context.wrap_socket(secure.socket, server_side=True)
    for server in (plain, secure):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield Origin(plain.server_address[1], secure.server_address[1], cert)
    for server in (plain, secure):
        server.shutdown()


# -- the proxy ------------------------------------------------------------------------------------


def write_htpasswd(path: Path, users: dict[str, str]) -> Path:
    """An htpasswd file for mitmproxy's proxyauth (`--proxyauth @path`), one line per user."""
    from passlib.apache import HtpasswdFile

    file = HtpasswdFile(str(path), new=True)
    for user, password in users.items():
        file.set_password(user, password)
    file.save()
    return path


def write_policy(path: Path, edit=None, base: Path = BUNDLED_POLICY) -> Path:
    """A copy of the bundled policy (lists resolved against the repo), optionally edited as a dict."""
    data = yaml.safe_load(base.read_text())
    for root in data.get("lists", []):
        if not str(root["path"]).startswith(("/", "{data}")):
            root["path"] = str((base.parent / root["path"]).resolve())
        if root.get("mapping") and not str(root["mapping"]).startswith("/"):
            root["mapping"] = str((base.parent / root["mapping"]).resolve())
    if edit:
        edit(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def with_list_root(folder: Path, name: str = "testlists"):
    """A `write_policy` edit that adds the list folders under `folder` as one more list root."""

    def edit(policy: dict) -> None:
        policy["lists"].append({"name": name, "path": str(folder)})

    return edit


@dataclass
class Proxy:
    process: subprocess.Popen
    port: int
    confdir: Path
    db: Path
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def proxies(self) -> dict[str, str]:
        return {"http": self.url, "https": self.url}

    @property
    def ca(self) -> Path:
        return self.confdir / "mitmproxy-ca-cert.pem"

    def stop(self, timeout: float = 20) -> int:
        """Stop as an administrator would (SIGTERM) and wait: incidents must be flushed by then."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                raise
        return self.process.returncode


def start_proxy(
    tmp: Path, policy: Path = BUNDLED_POLICY, extra: tuple[str, ...] = (), env: dict | None = None
) -> Proxy:
    port = free_port()
    confdir, db, log = tmp / "mitmproxy", tmp / "var" / "incidents.db", tmp / "proxy.log"
    cmd = [
        sys.executable, "-m", "aupguard.cli", "run",
        "--listen-port", str(port),
        "--config", str(policy),
        "--db", str(db),
        "--confdir", str(confdir),
        "--set", "ssl_insecure=true",  # the test origin's certificate is self-signed
        *extra,
    ]  # fmt: skip
    environment = {**os.environ, "AUPGUARD_DATA": str(tmp / "var"), **(env or {})}
    handle = log.open("wb")
    process = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=environment, cwd=tmp)
    wait_listening(process, port, log)
    if "--workers" in extra:  # the port answers once the first worker listens: wait for them all
        workers = int(extra[extra.index("--workers") + 1])
        deadline = time.monotonic() + 60
        while len(listening_pids(port)) < workers:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"{len(listening_pids(port))} of {workers} workers listen:\n{log.read_text()}")
            time.sleep(0.1)
    return Proxy(process, port, confdir, db, log)


def listening_pids(port: int) -> set[str]:
    """The processes with a socket listening on `port` (one per worker, SO_REUSEPORT)."""
    listing = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True, check=False)
    return set(re.findall(r"pid=(\d+)", listing.stdout))


def wait_listening(process: subprocess.Popen, port: int, log: Path | None = None, timeout: float = 60) -> None:
    output = lambda: log.read_text() if log else ""  # noqa: E731
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the proxy exited with {process.returncode}:\n{output()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"the proxy did not listen within {timeout} s:\n{output()}")


def allow_tunnels_to(origin: Origin, bare_ip: bool = False):
    """A policy edit letting CONNECT reach the local origin's ports (the bundled policy allows 443 only).

    `bare_ip`: also CONNECT to 127.0.0.1 and TLS without SNI (clients send none for an IP address).
    """

    def edit(policy):
        policy["circumvention"]["connect_ports"] = [443, origin.port, origin.https_port]
        if bare_ip:
            policy["circumvention"]["bare_ip"] = policy["circumvention"]["no_sni"] = "allow"

    return edit


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, origin) -> Proxy:
    """The bundled policy and lists, as `aupguard run` starts them (tunnels to the local origin allowed)."""
    tmp = tmp_path_factory.mktemp("proxy")
    running = start_proxy(tmp, write_policy(tmp / "policy.yaml", allow_tunnels_to(origin)))
    yield running
    running.stop()


def wait_for(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def connect(proxy, target: str, source_ip: str = "127.0.0.1") -> tuple[socket.socket, int]:
    """A raw CONNECT through the proxy: the open socket and the proxy's status."""
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=15, source_address=(source_ip, 0))
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return sock, int(head.split(b" ", 2)[1])


def tls_request(proxy, target: str, sni: str, path: str, host: str, source_ip: str = "127.0.0.1") -> bytes:
    """CONNECT to `target`, TLS naming `sni` (trusting the proxy's CA), one GET of `path` with `host`."""
    sock, status = connect(proxy, target, source_ip)
    assert status == 200, status
    context = ssl.create_default_context(cafile=str(proxy.ca))
    with context.wrap_socket(sock, server_hostname=sni) as tls:
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
        return data


# -- helpers the test files share ---------------------------------------------------------------


@dataclass(frozen=True)
class Ran:
    """What a command did, in subprocess.run's terms whether it ran in this process or another."""

    returncode: int
    stdout: str
    stderr: str


def aupguard(
    *args: str,
    stdin: str | None = None,
    env: dict | None = None,
    data: Path | None = None,
    cwd: Path | None = None,
    check: bool = True,
) -> Ran:
    """Run the `aupguard` command: in this process (click's CliRunner), or in a new one when it
    needs another environment (`env`, `data` as its AUPGUARD_DATA folder) or working folder (`cwd`).

    aupguard reads AUPGUARD_DATA and AUPGUARD_HOME once, when it is imported, so a command run with
    another environment needs a process of its own; so do `run` and anything the proxy serves.
    With `check` a failing command fails the test with its stderr; without, the caller reads the
    exit status and stderr of a command that is meant to be refused.
    """
    if env or data is not None or cwd is not None:
        extra = {"AUPGUARD_DATA": str(data)} if data is not None else {}
        done = subprocess.run(
            [sys.executable, "-m", "aupguard.cli", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, **extra, **(env or {})},
            cwd=cwd,
        )
        result = Ran(done.returncode, done.stdout, done.stderr)
    else:
        invoked = CliRunner().invoke(aupguard_main, list(args), input=stdin)
        if invoked.exception is not None and not isinstance(invoked.exception, SystemExit):
            raise invoked.exception  # a traceback in a real process: never an answer
        result = Ran(invoked.exit_code, invoked.stdout, invoked.stderr)
    if check and result.returncode != 0:
        raise AssertionError(f"aupguard {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def verdicts(output: str) -> list[dict]:
    """The JSON lines `aupguard classify` writes, one verdict a line."""
    return [json.loads(line) for line in output.splitlines()]


def incidents(db: Path) -> list[dict]:
    """Every incident in the database at `db`, oldest first."""
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("select * from incidents order by ts_utc")]


def mode(path: Path) -> int:
    """The permission bits of `path` (0o600 for a private file)."""
    return stat.S_IMODE(path.stat().st_mode)


# -- requests through a running proxy -------------------------------------------------------------


def fetch(
    proxy, url: str, source_ip: str = "127.0.0.1", accept: str = "text/html"
) -> tuple[int, dict[str, str], bytes]:
    """GET `url` through `proxy` from `source_ip`: the status, the headers and the body as bytes."""
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30, source_address=(source_ip, 0))
    try:
        conn.request("GET", url, headers={"Accept": accept})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def fetch_text(
    proxy, url: str, source_ip: str = "127.0.0.1", accept: str = "text/html"
) -> tuple[int, dict[str, str], str]:
    """fetch, with the body decoded (a block page, an origin's text)."""
    status, headers, body = fetch(proxy, url, source_ip, accept)
    return status, headers, body.decode("utf-8", "replace")


def proxied_status(via: int | http.client.HTTPConnection, host: str) -> int:
    """The status of GET http://host/ through the proxy: on a new connection to port `via`, or on the
    open connection `via`, left open (to see that the proxy keeps it)."""
    conn = http.client.HTTPConnection("127.0.0.1", via, timeout=15) if isinstance(via, int) else via
    try:
        conn.request("GET", f"http://{host}/", headers={"Host": host})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        if conn is not via:
            conn.close()


def wait_for_status(proxy, url: str, status: int, timeout: float = 15.0) -> None:
    """Wait until GET `url` through `proxy` answers `status` (a reload has taken effect)."""
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        seen = requests.get(url, proxies=proxy.proxies, timeout=15).status_code
        if seen == status:
            return
        time.sleep(0.25)
    raise AssertionError(f"{url}: still {seen}, not {status}, after {timeout} s")


def blocked(proxy, path: str = "/x") -> tuple[str, str, str]:
    """Get a block page through `proxy`; return its reference, token and the form's action."""
    page = requests.get(f"http://pornhub.com{path}", proxies=proxy.proxies, timeout=15, headers={"Accept": "text/html"})
    assert page.status_code == 403
    ref = page.headers["X-Aupguard-Incident"]
    token = re.search(r'name="token" value="([0-9a-f]+)"', page.text).group(1)
    action = html.unescape(re.search(r'<form method="post" action="([^"]+)"', page.text).group(1))
    assert "I reached this by accident" in page.text and "Ask for this site to be reviewed" in page.text
    return ref, token, action


# -- files the tests make ------------------------------------------------------------------------


def write_tree(root: Path, files: dict[str, str | bytes]) -> Path:
    """A folder of list files (or any files): {relative path: content}."""
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return root


def rewrite_header(path: Path, **changes: int) -> None:
    """Change a compiled index's header fields and re-seal the header checksum: only the later checks can catch it."""
    raw = bytearray(path.read_bytes())
    fields = list(index_module._HEADER.unpack_from(raw))
    names = {"magic": 0, "version": 1, "width": 2, "file_size": 4, "json_len": 6, "domains_slots": 8}
    for name, value in changes.items():
        fields[names[name]] = value
    index_module._HEADER.pack_into(raw, 0, *fields)
    header_bytes = bytes(raw[: index_module._HEADER.size])
    checksum = index_module.xxh3_64_intdigest(header_bytes)
    index_module._HEADER_CHECKSUM.pack_into(raw, index_module._HEADER.size, checksum)
    path.write_bytes(bytes(raw))


# -- incidents -------------------------------------------------------------------------------------

INCIDENT_TIME = dt.datetime(2025, 3, 14, 10, 30, 0, tzinfo=dt.UTC)  # make_incident's default time


def make_incident(**fields) -> Incident:
    """A blocked request's incident (alice, pupils, adult) with `fields` changed."""
    values = dict(
        ref=new_ref(),
        ts_utc=INCIDENT_TIME,
        local_date="2025-03-14",
        local_time="10:30:00",
        client_ip="10.0.0.5",
        username="alice",
        group="pupils",
        method="GET",
        url="http://example.org/page",
        host="example.org",
        categories=("adult",),
        rule="blocklists/adult",
        action="block",
        severity="medium",
        user_agent="Mozilla/5.0",
        search_term=None,
    )
    values.update(fields)
    return Incident(**values)


def incident_at(when: dt.datetime, **fields) -> Incident:
    """make_incident at `when`, its local date and time read from it."""
    return make_incident(ts_utc=when, local_date=f"{when:%Y-%m-%d}", local_time=f"{when:%H:%M:%S}", **fields)


def write_incidents(path: Path, made) -> None:
    """Store the incidents `made` in the database at `path` through the real writer."""
    with IncidentWriter(path) as writer:
        for incident in made:
            writer.submit(incident)
