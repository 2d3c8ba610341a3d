"""The heuristic: a score for unknown web proxies from host name, path and parameters, flagged at HEURISTIC_THRESHOLD.

benchmarks/README.md, "Circumvention", has the measured false-positive rate.
"""

from __future__ import annotations

import functools
import re

from aupguard.base.urlnorm import NormalizedURL
from aupguard.core.circumvention.urlparts import Params, site_parts

# Heuristic weights. A score is the sum of the signals present, clipped to [0, 1].
# One signal never reaches the threshold alone, so a site is flagged only when
# several independent traits of a web proxy coincide (a proxy word in the name
# someone registered and a throwaway TLD are two).
HOST_WORD = 0.35  # a host label contains proxy, unblock, anonymi, bypass, ...
CHEAP_NAME = 0.35  # ... in the registered name itself, under a TLD sold for a dollar or two (xyz, top, ...)
HOST_WEAK_WORD = 0.15  # a host label token starts with hide, anon, vpn, tunnel, surf, ...
PATH_WORD = 0.35  # a path segment is exactly proxy, browse.php, unblock, webproxy, ...
CARRIED_URL = 0.4  # a parameter or the path carries an absolute URL of another site
OBFUSCATED = 0.15  # ... hidden by base64, rot13, hex or the Ultraviolet xor codec
PROXY_PARAM = 0.2  # ... in a parameter named like a proxy's (u, url, q, link, ...) or in the path
ENTRY_SCRIPT = 0.1  # ... sent to the site root or a single script (/, /index.php, /go.php)
PROXY_FLAGS = 0.2  # proxy option parameters beside it (Glype b=<bits>, PHProxy hl=<hex>, f=frame)
REDIRECT_CONTEXT = -0.3  # ... but named or placed like a login return, redirect or share link
HEURISTIC_THRESHOLD = 0.7


_HOST_WORD_LIST = (
    "proxy", "unblock", "anonymi", "anonymouse", "bypass", "unfilter", "hidemy", "hideme", "hideip", "croxy",
    "proxfree", "hidester",
)  # fmt: skip
# TLDs whose first year sells for about a dollar and that lead the abuse reports (Spamhaus's
# most-abused TLDs, Interisle's phishing studies): where throwaway proxy mirrors are registered.
# A name that says proxy under one is somebody's proxy, not a school's or a company's proxy host.
_CHEAP_TLDS = frozenset(
    {
        "xyz", "top", "click", "sbs", "cfd", "icu", "buzz", "cyou", "bond", "rest", "monster", "lol",
        "quest", "fun", "space", "site", "online", "website", "live", "store", "shop", "pw", "tk",
        "ml", "ga", "cf", "gq", "club", "link", "work",
    }
)  # fmt: skip
_HOST_WEAK_WORD_LIST = ("hide", "anon", "vpn", "tunnel", "surf", "mask", "incognito", "stealth", "unban", "unlock")
_HOST_WORDS = re.compile("|".join(_HOST_WORD_LIST))
_HOST_WEAK_WORDS = re.compile(rf"(?:^|[-0-9])(?:{'|'.join(_HOST_WEAK_WORD_LIST)})")
# Every word above anywhere in the host: most hosts have none, and skip the public-suffix lookup.
_ANY_HOST_WORD = re.compile("|".join(_HOST_WORD_LIST + _HOST_WEAK_WORD_LIST))
_PATH_WORDS = frozenset(
    {
        "proxy", "proxy.php", "webproxy", "browse.php", "unblock", "unblocker", "unblock.php",
        "anonymizer", "anonymiser", "anonymouse", "surf.php", "glype", "phproxy", "poxy",
        "miniproxy.php", "cgiproxy", "nph-proxy.cgi", "nph-proxy.pl",
    }
)  # fmt: skip
_PROXY_PARAMS = frozenset(
    {"u", "url", "q", "uri", "link", "site", "addr", "address", "go", "proxy", "web", "surf", "href"}
)
_REDIRECT_PARAMS = frozenset(
    {
        "next", "return", "returnto", "return_to", "returnurl", "return_url", "returnpath", "redirect",
        "redirect_uri", "redirect_url", "redirecturl", "redirect_to", "redirectto", "continue",
        "callback", "callback_url", "callbackurl", "service", "relaystate", "goto", "done",
        "success_url", "successurl", "cancel_url", "cancelurl", "error_url", "back", "backurl",
        "back_url", "referer", "referrer", "ref", "origin", "source", "from", "dest", "destination",
        "target", "login_redirect", "forward", "wreply", "post_logout_redirect_uri", "landing",
    }
)  # fmt: skip
_REDIRECT_SEGMENTS = frozenset(
    {
        "url", "l.php", "redirect", "redirect.php", "redir", "away", "away.php", "out", "out.php",
        "exit", "leave", "link", "linkfilter", "outbound", "click", "r.php", "share", "sharer",
        "sharer.php", "intent", "tweet", "submit", "share-offsite", "sharing", "login", "signin",
        "sign-in", "logout", "authorize", "auth", "oauth", "oauth2", "sso", "saml", "callback",
    }
)  # fmt: skip
_SCRIPT_NAME = re.compile(r"\.(?:php[0-9]?|cgi|pl|aspx?|jsp)\Z")
_FLAG_PARAMS = re.compile(r"(?:b=[0-9]{1,5}|hl=[0-9a-f]{1,3}|f=(?:frame|norefer))\Z")


@functools.lru_cache(maxsize=4096)
def _host_weight(host: str) -> float:
    """HOST_WORD (+ CHEAP_NAME), HOST_WEAK_WORD or 0 for a host's labels left of its public suffix."""
    registered, labels = site_parts(host)
    if any(_HOST_WORDS.search(label) for label in labels):
        # The registered name, not a subdomain: 3.unblocker.xyz, not proxy.university.ac.uk.
        name, _, suffix = registered.partition(".")
        if suffix in _CHEAP_TLDS and _HOST_WORDS.search(name):
            return HOST_WORD + CHEAP_NAME
        return HOST_WORD
    if any(_HOST_WEAK_WORDS.search(label) for label in labels):
        return HOST_WEAK_WORD
    return 0.0


def _segments(path: str) -> list[str]:
    return [segment for segment in path.lower().split("/", 16)[:16] if segment]


def heuristic_score(
    url: NormalizedURL, params: Params, carried: tuple[str, str, str] | None, path_carried: bool
) -> float:
    """Sum of heuristic weights; `carried` is the strongest (param name, URL, encoding) of another site."""
    score = 0.0 if url.is_ip or not _ANY_HOST_WORD.search(url.host) else _host_weight(url.host)
    segments = _segments(url.path)
    if not _PATH_WORDS.isdisjoint(segments):
        score += PATH_WORD
    if carried is not None:
        name, _, encoding = carried
        score += CARRIED_URL
        if encoding not in ("plain", "percent"):
            score += OBFUSCATED
        if path_carried or name in _PROXY_PARAMS:
            score += PROXY_PARAM
        if not segments or (len(segments) == 1 and _SCRIPT_NAME.search(segments[0])):
            score += ENTRY_SCRIPT
        if name in _REDIRECT_PARAMS or not _REDIRECT_SEGMENTS.isdisjoint(segments):
            score += REDIRECT_CONTEXT
        if any(_FLAG_PARAMS.match(f"{key}={value}") for key, value in params if key in ("b", "hl", "f")):
            score += PROXY_FLAGS
    return round(min(1.0, max(0.0, score)), 3) if score else 0.0
