"""Incidents survive what a school's server goes through: a proxy killed under load, a full disk.

Every block page carries its incident's reference (the X-Aupguard-Incident header, and the page
itself); a pupil or IT may quote it, so an incident whose page was sent must be in the database.
"""

from __future__ import annotations

import errno
import http.client
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import BUNDLED_POLICY, free_port, wait_listening

BLOCKED = "http://www.pornhub.com"  # in the bundled blocklists/adult: blocked for everyone
CLIENTS = 8


def stored_refs(db: Path) -> set[str]:
    conn = sqlite3.connect(db)
    try:
        return {row[0] for row in conn.execute("SELECT ref FROM incidents")}
    finally:
        conn.close()


class Pupils:
    """CLIENTS threads, each on its own keep-alive connection, asking for blocked pages until stopped.

    Each keeps the reference of every block page it received whole (headers and body); a request
    the proxy never answered, or answered in part, counts for nothing.
    """

    def __init__(self, port: int, limit: int = 20_000) -> None:
        self.port = port
        self.limit = limit  # requests per client at most: the loop stops by itself
        self.refs: list[list[str]] = [[] for _ in range(CLIENTS)]
        self.failures: list[str] = []  # anything but a block page, while the proxy was alive
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._pupil, args=(n,), daemon=True) for n in range(CLIENTS)]

    def __enter__(self) -> Pupils:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)

    @property
    def received(self) -> int:
        return sum(map(len, self.refs))

    def all_refs(self) -> list[str]:
        return [ref for refs in self.refs for ref in refs]

    def wait_for(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.received < count:
            assert time.monotonic() < deadline, f"only {self.received} block pages in {timeout} s: {self.failures[:3]}"
            assert not self.failures, self.failures[:3]
            time.sleep(0.05)

    def _pupil(self, number: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        mine = self.refs[number]
        try:
            for count in range(self.limit):
                if self.stopping.is_set():
                    return
                conn.request("GET", f"{BLOCKED}/pupil{number}/{count}", headers={"Accept": "text/html"})
                response = conn.getresponse()
                body = response.read()
                ref = response.getheader("X-Aupguard-Incident")
                if response.status != 403 or ref is None or ref.encode() not in body:
                    self.failures.append(f"{response.status} {ref!r} {body[:200]!r}")
                    return
                mine.append(ref)
        except (OSError, http.client.HTTPException):
            return  # the proxy went away (killed by the test)
        finally:
            conn.close()


def start(tmp: Path, db: Path, wrap: list[str] | None = None) -> tuple[subprocess.Popen, int]:
    """`aupguard run` with the bundled policy, as its own process (no `--workers`: the pid is the proxy's)."""
    port = free_port()
    log = tmp / "proxy.log"
    command = [
        *(wrap or []), sys.executable, "-m", "aupguard.cli", "run", "--listen-port", str(port),
        "--config", str(BUNDLED_POLICY), "--db", str(db), "--confdir", str(tmp / "mitmproxy"),
    ]  # fmt: skip
    env = {**os.environ, "AUPGUARD_DATA": str(tmp / "var")}
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=tmp)
    wait_listening(process, port, log)
    return process, port


def test_every_block_page_sent_is_in_the_database_after_a_kill_9_under_load(tmp_path):
    db = tmp_path / "var" / "incidents.db"
    process, port = start(tmp_path, db)
    try:
        with Pupils(port) as pupils:
            pupils.wait_for(4000)  # well into the load: the writer has batches in flight
            process.send_signal(signal.SIGKILL)
            process.wait(30)
        assert not pupils.failures, pupils.failures[:3]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    received = pupils.all_refs()
    assert len(received) >= 4000 and len(set(received)) == len(received)
    missing = set(received) - stored_refs(db)
    assert not missing, f"{len(missing)} of {len(received)} incidents whose block page was sent are not in the database"


def stored_refs_behind(db: Path, copy_to: Path) -> set[str]:
    """stored_refs of a database reached through /proc/<pid>/root, read from a copy of its files.

    SQLite resolves symbolic links in a database's path, and /proc/<pid>/root reads as "/":
    it would open the same path outside the namespace. Copied, the WAL is read as after a crash:
    its committed transactions are there, a transaction half-copied is not.
    """
    copy_to.mkdir(exist_ok=True)
    for suffix in ("", "-wal"):
        shutil.copyfile(f"{db}{suffix}", copy_to / f"copy.db{suffix}")
    (copy_to / "copy.db-shm").unlink(missing_ok=True)
    return stored_refs(copy_to / "copy.db")


def namespace_tmpfs(disk: Path, size: str) -> list[str]:
    """A command prefix running the rest in a private mount namespace with a `size` tmpfs on `disk`.

    The mount lives and dies with the process (nothing to unmount if the test is killed); the
    test reaches the tmpfs through /proc/<pid>/root. Root mounts directly; anyone else gets
    a user namespace in which they are root (`unshare -r`), where the kernel allows it.
    """
    if shutil.which("unshare") is None:
        pytest.skip("util-linux unshare is missing")
    mount = 'mount -t tmpfs -o size="$1",mode=0700 aupguard-test-disk "$0" && shift && exec "$@"'
    flags = "-m" if os.geteuid() == 0 else "-rm"
    probe = subprocess.run(
        ["unshare", flags, "sh", "-c", mount, str(disk), size, "true"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a mount namespace here: {probe.stderr.decode().strip()}")
    return ["unshare", flags, "--propagation", "private", "sh", "-c", mount, str(disk), size]


def fill(folder: Path) -> Path:
    """Write a file in `folder` until its file system is full; the file."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for chunk in (b"\0" * 65536, b"\0" * 512):
            try:
                while True:
                    os.write(fd, chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return filler


def test_on_a_full_disk_pages_still_go_out_and_every_incident_is_written_once_space_returns(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    process, port = start(tmp_path, disk / "incidents.db", wrap=namespace_tmpfs(disk, "4m"))
    seen = Path(f"/proc/{process.pid}/root") / disk.relative_to("/")  # the tmpfs, as the proxy sees it
    log = tmp_path / "proxy.log"
    try:
        filler = fill(seen)
        pupils = Pupils(port, limit=40)
        pupils.threads = pupils.threads[:2]  # two pupils, 40 block pages each, while nothing can be written
        with pupils:
            pupils.wait_for(80, timeout=60)  # the pages go out: the proxy keeps filtering
        assert not pupils.failures, pupils.failures[:3]
        received = set(pupils.all_refs())
        time.sleep(3)  # the disk stays full past any give-up window (the writer used to drop a batch after ~1.5 s)
        filler.unlink()
        deadline = time.monotonic() + 30
        while not received <= stored_refs_behind(seen / "incidents.db", tmp_path / "copy"):
            assert time.monotonic() < deadline, "the held incidents were not written once space returned"
            time.sleep(0.2)
        said = log.read_text()
        assert said.count("INCIDENTS ARE NOT BEING WRITTEN") == 1  # the disk really was full; said once
        assert said.count("can be written again") == 1
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
