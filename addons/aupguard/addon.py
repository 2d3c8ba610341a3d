"""Act: the mitmproxy addon. Thin glue between mitmproxy's hooks and the Engine.

Options are declared in `load` and acted on in `configure`, as mitmproxy's own
addons do. Every hook that decides a request is wrapped so that an internal
error blocks the request for groups that fail closed and never stops the proxy.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

from mitmproxy import ctx, exceptions, http, tls

from . import blockpage, paths
from .engine import Engine, Verdict
from .identify import Identity
from .incidents import IncidentWriter
from .lists import ListError
from .policy import PolicyError
from .urlnorm import from_parts, normalize_host

log = logging.getLogger(__name__)


class AupGuard:
    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.writer: IncidentWriter | None = None

    def load(self, loader) -> None:
        loader.add_option(
            "aupguard_policy", str, str(paths.DEFAULT_POLICY), "aupguard: the policy file (YAML) to enforce."
        )
        loader.add_option(
            "aupguard_db", str, str(paths.DEFAULT_DB), "aupguard: the SQLite file incidents are recorded in."
        )

    def configure(self, updated: set[str]) -> None:
        if "aupguard_policy" in updated:
            try:
                self.engine = Engine.from_policy_file(Path(ctx.options.aupguard_policy))
            except (PolicyError, ListError, OSError) as exc:
                raise exceptions.OptionsError(f"aupguard: {exc}") from exc
            policy = self.engine.policy
            log.info(
                "aupguard: policy %s loaded: %d groups, %d list sources",
                policy.path,
                len(policy.groups),
                len(self.engine.classifier.lookup.sources),
            )
        if "aupguard_db" in updated:
            if self.writer:
                self.writer.close()
            self.writer = IncidentWriter(Path(ctx.options.aupguard_db))
            self.writer.start()

    def done(self) -> None:
        if self.writer:
            self.writer.close()
            self.writer = None

    # -- hooks -----------------------------------------------------------------------------

    def http_connect(self, flow: http.HTTPFlow) -> None:
        """A CONNECT is refused here only when its traffic will not be decrypted (so no page can be shown)."""
        if flow.response or self.engine is None:
            return
        identity = self._identity(flow)
        try:
            verdict = self.engine.check_host(flow.request.host, flow.request.port, identity)
            if verdict.blocked and not self._will_decrypt(verdict):
                self._refuse(flow, verdict, "refuse")
        except Exception:
            log.exception("aupguard: CONNECT %s failed", flow.request.host)
            self._refuse(flow, self.engine.failed(identity, None, "CONNECT handling failed"), "refuse")

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        """Decide per TLS connection whether to decrypt: never for no_decrypt hosts, unless the SNI is blocked."""
        if self.engine is None:
            return
        server = data.context.server.address
        host = data.client_hello.sni or (server[0] if server else None)
        if not host:
            return  # no name to go by: decrypt, and the request hooks decide
        client_ip = data.context.client.peername[0]
        identity = self.engine.identify(None, client_ip)
        verdict = self.engine.check_host(host, server[1] if server else 443, identity)
        # A blocked name is decrypted whatever the settings, so that the request is blocked and
        # recorded; a client without the school's CA then simply fails to connect.
        if not verdict.blocked and not self._will_decrypt(verdict):
            data.ignore_connection = True

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response or self.engine is None:
            return
        identity = self._identity(flow)
        try:
            request = flow.request
            url = from_parts(request.scheme, request.pretty_host, request.port, request.path)
            verdict = self.engine.check(url, identity)
            if not verdict.blocked and normalize_host(request.host) != url.host:
                # The Host header names another site than the connection (domain fronting): both must pass.
                verdict = self.engine.check_host(request.host, request.port, identity)
            if verdict.blocked:
                self._block(flow, verdict)
        except Exception:
            log.exception("aupguard: deciding %s failed", flow.request.pretty_url[:200])
            self._block(flow, self.engine.failed(identity, None, "request handling failed"))

    # -- helpers ---------------------------------------------------------------------------

    def _identity(self, flow: http.HTTPFlow) -> Identity:
        auth = flow.metadata.get("proxyauth")
        user = auth[0] if auth else None  # auth[1] is the password: never kept
        return self.engine.identify(user, flow.client_conn.peername[0])

    def _will_decrypt(self, verdict: Verdict) -> bool:
        policy = self.engine.policy
        if not policy.tls_intercept:
            return False
        if verdict.url and policy.no_decrypt_hosts.intersection(verdict.url.domain_candidates()):
            return False
        return not policy.no_decrypt_categories.intersection(verdict.categories)

    def _block(self, flow: http.HTTPFlow, verdict: Verdict) -> None:
        if not verdict.blocked:  # a failure in a group that fails open
            return
        incident = self._record(flow, verdict, "block")
        page = self._page(flow, verdict, incident.ref, incident.local_date, incident.local_time)
        flow.response = http.Response.make(
            page.status,
            page.body,
            {"Content-Type": page.content_type, "Cache-Control": "no-store", "X-Aupguard-Incident": incident.ref},
        )

    def _refuse(self, flow: http.HTTPFlow, verdict: Verdict, action: str) -> None:
        if not verdict.blocked:
            return
        incident = self._record(flow, verdict, action)
        page = self._page(flow, verdict, incident.ref, incident.local_date, incident.local_time, text_only=True)
        flow.response = http.Response.make(
            page.status, page.body, {"Content-Type": page.content_type, "X-Aupguard-Incident": incident.ref}
        )

    def _record(self, flow: http.HTTPFlow, verdict: Verdict, action: str):
        incident = self.engine.incident(
            verdict,
            method=flow.request.method,
            user_agent=flow.request.headers.get("user-agent"),
            action=action,
            when=datetime.fromtimestamp(flow.request.timestamp_start, timezone.utc),
        )
        if self.writer:
            self.writer.submit(incident)
        return incident

    def _page(self, flow, verdict: Verdict, ref: str, date: str, time: str, text_only: bool = False):
        policy = self.engine.policy
        category = policy.categories[verdict.decision.category]
        return blockpage.render(
            # A refused CONNECT is read by the browser's proxy code, not shown as a page.
            accept="text/plain" if text_only else flow.request.headers.get("accept"),
            school_name=policy.school_name,
            category_label=category.label,
            reason=category.reason,
            url=verdict.url.url if verdict.url else flow.request.pretty_url,
            date=date,
            time=time,
            ref=ref,
            it_contact=policy.it_contact,
            accidental=policy.accidental_text,
        )
