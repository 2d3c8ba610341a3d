"""The download addon: downloads a group may not make, by type and Content-Length on the response
headers, and by the bytes themselves, counted and looked at as they stream (`BodyCheck`) or, for a
body mitmproxy buffers, in `response`.

The file-type judging is plain Python (core.downloads); what needs mitmproxy is here: decoding a
body's Content-Encoding as the browser will, and the `response.stream` callable. A download
refused once its headers are sent is cut: the client sees the connection reset, never the file.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable

from mitmproxy import http
from mitmproxy.net import encoding as codecs

from aupguard.base.urlnorm import from_parts
from aupguard.base.vocabulary import DOWNLOAD
from aupguard.core.classify import Match
from aupguard.core.decide import Decision
from aupguard.core.downloads import (
    SNIFF_BYTES,
    SNIFFED_TYPES,
    DownloadBlock,
    check_headers,
    content_block,
    size_block,
)
from aupguard.core.engine import Engine, Verdict
from aupguard.core.identify import Identity
from aupguard.proxy.blocking import BLOCKED, DOWNLOADS_SOURCE, IDENTITY, Blocking, identity_of
from aupguard.proxy.current import Current

log = logging.getLogger(__name__)

SNIFF = "aupguard_sniff"  # flow.metadata key: (identity, types) whose buffered body `response` looks at


class Downloads:
    name = "aupguard-downloads"  # its name in mitmproxy's addon chain

    def __init__(self, current: Current, blocking: Blocking) -> None:
        self.current, self.blocking = current, blocking

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """Downloads the group may not make: by type and Content-Length now, by bytes counted as they stream."""
        engine = self.current.engine
        if engine is None or flow.response is None or BLOCKED in flow.metadata:
            return  # (mitmproxy calls this for aupguard's own block page too: nothing to check there)
        # Set by requestheaders, which skips the feedback host.
        known: tuple[str | None, str, str, str] | None = flow.metadata.get(IDENTITY)
        if known is None and self.blocking.is_feedback(flow):
            return
        # (A policy reloaded in between may have dropped the group: identify again then.)
        if known is not None and known[2] in engine.policy.groups:
            identity = Identity(*known)
        else:
            identity = identity_of(engine, flow)
        try:
            group = engine.policy.groups[identity.group]
            if not group.download_block_types and group.max_download_bytes is None:
                return
            headers = flow.response.headers
            refused = check_headers(
                group,
                flow.request.path,
                headers.get("content-type"),
                headers.get("content-disposition"),
                headers.get("content-length"),
            )
            if refused is not None:
                self.blocking.block(engine, flow, download_verdict(engine, flow, identity, refused), replacing=True)
                return
            sniffed = group.download_block_types & SNIFFED_TYPES
            unmeasured = group.max_download_bytes is not None and "content-length" not in headers
            if unmeasured or (sniffed and flow.response.stream):
                # Streamed: bytes counted as they pass (no length announced), the first ones looked at.
                flow.response.stream = BodyCheck(
                    group.max_download_bytes if unmeasured else None,
                    sniffed,
                    lambda refused: self._cut(engine, flow, identity, refused),
                    headers.get("content-encoding"),
                )
            elif sniffed:
                flow.metadata[SNIFF] = (identity, sniffed)  # buffered by mitmproxy: looked at in `response`
        except Exception:
            log.exception("aupguard: checking the download %s failed", flow.request.pretty_url[:200])
            self.blocking.block(engine, flow, engine.failed(identity, None, "download check failed"), replacing=True)

    def response(self, flow: http.HTTPFlow) -> None:
        sniff = flow.metadata.pop(SNIFF, None)
        engine = self.current.engine
        if sniff is None or engine is None or flow.response is None or BLOCKED in flow.metadata:
            return
        identity, sniffed = sniff
        try:
            response = flow.response
            prefix = decoded_prefix(response.raw_content or b"", response.headers.get("content-encoding"))
            refused = content_block(sniffed, prefix)
            if refused is not None:
                self.blocking.block(engine, flow, download_verdict(engine, flow, identity, refused))
        except Exception:
            log.exception("aupguard: checking the download %s failed", flow.request.pretty_url[:200])
            self.blocking.block(engine, flow, engine.failed(identity, None, "download check failed"))

    def _cut(self, engine: Engine, flow: http.HTTPFlow, identity: Identity, refused: DownloadBlock) -> None:
        """A streamed download went over the limit or showed a blocked type: its headers are sent, so the
        connection is reset."""
        try:
            self.blocking.record(engine, flow, download_verdict(engine, flow, identity, refused), "block")
        finally:
            if flow.killable:
                flow.kill()  # mitmproxy resets the client's stream when this response ends


def download_verdict(engine: Engine, flow: http.HTTPFlow, identity: Identity, refused: DownloadBlock) -> Verdict:
    """The verdict recorded for a refused download, filed under the `download` category."""
    policy = engine.policy
    request = flow.request
    match = Match(DOWNLOAD, refused.reason, refused.detail, DOWNLOADS_SOURCE)
    decision = Decision(
        "block", DOWNLOAD, policy.categories[DOWNLOAD].severity, (match,), (), f"download: {refused.detail}"
    )
    url = from_parts(request.scheme, request.pretty_host, request.port, request.path)
    return Verdict(identity, url, None, decision)


def decoded_prefix(raw: bytes, content_encoding: str | None) -> bytes:
    """The first SNIFF_BYTES of a body as the browser saves it: decoded from its Content-Encoding, decoding no more
    than that of gzip and deflate (the usual ones); `raw` may be the start of the body only."""
    encoding = (content_encoding or "").strip().lower()
    if encoding in ("", "identity"):
        return raw[:SNIFF_BYTES]
    try:
        if encoding in ("gzip", "x-gzip", "deflate"):
            return zlib.decompressobj(zlib.MAX_WBITS | 32).decompress(raw, SNIFF_BYTES)  # gzip or zlib header
        decoded = codecs.decode(raw, encoding)  # br, zstd: whole-body decoders
    except (ValueError, zlib.error):  # undecodable (or only a start of it, for br/zstd): judged as sent
        return raw[:SNIFF_BYTES]
    return decoded[:SNIFF_BYTES] if isinstance(decoded, bytes) else raw[:SNIFF_BYTES]


class BodyCheck:
    """A mitmproxy `response.stream` callable: the size limit and the look at the first bytes of a streamed body.

    With `limit`, chunks are counted as they pass; the chunk that crosses it and
    everything after are dropped, not kept. With `blocked_types`, the first
    SNIFF_BYTES are held back (bounded) until they show a blocked type or cannot
    (or the body ends), then passed on. They are judged again only once they have
    doubled since last judged, so a server sending a byte per chunk costs a few
    judgements, not one a byte. Either way `refused` is called once, so
    the caller can kill the flow: the client then sees the connection reset,
    never the file.
    """

    def __init__(
        self,
        limit: int | None,
        blocked_types: frozenset[str],
        refused: Callable[[DownloadBlock], None],
        content_encoding: str | None = None,
    ):
        self.limit = limit
        self.content_encoding = content_encoding
        self.blocked_types = blocked_types
        self.refused = refused
        self.total = 0
        self.stopped = False
        self.held: bytearray | None = bytearray() if blocked_types & SNIFFED_TYPES else None
        self.judged = 0  # how many held bytes were judged last

    def __call__(self, chunk: bytes) -> bytes | list[bytes]:
        # Nothing to send is [], not b"": mitmproxy would send an empty chunk, which ends a chunked body.
        # mitmproxy calls with b"" once at the end of the body.
        if self.stopped:
            return []
        self.total += len(chunk)
        if self.limit is not None and self.total > self.limit:
            return self._stop(size_block(self.total, self.limit))
        if self.held is None:
            return chunk
        taken = chunk[: SNIFF_BYTES - len(self.held)]
        self.held += taken
        complete = len(self.held) >= SNIFF_BYTES or not chunk
        if not complete and len(self.held) < 2 * self.judged:
            return []  # held back: too little new to judge again
        self.judged = len(self.held)
        refused = content_block(self.blocked_types, decoded_prefix(bytes(self.held), self.content_encoding))
        if refused is not None:
            return self._stop(refused)
        if not complete:
            return []  # held back until there is enough to tell
        held, self.held = bytes(self.held), None
        return [part for part in (held, chunk[len(taken) :]) if part]

    def _stop(self, refused: DownloadBlock) -> list[bytes]:
        self.stopped = True
        self.held = None
        self.refused(refused)
        return []
