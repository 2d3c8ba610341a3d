"""The block page: whatever it reflects is escaped, and its headers keep it inert. No proxy needed."""

from __future__ import annotations

import re

import markupsafe
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aupguard.proxy import blockpage

# Raw, not percent-encoded: a policy's text, a list's label or a request's parts may hold any of these.
HOSTILE = "<script>alert(\"x\")</script><img src=x onerror='y'> & co"
FIELDS = (
    "school_name", "category_label", "reason", "url", "ref", "it_contact", "accidental", "circumvention_note",
    "report_url", "report_token", "title", "date", "time",
)  # fmt: skip


def render_hostile(accept: str = "text/html", leave_out: str = "accidental") -> tuple[str, dict[str, str]]:
    """The page with a distinct hostile value in every field it shows (the accidental note or the circumvention
    note: a page shows one of them)."""
    values = {name: f"{name}:{HOSTILE}" for name in FIELDS}
    if leave_out == "circumvention_note":
        values["circumvention_note"] = None  # type: ignore[assignment]
    page = blockpage.render(accept=accept, **values)
    del values[leave_out]
    return page.body.decode("utf-8"), values


@pytest.mark.parametrize("leave_out", ["accidental", "circumvention_note"])
def test_every_field_is_escaped_in_the_html_page(leave_out):
    body, values = render_hostile(leave_out=leave_out)
    assert "<script" not in body and "<img" not in body and "onerror='" not in body and "& co" not in body
    for name, value in values.items():
        assert str(markupsafe.escape(value)) in body, f"{name} is missing or not escaped"
        assert value not in body
    # Quotes are escaped too, so no value can leave an attribute (the forms' hidden fields and action).
    assert 'value="ref:&lt;script&gt;alert(&#34;x&#34;)' in body
    assert 'action="report_url:&lt;script&gt;' in body
    assert "&#39;y&#39;" in body and "&amp; co" in body


def test_the_forms_are_there_with_the_report_url_and_token():
    page = blockpage.render(
        accept=None, school_name="S", category_label="L", reason="R", url="http://x.example/", date="d", time="t",
        ref="AG-2222-3333", it_contact="IT", accidental="A", report_url="http://aupguard.invalid/report",
        report_token="ab" * 16,
    )  # fmt: skip
    body = page.body.decode()
    assert body.count('<form method="post" action="http://aupguard.invalid/report"') == 2
    assert body.count(f'name="token" value="{"ab" * 16}"') == 2


def test_the_text_form_is_one_line_without_control_characters():
    page = blockpage.render(
        accept="application/json", school_name="S\r\nX-Injected: 1", category_label="L\x00", reason="R", url="u",
        date="d", time="t", ref="AG-2222-3333", it_contact="IT\n", accidental="A",
    )  # fmt: skip
    assert page.content_type.startswith("text/plain")
    text = page.body.decode()
    assert text.count("\n") == 1 and text.endswith("\n")
    assert not re.search(r"[\x00-\x09\x0b-\x1f]", text)


def test_security_headers_allow_only_inline_style_and_posting_to_the_report_app():
    headers = blockpage.security_headers("http://aupguard.invalid/report")
    assert headers["X-Content-Type-Options"] == "nosniff"
    policy = dict(part.strip().split(" ", 1) for part in headers["Content-Security-Policy"].split(";"))
    assert policy == {
        "default-src": "'none'",
        "style-src": "'unsafe-inline'",
        "form-action": "http://aupguard.invalid/report",
        "base-uri": "'none'",
        "frame-ancestors": "'none'",
    }


@pytest.mark.parametrize(
    "report_url", [None, "", "http://a.invalid/r; script-src *", "javascript:alert(1)", "http://a b/"]
)
def test_a_missing_or_odd_report_url_lets_forms_post_nowhere(report_url):
    csp = blockpage.security_headers(report_url)["Content-Security-Policy"]
    assert "form-action 'none';" in csp and "script-src" not in csp


field_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries({name: field_text for name in (*FIELDS, "accent")}),
    st.sampled_from(FIELDS),  # one field absent (None or "") at a time: the template's conditional parts
    st.sampled_from([None, "", "text/html", "application/json"]),
)
def test_the_pre_rendered_page_is_exactly_what_jinja_renders(values, absent, accept):
    """render() fills a once-rendered skeleton: byte for byte what rendering the template each time gives."""
    if absent in ("ref", "report_url", "report_token", "circumvention_note"):
        values[absent] = None if len(values[absent]) % 2 else ""
    page = blockpage.render(accept=accept, **values)
    jinja_values = {
        **values,
        "url": blockpage._shown_url(values["url"]),
        "report_url": values["report_url"] if values["ref"] and values["report_token"] else None,
    }
    environment = blockpage._environment()
    if blockpage.wants_html(accept):
        expected = environment.get_template("block.html").render(jinja_values).encode()
    else:
        text = blockpage._CONTROL.sub(" ", environment.get_template("block.txt").render(jinja_values)).strip()
        expected = (text + "\n").encode()
    assert page.body == expected


def test_a_circumvention_page_has_one_tone():
    """A detected bypass gets the AUP note alone; any other block the "you are not in trouble" one alone."""
    values = {
        "accept": "text/html", "school_name": "S", "category_label": "Web proxy", "reason": "R", "url": "http://x/",
        "date": "d", "time": "t", "ref": "AG-2222-3333", "it_contact": "IT", "accidental": "You are not in trouble.",
    }  # fmt: skip
    bypass = blockpage.render(**values, circumvention_note="It is against our AUP.").body.decode()
    assert "against our AUP" in bypass and "not in trouble" not in bypass
    other = blockpage.render(**values).body.decode()
    assert "not in trouble" in other and "against our AUP" not in other


# -- the same promises, stated literally ------------------------------------------------------------

PLAIN = {
    "accept": None, "school_name": "S", "category_label": "L", "reason": "R", "url": "http://x.example/", "date": "d",
    "time": "t", "ref": "AG-2222-3333", "it_contact": "IT", "accidental": "A",
    "report_url": "http://aupguard.invalid/report", "report_token": "ab" * 16,
}  # fmt: skip


@pytest.mark.parametrize("missing", ["ref", "report_token", "report_url"])
def test_no_form_without_a_reference_a_token_and_a_report_url(missing):
    body = blockpage.render(**{**PLAIN, missing: None}).body.decode()
    assert "<form" not in body and 'name="token"' not in body and "aupguard.invalid" not in body


def test_control_characters_in_the_text_form_are_shown_as_a_space():
    page = blockpage.render(
        **{**PLAIN, "accept": "application/json", "school_name": "S\r\nX-Injected: 1", "category_label": "L\x00",
           "it_contact": "IT\n"},
    )  # fmt: skip
    assert page.body == (
        b"Blocked by S  X-Injected: 1's web filter: L . Reference AG-2222-3333. d t. Tell IT  if this is a mistake.\n"
    )
    without_ref = blockpage.render(**{**PLAIN, "accept": "text/plain", "ref": None})
    assert without_ref.body == b"Blocked by S's web filter: L. d t. Tell IT if this is a mistake.\n"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://x.example/" + "a" * 283, "http://x.example/" + "a" * 283),  # 300 characters: shown whole
        ("http://x.example/" + "a" * 400, "http://x.example/" + "a" * 282 + "…"),  # cut to 300 with the ellipsis
        ("http://x.example/a\r\nb\x00c\x7fd\te", "http://x.example/abcde"),  # control characters dropped
        ("http://x.example/<b>?q=\"1\"&r='2'", "http://x.example/&lt;b&gt;?q=&#34;1&#34;&amp;r=&#39;2&#39;"),
    ],
)
def test_the_shown_url(url, shown):
    body = blockpage.render(**{**PLAIN, "url": url}).body.decode()
    assert f'<p class="url">{shown}</p>' in body
