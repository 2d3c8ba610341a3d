"""The one runtime snapshot every aupguard addon reads: the Engine in force (policy, classifier, exemptions,
and the repeat rule derived from the policy), immutable, replaced whole.

A policy reload, a recompiled index and an exemption change each come from their own thread
(proxy.watch) or from `configure` on the event loop. Each replaces the snapshot through `change`,
which makes the new Engine from the one in force under a lock and installs it in one assignment:
a request sees the old snapshot or the new, never a mix, and two replacers at once cannot lose each
other's change (an exemption change arriving while a reload builds its engine is carried into it).
Readers take no lock: they read `engine` once per hook.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from aupguard.core.engine import Engine


class Current:
    def __init__(self) -> None:
        self.engine: Engine | None = None
        self._lock = threading.Lock()
        self._installed: list[Callable[[Engine], None]] = []

    def on_install(self, listener: Callable[[Engine], None]) -> None:
        """Call `listener(engine)` after every installation (under the lock, so in installation order)."""
        self._installed.append(listener)

    def change(self, make: Callable[[Engine | None], Engine | None]) -> Engine | None:
        """Install `make(engine in force)`; `make` returning the engine in force (or None) installs nothing.

        `make` runs under the lock: it must only combine engines (Engine.replace), never load files.
        """
        with self._lock:
            engine = make(self.engine)
            if engine is not None and engine is not self.engine:
                self.engine = engine
                for listener in self._installed:
                    listener(engine)
            return self.engine

    def install_loaded(self, loaded: Engine, built_from: Engine | None) -> Engine:
        """Install an engine loaded from the policy files (at start or by a reload from `built_from`).

        The exemptions in force carry over; so does the classifier in force when `loaded` reuses the one
        of `built_from` (same lists), since a recompiled index may have replaced it while `loaded` was built.
        """

        def combine(current: Engine | None) -> Engine:
            if current is None:
                return loaded
            reused = built_from is not None and loaded.classifier is built_from.classifier
            return loaded.replace(classifier=current.classifier if reused else None, exemptions=current.exemptions)

        installed = self.change(combine)
        assert installed is not None
        return installed
