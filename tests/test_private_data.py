"""Pupils' personal data stays safe on disk: the live incident log, and who may read the data folder.

Through the real `aupguard run` and `aupguard` commands, with real SQLite files.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import requests

from conftest import aupguard, blocked, mode, start_proxy

REPORT = "http://aupguard.invalid/report"


def stored(db: Path, ref: str, timeout: float = 10.0) -> bool:
    """Whether a fresh connection (another process's view) finds incident `ref`, waiting for the writer's batch."""
    deadline = time.monotonic() + timeout
    while True:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            found = conn.execute("SELECT 1 FROM incidents WHERE ref = ?", [ref]).fetchone() is not None
        finally:
            conn.close()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def deleted_wal_holders(db: Path) -> list[str]:
    """Open descriptors, in any process, on the database's WAL file after it was unlinked."""
    held = []
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            for fd in fd_dir.iterdir():
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if target.startswith(f"{db}-wal") and target.endswith("(deleted)"):
                    held.append(f"{fd}: {target}")
        except OSError:  # a process that ended, or one we may not look into
            continue
    return held


def test_incidents_stay_in_the_live_database_after_feedback_and_a_report(tmp_path):
    """A feedback post must not drop the writer's SQLite locks: a report would then unlink the WAL it writes to."""
    proxy = start_proxy(tmp_path)
    try:
        ref, token, _ = blocked(proxy, "/first")
        answer = requests.post(
            REPORT, data={"ref": ref, "token": token, "kind": "accidental"}, proxies=proxy.proxies, timeout=15
        )
        assert answer.status_code == 200
        assert stored(proxy.db, ref)
        aupguard("report", "--db", str(proxy.db), "--format", "json")  # another process reads (and checkpoints)
        later, _, _ = blocked(proxy, "/second")
        assert stored(proxy.db, later), "the incident went to a WAL file the database no longer has"
        assert proxy.process.poll() is None
        assert deleted_wal_holders(proxy.db) == []
    finally:
        proxy.stop()
    assert stored(proxy.db, later, timeout=0)


def test_the_data_folder_is_private_whoever_creates_it_first(tmp_path):
    data = tmp_path / "var"
    env = {"AUPGUARD_DATA": str(data)}
    aupguard("lists", "compile", env=env)
    assert mode(data) == 0o700
    assert (data / "index").is_dir()

    os.chmod(data, 0o755)  # as an older aupguard left it
    proxy = start_proxy(tmp_path)  # the same AUPGUARD_DATA: tmp_path / "var"
    try:
        assert mode(data) == 0o700
        assert mode(proxy.db) == 0o600
    finally:
        proxy.stop()


def test_the_proxy_makes_a_missing_data_folder_private(tmp_path):
    proxy = start_proxy(tmp_path)
    try:
        assert mode(tmp_path / "var") == 0o700
    finally:
        proxy.stop()
