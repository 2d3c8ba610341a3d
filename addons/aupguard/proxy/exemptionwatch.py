"""Proxy: follow the exemption store while the proxy runs."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import sqlite_utils

from aupguard.core.exemptions import ExemptionSet
from aupguard.store.exemptions import listing, open_store

log = logging.getLogger(__name__)


REFRESH_S = 2.0  # how soon a running proxy honours a change


class ExemptionWatcher:
    """Reloads the store into an ExemptionSet when it changed, from its own thread, every REFRESH_S.

    `on_change(snapshot)` is called from that thread; the proxy swaps one reference,
    so requests never wait for the database. A store that fails to read keeps the
    previous snapshot (logged), so a locked or damaged file cannot stall browsing.
    """

    def __init__(self, path: Path, on_change: Callable[[ExemptionSet], None], interval: float = REFRESH_S):
        self.path = Path(path)
        self.on_change = on_change
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._db: sqlite_utils.Database | None = None
        self._version: tuple[int, int] | None = None

    def start(self) -> None:
        """Load the store once now (so the proxy starts with it), then watch it from the thread."""
        self.refresh()
        self._disconnect()  # an SQLite connection stays in the thread that opened it
        self._thread = threading.Thread(target=self._run, name="aupguard-exemptions", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.interval + 5)

    def refresh(self) -> None:
        """Reload if the store changed since the last look (another connection committed)."""
        try:
            if self._db is None:
                self._db = open_store(self.path)
            # data_version changes when another connection commits; the inode catches a replaced file.
            version = (self._db.execute("PRAGMA data_version").fetchone()[0], self.path.stat().st_ino)
            if version == self._version:
                return
            snapshot = ExemptionSet(listing(self._db, include_ended=False))
            self._version = version
            self.on_change(snapshot)
        except Exception:
            log.exception("reading the exemption store %s failed; keeping the previous exemptions", self.path)
            self._disconnect()

    def _disconnect(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        self._version = None  # data_version counts per connection: a new one must read afresh

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                self.refresh()
        finally:
            self._disconnect()
