"""Store: opening aupguard's SQLite files privately, and the time format they share."""

from __future__ import annotations

import os
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import sqlite_utils

from aupguard.base.paths import make_dir

BUSY_TIMEOUT_S = 30.0  # several proxy workers may write to one file; a batch commit takes milliseconds


def utc_iso(when: datetime) -> str:
    """The stored form of a time: fixed-width ISO-8601 UTC with 'Z', so text order is time order."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"a timezone-aware datetime is needed, not {when!r}")
    return when.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def private_parent(path: Path) -> None:
    """Create the missing directory `path` goes in, mode 0700.

    An existing directory is left as it is: the user may have named a file in
    /tmp or their home, and chmod-ing that would break it. DATA_DIR itself is
    always made 0700 (paths.make_dir).
    """
    make_dir(Path(path).parent, private=True)


def connect_private(path: Path, *, check_same_thread: bool = True) -> sqlite_utils.Database:
    """Open (creating if needed) an SQLite file holding personal data, readable by its owner only.

    A missing file is created 0600 before SQLite touches it, so it is never
    readable by others, even for a moment; SQLite gives its -wal and -shm files
    the same mode. An existing file is only chmod-ed by path, never opened here:
    closing any descriptor on a database file drops every POSIX lock this
    process holds on it, the incident writer's too, and another process would
    then checkpoint and unlink the WAL the writer still appends to.
    WAL with synchronous=NORMAL lets reports read while the proxy writes, and a
    busy timeout lets several writer processes share the file.
    `check_same_thread=False` is for a connection its owner serialises with a lock.
    """
    path = Path(path)
    private_parent(path)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    for part in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if part.exists():
            os.chmod(part, 0o600)
    db = sqlite_utils.Database(sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, check_same_thread=check_same_thread))
    try:
        _enable_wal(db)
        db.execute("PRAGMA synchronous = NORMAL")
        # Deleted rows are overwritten, not left in free pages (retention must mean deletion).
        db.execute("PRAGMA secure_delete = ON")
    except BaseException:
        db.close()
        raise
    return db


def _enable_wal(db: sqlite_utils.Database) -> None:
    """WAL mode, waiting out another connection's write as the busy timeout does for other statements.

    SQLite answers a journal-mode change "database is locked" at once, without its busy handler,
    while another connection writes: two proxy workers opening a new store together did, and one
    of them stopped at start. So the change is retried for up to BUSY_TIMEOUT_S.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            db.enable_wal()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
