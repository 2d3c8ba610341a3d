"""What every deciding addon does with a verdict: record the incident, and answer with the block page.

`Blocking` holds what the wiring addon configured (the incident writer, the feedback key and the
report form's address) and the runtime snapshot (proxy.current); the CONNECT, request and
download addons share one. Whatever fails on the way to a block page, the request stays blocked.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime

from mitmproxy import ctx, http

from aupguard.core.downloads import why_blocked
from aupguard.core.engine import Engine, Verdict
from aupguard.core.identify import Identity
from aupguard.core.incident import Incident
from aupguard.proxy import blockpage, feedback
from aupguard.proxy.current import Current
from aupguard.proxy.mitm_internals import page_response
from aupguard.store.incidents import IncidentWriter

log = logging.getLogger(__name__)

# The longest a block page waits for its incident to be committed (normally milliseconds): a disk
# slower than this, or a database lock held this long by another worker or `aupguard purge`, must
# not hang a pupil's browser. The incident is then written later; only a kill in between loses it.
HOLD_S = 2.0

BLOCKED = "aupguard_blocked"  # flow.metadata key: the response is aupguard's block page
PAGE = "aupguard_page"  # flow.metadata key: the page body put in place of a server's streamed one
IDENTITY = "aupguard_identity"  # flow.metadata key: (user, client_ip, group, why) of the request
DOWNLOADS_SOURCE = "aupguard/downloads"  # Match.source of a download refused by type or size


class Blocking:
    def __init__(self, current: Current) -> None:
        self.current = current
        self.writer: IncidentWriter | None = None
        self.feedback_key: bytes | None = None  # signs the block page's "report a mistake" forms
        # Read from the options in configure, not per request (an option lookup costs more than the check).
        self.feedback_host = feedback.DEFAULT_HOST  # requests to it are the block page's forms
        self.report_url: str | None = None  # where the forms post (feedback.FeedbackApp), when offered

    def is_feedback(self, flow: http.HTTPFlow, host: str | None = None) -> bool:
        """Requests to the reserved host are the block page's own forms: feedback.FeedbackApp answers them."""
        return (host or flow.request.pretty_host) == self.feedback_host

    def block(
        self,
        engine: Engine,
        flow: http.HTTPFlow,
        verdict: Verdict,
        replacing: bool = False,
        when: datetime | None = None,
    ) -> None:
        """Answer `flow` with the block page. Whatever fails on the way, the request stays blocked.

        `replacing`: the server's response headers are in and its body is still to come;
        it is read and dropped, never sent, while the client gets the page.
        """
        if not verdict.blocked:  # a failure in a group that fails open
            return
        page, ref = self._recorded_page(engine, flow, verdict, "block", when, text_only=False)
        flow.response = self._response(page, self.report_url, True, ref)
        flow.metadata[BLOCKED] = True
        if replacing:
            flow.metadata[PAGE] = page.body
            flow.response.stream = Replacement(page.body)

    def refuse(
        self, engine: Engine, flow: http.HTTPFlow, verdict: Verdict, action: str, status: int | None = None
    ) -> None:
        """Answer with the plain-text refusal (a CONNECT, a malformed request), `status` if given."""
        if not verdict.blocked:
            return
        page, ref = self._recorded_page(engine, flow, verdict, action, None, text_only=True)
        if status is not None:
            page = dataclasses.replace(page, status=status)
        flow.response = self._response(page, None, False, ref)
        flow.metadata[BLOCKED] = True

    def _recorded_page(
        self,
        engine: Engine,
        flow: http.HTTPFlow,
        verdict: Verdict,
        action: str,
        when: datetime | None,
        *,
        text_only: bool,
    ) -> tuple[blockpage.BlockPage, str | None]:
        """The incident recorded and its page; whatever fails on the way, the plain page (the request stays refused)."""
        try:
            incident = self.record(engine, flow, verdict, action, when, page_for=flow)
            page = self.page(
                engine, flow, verdict, incident.ref, incident.local_date, incident.local_time, text_only=text_only
            )
        except Exception:
            log.exception("aupguard: the page for %s failed; sending the plain one", flow.request.pretty_url[:200])
            return blockpage.MINIMAL, None
        return page, incident.ref

    def record(
        self,
        engine: Engine,
        flow: http.HTTPFlow,
        verdict: Verdict,
        action: str,
        when: datetime | None = None,
        page_for: http.HTTPFlow | None = None,
    ) -> Incident:
        return self.submit(
            engine,
            verdict,
            method=flow.request.method,
            user_agent=flow.request.headers.get("user-agent"),
            action=action,
            when=when or request_time(flow),
            page_for=page_for,
        )

    def submit(
        self,
        engine: Engine,
        verdict: Verdict,
        *,
        method: str,
        user_agent: str | None,
        action: str,
        when: datetime,
        page_for: http.HTTPFlow | None = None,
    ) -> Incident:
        """Record the incident. `page_for`: the flow whose response will show its reference, held until
        the incident is committed (issue 9.6), or the database found unwritable, or HOLD_S at most."""
        incident = engine.incident(verdict, method=method, user_agent=user_agent, action=action, when=when)
        try:
            if self.writer and self.writer.submit(incident, page_for.resume if page_for else None) and page_for:
                page_for.intercept()  # mitmproxy sends nothing of the flow until resume()
                ctx.master.event_loop.call_later(HOLD_S, page_for.resume)  # a no-op once resumed
        except Exception:  # a stopped writer loses the record, not the block
            log.exception("aupguard: incident %s could not be queued", incident.ref)
        return incident

    def page(
        self,
        engine: Engine,
        flow: http.HTTPFlow,
        verdict: Verdict,
        ref: str,
        date: str,
        time: str,
        text_only: bool = False,
    ) -> blockpage.BlockPage:
        policy = engine.policy
        assert verdict.decision.category is not None, "a blocking decision names its category"
        category = policy.categories[verdict.decision.category]
        reason = category.reason
        match = verdict.decision.blocked_by[0] if verdict.decision.blocked_by else None
        if match is not None and match.source == DOWNLOADS_SOURCE:  # say whether the type or the size did it
            reason = f"{reason} {why_blocked(match.kind, match.entry)}"
        return blockpage.render(
            # A refused CONNECT is read by the browser's proxy code, not shown as a page.
            accept="text/plain" if text_only else flow.request.headers.get("accept"),
            school_name=policy.school_name,
            category_label=category.label,
            reason=reason,
            url=verdict.url.url if verdict.url else flow.request.pretty_url,
            date=date,
            time=time,
            ref=ref,
            it_contact=policy.it_contact,
            accidental=policy.accidental_text,
            circumvention_note=policy.circumvention_text if verdict.technique else None,
            report_url=self.report_url,
            report_token=feedback.token(self.feedback_key, ref) if self.feedback_key else None,
        )

    @staticmethod
    def _response(page: blockpage.BlockPage, report_url: str | None, no_store: bool, ref: str | None) -> http.Response:
        return page_response(page, page_fields(page, report_url, no_store, ref))


def page_fields(
    page: blockpage.BlockPage, report_url: str | None, no_store: bool, ref: str | None
) -> tuple[tuple[bytes, bytes], ...]:
    """The block page's header fields, the incident reference and the length included."""
    fields = blockpage.header_fields(page.content_type, report_url, no_store)
    if ref is not None:
        fields += ((b"X-Aupguard-Incident", ref.encode("utf-8", "surrogateescape")),)
    return fields + ((b"content-length", str(len(page.body)).encode()),)


class Replacement:
    """A `response.stream` callable sending `body` in place of the server's, whose bytes are dropped."""

    def __init__(self, body: bytes):
        self.body = body

    def __call__(self, chunk: bytes) -> bytes | list[bytes]:
        body, self.body = self.body, b""
        return body or []  # not b"": an empty chunk would end a chunked body


def identity_of(engine: Engine, flow: http.HTTPFlow) -> Identity:
    """Who sent the request: the proxy login's user name (never its password) and the client address."""
    auth = flow.metadata.get("proxyauth")
    user = auth[0] if auth else None  # auth[1] is the password: never kept
    return engine.identify(user, flow.client_conn.peername[0])


def request_time(flow: http.HTTPFlow) -> datetime:
    """When the request arrived: what the timetable and the incident go by."""
    return datetime.fromtimestamp(flow.request.timestamp_start, UTC)
