"""Store: the review requests pupils send from the block page."""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime
from pathlib import Path

import sqlite_utils

from aupguard.store.db import utc_iso
from aupguard.store.incidents import open_db

KINDS = {"accidental": "I reached this by accident", "review": "Please review this site"}


MAX_REASON = 500


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def ensure_schema(db: sqlite_utils.Database) -> None:
    """The incident_requests table, beside the incidents it belongs to (open_db made those)."""
    with db.conn:
        db.execute(
            """CREATE TABLE IF NOT EXISTS incident_requests (
                 ref TEXT NOT NULL, kind TEXT NOT NULL, reason TEXT NOT NULL, ts_utc TEXT NOT NULL,
                 PRIMARY KEY (ref, kind))"""
        )
        # Retention: a request goes when its incident is purged.
        db.execute(
            """CREATE TRIGGER IF NOT EXISTS incident_requests_purge AFTER DELETE ON incidents
               BEGIN DELETE FROM incident_requests WHERE ref = OLD.ref; END"""
        )


def record(db: sqlite_utils.Database, ref: str, kind: str, reason: str, when: datetime | None = None) -> None:
    """Store one request (ensure_schema first); asking twice for the same incident keeps the latest reason."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}")
    with db.conn:
        db.execute(
            "INSERT OR REPLACE INTO incident_requests (ref, kind, reason, ts_utc) VALUES (?, ?, ?, ?)",
            [ref, kind, clean_reason(reason), utc_iso(when or datetime.now(UTC))],
        )


def clean_reason(reason: str) -> str:
    return _CONTROL.sub(" ", reason.replace("\r\n", "\n")).strip()[:MAX_REASON]


class RequestStore:
    """The incident database as the app writes to it: one connection, opened at the first post, kept until close().

    Not a connection per post: the proxy's incident writer holds the same file
    open, and every open beside it is one more chance to disturb its locks
    (a stray descriptor closed on the file drops them all: see
    store.db.connect_private). The app may be called from more than one
    thread, so a lock serialises the connection's use.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db: sqlite_utils.Database | None = None

    def record(self, ref: str, kind: str, reason: str) -> None:
        with self._lock:
            if self._db is None:
                db = open_db(self.path, check_same_thread=False)
                try:
                    ensure_schema(db)
                except BaseException:
                    db.close()
                    raise
                self._db = db
            record(self._db, ref, kind, reason)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
