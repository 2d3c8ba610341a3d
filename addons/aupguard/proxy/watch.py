"""The one watcher: the policy, the compiled index and the exemption store, followed while the proxy runs.

Files are polled (`Poller`: a check every few seconds from its own thread) rather than watched,
so it works the same on every filesystem, network shares included, and the event loop never
waits on a stat, a load or the database. Each of the three has its own poller thread, so a long
reload (lists compiled afresh) never delays an exemption. Each reaction replaces the runtime
snapshot (proxy.current) in one assignment.

- The policy (`PolicyReload`): its files' `stamp` (modification time and size), and SIGHUP. A new
  engine is loaded in the poller's thread; any error keeps the running policy and is logged once
  per broken version, with the file, line and reason.
- The index (`IndexSwap`): `aupguard lists compile` (and `lists update`) replace the index file
  atomically. The proxy never maps that file: it serves a private copy (`lists.serve.serve_index`), so
  nothing done to the file at the configured path (a `cp` over it, zeroed blocks, a truncation)
  reaches a lookup. A changed file (`CompiledIndex.stale`: its inode, size, mtime and ctime) is
  copied, validated (header, whole-body checksum, json, and compiled for the policy's list
  folders) and its expressions compiled; then the classifier is replaced: a request being
  decided finishes on the old index, the next one uses the new, and no connection is touched. The
  old mapping is closed CLOSE_DELAY seconds later, long after any lookup on it. A file that is not
  a valid index for the policy is reported once and the previous index keeps serving.
- The exemptions (`ExemptionRefresh`): the store is read again when another connection committed
  (SQLite's data_version) or the file was replaced (its inode), every REFRESH_S. A store that
  fails to read keeps the previous exemptions (logged), so a locked or damaged file cannot stall browsing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import sqlite_utils

from aupguard.config.policy import PolicyError
from aupguard.core.classify import Classifier
from aupguard.core.exemptions import ExemptionSet
from aupguard.lists.index import CompiledIndex, IndexFormatError, Signature, file_signature
from aupguard.lists.model import ListError
from aupguard.lists.serve import serve_for
from aupguard.proxy.current import Current
from aupguard.runtime import load_engine
from aupguard.store.exemptions import listing, open_store

log = logging.getLogger(__name__)

POLL_SECONDS = 2.0  # how soon a changed policy or index file is seen
REFRESH_S = 2.0  # how soon a running proxy honours a change of exemptions
CLOSE_DELAY = 60.0  # how long a replaced index stays mapped for the lookups still on it

Stamp = tuple[tuple[int, int] | None, ...]


def stamp(files: tuple[Path, ...]) -> Stamp:
    """What changes when any of the files is edited, replaced or removed: its modification time and size."""
    out: list[tuple[int, int] | None] = []
    for path in files:
        try:
            info = os.stat(path)
        except OSError:
            out.append(None)
        else:
            out.append((info.st_mtime_ns, info.st_size))
    return tuple(out)


class Poller:
    """Calls `check()` every `interval` seconds from its own thread, and at once when woken; an error in
    `check` is logged and the polling goes on (a dead watcher would silently stop updating the proxy)."""

    def __init__(
        self, name: str, check: Callable[[], object], interval: float, finish: Callable[[], None] | None = None
    ):
        self.name, self.check, self.interval, self.finish = name, check, interval, finish
        self._stop = threading.Event()
        self._woken = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._woken.set()

    def close(self) -> None:
        self._stop.set()
        self._woken.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 10)
            self._thread = None

    def _run(self) -> None:
        try:
            while True:
                self._woken.wait(self.interval)
                self._woken.clear()
                if self._stop.is_set():
                    return
                try:
                    self.check()
                except Exception:
                    log.exception("aupguard: %s failed", self.name)
        finally:
            if self.finish is not None:
                self.finish()


class PolicyReload:
    """Keeps the snapshot on the policy file at `path()`, reloaded when its files change or on `request`."""

    def __init__(self, current: Current, path: Callable[[], Path], index_path: Callable[[], Path | None]):
        self.current, self._path, self._index_path = current, path, index_path
        self._stamp: Stamp | None = None
        self._failed: Stamp | None = None  # a broken version already reported: not reported again every poll
        self._asked: str | None = None  # why a reload was asked for (SIGHUP), done on the next check

    def begin(self) -> None:
        engine = self.current.engine
        self._stamp = stamp(engine.policy.files) if engine else None

    def request(self, why: str) -> None:
        self._asked = why

    def check(self) -> bool:
        asked, self._asked = self._asked, None
        if asked is not None:
            return self.reload(asked)
        current = stamp(self._files())
        if current != self._stamp and current != self._failed:
            return self.reload("the policy changed")
        return False

    def _files(self) -> tuple[Path, ...]:
        engine = self.current.engine
        return engine.policy.files if engine else (self._path(),)

    def reload(self, why: str) -> bool:
        """Load the policy again; on any error keep the running one. True if the new one is in force."""
        previous = self.current.engine
        path = self._path()
        files = self._files()
        before = stamp(files)  # stamped before reading, so an edit made while loading is seen by the next poll
        try:
            engine = load_engine(path, index_path=self._index_path(), exemptions_path=None, previous=previous)
        except (PolicyError, ListError, OSError) as exc:
            self._failed = before
            log.error("aupguard: %s, but it cannot be used; the previous policy stays in force: %s", why, exc)
            return False
        except Exception:
            self._failed = before
            log.exception("aupguard: reloading %s failed; the previous policy stays in force", path)
            return False
        self.current.install_loaded(engine, previous)
        self._stamp = before if engine.policy.files == files else stamp(engine.policy.files)
        self._failed = None
        log.info("aupguard: %s: policy %s reloaded (%d groups)", why, path, len(engine.policy.groups))
        return True


class IndexSwap:
    """Keeps the snapshot's classifier on the newest valid index file."""

    def __init__(self, current: Current):
        self.current = current
        self._failed: Signature | None = None  # a version of the index file already reported as bad
        self._retiring: list[tuple[float, Classifier]] = []  # (close after, classifier)

    def check(self) -> bool:
        """Switch to a newer index file if there is a valid one; True when a switch happened."""
        self._close_retired()
        engine = self.current.engine
        if engine is None or not isinstance(engine.classifier.lookup, CompiledIndex):
            return False
        old = engine.classifier
        index = old.lookup
        assert isinstance(index, CompiledIndex)
        if not index.stale():
            return False
        try:
            signature = file_signature(os.stat(index.origin))
        except OSError:
            return False  # removed: keep serving what we have
        if signature == self._failed:
            return False
        try:
            # Copied beside the one in service, validated, and only then swapped in.
            served = serve_for(engine.policy.lists, index.origin, index.path.parent)
            new = Classifier(served)
        except (IndexFormatError, OSError) as exc:
            self._failed = signature
            log.error(
                "aupguard: the list index file changed but cannot be used; the previous one keeps serving: %s", exc
            )
            return False
        # Only onto the classifier it was built to replace: a reload onto other lists in the meantime
        # brought its own index, and the one just built is retired unused.
        installed = self.current.change(
            lambda now: now.replace(classifier=new) if now and now.classifier is old else now
        )
        swapped = installed is not None and installed.classifier is new
        self._retiring.append((time.monotonic() + CLOSE_DELAY, old if swapped else new))
        if not swapped:
            return False
        counts = served.counts
        log.info(
            "aupguard: switched to the recompiled list index %s (%d domains, %d urls)",
            index.origin,
            counts["domains"],
            counts["urls"],
        )
        return True

    def _close_retired(self) -> None:
        now = time.monotonic()
        keep = []
        for when, classifier in self._retiring:
            if when > now:
                keep.append((when, classifier))
                continue
            try:
                classifier.lookup.close()  # type: ignore[attr-defined]
            except Exception:  # one index that will not close must not stop every later swap
                log.exception("aupguard: closing a retired list index failed; it is dropped unclosed")
        self._retiring = keep


class ExemptionRefresh:
    """Reads the exemption store into the snapshot when it changed since the last look."""

    def __init__(self, current: Current, path: Path):
        self.current = current
        self.path = Path(path)
        self._db: sqlite_utils.Database | None = None
        self._version: tuple[int, int] | None = None

    def check(self) -> None:
        try:
            if self._db is None:
                self._db = open_store(self.path)
            # data_version changes when another connection commits; the inode catches a replaced file.
            version = (self._db.execute("PRAGMA data_version").fetchone()[0], self.path.stat().st_ino)
            if version == self._version:
                return
            exemptions = ExemptionSet(listing(self._db, include_ended=False))
            self._version = version
            self.current.change(lambda now: now.replace(exemptions=exemptions) if now else now)
        except Exception:
            # A warning, not an error: missing exemptions only make the filter stricter, and mitmproxy
            # stops a worker that logs an error while it starts.
            log.warning(
                "reading the exemption store %s failed; keeping the previous exemptions", self.path, exc_info=True
            )
            self.disconnect()

    def disconnect(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        self._version = None  # data_version counts per connection: a new one must read afresh


class Watcher:
    """Drives the three reactions, each from its own poller thread."""

    def __init__(self, current: Current, policy_path: Callable[[], Path], index_path: Callable[[], Path | None]):
        self.current = current
        self.policy = PolicyReload(current, policy_path, index_path)
        self.index = IndexSwap(current)
        self._policy_poller = Poller("aupguard-policy-watcher", self.policy.check, POLL_SECONDS)
        self._index_poller = Poller("aupguard-index-watcher", self.index.check, POLL_SECONDS)
        self._exemptions: Poller | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Call on the running event loop (mitmproxy's `running` hook): SIGHUP asks for a reload."""
        self.policy.begin()
        self._policy_poller.start()
        self._index_poller.start()
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, self.reload_now, "SIGHUP")
            self._loop = loop
        except (NotImplementedError, AttributeError, RuntimeError):  # no SIGHUP (Windows) or not the main thread
            log.info("aupguard: SIGHUP reload unavailable here; the policy file is still watched")

    def reload_now(self, why: str) -> None:
        """Reload the policy in the poller's thread, now rather than at the next poll."""
        self.policy.request(why)
        self._policy_poller.wake()

    def watch_exemptions(self, path: Path) -> None:
        """Follow the exemption store at `path` (read once now, so the proxy starts with it)."""
        if self._exemptions is not None:
            self._exemptions.close()
        refresh = ExemptionRefresh(self.current, path)
        refresh.check()
        refresh.disconnect()  # an SQLite connection stays in the thread that opened it
        self._exemptions = Poller("aupguard-exemptions", refresh.check, REFRESH_S, finish=refresh.disconnect)
        self._exemptions.start()

    def close(self) -> None:
        if self._loop is not None:
            try:
                self._loop.remove_signal_handler(signal.SIGHUP)
            except (NotImplementedError, AttributeError, RuntimeError, ValueError):
                pass
            self._loop = None
        for poller in (self._policy_poller, self._index_poller, self._exemptions):
            if poller is not None:
                poller.close()
        self._exemptions = None
