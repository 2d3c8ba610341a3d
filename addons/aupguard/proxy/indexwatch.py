"""Serve the compiled list index: open it for a policy's lists, and switch to a recompiled one live.

`aupguard lists compile` (and `lists update`) replace the index file atomically
(`os.replace`). The proxy never maps that file: it serves a private copy
(`index.serve_index`), so nothing done to the file at the configured path (a
`cp` over it, zeroed blocks, a truncation) reaches a lookup. Every proxy worker
polls `CompiledIndex.stale()` (the file's inode, size, mtime and ctime) every
POLL_SECONDS from its own thread, so the event loop never waits on a stat or a
load. A changed file is copied, validated (header, whole-body checksum, json,
and compiled for the policy's list folders) and its expressions compiled, in
that thread; then `engine.classifier` is replaced in one assignment: a request
being decided finishes on the old index, the next one uses the new, and no
connection is touched. The old mapping is closed CLOSE_DELAY seconds later,
long after any lookup on it.

A file that is not a valid index for the policy (corrupt, truncated, written
over, another format version, other list folders) is reported once and the
previous index keeps serving until a valid file takes its place.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from aupguard.core.classify import Classifier
from aupguard.lists.index import CompiledIndex, IndexFormatError, Signature, file_signature
from aupguard.lists.serve import serve_for

if TYPE_CHECKING:
    from aupguard.core.engine import Engine

log = logging.getLogger(__name__)

POLL_SECONDS = 2.0
CLOSE_DELAY = 60.0


class IndexWatcher:
    """Keeps the engine that `get_engine()` returns on the newest valid index file."""

    def __init__(
        self,
        get_engine: Callable[[], Engine | None],
        set_engine: Callable[[Engine], None],
        interval: float = POLL_SECONDS,
    ):
        self._get_engine = get_engine
        self._set_engine = set_engine
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed: Signature | None = None  # a version of the index file already reported as bad
        self._current: Classifier | None = None  # the classifier this watcher last installed
        self._retiring: list[tuple[float, Classifier]] = []  # (close after, classifier)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="aupguard-index-watcher", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # never let the watcher die: the proxy would silently stop updating
                log.exception("aupguard: checking the list index failed")

    def check(self) -> bool:
        """Switch to a newer index file if there is a valid one; True when a switch happened."""
        self._close_retired()
        engine = self._get_engine()
        if engine is None or not isinstance(engine.classifier.lookup, CompiledIndex):
            return False
        if (
            self._current is not None
            and engine.classifier is not self._current
            and any(engine.classifier is old for _when, old in self._retiring)
        ):
            # A policy reload built its engine from the classifier this watcher had just retired.
            engine = engine.replace(classifier=self._current)
            self._set_engine(engine)
        index = engine.classifier.lookup
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
            new = Classifier(serve_for(engine.policy.lists, index.origin, index.path.parent))
        except (IndexFormatError, OSError) as exc:
            self._failed = signature
            log.error(
                "aupguard: the list index file changed but cannot be used; the previous one keeps serving: %s", exc
            )
            return False
        old = engine.classifier
        self._set_engine(engine.replace(classifier=new))  # one assignment: the old index or the new, never a mix
        self._current = new
        self._retiring.append((time.monotonic() + CLOSE_DELAY, old))
        counts = new.lookup.counts
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
            if when <= now:
                classifier.lookup.close()
            else:
                keep.append((when, classifier))
        self._retiring = keep
