"""Two fixes to how mitmproxy's HTTP/1 server end reads a request head, installed once at import.

- Empty lines before a request line are skipped, as RFC 9112 2.2 says a server should: h11's
  buffer drops one and answers "no head" (an empty list), which mitmproxy takes for "not yet",
  so a client sending "\\r\\n\\r\\nGET ..." in one piece waited forever.
- A request head must be whole within `HEAD_DEADLINE.seconds` of its first byte, or the client
  gets 408 and the connection closes: mitmproxy itself waits for the rest of a head for as long
  as bytes keep coming (a slow-loris client holds a connection for ever). Idle connections are
  mitmproxy's own watchdog's (`proxy.server.TCP_TIMEOUT`, set by the addon's option).

Both wrap `Http1Server._handle_event`, so a mitmproxy that changes it fails tests/test_request_holes.py.
"""

from __future__ import annotations

from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layers.http import _http1


class HeadDeadline:
    """The settings the wrapped layers read (set from the addon's options in `configure`)."""

    seconds: float = 30.0


class _HeadTimer(commands.RequestWakeup):
    """A wakeup asked for by the deadline below, told apart from any mitmproxy asks for."""


def _leading_blank_line(data: bytearray) -> int:
    """The length of the empty line (CRLF or a bare LF, as h11 accepts) at the start of `data`, or 0."""
    if data[:1] == b"\n":
        return 1
    return 2 if data[:2] == b"\r\n" else 0


def _reading_heads_with_care(handle_event):
    def handle(self, event):
        if isinstance(event, events.Wakeup) and isinstance(event.command, _HeadTimer):
            if event.command is getattr(self, "_aupguard_head_timer", None) and self.state == self.read_headers:
                yield commands.SendData(self.conn, _http1.make_error_response(408, "request head not sent in time"))
                yield commands.CloseConnection(self.conn)
                self.state = self.done
            return  # a timer for a head that has since come whole
        reading = self.state == self.read_headers
        if reading and isinstance(event, events.DataReceived):
            self.buf += event.data
            while (blank := _leading_blank_line(self.buf._data)) > 0:  # h11 has no public way to peek
                self.buf.maybe_extract_at_most(blank)
            event = events.DataReceived(event.connection, b"")  # its bytes are in the buffer already
        yield from handle_event(self, event)
        if self.state != self.read_headers:
            self._aupguard_head_timer = None
        elif self.buf and getattr(self, "_aupguard_head_timer", None) is None:  # a head has begun
            self._aupguard_head_timer = _HeadTimer(HEAD_DEADLINE.seconds)
            yield self._aupguard_head_timer

    handle.reads_heads_with_care = True
    return handle


HEAD_DEADLINE = HeadDeadline()
if not getattr(_http1.Http1Server._handle_event, "reads_heads_with_care", False):  # once, however often imported
    _http1.Http1Server._handle_event = _reading_heads_with_care(_http1.Http1Server._handle_event)  # type: ignore[method-assign]
