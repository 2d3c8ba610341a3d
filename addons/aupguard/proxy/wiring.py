"""The lifecycle addon: aupguard's options, the engine loaded at start, the incident writer, the watcher.

Options are declared in `load` and acted on in `configure`, as mitmproxy's own addons do. It owns
the runtime snapshot (proxy.current) and the shared `Blocking` the deciding addons record through,
and makes them (`addons()`): the chain addons/webfilter.py gives mitmproxy, before the feedback app.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mitmproxy import ctx, exceptions

from aupguard.base import paths
from aupguard.config.policy import PolicyError
from aupguard.core.engine import Engine
from aupguard.lists.model import ListError
from aupguard.proxy import feedback, lean, mitm_internals
from aupguard.proxy.blocking import Blocking
from aupguard.proxy.current import Current
from aupguard.proxy.downloads import Downloads
from aupguard.proxy.http_requests import Requests
from aupguard.proxy.responses import Responses
from aupguard.proxy.tunnels import Tunnels
from aupguard.proxy.watch import Watcher
from aupguard.runtime import load_engine
from aupguard.store.incidents import IncidentWriter

log = logging.getLogger(__name__)


class Wiring:
    name = "aupguard-wiring"  # its name in mitmproxy's addon chain

    def __init__(self, current: Current, blocking: Blocking) -> None:
        self.current, self.blocking = current, blocking
        # The policy reloads on change or SIGHUP while the proxy runs, keeping the old one on any error;
        # every worker follows `aupguard lists compile` onto the new index file, and the exemption store.
        self.watcher = Watcher(current, lambda: Path(ctx.options.aupguard_policy), self._index_path)
        self._pruned_options: frozenset[str] = frozenset()  # options of idle mitmproxy addons removed at start
        current.on_install(self._follow_repeat_rule)

    def load(self, loader) -> None:
        loader.add_option(
            "aupguard_policy", str, str(paths.DEFAULT_POLICY), "aupguard: the policy file (YAML) to enforce."
        )
        loader.add_option(
            "aupguard_db", str, str(paths.DEFAULT_DB), "aupguard: the SQLite file incidents are recorded in."
        )
        loader.add_option(
            "aupguard_index",
            str,
            str(paths.DEFAULT_INDEX),
            "aupguard: the compiled list index (compiled when missing or out of date; '' reads the lists as text).",
        )
        loader.add_option(
            "aupguard_exemptions",
            str,
            "",
            "aupguard: the exemption store `aupguard exempt` writes [default: exemptions.db beside aupguard_db].",
        )
        loader.add_option(
            "aupguard_feedback_host",
            str,
            feedback.DEFAULT_HOST,
            "aupguard: the host name the proxy itself answers for the block page's report forms.",
        )
        loader.add_option(
            "aupguard_header_timeout",
            int,
            int(mitm_internals.HEAD_DEADLINE.seconds),
            "aupguard: seconds a client has to send a whole HTTP/1 request head once it has begun (then 408).",
        )
        loader.add_option(
            "aupguard_idle_timeout",
            int,
            mitm_internals.IDLE_TIMEOUT_DEFAULT,
            "aupguard: seconds a connection may stay silent before it is closed (new connections).",
        )
        mitm_internals.install_head_fixes()

    def configure(self, updated: set[str]) -> None:
        blocking = self.blocking
        if "aupguard_header_timeout" in updated:
            mitm_internals.HEAD_DEADLINE.seconds = max(1, ctx.options.aupguard_header_timeout)
        if "aupguard_idle_timeout" in updated:
            mitm_internals.set_idle_timeout(max(1, ctx.options.aupguard_idle_timeout))
        if updated & self._pruned_options:  # their addons were left out at start (lean.prune_idle)
            changed = ", ".join(sorted(updated & self._pruned_options))
            log.warning("aupguard: %s changed while running: restart the proxy for it to apply", changed)
        if "termlog_verbosity" in updated:
            _quiet_connections(ctx.options.termlog_verbosity)
        if "aupguard_policy" in updated:
            try:
                loaded = load_engine(
                    Path(ctx.options.aupguard_policy), index_path=self._index_path(), exemptions_path=None
                )
            except (PolicyError, ListError, OSError) as exc:
                raise exceptions.OptionsError(f"aupguard: {exc}") from exc
            self.current.install_loaded(loaded, None)
            policy = loaded.policy
            log.info(
                "aupguard: policy %s loaded: %d groups, %d list sources",
                policy.path,
                len(policy.groups),
                len(loaded.classifier.lookup.sources),
            )
        if "aupguard_db" in updated:
            if blocking.writer:
                blocking.writer.close()
            blocking.writer = IncidentWriter(Path(ctx.options.aupguard_db), loop=ctx.master.event_loop)
            blocking.writer.start()
            blocking.feedback_key = feedback.load_key(Path(ctx.options.aupguard_db).parent / feedback.KEY_FILE)
            if self.current.engine is not None:
                self._follow_repeat_rule(self.current.engine)
        if {"aupguard_db", "aupguard_exemptions"} & updated:
            store = ctx.options.aupguard_exemptions or Path(ctx.options.aupguard_db).parent / "exemptions.db"
            self.watcher.watch_exemptions(Path(store))
        if {"aupguard_db", "aupguard_feedback_host"} & updated:
            blocking.feedback_host = ctx.options.aupguard_feedback_host
            blocking.report_url = f"http://{blocking.feedback_host}{feedback.PATH}" if blocking.feedback_key else None

    def running(self) -> None:
        self.watcher.start()
        if mitm_internals.fenced("leaving idle addons out"):  # relies on what each default addon's options do
            self._pruned_options = lean.options_of(lean.prune_idle(ctx.master))
        mitm_internals.HandlerTable(ctx.master.addons).install()
        lean.freeze_startup_objects()

    def done(self) -> None:
        self.watcher.close()
        if self.blocking.writer:
            self.blocking.writer.close()
            self.blocking.writer = None

    def _follow_repeat_rule(self, engine: Engine) -> None:
        """The incident writer applies the policy's repeat rule as it records (a reload may change it)."""
        if self.blocking.writer:
            self.blocking.writer.repeat_rule = engine.repeat_rule

    @staticmethod
    def _index_path() -> Path | None:
        return Path(ctx.options.aupguard_index) if ctx.options.aupguard_index else None


def addons() -> list:
    """aupguard's addons in chain order, sharing one runtime snapshot: the wiring first (it declares the
    options and loads the engine), then the deciding addons, each on its own hooks."""
    current = Current()
    blocking = Blocking(current)
    return [
        Wiring(current, blocking),
        Tunnels(current, blocking),
        Requests(current, blocking),
        Responses(current),
        Downloads(current, blocking),
    ]


def _quiet_connections(verbosity: str) -> None:
    """mitmproxy logs "client connect", "server connect" and "client disconnect" at INFO: three lines per request
    on a school gateway's terminal, around aupguard's one line per decision. They show at termlog_verbosity=debug."""
    logging.getLogger("mitmproxy.proxy.server").setLevel(logging.NOTSET if verbosity == "debug" else logging.WARNING)
