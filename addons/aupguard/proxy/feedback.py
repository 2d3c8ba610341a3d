"""Act and record: "report a mistake" from the block page.

The block page offers "I reached this by accident" and "Ask for this site to
be reviewed" (with an optional short reason). The forms post to a reserved
host name that the proxy answers itself (mitmproxy's WSGI app support), so
nothing goes upstream and it works for plain HTTP and decrypted HTTPS pages.
Each request is stored with its incident (table `incident_requests`, deleted
with the incident when it is purged) and listed by `aupguard report --requests`,
through one connection kept for the proxy's life (`RequestStore`).

Forgery: the form carries a token, an HMAC of the incident reference under a
key only the proxy knows (DATA_DIR/feedback.key, 0600), so nobody can file
requests against references they were not shown. Abuse: each client address
may post RATE_LIMIT requests per RATE_WINDOW_S.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
import time
import urllib.parse
from collections import deque
from pathlib import Path

from mitmproxy import ctx
from mitmproxy.addons.asgiapp import WSGIApp

from aupguard.base.files import temporary_file
from aupguard.proxy import blockpage
from aupguard.store.db import private_parent
from aupguard.store.feedback import KINDS, MAX_REASON, RequestStore

log = logging.getLogger(__name__)

DEFAULT_HOST = "aupguard.invalid"  # .invalid never resolves (RFC 2606): only the proxy answers it
KEY_FILE = "feedback.key"
PATH = "/report"
MAX_BODY = 4096
RATE_LIMIT = 10
RATE_WINDOW_S = 600.0
MAX_CLIENTS = 10_000  # addresses the rate limiter remembers
_REF = re.compile(r"AG-[A-Z2-9]{4}-[A-Z2-9]{4}(?:-\d{1,3})?")


# -- the token ---------------------------------------------------------------------------------------


def load_key(path: Path) -> bytes:
    """The signing key at `path`, created (32 random bytes, 0600) the first time."""
    path = Path(path)
    private_parent(path)
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        with temporary_file(path.parent, f".{path.name}.") as (fd, temporary):
            os.write(fd, secrets.token_bytes(32))
            os.fsync(fd)
            try:
                os.link(temporary, path)  # the key appears whole or not at all
            except FileExistsError:  # another worker made one meanwhile: that one holds
                pass
        key = path.read_bytes()
    if len(key) < 32:
        raise ValueError(f"{path} holds {len(key)} bytes; a feedback key has 32 (delete it to make a new one)")
    return key


def token(key: bytes, ref: str) -> str:
    """The form token for incident `ref`."""
    return hmac.new(key, ref.encode("ascii", "replace"), hashlib.sha256).hexdigest()[:32]


def valid_token(key: bytes, ref: str, given: str) -> bool:
    return hmac.compare_digest(token(key, ref), given.encode("ascii", "replace").decode())


# -- the store ---------------------------------------------------------------------------------------


# -- rate limit --------------------------------------------------------------------------------------


class RateLimiter:
    """At most `limit` events per `window` seconds per key, in memory, bounded; safe from several threads."""

    def __init__(self, limit: int = RATE_LIMIT, window: float = RATE_WINDOW_S, max_keys: int = MAX_CLIENTS):
        self.limit, self.window, self.max_keys = limit, window, max_keys
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        with self._lock:
            times = self._seen.pop(key, None) or deque(maxlen=self.limit)
            while times and times[0] <= now - self.window:
                times.popleft()
            allowed = len(times) < self.limit
            if allowed:
                times.append(now)
            self._seen[key] = times  # re-inserted: dict order is least recently seen first
            while len(self._seen) > self.max_keys:
                del self._seen[next(iter(self._seen))]
            return allowed


# -- the web app -------------------------------------------------------------------------------------


def make_app(key: bytes, store: RequestStore, limiter: RateLimiter):
    """The WSGI app answering the reserved host: POST /report stores a request, anything else is refused."""

    def app(environ, start_response):
        def reply(status: str, title: str, message: str, ref: str | None = None):
            body = blockpage.render_message(title, message, ref, accent=_THANKS if ref else _REFUSED)
            start_response(
                status,
                [
                    ("Content-Type", "text/html; charset=utf-8"),
                    ("Content-Length", str(len(body))),
                    ("Cache-Control", "no-store"),
                    ("X-Content-Type-Options", "nosniff"),
                    ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'"),
                ],
            )
            return [body]

        if environ.get("PATH_INFO") != PATH:
            return reply("404 Not Found", "Not found", "This address only receives reports from the block page.")
        if environ.get("REQUEST_METHOD") != "POST":
            return reply("405 Method Not Allowed", "Not allowed", "Reports are sent from the block page's buttons.")
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY:
            return reply("400 Bad Request", "Not sent", "The report was empty or too long.")
        form = urllib.parse.parse_qs(
            environ["wsgi.input"].read(length).decode("utf-8", "replace"), max_num_fields=8, keep_blank_values=True
        )
        ref = _one(form, "ref")
        kind = _one(form, "kind")
        if not _REF.fullmatch(ref) or kind not in KINDS:
            return reply("400 Bad Request", "Not sent", "The report was not understood.")
        if not valid_token(key, ref, _one(form, "token")):
            return reply("403 Forbidden", "Not sent", "This report did not come from a block page this filter showed.")
        if not limiter.allow(environ.get("REMOTE_ADDR") or "?"):
            return reply("429 Too Many Requests", "Please wait", "Too many reports from this device; try again later.")
        try:
            store.record(ref, kind, _one(form, "reason"))
        except Exception:
            log.exception("storing the report for %s failed", ref)
            return reply("503 Service Unavailable", "Not sent", "The report could not be saved; please tell IT.")
        thanks = (
            "Your report has been sent. You are not in trouble."
            if kind == "accidental"
            else "Your request has been sent: the IT Department will look at this site."
        )
        return reply("200 OK", "Thank you", thanks, ref)

    return app


def _one(form: dict[str, list[str]], name: str) -> str:
    values = form.get(name) or [""]
    return values[0][: MAX_REASON * 2]


_THANKS = "#2e7d5b"  # the card's top border: green for a report received, the block page's red otherwise
_REFUSED = "#c0392b"


class FeedbackApp(WSGIApp):
    """The mitmproxy addon serving the app on the reserved host (option aupguard_feedback_host, declared by proxy/wiring.py)."""

    def __init__(self) -> None:
        super().__init__(self._not_ready, DEFAULT_HOST, None)
        self.limiter = RateLimiter()
        self.store: RequestStore | None = None

    @property
    def name(self) -> str:
        return "aupguard-feedback"

    def configure(self, updated: set[str]) -> None:
        if {"aupguard_db", "aupguard_feedback_host"} & updated:
            db_path = Path(ctx.options.aupguard_db)
            key = load_key(db_path.parent / KEY_FILE)
            self.host = ctx.options.aupguard_feedback_host
            if self.store is None or self.store.path != db_path:
                self.done()
                self.store = RequestStore(db_path)
            super().__init__(make_app(key, self.store, self.limiter), self.host, None)

    def done(self) -> None:
        if self.store is not None:
            self.store.close()

    @staticmethod
    def _not_ready(environ, start_response):  # replaced in configure, before any request
        start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
        return [b"not configured\n"]
