"""Act: reload the policy while the proxy runs, when its files change or on SIGHUP.

The files are polled (a stat each, every POLL_SECONDS) rather than watched, so
it works the same on every filesystem, network shares included. A new engine
is built in a worker thread, so loading lists never stalls the event loop, and
swapped in on the loop in one assignment. Any error keeps the running policy
and is logged with the file, line and reason.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

from aupguard.config.policy import PolicyError
from aupguard.core.engine import Engine
from aupguard.lists.model import ListError
from aupguard.runtime import load_engine

log = logging.getLogger(__name__)

POLL_SECONDS = 2.0

Stamp = tuple[tuple[int, int] | None, ...]


def stamp(files: tuple[Path, ...]) -> Stamp:
    """What changes when any of the files is edited, replaced or removed."""
    out = []
    for path in files:
        try:
            info = os.stat(path)
        except OSError:
            out.append(None)
        else:
            out.append((info.st_mtime_ns, info.st_size))
    return tuple(out)


class PolicyReloader:
    """Keeps `get()` up to date with the policy file at `path()`; `set()` installs a new engine."""

    def __init__(
        self,
        path: Callable[[], Path],
        index_path: Callable[[], Path | None],
        get: Callable[[], Engine | None],
        set: Callable[[Engine], None],
    ):
        self._path, self._index_path, self._get, self._set = path, index_path, get, set
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self._stamp: Stamp | None = None
        self._failed: Stamp | None = None  # a broken version already reported: not reported again every poll

    def start(self) -> None:
        """Call on the running event loop (mitmproxy's `running` hook)."""
        engine = self._get()
        self._stamp = stamp(engine.policy.files) if engine else None
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._poll())
        try:
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload("SIGHUP")))
        except (NotImplementedError, AttributeError, RuntimeError):  # no SIGHUP (Windows) or not the main thread
            log.info("aupguard: SIGHUP reload unavailable here; the policy file is still watched")

    def stop(self) -> None:
        if self._task:
            self._task.cancel()
            self._task = None
        try:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        except (NotImplementedError, AttributeError, RuntimeError, ValueError):
            pass

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            engine = self._get()
            files = engine.policy.files if engine else (self._path(),)
            current = await asyncio.to_thread(stamp, files)
            if current != self._stamp and current != self._failed:
                await self.reload("the policy changed")

    async def reload(self, why: str) -> bool:
        """Load the policy again; on any error keep the running one. True if the new one is in force."""
        async with self._lock:
            previous = self._get()
            path = self._path()
            files = previous.policy.files if previous else (path,)
            # Stamped before reading, so an edit made while loading is seen by the next poll.
            before = await asyncio.to_thread(stamp, files)
            try:
                engine = await asyncio.to_thread(
                    load_engine, path, index_path=self._index_path(), exemptions_path=None, previous=previous
                )
            except (PolicyError, ListError, OSError) as exc:
                self._failed = before
                log.error("aupguard: %s, but it cannot be used; the previous policy stays in force: %s", why, exc)
                return False
            except Exception:
                self._failed = before
                log.exception("aupguard: reloading %s failed; the previous policy stays in force", path)
                return False
            self._set(engine)
            same_files = engine.policy.files == files
            self._stamp = before if same_files else await asyncio.to_thread(stamp, engine.policy.files)
            self._failed = None
            log.info("aupguard: %s: policy %s reloaded (%d groups)", why, path, len(engine.policy.groups))
            return True
