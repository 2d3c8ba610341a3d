"""Act: the page a blocked request gets instead of the site.

HTML for browsers (readable on a phone, every value autoescaped), one line of
text for clients that do not accept HTML (apps, curl, update agents).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import jinja2

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
    values = dict(
        school_name=school_name,
        category_label=category_label,
        reason=reason,
        url=_shown_url(url),
        date=date,
        time=time,
        ref=ref,
        it_contact=it_contact,
        accidental=accidental,
        circumvention_note=circumvention_note,
        title=title,
        accent=accent,
        report_url=report_url if ref and report_token else None,
        report_token=report_token,
    )
    if wants_html(accept):
        html = _environment().get_template("block.html").render(values)
        return BlockPage(403, "text/html; charset=utf-8", html.encode("utf-8"))
    text = _CONTROL.sub(" ", _environment().get_template("block.txt").render(values)).strip()
    return BlockPage(403, "text/plain; charset=utf-8", (text + "\n").encode("utf-8"))


def _shown_url(url: str) -> str:
    url = _CONTROL.sub("", url)
    return url if len(url) <= MAX_SHOWN_URL else url[: MAX_SHOWN_URL - 1] + "…"
