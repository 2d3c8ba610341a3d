"""The CONNECT and TLS addon: what a tunnel may reach, and what it may carry.

A CONNECT is checked for its port and target in `http_connect`; what it then carries is judged in
`next_layer`, by the layer mitmproxy's own NextLayer addon chooses from the first bytes, checked
against `core.circumvention.tunnel.first_line`: anything that is neither TLS nor an HTTP request line (SSH,
OpenVPN, raw TCP, a line of text) is cut, and bytes that could still become a request line are
held (`FirstLineWait`) until the line ends or FIRST_LINE_WAIT runs out. TLS that names no server
is refused in `tls_clienthello` when the group's policy says so. The layer tricks are mitmproxy
internals (proxy.mitm_internals); outside the versions they were checked against, `tcp_message`
drops what a tunnel carrying no HTTP sends instead.
"""

from __future__ import annotations

import logging
import weakref
from datetime import UTC, datetime

from mitmproxy import connection, ctx, http, tcp, tls
from mitmproxy.proxy import layer
from mitmproxy.proxy.layers import HttpLayer, ServerTLSLayer, TCPLayer
from OpenSSL import SSL

from aupguard.core.circumvention.tunnel import FIRST_LINE_WAIT, FirstLine, first_line
from aupguard.core.engine import MALFORMED, Engine, Verdict
from aupguard.proxy import mitm_internals
from aupguard.proxy.blocking import Blocking, identity_of, request_time
from aupguard.proxy.current import Current

log = logging.getLogger(__name__)


class Tunnels:
    name = "aupguard-tunnels"  # its name in mitmproxy's addon chain

    def __init__(self, current: Current, blocking: Blocking) -> None:
        self.current, self.blocking = current, blocking
        # Who opened each CONNECT tunnel, for the checks on what it carries (mitmproxy's proxyauth
        # keeps only the password-bearing pair); forgotten with the connection.
        self._tunnel_users: weakref.WeakKeyDictionary[connection.Client, str] = weakref.WeakKeyDictionary()
        self._refused_tls: weakref.WeakSet[connection.Client] = weakref.WeakSet()  # TLS without SNI, refused
        self._held: weakref.WeakSet[connection.Client] = weakref.WeakSet()  # tunnels held once for their first line
        self._cut_flows: weakref.WeakSet[tcp.TCPFlow] = weakref.WeakSet()  # cut by tcp_message (the fallback)

    def http_connect(self, flow: http.HTTPFlow) -> None:
        """Refuse a CONNECT to a port or address the policy forbids, or to a blocked host that will not be decrypted."""
        engine = self.current.engine
        if flow.response or engine is None:
            return
        identity = identity_of(engine, flow)
        if identity.user:
            self._tunnel_users[flow.client_conn] = identity.user
        try:
            verdict = engine.check_connect(flow.request.host, flow.request.port, identity, request_time(flow))
            # A tunnel rule's verdict cannot become a block page: refuse it now. A blocked host is
            # refused here only when its traffic will not be decrypted (so no page can be shown).
            if verdict.blocked and (verdict.technique in ("tunnel", MALFORMED) or not _will_decrypt(engine, verdict)):
                self.blocking.refuse(engine, flow, verdict, "refuse")
        except Exception:
            log.exception("aupguard: CONNECT %s failed", flow.request.host)
            request = flow.request
            failed = engine.failed_request(
                identity, "https", (request.host,), request.port, "/", "CONNECT handling failed"
            )
            self.blocking.refuse(engine, flow, failed, "refuse")

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        """Cut a CONNECT tunnel that carries neither TLS nor HTTP (SSH, OpenVPN, raw TCP, a line of text)."""
        context = nextlayer.context
        engine = self.current.engine
        if engine is None or nextlayer.layer is not None or not _in_connect_tunnel(context):
            return
        if not mitm_internals.tunnel_layers_fenced():
            return  # mitmproxy chooses; tcp_message drops what a tunnel carrying no HTTP sends
        mitm_internals.choose_now(ctx.master, nextlayer)
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
                self._held.add(context.client)
                entry, why = _no_http(context)
                waited = f"{why}, no whole first line in {FIRST_LINE_WAIT:g} s"
                mitm_internals.hold_for_first_line(nextlayer, lambda: self._record_cut(context, entry, waited))
                return
            mitm_internals.cut(nextlayer)
            self._record_cut(context, *_no_http(context))
        except Exception:
            log.exception("aupguard: cutting a tunnel to %s failed", context.server.address)
            mitm_internals.cut(nextlayer)

    def tcp_message(self, flow: tcp.TCPFlow) -> None:
        """Outside the versions the layer tricks were checked against: a tunnel mitmproxy relays as raw TCP
        carries neither TLS nor HTTP, so nothing it sends is relayed, and the attempt is recorded once."""
        if mitm_internals.tunnel_layers_fenced() or self.current.engine is None:
            return  # next_layer cut it before any byte was relayed
        flow.messages[-1].content = b""
        if flow not in self._cut_flows:
            self._cut_flows.add(flow)
            context = _FlowContext(flow)
            try:
                if flow.client_conn.tls_established:
                    self._record_cut(context, "not-http", "TLS carrying no HTTP")
                else:
                    self._record_cut(context, "no-tls", "neither TLS nor HTTP")
            finally:
                if flow.killable:
                    flow.kill()

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        """Decide per TLS connection whether to decrypt: never for no_decrypt hosts.

        TLS that names no server follows the group's `circumvention.no_sni` rule: refused, its handshake fails.
        A no_decrypt (sensitive) host blocked by its SNI is refused the same way: it cannot get a
        block page without being decrypted, and it never is.
        """
        engine = self.current.engine
        if engine is None:
            return
        server = data.context.server.address
        client = data.context.client
        identity = engine.identify(self._tunnel_users.get(client), client.peername[0])
        if not data.client_hello.sni and identity.group not in engine.policy.circumvention.no_sni_allowed:
            host, port = server or ("", 0)
            verdict = engine.tunnel(host, port, identity, "no-sni", "TLS without a server name (SNI)")
            self._refuse_tls(engine, client, verdict)
            return
        name = data.client_hello.sni or (server[0] if server else None)
        if not name:
            return  # no name to go by: decrypt, and the request hooks decide
        verdict = engine.check_host(name, server[1] if server else 443, identity)
        if _never_decrypted(engine, verdict):
            if verdict.blocked:
                self._refuse_tls(engine, client, verdict)
            else:
                data.ignore_connection = True
        # Any other blocked name is decrypted whatever the settings, so that the request is blocked
        # and recorded; a client without the school's CA then simply fails to connect.
        elif not verdict.blocked and not engine.policy.tls_intercept:
            data.ignore_connection = True

    def tls_start_client(self, data: tls.TlsData) -> None:
        """Refuse the handshake of a connection refused in tls_clienthello (before TlsConfig sets one up)."""
        if data.context.client in self._refused_tls:
            data.ssl_conn = _refusing_tls()

    def _refuse_tls(self, engine: Engine, client: connection.Client, verdict: Verdict) -> None:
        """Record the refusal; tls_start_client then makes the connection's handshake fail."""
        self.blocking.submit(
            engine, verdict, method="CONNECT", user_agent=None, action="refuse", when=datetime.now(UTC)
        )
        self._refused_tls.add(client)

    def _record_cut(self, context, entry: str, why: str) -> None:
        """Record the attempt to carry something other than TLS or HTTP through a tunnel."""
        engine = self.current.engine
        if engine is None:
            return
        identity = engine.identify(self._tunnel_users.get(context.client), context.client.peername[0])
        host, port = context.server.address or ("", 0)
        verdict = engine.tunnel(host, port, identity, entry, f"a CONNECT tunnel carrying {why}")
        self.blocking.submit(
            engine, verdict, method="CONNECT", user_agent=None, action="refuse", when=datetime.now(UTC)
        )
        log.info("aupguard: cut a tunnel from %s to %s:%s (%s)", identity.client_ip, host, port, why)


class _FlowContext:
    """A TCP flow's connections, read as a layer context is (client, server)."""

    def __init__(self, flow: tcp.TCPFlow) -> None:
        self.client, self.server = flow.client_conn, flow.server_conn


def _will_decrypt(engine: Engine, verdict: Verdict) -> bool:
    return engine.policy.tls_intercept and not _never_decrypted(engine, verdict)


def _never_decrypted(engine: Engine, verdict: Verdict) -> bool:
    """Whether the host is sensitive (`tls.no_decrypt`, by name or category): never decrypted, blocked or not."""
    policy = engine.policy
    if verdict.url and policy.no_decrypt_hosts.intersection(verdict.url.domain_candidates()):
        return True
    return bool(policy.no_decrypt_categories.intersection(verdict.categories))


def _in_connect_tunnel(context) -> bool:
    """Whether a layer decision is for the inside of an explicit proxy's CONNECT tunnel."""
    return any(isinstance(each, HttpLayer) for each in context.layers)


def _no_http(context) -> tuple[str, str]:
    """The rule entry and reason for cutting a tunnel that carries no HTTP, inside TLS or not."""
    if any(isinstance(each, ServerTLSLayer) for each in context.layers):
        return "not-http", "TLS carrying no HTTP"
    return "no-tls", "neither TLS nor HTTP"


def _refusing_tls() -> SSL.Connection:
    """A TLS server end with no certificate to offer: the client's handshake fails and the tunnel closes."""
    refusing = SSL.Connection(SSL.Context(SSL.TLS_SERVER_METHOD))
    refusing.set_accept_state()
    return refusing
