"""The response addon: what every response passing through gets, whoever it is for.

Alt-Svc is removed (h3=... invites the browser to reach the site over QUIC, UDP, around this
proxy), and a block page put in place of a server's response that had no body to stream goes
back in once mitmproxy has stored the (empty) server body in it.
"""

from __future__ import annotations

from mitmproxy import http

from aupguard.proxy.blocking import BLOCKED, PAGE
from aupguard.proxy.current import Current


class Responses:
    name = "aupguard-responses"  # its name in mitmproxy's addon chain

    def __init__(self, current: Current) -> None:
        self.current = current

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if self.current.engine is None or flow.response is None or BLOCKED in flow.metadata:
            return  # (mitmproxy calls this for aupguard's own block page too: nothing to change there)
        if "alt-svc" in flow.response.headers:
            del flow.response.headers["alt-svc"]

    def response(self, flow: http.HTTPFlow) -> None:
        page = flow.metadata.get(PAGE)
        if page is not None and flow.response is not None:
            flow.response.content = page
