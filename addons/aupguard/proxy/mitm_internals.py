"""Every place aupguard reaches into mitmproxy's internals, behind one version fence.

Checked against mitmproxy 11.0.2 (the version pyproject's `mitmproxy>=11.0,<12` installs today);
TESTED_FROM and TESTED_BELOW bound the versions these were read against. Outside that range each
internal below falls back to mitmproxy's own supported path, and says so once in the log:

- `HandlerTable` (mitmproxy's AddonManager: `_iter_hooks`, `trigger_event`, `handle_lifecycle`)
  -> mitmproxy's own dispatch.
- `page_response`, the block page's Response built without its constructor -> `Response.make`.
- the next-layer tricks for CONNECT tunnels (`CutTunnel`, `FirstLineWait`, replacing the layer
  mitmproxy's NextLayer addon chose, peeking at the first line) -> the `tcp_message` hook drops
  what a tunnel carrying no HTTP sends (proxy.tunnels), stricter: no wait for a first line.
- `set_idle_timeout`, mitmproxy's module constant `proxy.server.TCP_TIMEOUT` (read per new connection)
  -> not set: mitmproxy's own idle timeout.
- `install_head_fixes`, the HTTP/1 request-head fixes (wraps `Http1Server._handle_event`, reads h11's
  private `_data`) -> not installed: mitmproxy reads heads as it does itself.
"""

from __future__ import annotations

import inspect
import logging
import re
import time
from collections.abc import Callable, Iterator
from functools import lru_cache

from mitmproxy import addonmanager, exceptions, flow, hooks, http
from mitmproxy import version as mitmproxy_version
from mitmproxy.net.http import status_codes
from mitmproxy.proxy import commands, events, layer
from mitmproxy.proxy import server as proxy_server

from aupguard.core.circumvention.tunnel import FIRST_LINE_WAIT, FirstLine, first_line
from aupguard.proxy import blockpage

log = logging.getLogger(__name__)

TESTED_FROM = (11, 0, 2)  # the internals below were read against these mitmproxy versions
TESTED_BELOW = (11, 1)
_fell_back: set[str] = set()  # the internals already logged as not used
_AFTER_RELEASE = re.compile(r"[^0-9.].*")  # what follows the release numbers


@lru_cache(maxsize=4)
def _release(text: str) -> tuple[int, ...]:
    """ "11.0.2" -> (11, 0, 2); a suffix such as ".dev0" or "rc1" ends the number."""
    return tuple(int(part) for part in _AFTER_RELEASE.sub("", text).split(".") if part)


def fenced(internal: str) -> bool:
    """Whether `internal` may be used with the running mitmproxy; logs once per internal when not."""
    running = mitmproxy_version.VERSION
    if TESTED_FROM <= _release(running) < TESTED_BELOW:
        return True
    if internal not in _fell_back:
        _fell_back.add(internal)
        log.warning(
            "aupguard: mitmproxy %s is outside the versions its internals were checked against (%s to before %s):"
            " %s uses mitmproxy's supported path instead",
            running,
            ".".join(map(str, TESTED_FROM)),
            ".".join(map(str, TESTED_BELOW)),
            internal,
        )
    return False


# -- the handler table ---------------------------------------------------------------------------------


class HandlerTable:
    """For each event, the chain's handlers of it, found once: what mitmproxy's AddonManager looks up per event.

    mitmproxy's trigger_event walks the whole chain for every event of every flow, and again for
    its "update" event, entering a context manager and a coroutine per addon, and rebuilds the
    hook's argument list (`Hook.args`, a dataclasses.fields walk) for each one: ~130 of them per
    proxied request, nearly all for addons without a handler. `install` gives the manager a
    trigger_event and handle_lifecycle that call only the handlers listed here, so nothing else
    changes: the same handlers run in chain order (sub-addons, e.g. loaded scripts, after their
    parent), each top-level addon under mitmproxy's `safecall`, AddonHalt still stops the event,
    async handlers are awaited, and "update" is sent for a flow whenever anything handles it.

    The table is rebuilt on the first event after the chain can have changed: an addon registered
    or removed (that is also how scripts load, reload and unload) or any option set (scripts are
    reordered by the `scripts` option without either).
    """

    def __init__(self, manager) -> None:
        self.manager = manager
        self._handlers: dict[str, tuple[tuple[Callable, ...], ...]] = {}

    def install(self) -> bool:
        """Take over the manager's dispatch; False (mitmproxy's own dispatch stays) outside the tested versions."""
        if not fenced("the handler table"):
            return False
        manager = self.manager
        for name in ("register", "add", "remove", "clear"):
            setattr(manager, name, self._invalidating(getattr(manager, name)))
        manager.master.options.changed.connect(self.invalidate)
        manager.trigger_event = self.trigger_event
        manager.handle_lifecycle = self.handle_lifecycle
        return True

    def invalidate(self, *_, **__) -> None:
        self._handlers = {}

    def _invalidating(self, method: Callable) -> Callable:
        def changed_chain(*args, **kwargs):
            try:
                return method(*args, **kwargs)
            finally:
                self.invalidate()

        return changed_chain

    def handlers(self, event: hooks.Hook) -> tuple[tuple[Callable, ...], ...]:
        """Per top-level addon that handles `event` (in chain order), its handler functions."""
        try:
            return self._handlers[event.name]
        except KeyError:
            pass
        found = []
        for addon in self.manager.chain:
            try:
                functions = tuple(function for _, function in self.manager._iter_hooks(addon, event))
            except exceptions.AddonManagerError as error:  # an attribute named like the event, not callable:
                functions = (_raising(error),)  # logged on every event, as mitmproxy does
            if functions:
                found.append(functions)
        self._handlers[event.name] = handlers = tuple(found)
        return handlers

    async def trigger_event(self, event: hooks.Hook) -> None:
        await self._call(event, event.args())

    async def _call(self, event: hooks.Hook, args: list) -> None:
        for functions in self.handlers(event):
            try:
                with addonmanager.safecall():
                    for function in functions:
                        result = function(*args)
                        if result is not None and inspect.isawaitable(result):
                            await result
            except exceptions.AddonHalt:
                return

    async def handle_lifecycle(self, event: hooks.Hook) -> None:
        args = event.args()
        await self._call(event, args)
        if isinstance(args[0], flow.Flow):
            update = hooks.UpdateHook([args[0]])
            if self.handlers(update):
                await self._call(update, update.args())


def _raising(error: Exception) -> Callable:
    def handler(*_):
        raise error

    return handler


# -- the block page's Response -------------------------------------------------------------------------


def page_response(page: blockpage.BlockPage, fields: tuple[tuple[bytes, bytes], ...]) -> http.Response:
    """What http.Response.make(page.status, page.body, fields) gives, made from ready header bytes.

    Built without Response's constructor: when Python runs without -O, mitmproxy type-checks every
    field of every Response it makes (MessageData.__post_init__), a fifth of a block's cost in
    aupguard, and these fields are of fixed, known types, so the check could only pass.
    tests/test_hotpath.py checks the result equals Response.make's, so a mitmproxy that changes
    how a Response holds its data fails the tests rather than the proxy.
    """
    if not fenced("the block page's Response"):
        return http.Response.make(page.status, page.body, fields)
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


# -- the next-layer tricks for CONNECT tunnels ---------------------------------------------------------


def tunnel_layers_fenced() -> bool:
    """Whether the layer replacement below may be used (else proxy.tunnels cuts by the `tcp_message` hook)."""
    return fenced("cutting CONNECT tunnels by their first line")


def choose_now(master, nextlayer: layer.NextLayer) -> None:
    """Let mitmproxy's NextLayer addon choose the protocol from the first bytes now (scripts' hooks run first)."""
    master.addons.get("nextlayer").next_layer(nextlayer)


class CutTunnel(layer.Layer):
    """Takes the place of the layer mitmproxy chose for a tunnel, and closes it: nothing is relayed."""

    closed = False

    def _handle_event(self, event):
        if self.closed:
            return
        self.closed = True
        yield commands.CloseConnection(self.context.client)
        if self.context.server.connected:
            yield commands.CloseConnection(self.context.server)


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

    def _hand_over(self, child: layer.Layer, *held: events.Event) -> Iterator[commands.Command]:
        self.child, self.events = child, []
        for event in held:
            yield from child.handle_event(event)


def withdraw(nextlayer: layer.NextLayer) -> None:
    """Take back the layer chosen for a tunnel, and the layers it put on the stack, so that another can replace it."""
    layers = nextlayer.context.layers
    if nextlayer.layer is not None and nextlayer.layer in layers:
        del layers[layers.index(nextlayer.layer) :]
    nextlayer.layer = None


def cut(nextlayer: layer.NextLayer) -> None:
    """Put a `CutTunnel` in the place of the layer chosen for a tunnel (made after the withdrawal: a new layer
    puts itself on the context's stack)."""
    withdraw(nextlayer)
    nextlayer.layer = CutTunnel(nextlayer.context)


def hold_for_first_line(nextlayer: layer.NextLayer, on_timeout: Callable[[], None]) -> None:
    """Put a `FirstLineWait` in the place of the layer chosen for a tunnel."""
    withdraw(nextlayer)
    nextlayer.layer = FirstLineWait(nextlayer.context, on_timeout)


# -- the HTTP/1 request-head fixes ---------------------------------------------------------------------


class HeadDeadline:
    """The settings the wrapped layers read (set from the wiring addon's options in `configure`)."""

    seconds: float = 30.0


HEAD_DEADLINE = HeadDeadline()


class _HeadTimer(commands.RequestWakeup):
    """A wakeup asked for by the deadline below, told apart from any mitmproxy asks for."""


def _leading_blank_line(data: bytearray) -> int:
    """The length of the empty line (CRLF or a bare LF, as h11 accepts) at the start of `data`, or 0."""
    if data[:1] == b"\n":
        return 1
    return 2 if data[:2] == b"\r\n" else 0


def _reading_heads_with_care(handle_event, error_response):
    def handle(self, event):
        if isinstance(event, events.Wakeup) and isinstance(event.command, _HeadTimer):
            if event.command is getattr(self, "_aupguard_head_timer", None) and self.state == self.read_headers:
                yield commands.SendData(self.conn, error_response(408, "request head not sent in time"))
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

    handle.reads_heads_with_care = True  # type: ignore[attr-defined]
    return handle


def install_head_fixes() -> bool:
    """Two fixes to how mitmproxy's HTTP/1 server end reads a request head, installed once.

    - Empty lines before a request line are skipped, as RFC 9112 2.2 says a server should: h11's
      buffer drops one and answers "no head" (an empty list), which mitmproxy takes for "not yet",
      so a client sending "\\r\\n\\r\\nGET ..." in one piece waited forever.
    - A request head must be whole within `HEAD_DEADLINE.seconds` of its first byte, or the client
      gets 408 and the connection closes: mitmproxy itself waits for the rest of a head for as long
      as bytes keep coming (a slow-loris client holds a connection for ever). Idle connections are
      mitmproxy's own watchdog's (`proxy.server.TCP_TIMEOUT`, `set_idle_timeout`).

    Both wrap `Http1Server._handle_event`, so a mitmproxy that changes it fails tests/test_request_holes.py.
    False when not installed (outside the tested versions).
    """
    if not fenced("the HTTP/1 request-head fixes"):
        return False
    # Imported only inside the fence: a mitmproxy without this private module must still load aupguard.
    from mitmproxy.proxy.layers.http import _http1

    server = _http1.Http1Server
    if not getattr(server._handle_event, "reads_heads_with_care", False):  # once, however often called
        server._handle_event = _reading_heads_with_care(server._handle_event, _http1.make_error_response)  # type: ignore[method-assign]
    return True


# -- the idle timeout ----------------------------------------------------------------------------------

# mitmproxy's own, the option's default; read with a default so that a mitmproxy without the constant loads.
IDLE_TIMEOUT_DEFAULT: int = getattr(proxy_server, "TCP_TIMEOUT", 600)


def set_idle_timeout(seconds: int) -> bool:
    """Close connections silent for `seconds` (new connections): mitmproxy has no option for it, only its
    module constant, read per connection. False when not set (outside the tested versions)."""
    if not fenced("the idle timeout"):
        return False
    proxy_server.TCP_TIMEOUT = seconds
    return True
