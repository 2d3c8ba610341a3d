"""Circumvention: web-proxy software, URLs carried inside URLs, unknown proxies, DNS over HTTPS.

Lists name yesterday's proxy sites; this package recognises a proxy by what its
URLs look like, so a site put up this morning is caught too. `inspect_url` and
`inspect_request` (here) run every check and return `Finding`s (finding.py);
one module per technique:

- ``signature`` (signatures.py): the URL scheme of a known web-proxy package (Glype, PHProxy,
  php-proxy-app, CGIProxy, Ultraviolet/Scramjet, Rammerhead, node-unblocker,
  CroxyProxy, Alloy), whatever host serves it. Each decoder follows the
  package's own encoder; the source file and function are named beside it.
- ``nested`` (nested.py, decoders.py): a URL carried inside another (a parameter or path holding a plain,
  percent-encoded, base64, rot13, hex or Ultraviolet-xor URL; Google Translate's
  *.translate.goog hosts; web caches; archive snapshots). A nested finding is not
  a verdict on its own: the caller classifies ``inner_url`` too and takes the
  stricter action of the two.
- ``heuristic`` (heuristic.py): a score for unknown web proxies from host name, path and
  parameters; flagged at ``HEURISTIC_THRESHOLD`` (see the weights there and
  benchmarks/README.md, "Circumvention" for the measured false-positive rate).
- ``doh`` (doh.py): a request carrying DNS over HTTPS (``inspect_request`` only).
- ``tunnel`` (tunnel.py): whether the first bytes in a CONNECT tunnel can be an HTTP request
  (``first_line``); proxy/tunnels.py cuts a tunnel that carries neither TLS nor HTTP.

urlparts.py reads the query and the registrable site the checks share.

Hot path: regexes are compiled once, nothing does I/O, and work is bounded:
at most ``MAX_PARAMS`` query parameters are examined, values longer than
``MAX_DECODED`` are not decoded, decoding layers and nested URLs stop at depth
``MAX_DEPTH``. Findings for URLs found inside a URL follow the outer URL's own.
"""

from __future__ import annotations

from aupguard.base.urlnorm import NormalizedURL, URLError, normalize_url
from aupguard.core.circumvention.decoders import MAX_DEPTH, carried_url
from aupguard.core.circumvention.doh import doh_finding
from aupguard.core.circumvention.finding import Finding
from aupguard.core.circumvention.heuristic import HEURISTIC_THRESHOLD, heuristic_score
from aupguard.core.circumvention.nested import nested_service
from aupguard.core.circumvention.signatures import PARAM_SIGNATURES, carried_in_path
from aupguard.core.circumvention.urlparts import cross_site, query_params

__all__ = ["inspect_request", "inspect_url"]

MAX_NESTED_PARAMS = 4  # carried URLs reported per URL


def _inspect_one(url: NormalizedURL) -> list[Finding]:
    params = query_params(url.query)
    service = nested_service(url, params)
    if service is not None:
        # The carrier's parameters and path belong to the carried URL, inspected next.
        return [service]
    findings: list[Finding] = []
    for check in PARAM_SIGNATURES:
        finding = check(url, params)
        if finding is not None:
            findings.append(finding)

    path_carried = carried_in_path(url)
    carried: tuple[str, str, str] | None = None  # (param name, URL, encoding) of another site
    if path_carried is not None:
        name, inner = path_carried
        if name is not None:
            findings.append(Finding("signature", name, inner))
        elif cross_site(url, inner):
            findings.append(Finding("nested", "path-url", inner))
            carried = ("", inner, "plain")

    known = {finding.inner_url for finding in findings}
    nested_count = 0
    for key, value in params:
        found = carried_url(value)
        # A signature's target already covers the parameter it was decoded from (CroxyProxy's origin).
        if found is None or any(inner and inner.startswith(found[0]) for inner in known):
            continue
        if not cross_site(url, found[0]):
            continue
        known.add(found[0])
        if nested_count < MAX_NESTED_PARAMS:
            findings.append(Finding("nested", "param-url", found[0]))
            nested_count += 1
        candidate = (key, found[0], found[1])
        if carried is None or heuristic_score(url, params, candidate, False) > heuristic_score(
            url, params, carried, carried[0] == ""
        ):
            carried = candidate

    if not any(finding.technique == "signature" for finding in findings):
        score = heuristic_score(url, params, carried, carried is not None and carried[0] == "")
        if score >= HEURISTIC_THRESHOLD:
            findings.append(Finding("heuristic", "web-proxy", carried[1] if carried else None, score))
    return findings


def inspect_url(url: NormalizedURL) -> tuple[Finding, ...]:
    """Signatures, nested URLs and heuristic for one URL and, to depth MAX_DEPTH, the URLs inside it."""
    findings: list[Finding] = []
    seen: set[str] | None = None  # URLs already inspected; built when the first carried URL turns up
    pending = [(url, 0)]
    while pending:
        current, depth = pending.pop(0)
        for finding in _inspect_one(current):
            findings.append(finding)
            inner = finding.inner_url
            if inner is None or depth + 1 >= MAX_DEPTH:
                continue
            if seen is None:
                seen = {url.url}
            if inner in seen:
                continue
            seen.add(inner)
            try:
                pending.append((normalize_url(inner), depth + 1))
            except URLError:
                pass
    return tuple(findings)


def inspect_request(
    url: NormalizedURL, method: str, content_type: str | None, accept: str | None
) -> tuple[Finding, ...]:
    """inspect_url plus DNS over HTTPS, recognised by media type or query whatever the host.

    `method` is accepted for the caller's convenience: DoH is recognised by what a
    request carries, and a POST to /dns-query without the media type is no DNS.
    """
    doh = doh_finding(url, content_type, accept)
    findings = inspect_url(url)
    return (*findings, doh) if doh is not None else findings
