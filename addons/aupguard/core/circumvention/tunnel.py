"""Tunnels: whether the first bytes a client sends into a CONNECT tunnel can be an HTTP request line."""

from __future__ import annotations

import enum
import re

FIRST_LINE_WAIT = 3.0  # seconds a tunnel may take to finish what could still be an HTTP request line
MAX_REQUEST_LINE = 16384  # bytes: twice the 8 KiB request line nginx and Apache accept by default

# RFC 9112 §3: request-line = method SP request-target SP HTTP-version, ended by CRLF or a bare
# LF (§2.2); the method is a token (RFC 9110 §5.6.2). The target is any run of non-blank bytes,
# as mitmproxy's own parser takes it, so that a raw UTF-8 path is no reason to cut.
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_TARGET = rb"[^\x00-\x20\x7f]"
_REQUEST_LINE = re.compile(_TOKEN + rb"+ " + _TARGET + rb"+ HTTP/[0-9]\.[0-9]\r?\n")
# The bytes so far could still become one: a method, a method and a target, or both and any leading
# part of the version ("H", "HT", ..., "HTTP/1.1\r").
_REQUEST_LINE_START = re.compile(
    _TOKEN
    + rb"*|"
    + _TOKEN
    + rb"+ "
    + _TARGET
    + rb"*|"
    + _TOKEN
    + rb"+ "
    + _TARGET
    + rb"+ (?:H(?:T(?:T(?:P(?:/(?:[0-9](?:\.(?:[0-9]\r?)?)?)?)?)?)?)?)?"
)


class FirstLine(enum.Enum):
    REQUEST = "an HTTP request line"
    PARTIAL = "what could still become one"
    NOT_HTTP = "no HTTP request line"


def first_line(data: bytes) -> FirstLine:
    """What the first bytes a client sends into a tunnel are, read as the start of an HTTP/1 request.

    A TLS record is not judged here (the caller sees TLS first); anything else is HTTP only if its
    first line is a request line, and can stay PARTIAL only until the line ends or grows past
    MAX_REQUEST_LINE bytes.
    """
    if _REQUEST_LINE.match(data):
        return FirstLine.REQUEST
    if b"\n" in data or len(data) > MAX_REQUEST_LINE or not _REQUEST_LINE_START.fullmatch(data):
        return FirstLine.NOT_HTTP
    return FirstLine.PARTIAL
