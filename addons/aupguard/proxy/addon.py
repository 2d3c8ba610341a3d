"""Act: the mitmproxy addon. Thin glue between mitmproxy's hooks and the Engine.

Options are declared in `load` and acted on in `configure`, as mitmproxy's own
addons do. Every hook that decides a request is wrapped so that an internal
error blocks the request for groups that fail closed and never stops the proxy.

Tunnels: a CONNECT is checked for its port and target in `http_connect`; what
it then carries is judged in `next_layer`, by the layer mitmproxy's own NextLayer
addon chooses from the first bytes, checked against `circumvention.first_line`:
anything that is neither TLS nor an HTTP request line (SSH, OpenVPN, raw TCP, a
line of text) is cut, and bytes that could still become a request line are held
(`FirstLineWait`) until the line ends or FIRST_LINE_WAIT runs out. TLS that names
no server is refused in `tls_clienthello` when the group's policy says so.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import weakref
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from mitmproxy import connection, ctx, exceptions, http, tls
from mitmproxy.net.http import status_codes
from mitmproxy.proxy import commands, events, layer
from mitmproxy.proxy import server as proxy_server
from mitmproxy.proxy.layers import HttpLayer, ServerTLSLayer, TCPLayer
from OpenSSL import SSL

from aupguard.base import paths
from aupguard.base.urlnorm import from_parts
from aupguard.base.vocabulary import DOWNLOAD
from aupguard.config.policy import PolicyError
from aupguard.core import downloads
from aupguard.core.circumvention.tunnel import FIRST_LINE_WAIT, FirstLine, first_line
from aupguard.core.classify import Match
from aupguard.core.decide import Decision
from aupguard.core.engine import MALFORMED, MAX_ASKED_SHOWN, Engine, Verdict
from aupguard.core.exemptions import ExemptionSet
from aupguard.core.identify import Identity
from aupguard.lists.model import ListError
from aupguard.proxy import blockpage, feedback, http1, lean
from aupguard.proxy.exemptionwatch import ExemptionWatcher
from aupguard.proxy.indexwatch import IndexWatcher
from aupguard.proxy.reload import PolicyReloader
from aupguard.runtime import load_engine
from aupguard.store.incidents import IncidentWriter

log = logging.getLogger(__name__)

# The longest a block page waits for its incident to be committed (normally milliseconds): a disk
# slower than this, or a database lock held this long by another worker or `aupguard purge`, must
# not hang a pupil's browser. The incident is then written later; only a kill in between loses it.
HOLD_S = 2.0


class CutTunnel(layer.Layer):
    """Takes the place of the layer mitmproxy chose for a tunnel, and closes it: nothing is relayed."""

    def _handle_event(self, event):
        yield commands.CloseConnection(self.context.client)
        if self.context.server.connected:
            yield commands.CloseConnection(self.context.server)
        self._handle_event = self._closed

    def _closed(self, event):
        yield from ()


class FirstLineWait(layer.Layer):
    """Holds a tunnel whose first bytes could still become an HTTP request line, FIRST_LINE_WAIT seconds at most.

    mitmproxy chooses a tunnel's protocol only when bytes arrive, so a client that sends a few
    and falls silent would keep it undecided for as long as it likes. Once the first line is
    whole (or cannot be a request line), a NextLayer of this layer's own asks the next_layer
    hook again, given the client's bytes as one chunk so that it judges the whole line; if
    time runs out first, `on_timeout` records the attempt and the tunnel is cut.
    """

    def __init__(self, context, on_timeout: Callable[[], None]) -> None:
        super().__init__(context)
        context.layers.remove(self)  # it holds a protocol layer's place without being one, as NextLayer does
        self.on_timeout = on_timeout
        self.child: layer.Layer | None = None
        self.events: list[events.Event] = []  # held until the child is chosen
        self._timer = commands.RequestWakeup(FIRST_LINE_WAIT)

    def _handle_event(self, event):
        if isinstance(event, events.Wakeup) and event.command is self._timer:
            if self.child is None:
                self.on_timeout()
                yield from self._hand_over(CutTunnel(self.context), event)
        elif self.child is not None:
            yield from self.child.handle_event(event)
        elif isinstance(event, events.ConnectionClosed) and event.connection == self.context.client:
            yield from self._hand_over(CutTunnel(self.context), event)  # the client gave up: nothing to record
        else:
            if not self.events:  # the first event: the time starts now
                yield self._timer
            self._hold(event)
            if self._line_decided():
                yield from self._hand_over(layer.NextLayer(self.context), *self.events)

    def _hold(self, event: events.Event) -> None:
        """Keep an event for the child; bytes following bytes from the same side become one chunk."""
        last = self.events[-1] if self.events else None
        if (
            isinstance(event, events.DataReceived)
            and isinstance(last, events.DataReceived)
            and last.connection == event.connection
        ):
            self.events[-1] = events.DataReceived(event.connection, last.data + event.data)
            return
        self.events.append(event)

    def _line_decided(self) -> bool:
        """Whether the client's first line is whole or cannot be a request line (or the server spoke first)."""
        received = [event for event in self.events if isinstance(event, events.DataReceived)]
        if any(event.connection != self.context.client for event in received):
            return True
        return first_line(received[0].data if received else b"") is not FirstLine.PARTIAL

    def _hand_over(self, child: layer.Layer, *held: events.Event):
        self.child, self.events = child, []
        for event in held:
            yield from child.handle_event(event)


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


class AupGuard:
    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.writer: IncidentWriter | None = None
        # The active exemptions and classroom overrides, swapped whole by the watcher's thread.
        self.exemptions = ExemptionSet()
        self.watcher: ExemptionWatcher | None = None
        self.feedback_key: bytes | None = None  # signs the block page's "report a mistake" forms
        # Read from the options in configure, not per request (an option lookup costs more than the check).
        self.feedback_host = feedback.DEFAULT_HOST  # requests to it are the block page's forms
        self.report_url: str | None = None  # where the forms post (feedback.FeedbackApp), when offered
        # The policy reloads on change or SIGHUP while the proxy runs, keeping the old one on any error.
        # Every worker follows `aupguard lists compile` onto the new index file.
        self.index_watcher = IndexWatcher(lambda: self.engine, self._install)
        self.reloader = PolicyReloader(
            lambda: Path(ctx.options.aupguard_policy), lambda: self._index_path(), lambda: self.engine, self._install
        )
        # Who opened each CONNECT tunnel, for the checks on what it carries (mitmproxy's proxyauth
        # keeps only the password-bearing pair); forgotten with the connection.
        self._tunnel_users: weakref.WeakKeyDictionary[connection.Client, str] = weakref.WeakKeyDictionary()
        self._refused_tls: weakref.WeakSet[connection.Client] = weakref.WeakSet()  # TLS without SNI, refused
        self._held: weakref.WeakSet[connection.Client] = weakref.WeakSet()  # tunnels held once for their first line
        self._pruned_options: frozenset[str] = frozenset()  # options of idle mitmproxy addons removed at start
        self._errors = RateLimitedLog(log)  # a flood of bad requests must not become a flood of log

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
            int(http1.HEAD_DEADLINE.seconds),
            "aupguard: seconds a client has to send a whole HTTP/1 request head once it has begun (then 408).",
        )
        loader.add_option(
            "aupguard_idle_timeout",
            int,
            proxy_server.TCP_TIMEOUT,
            "aupguard: seconds a connection may stay silent before it is closed (new connections).",
        )

    def configure(self, updated: set[str]) -> None:
        if "aupguard_header_timeout" in updated:
            http1.HEAD_DEADLINE.seconds = max(1, ctx.options.aupguard_header_timeout)
        if "aupguard_idle_timeout" in updated:
            proxy_server.TCP_TIMEOUT = max(1, ctx.options.aupguard_idle_timeout)  # read per new connection
        if updated & self._pruned_options:  # their addons were left out at start (lean.prune_idle)
            changed = ", ".join(sorted(updated & self._pruned_options))
            log.warning("aupguard: %s changed while running: restart the proxy for it to apply", changed)
        if "termlog_verbosity" in updated:
            _quiet_connections(ctx.options.termlog_verbosity)
        if "aupguard_policy" in updated:
            try:
                self.engine = load_engine(
                    Path(ctx.options.aupguard_policy), index_path=self._index_path(), exemptions_path=None
                )
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
            self.writer = IncidentWriter(Path(ctx.options.aupguard_db), loop=ctx.master.event_loop)
            self.writer.start()
            self.feedback_key = feedback.load_key(Path(ctx.options.aupguard_db).parent / feedback.KEY_FILE)
        if {"aupguard_db", "aupguard_exemptions"} & updated:
            if self.watcher:
                self.watcher.close()
            store = ctx.options.aupguard_exemptions or Path(ctx.options.aupguard_db).parent / "exemptions.db"
            self.watcher = ExemptionWatcher(Path(store), self._set_exemptions)
            self.watcher.start()
        if {"aupguard_db", "aupguard_feedback_host"} & updated:
            self.feedback_host = ctx.options.aupguard_feedback_host
            self.report_url = f"http://{self.feedback_host}{feedback.PATH}" if self.feedback_key else None
        if self.engine is not None:
            self._install(self.engine)

    def _set_exemptions(self, exemptions: ExemptionSet) -> None:
        """Called from the watcher's thread: one reference swap each, so requests never see half a change."""
        self.exemptions = exemptions
        engine = self.engine
        if engine is not None:
            self.engine = engine.replace(exemptions=exemptions)

    def running(self) -> None:
        self.reloader.start()
        self.index_watcher.start()
        self._pruned_options = lean.options_of(lean.prune_idle(ctx.master))
        lean.HandlerTable(ctx.master.addons).install()
        lean.freeze_startup_objects()

    def _install(self, engine: Engine) -> None:
        if self.writer:
            self.writer.repeat_rule = engine.repeat_rule
        self.engine = engine.replace(exemptions=self.exemptions)

    @staticmethod
    def _index_path() -> Path | None:
        return Path(ctx.options.aupguard_index) if ctx.options.aupguard_index else None

    def done(self) -> None:
        self.reloader.stop()
        self.index_watcher.close()
        if self.watcher:
            self.watcher.close()
            self.watcher = None
        if self.writer:
            self.writer.close()
            self.writer = None

    # -- hooks -----------------------------------------------------------------------------

    def http_connect(self, flow: http.HTTPFlow) -> None:
        """Refuse a CONNECT to a port or address the policy forbids, or to a blocked host that will not be decrypted."""
        if flow.response or self.engine is None:
            return
        identity = self._identity(flow)
        if identity.user:
            self._tunnel_users[flow.client_conn] = identity.user
        try:
            verdict = self.engine.check_connect(flow.request.host, flow.request.port, identity, _request_time(flow))
            # A tunnel rule's verdict cannot become a block page: refuse it now. A blocked host is
            # refused here only when its traffic will not be decrypted (so no page can be shown).
            if verdict.blocked and (verdict.technique in ("tunnel", MALFORMED) or not self._will_decrypt(verdict)):
                self._refuse(flow, verdict, "refuse")
        except Exception:
            log.exception("aupguard: CONNECT %s failed", flow.request.host)
            request = flow.request
            failed = self.engine.failed_request(
                identity, "https", (request.host,), request.port, "/", "CONNECT handling failed"
            )
            self._refuse(flow, failed, "refuse")

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        """Cut a CONNECT tunnel that carries neither TLS nor HTTP (SSH, OpenVPN, raw TCP, a line of text)."""
        context = nextlayer.context
        if self.engine is None or nextlayer.layer is not None or not _in_connect_tunnel(context):
            return
        # Scripts' hooks run before mitmproxy's NextLayer addon: let it choose the protocol from the
        # first bytes now (it leaves the choice open until it has enough), then judge its choice.
        ctx.master.addons.get("nextlayer").next_layer(nextlayer)
        chosen = nextlayer.layer
        if not isinstance(chosen, (HttpLayer, TCPLayer)) or (isinstance(chosen, TCPLayer) and chosen.flow is None):
            return  # undecided, TLS, or an ignored (passed-through) host, whose TCPLayer has no flow
        try:
            opening = first_line(nextlayer.data_client())
            if opening is FirstLine.REQUEST and isinstance(chosen, HttpLayer):
                return
            if opening is FirstLine.PARTIAL and not nextlayer.data_server() and context.client not in self._held:
                # mitmproxy chooses from whatever came first (HTTP for any line with a space in it,
                # raw TCP for a few bytes without one): wait for the whole first line instead.
                _withdraw(nextlayer)
                self._held.add(context.client)
                entry, why = _no_http(context)
                waited = f"{why}, no whole first line in {FIRST_LINE_WAIT:g} s"
                nextlayer.layer = FirstLineWait(context, lambda: self._record_cut(context, entry, waited))
                return
            self._cut(nextlayer, *_no_http(context))
        except Exception:
            log.exception("aupguard: cutting a tunnel to %s failed", context.server.address)
            _withdraw(nextlayer)
            nextlayer.layer = CutTunnel(context)

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        """Decide per TLS connection whether to decrypt: never for no_decrypt hosts.

        TLS that names no server follows the group's `circumvention.no_sni` rule: refused, its handshake fails.
        A no_decrypt (sensitive) host blocked by its SNI is refused the same way: it cannot get a
        block page without being decrypted, and it never is.
        """
        if self.engine is None:
            return
        server = data.context.server.address
        client = data.context.client
        identity = self.engine.identify(self._tunnel_users.get(client), client.peername[0])
        if not data.client_hello.sni and identity.group not in self.engine.policy.circumvention.no_sni_allowed:
            host, port = server or ("", 0)
            verdict = self.engine.tunnel(host, port, identity, "no-sni", "TLS without a server name (SNI)")
            self._refuse_tls(client, verdict)
            return
        host = data.client_hello.sni or (server[0] if server else None)
        if not host:
            return  # no name to go by: decrypt, and the request hooks decide
        verdict = self.engine.check_host(host, server[1] if server else 443, identity)
        if self._never_decrypted(verdict):
            if verdict.blocked:
                self._refuse_tls(client, verdict)
            else:
                data.ignore_connection = True
        # Any other blocked name is decrypted whatever the settings, so that the request is blocked
        # and recorded; a client without the school's CA then simply fails to connect.
        elif not verdict.blocked and not self.engine.policy.tls_intercept:
            data.ignore_connection = True

    def _refuse_tls(self, client: connection.Client, verdict: Verdict) -> None:
        """Record the refusal; tls_start_client then makes the connection's handshake fail."""
        self._submit(verdict, method="CONNECT", user_agent=None, action="refuse", when=datetime.now(UTC))
        self._refused_tls.add(client)

    def tls_start_client(self, data: tls.TlsData) -> None:
        """Refuse the handshake of a connection refused in tls_clienthello (before TlsConfig sets one up)."""
        if data.context.client in self._refused_tls:
            data.ssl_conn = _refusing_tls()

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response or self.engine is None:
            return
        host = flow.request.pretty_host  # parses the Host header: once per request
        if self._is_feedback(flow, host):
            return
        identity = self._identity(flow)
        # Kept for responseheaders (plain values: mitmproxy may save flow metadata to a file).
        flow.metadata[_IDENTITY] = (identity.user, identity.client_ip, identity.group, identity.why)
        when = _request_time(flow)
        request = flow.request
        # The connection's host (the absolute URL's, or the tunnel's), the Host header's and the
        # TLS SNI: a request naming two sites is decided on each, with its path (domain fronting).
        names = (request.host, host, flow.client_conn.sni) if flow.client_conn.sni else (request.host, host)
        try:
            verdict = self.engine.check_request(
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
                self._refuse_malformed(flow, verdict, names)
            elif verdict.blocked:
                self._block(flow, verdict, when=when)
        except Exception:
            self._errors.warning("request", "aupguard: deciding %s failed", request.pretty_url[:200], exc_info=True)
            failed = self.engine.failed_request(
                identity, request.scheme, names, request.port, request.path, "request handling failed"
            )
            self._block(flow, failed)

    def _refuse_malformed(self, flow: http.HTTPFlow, verdict: Verdict, names: tuple[str, ...]) -> None:
        """Bad input, refused with 400 for every group and recorded with what could be read of it."""
        self._errors.warning(
            "malformed",
            "aupguard: refused a request from %s naming %s",
            verdict.identity.client_ip,
            ", ".join(repr(name[:MAX_ASKED_SHOWN]) for name in dict.fromkeys(names)),
        )
        self._refuse(flow, verdict, "refuse", status=400)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """Downloads the group may not make: by type and Content-Length now, by bytes counted as they stream."""
        if self.engine is None or flow.response is None or _BLOCKED in flow.metadata:
            return  # (mitmproxy calls this for aupguard's own block page too: nothing to check there)
        if "alt-svc" in flow.response.headers:
            # Alt-Svc (h3=...) invites the browser to reach the site over QUIC (UDP), around this proxy.
            del flow.response.headers["alt-svc"]
        known = flow.metadata.get(_IDENTITY)  # set by requestheaders, which skips the feedback host
        if known is None and self._is_feedback(flow):
            return
        # (A policy reloaded in between may have dropped the group: identify again then.)
        fresh = known is not None and known[2] in self.engine.policy.groups
        identity = Identity(*known) if fresh else self._identity(flow)
        try:
            group = self.engine.policy.groups[identity.group]
            if not group.download_block_types and group.max_download_bytes is None:
                return
            headers = flow.response.headers
            refused = downloads.check_headers(
                group,
                flow.request.path,
                headers.get("content-type"),
                headers.get("content-disposition"),
                headers.get("content-length"),
            )
            if refused is not None:
                self._block(flow, self._download_verdict(flow, identity, refused), replacing=True)
                return
            sniffed = group.download_block_types & downloads.SNIFFED_TYPES
            unmeasured = group.max_download_bytes is not None and "content-length" not in headers
            if unmeasured or (sniffed and flow.response.stream):
                # Streamed: bytes counted as they pass (no length announced), the first ones looked at.
                flow.response.stream = downloads.BodyCheck(
                    group.max_download_bytes if unmeasured else None,
                    sniffed,
                    lambda refused: self._cut_download(flow, identity, refused),
                    headers.get("content-encoding"),
                )
            elif sniffed:
                flow.metadata[_SNIFF] = (identity, sniffed)  # buffered by mitmproxy: looked at in `response`
        except Exception:
            log.exception("aupguard: checking the download %s failed", flow.request.pretty_url[:200])
            self._block(flow, self.engine.failed(identity, None, "download check failed"), replacing=True)

    def response(self, flow: http.HTTPFlow) -> None:
        # A page put in place of a server's response that had no body to stream: mitmproxy has
        # since stored the (empty) server body in it, so it goes back now.
        page = flow.metadata.get("aupguard_page")
        if page is not None and flow.response is not None:
            flow.response.content = page
        sniff = flow.metadata.pop(_SNIFF, None)
        if (
            sniff is not None
            and self.engine is not None
            and flow.response is not None
            and _BLOCKED not in flow.metadata
        ):
            identity, sniffed = sniff
            try:
                response = flow.response
                prefix = downloads.decoded_prefix(response.raw_content or b"", response.headers.get("content-encoding"))
                refused = downloads.content_block(sniffed, prefix)
                if refused is not None:
                    self._block(flow, self._download_verdict(flow, identity, refused))
            except Exception:
                log.exception("aupguard: checking the download %s failed", flow.request.pretty_url[:200])
                self._block(flow, self.engine.failed(identity, None, "download check failed"))

    # -- helpers ---------------------------------------------------------------------------

    def _is_feedback(self, flow: http.HTTPFlow, host: str | None = None) -> bool:
        """Requests to the reserved host are the block page's own forms: feedback.FeedbackApp answers them."""
        return (host or flow.request.pretty_host) == self.feedback_host

    def _download_verdict(self, flow: http.HTTPFlow, identity: Identity, refused: downloads.DownloadBlock) -> Verdict:
        policy = self.engine.policy
        request = flow.request
        match = Match(DOWNLOAD, refused.reason, refused.detail, _DOWNLOADS_SOURCE)
        decision = Decision(
            "block", DOWNLOAD, policy.categories[DOWNLOAD].severity, (match,), (), f"download: {refused.detail}"
        )
        url = from_parts(request.scheme, request.pretty_host, request.port, request.path)
        return Verdict(identity, url, None, decision)

    def _cut_download(self, flow: http.HTTPFlow, identity: Identity, refused: downloads.DownloadBlock) -> None:
        """A streamed download went over the limit or showed a blocked type: its headers are sent, so the
        connection is reset."""
        try:
            self._record(flow, self._download_verdict(flow, identity, refused), "block")
        finally:
            if flow.killable:
                flow.kill()  # mitmproxy resets the client's stream when this response ends

    def _identity(self, flow: http.HTTPFlow) -> Identity:
        auth = flow.metadata.get("proxyauth")
        user = auth[0] if auth else None  # auth[1] is the password: never kept
        return self.engine.identify(user, flow.client_conn.peername[0])

    def _tunnel_identity(self, context) -> Identity:
        return self.engine.identify(self._tunnel_users.get(context.client), context.client.peername[0])

    def _cut(self, nextlayer: layer.NextLayer, entry: str, why: str) -> None:
        """Replace the layer chosen for a tunnel by one that closes it, and record the attempt."""
        _withdraw(nextlayer)
        nextlayer.layer = CutTunnel(nextlayer.context)
        self._record_cut(nextlayer.context, entry, why)

    def _record_cut(self, context, entry: str, why: str) -> None:
        identity = self._tunnel_identity(context)
        host, port = context.server.address or ("", 0)
        verdict = self.engine.tunnel(host, port, identity, entry, f"a CONNECT tunnel carrying {why}")
        self._submit(verdict, method="CONNECT", user_agent=None, action="refuse", when=datetime.now(UTC))
        log.info("aupguard: cut a tunnel from %s to %s:%s (%s)", identity.client_ip, host, port, why)

    def _will_decrypt(self, verdict: Verdict) -> bool:
        return self.engine.policy.tls_intercept and not self._never_decrypted(verdict)

    def _never_decrypted(self, verdict: Verdict) -> bool:
        """Whether the host is sensitive (`tls.no_decrypt`, by name or category): never decrypted, blocked or not."""
        policy = self.engine.policy
        if verdict.url and policy.no_decrypt_hosts.intersection(verdict.url.domain_candidates()):
            return True
        return bool(policy.no_decrypt_categories.intersection(verdict.categories))

    def _block(
        self, flow: http.HTTPFlow, verdict: Verdict, replacing: bool = False, when: datetime | None = None
    ) -> None:
        """Answer `flow` with the block page. Whatever fails on the way, the request stays blocked.

        `replacing`: the server's response headers are in and its body is still to come;
        it is read and dropped, never sent, while the client gets the page.
        """
        if not verdict.blocked:  # a failure in a group that fails open
            return
        ref = None
        try:
            incident = self._record(flow, verdict, "block", when, page_for=flow)
            page = self._page(flow, verdict, incident.ref, incident.local_date, incident.local_time)
            ref = incident.ref
        except Exception:
            log.exception(
                "aupguard: the block page for %s failed; sending the plain one", flow.request.pretty_url[:200]
            )
            page = blockpage.MINIMAL
        flow.response = _page_response(page, self.report_url, True, ref)
        flow.metadata[_BLOCKED] = True
        if replacing:
            flow.metadata["aupguard_page"] = page.body
            flow.response.stream = _Replacement(page.body)

    def _refuse(self, flow: http.HTTPFlow, verdict: Verdict, action: str, status: int | None = None) -> None:
        if not verdict.blocked:
            return
        incident = self._record(flow, verdict, action, page_for=flow)
        page = self._page(flow, verdict, incident.ref, incident.local_date, incident.local_time, text_only=True)
        if status is not None:
            page = dataclasses.replace(page, status=status)
        flow.response = _page_response(page, None, False, incident.ref)
        flow.metadata[_BLOCKED] = True

    def _record(self, flow: http.HTTPFlow, verdict: Verdict, action: str, when: datetime | None = None, page_for=None):
        return self._submit(
            verdict,
            method=flow.request.method,
            user_agent=flow.request.headers.get("user-agent"),
            action=action,
            when=when or _request_time(flow),
            page_for=page_for,
        )

    def _submit(
        self,
        verdict: Verdict,
        *,
        method: str,
        user_agent: str | None,
        action: str,
        when: datetime,
        page_for: http.HTTPFlow | None = None,
    ):
        """Record the incident. `page_for`: the flow whose response will show its reference, held until
        the incident is committed (issue 9.6), or the database found unwritable, or HOLD_S at most."""
        incident = self.engine.incident(verdict, method=method, user_agent=user_agent, action=action, when=when)
        try:
            if self.writer and self.writer.submit(incident, page_for.resume if page_for else None) and page_for:
                page_for.intercept()  # mitmproxy sends nothing of the flow until resume()
                ctx.master.event_loop.call_later(HOLD_S, page_for.resume)  # a no-op once resumed
        except Exception:  # a stopped writer loses the record, not the block
            log.exception("aupguard: incident %s could not be queued", incident.ref)
        return incident

    def _page(self, flow, verdict: Verdict, ref: str, date: str, time: str, text_only: bool = False):
        policy = self.engine.policy
        category = policy.categories[verdict.decision.category]
        reason = category.reason
        match = verdict.decision.blocked_by[0] if verdict.decision.blocked_by else None
        if match is not None and match.source == _DOWNLOADS_SOURCE:  # say whether the type or the size did it
            reason = f"{reason} {downloads.why_blocked(match.kind, match.entry)}"
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


class _Replacement:
    """A `response.stream` callable sending `body` in place of the server's, whose bytes are dropped."""

    def __init__(self, body: bytes):
        self.body = body

    def __call__(self, chunk: bytes) -> bytes | list[bytes]:
        body, self.body = self.body, b""
        return body or []  # not b"": an empty chunk would end a chunked body


def _page_response(page: blockpage.BlockPage, report_url: str | None, no_store: bool, ref: str | None) -> http.Response:
    """What http.Response.make(page.status, page.body, headers) gives, made from ready header bytes.

    Built without Response's constructor: when Python runs without -O, mitmproxy type-checks every
    field of every Response it makes (MessageData.__post_init__), a fifth of a block's cost in
    aupguard, and these fields are of fixed, known types, so the check could only pass.
    tests/test_hotpath.py checks the result equals Response.make's, so a mitmproxy that changes
    how a Response holds its data fails the tests rather than the proxy.
    """
    fields = blockpage.header_fields(page.content_type, report_url, no_store)
    if ref is not None:
        fields += ((b"X-Aupguard-Incident", ref.encode("utf-8", "surrogateescape")),)
    fields += ((b"content-length", str(len(page.body)).encode()),)
    now = time.time()
    data = object.__new__(http.ResponseData)
    vars(data).update(
        http_version=b"HTTP/1.1",
        status_code=page.status,
        reason=status_codes.RESPONSES.get(page.status, "").encode(),
        headers=http.Headers(fields),
        content=page.body,
        trailers=None,
        timestamp_start=now,
        timestamp_end=now,
    )
    response = object.__new__(http.Response)
    response.data = data
    return response


_BLOCKED = "aupguard_blocked"  # flow.metadata key: the response is aupguard's block page
_IDENTITY = "aupguard_identity"  # flow.metadata key: (user, client_ip, group, why) of the request
_DOWNLOADS_SOURCE = "aupguard/downloads"  # Match.source of a download refused by type or size
_SNIFF = "aupguard_sniff"  # flow.metadata key: (identity, types) whose buffered body `response` looks at


def _quiet_connections(verbosity: str) -> None:
    """mitmproxy logs "client connect", "server connect" and "client disconnect" at INFO: three lines per request
    on a school gateway's terminal, around aupguard's one line per decision. They show at termlog_verbosity=debug."""
    logging.getLogger("mitmproxy.proxy.server").setLevel(logging.NOTSET if verbosity == "debug" else logging.WARNING)


def _in_connect_tunnel(context) -> bool:
    """Whether a layer decision is for the inside of an explicit proxy's CONNECT tunnel."""
    return any(isinstance(each, HttpLayer) for each in context.layers)


def _no_http(context) -> tuple[str, str]:
    """The rule entry and reason for cutting a tunnel that carries no HTTP, inside TLS or not."""
    if any(isinstance(each, ServerTLSLayer) for each in context.layers):
        return "not-http", "TLS carrying no HTTP"
    return "no-tls", "neither TLS nor HTTP"


def _withdraw(nextlayer: layer.NextLayer) -> None:
    """Take back the layer chosen for a tunnel, and the layers it put on the stack, so that another can replace it."""
    layers = nextlayer.context.layers
    if nextlayer.layer is not None and nextlayer.layer in layers:
        del layers[layers.index(nextlayer.layer) :]
    nextlayer.layer = None


def _refusing_tls() -> SSL.Connection:
    """A TLS server end with no certificate to offer: the client's handshake fails and the tunnel closes."""
    connection = SSL.Connection(SSL.Context(SSL.TLS_SERVER_METHOD))
    connection.set_accept_state()
    return connection


def _request_time(flow: http.HTTPFlow) -> datetime:
    """When the request arrived: what the timetable and the incident go by."""
    return datetime.fromtimestamp(flow.request.timestamp_start, UTC)
