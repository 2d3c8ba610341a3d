"""Act: the page a blocked request gets instead of the site.

HTML for browsers (readable on a phone, every value autoescaped), one line of
text for clients that do not accept HTML (apps, curl, update agents).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from functools import lru_cache

import jinja2
import markupsafe

# Shown URLs are cut: the page must stay readable and bounded whatever the request.
MAX_SHOWN_URL = 300
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class BlockPage:
    status: int
    content_type: str
    body: bytes


# Sent when the block page itself cannot be made: the request must stay blocked all the same.
MINIMAL = BlockPage(403, "text/plain; charset=utf-8", b"Blocked by the school's web filter.\n")
# A form action that can stand in a CSP source list as it is (no space, quote, comma or semicolon).
_CSP_URL = re.compile(r"https?://[A-Za-z0-9.\-]+(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~/\-]*)?")


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("aupguard", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
        # The templates are bundled: no stat() of the file on every block to see whether it changed.
        auto_reload=False,
    )


@lru_cache(maxsize=4)
def security_headers(report_url: str | None) -> dict[str, str]:
    """Headers every block page is sent with, so that nothing in it can run or load whatever it reflects.

    The page is static HTML with inline CSS: no scripts, images, frames or
    base; its forms may post only to `report_url` (feedback.py's app), and the
    browser must not sniff it into another type. Do not change the returned dict.
    """
    form_action = report_url if report_url and _CSP_URL.fullmatch(report_url) else "'none'"
    return {
        "Content-Security-Policy": (
            f"default-src 'none'; style-src 'unsafe-inline'; form-action {form_action}; "
            "base-uri 'none'; frame-ancestors 'none'"
        ),
        "X-Content-Type-Options": "nosniff",
    }


@lru_cache(maxsize=16)
def header_fields(content_type: str, report_url: str | None, no_store: bool) -> tuple[tuple[bytes, bytes], ...]:
    """The response headers of a page, as the (name, value) bytes pairs mitmproxy's Headers holds:
    made once, not converted from a dict on every block."""
    headers = {"Content-Type": content_type, **({"Cache-Control": "no-store"} if no_store else {})}
    headers.update(security_headers(report_url))
    return tuple((name.encode(), value.encode("utf-8", "surrogateescape")) for name, value in headers.items())


def wants_html(accept: str | None) -> bool:
    """Browsers ask for text/html; a client that sends no Accept header gets HTML too."""
    if not accept:
        return True
    accept = accept.lower()
    return "text/html" in accept or "application/xhtml" in accept or accept.strip().startswith("*/*")


def render(
    *,
    accept: str | None,
    school_name: str,
    category_label: str,
    reason: str,
    url: str,
    date: str,
    time: str,
    ref: str | None,
    it_contact: str,
    accidental: str,
    circumvention_note: str | None = None,
    title: str = "This page is blocked",
    accent: str = "#c0392b",
    report_url: str | None = None,
    report_token: str | None = None,
) -> BlockPage:
    """The page; with `report_url` and `report_token` (feedback.py) it offers "report a mistake" forms."""
    html = wants_html(accept)
    report_url = report_url if ref and report_token else None
    # Everything but the per-request fields is the same for every block of one category under one
    # policy: rendered once (_skeleton), then only the per-request values are escaped and put in.
    parts = _skeleton(
        html, school_name, category_label, reason, it_contact, accidental, circumvention_note, title, accent,
        report_url, bool(ref),
    )  # fmt: skip
    request_values = {"url": _shown_url(url), "date": date, "time": time, "ref": ref, "report_token": report_token}
    pieces = [parts[0]]
    for index in range(1, len(parts), 2):
        value = request_values[parts[index]]
        pieces.append(markupsafe.escape(value) if html else str(value))  # what Jinja's autoescape does (or not)
        pieces.append(parts[index + 1])
    if html:
        return BlockPage(403, "text/html; charset=utf-8", "".join(pieces).encode("utf-8"))
    text = _CONTROL.sub(" ", "".join(pieces)).strip()
    return BlockPage(403, "text/plain; charset=utf-8", (text + "\n").encode("utf-8"))


# Stand-ins for the per-request fields while a skeleton is rendered: random per process, so no
# policy text or list label can contain one, and escaping leaves them as they are.
_SLOT_MARK = secrets.token_hex(8)
_SLOT = re.compile(f"\x00{_SLOT_MARK}:([a-z_]+)\x00")


@lru_cache(maxsize=512)
def _skeleton(
    html: bool,
    school_name: str,
    category_label: str,
    reason: str,
    it_contact: str,
    accidental: str,
    circumvention_note: str | None,
    title: str,
    accent: str,
    report_url: str | None,
    has_ref: bool,
) -> tuple[str, ...]:
    """The rendered template split at the per-request fields: (text, field name, text, field name, ..., text)."""
    slot = {name: f"\x00{_SLOT_MARK}:{name}\x00" for name in ("url", "date", "time", "ref", "report_token")}
    values = dict(
        school_name=school_name, category_label=category_label, reason=reason, it_contact=it_contact,
        accidental=accidental, circumvention_note=circumvention_note, title=title, accent=accent,
        report_url=report_url, **slot,
    )  # fmt: skip
    if not has_ref:
        values["ref"] = None  # the template leaves out what only makes sense with a reference
    rendered = _environment().get_template("block.html" if html else "block.txt").render(values)
    return tuple(_SLOT.split(rendered))


def render_message(title: str, message: str, ref: str | None = None, accent: str = "#2e7d5b") -> bytes:
    """A page of the proxy's own (the report forms' replies) in the block page's frame and style, autoescaped;
    `ref` is shown as the block page shows it, on one line."""
    values = {"title": title, "message": message, "ref": ref, "accent": accent, "school_name": None}
    return _environment().get_template("message.html").render(values).encode("utf-8")


def _shown_url(url: str) -> str:
    url = _CONTROL.sub("", url)
    return url if len(url) <= MAX_SHOWN_URL else url[: MAX_SHOWN_URL - 1] + "…"
