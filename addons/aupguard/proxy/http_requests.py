"""The HTTP request addon: every request decided on its headers, blocked with the block page or passed on.

The connection's host (the absolute URL's, or the tunnel's), the Host header's and the TLS SNI are
each checked with the path (domain fronting). A destination that cannot be read as a host is bad
input, refused with 400 for every group. An internal error follows the group's failure rule:
blocked for groups that fail closed, the mandatory tier looked up in any case.
"""

from __future__ import annotations

import logging
import time

from mitmproxy import http

from aupguard.core.engine import MALFORMED, MAX_ASKED_SHOWN, Engine, Verdict
from aupguard.proxy.blocking import IDENTITY, Blocking, identity_of, request_time
from aupguard.proxy.current import Current

log = logging.getLogger(__name__)


class RateLimitedLog:
    """At most one line per kind of event every `interval` seconds, saying how many were left out before it."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[str, float] = {}  # kind -> when its last line was written (a few fixed kinds)
        self._suppressed: dict[str, int] = {}

    def warning(self, kind: str, message: str, *args, exc_info: bool = False) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -self.interval) < self.interval:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        self._last[kind] = now
        left_out = self._suppressed.pop(kind, 0)
        if left_out:
            message += f" ({left_out} more like it in the last {self.interval:g} s not logged)"
        self.logger.warning(message, *args, exc_info=exc_info)


class Requests:
    name = "aupguard-requests"  # its name in mitmproxy's addon chain

    def __init__(self, current: Current, blocking: Blocking) -> None:
        self.current, self.blocking = current, blocking
        self._errors = RateLimitedLog(log)  # a flood of bad requests must not become a flood of log

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        engine = self.current.engine
        if flow.response or engine is None:
            return
        host = flow.request.pretty_host  # parses the Host header: once per request
        if self.blocking.is_feedback(flow, host):
            return
        identity = identity_of(engine, flow)
        # Kept for responseheaders (plain values: mitmproxy may save flow metadata to a file).
        flow.metadata[IDENTITY] = (identity.user, identity.client_ip, identity.group, identity.why)
        when = request_time(flow)
        request = flow.request
        # The connection's host (the absolute URL's, or the tunnel's), the Host header's and the
        # TLS SNI: a request naming two sites is decided on each, with its path (domain fronting).
        names = (request.host, host, flow.client_conn.sni) if flow.client_conn.sni else (request.host, host)
        try:
            verdict = engine.check_request(
                request.scheme,
                names,
                request.port,
                request.path,
                identity,
                method=request.method,
                content_type=request.headers.get("content-type"),
                accept=request.headers.get("accept"),
                when=when,
            )
            if verdict.technique == MALFORMED:
                self._refuse_malformed(engine, flow, verdict, names)
            elif verdict.blocked:
                self.blocking.block(engine, flow, verdict, when=when)
        except Exception:
            self._errors.warning("request", "aupguard: deciding %s failed", request.pretty_url[:200], exc_info=True)
            failed = engine.failed_request(
                identity, request.scheme, names, request.port, request.path, "request handling failed"
            )
            self.blocking.block(engine, flow, failed)

    def _refuse_malformed(self, engine: Engine, flow: http.HTTPFlow, verdict: Verdict, names: tuple[str, ...]) -> None:
        """Bad input, refused with 400 for every group and recorded with what could be read of it."""
        self._errors.warning(
            "malformed",
            "aupguard: refused a request from %s naming %s",
            verdict.identity.client_ip,
            ", ".join(repr(name[:MAX_ASKED_SHOWN]) for name in dict.fromkeys(names)),
        )
        self.blocking.refuse(engine, flow, verdict, "refuse", status=400)
