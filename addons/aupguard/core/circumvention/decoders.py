"""Carried URLs: whether a text is, or decodes to, an absolute URL.

Plain, percent-encoded, base64, rot13, hex or Ultraviolet-xor, layered up to MAX_DEPTH deep, on texts of
at most MAX_DECODED characters: bounded work whatever a request carries.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
from urllib.parse import unquote

MAX_DECODED = 4096  # longest parameter value, path tail or decoded text worked on
MAX_DEPTH = 3  # decoding layers within one value, and URLs nested within URLs


_ABSOLUTE_URL = re.compile(
    r"(?:https?|wss?|ftp)://(?:[^\s/?#@]+@)?"
    r"(?:[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)+\.?|\[[0-9A-Fa-f:.]+\])"
    r"(?::[0-9]{1,5})?(?:[/?#][^\x00-\x20\x7f]*)?",
    re.IGNORECASE,
)
# Cheap gate before any decoding: how an encoded URL starts in each encoding.
_MAYBE_URL = re.compile(r"://|:/|%3A|aHR0|uggc|hvtr|687474|d3M6|d3NzOi|Oi8v|czov", re.IGNORECASE)
BASE64 = re.compile(r"[A-Za-z0-9+/_-]{8,}={0,2}")
HEX = re.compile(r"(?:[0-9A-Fa-f]{2}){8,}")
_SINGLE_SLASH = re.compile(r"^([A-Za-z]+):/(?!/)")


def absolute_url(text: str) -> str | None:
    text = _SINGLE_SLASH.sub(r"\1://", text, count=1)
    return text if _ABSOLUTE_URL.fullmatch(text) else None


def decode_base64(text: str) -> str | None:
    """Standard or URL-safe base64, padded or not, to text; None when it is not."""
    if not BASE64.fullmatch(text):
        return None
    text = text.rstrip("=")
    if len(text) % 4 == 1:
        return None
    try:
        raw = base64.b64decode(text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4), validate=True)
        return raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def uv_xor(text: str) -> str:
    """Ultraviolet's xor codec without its encodeURIComponent: every second character XOR 2.

    Follows src/rewrite/codecs.js `xor.encode`/`xor.decode` (titaniumnetwork-dev/Ultraviolet);
    the codec is its own inverse.
    """
    return "".join(chr(ord(char) ^ 2) if index % 2 else char for index, char in enumerate(text))


def rot13(text: str) -> str:
    return codecs.encode(text, "rot13")


def _try_percent(text: str) -> str | None:
    return unquote(text) if "%" in text else None


def _try_base64(text: str) -> str | None:
    return decode_base64(text)


def _try_rot13(text: str) -> str | None:
    return rot13(text) if text[:4] in ("uggc", "UGGC") else None


def _try_hex(text: str) -> str | None:
    if not HEX.fullmatch(text):
        return None
    try:
        return bytes.fromhex(text).decode("utf-8")
    except UnicodeDecodeError:
        return None


def _try_uv_xor(text: str) -> str | None:
    return uv_xor(text) if text.startswith("hvtr") else None


_DECODERS = (
    ("percent", _try_percent),
    ("base64", _try_base64),
    ("rot13", _try_rot13),
    ("hex", _try_hex),
    ("uv-xor", _try_uv_xor),
)


def decode_url(text: str, depth: int = 0) -> tuple[str, str] | None:
    """(URL, outermost encoding) when `text` is, or decodes to, an absolute URL."""
    url = absolute_url(text)
    if url is not None:
        return url, "plain"
    if depth >= MAX_DEPTH or len(text) > MAX_DECODED:
        return None
    for encoding, decode in _DECODERS:
        decoded = decode(text)
        if decoded is None or decoded == text:
            continue
        found = decode_url(decoded, depth + 1)
        if found is not None:
            inner_encoding = found[1]
            return found[0], encoding if encoding != "percent" or inner_encoding == "plain" else inner_encoding
    return None


def carried_url(value: str) -> tuple[str, str] | None:
    if len(value) < 8 or len(value) > MAX_DECODED or not _MAYBE_URL.search(value, 0, 48):
        return None
    return decode_url(value)
