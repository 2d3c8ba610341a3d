"""A benign URL set for measuring circumvention false positives: sites schools allow, in ordinary shapes.

Hosts come from UT1 categories a school leaves open (press, bank, jobsearch,
sports, cooking, radio, child, educational_games); each URL gets a shape seen
on such sites: home pages, articles, site searches, pagination, tracking
parameters, static assets, APIs, and the tricky ones that carry URLs without
being proxies: login return URLs (relative, same host, same site), OAuth and
SAML redirects to another site, search-engine and social redirects, share
buttons, analytics beacons, embeds and viewers. Deterministic for a seed.

    from benchmarks.benign_urls import benign_urls
    for shape, url in benign_urls(Path("../shared/blocklists-ut1")): ...
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote

CATEGORIES = ("press", "bank", "jobsearch", "sports", "cooking", "radio", "child", "educational_games")
DEFAULT_COUNT = 24_000
DEFAULT_SEED = 20240501
_HOSTS_PER_CATEGORY = 2_500
_IPV4 = re.compile(r"[0-9.]+")

WORDS = [
    "school",
    "budget",
    "council",
    "election",
    "weather",
    "football",
    "cricket",
    "rugby",
    "recipe",
    "chocolate",
    "cake",
    "bread",
    "science",
    "maths",
    "history",
    "geography",
    "climate",
    "energy",
    "space",
    "rocket",
    "museum",
    "library",
    "exam",
    "results",
    "revision",
    "holiday",
    "summer",
    "winter",
    "olympics",
    "league",
    "final",
    "match",
    "transfer",
    "player",
    "coach",
    "health",
    "vaccine",
    "hospital",
    "train",
    "strike",
    "housing",
    "market",
    "bank",
    "savings",
    "account",
    "mortgage",
    "career",
    "graduate",
    "apprenticeship",
    "nurse",
    "teacher",
    "engineer",
    "developer",
    "london",
    "manchester",
    "leeds",
    "bristol",
    "cardiff",
    "glasgow",
    "belfast",
    "review",
    "guide",
    "tips",
    "best",
    "easy",
    "quick",
    "homemade",
    "vegan",
    "chicken",
    "pasta",
    "soup",
    "salad",
    "music",
    "radio",
    "podcast",
    "playlist",
    "interview",
    "live",
    "news",
    "sport",
    "business",
    "technology",
    "culture",
]
SECTIONS = ("news", "sport", "business", "world", "uk", "politics", "culture", "recipes", "jobs", "money", "life")
PARTNERS = (
    "https://www.bbc.co.uk/news", "https://www.gov.uk/", "https://en.wikipedia.org/wiki/Climate",
    "https://www.nhs.uk/conditions/", "https://www.theguardian.com/uk", "https://www.met.police.uk/",
    "https://www.ucas.com/", "https://www.nationalgeographic.com/science",
)  # fmt: skip


class BenignURL(NamedTuple):
    shape: str
    url: str


def load_hosts(ut1_dir: Path, seed: int = DEFAULT_SEED) -> list[str]:
    """Up to _HOSTS_PER_CATEGORY domains from each allowed category, sampled deterministically."""
    rng = random.Random(seed)
    hosts: list[str] = []
    for category in CATEGORIES:
        path = ut1_dir / category / "domains"
        if not path.is_file():
            continue
        names = sorted(
            line.strip().lower()
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
            if line.strip() and not line.startswith("#") and "/" not in line
        )
        names = [name for name in names if not _IPV4.fullmatch(name)]  # shapes below need host names
        rng.shuffle(names)
        hosts.extend(names[:_HOSTS_PER_CATEGORY])
    return hosts


def _slug(rng: random.Random) -> str:
    return "-".join(rng.choice(WORDS) for _ in range(rng.randint(2, 7)))


def _terms(rng: random.Random) -> str:
    return "+".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))


def _www(host: str) -> str:
    return host if host.count(".") >= 2 else "www." + host


def _page_param(rng: random.Random, host: str) -> str:
    """An article on `host` as a parameter value (percent-encoded): what share, redirect, beacon and embed links carry."""
    return quote(f"https://{_www(host)}/{rng.choice(SECTIONS)}/{_slug(rng)}", safe="")


def _hex(rng: random.Random, length: int) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(length))


def _token(rng: random.Random, length: int) -> str:
    return "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789") for _ in range(length))


# Each shape: (name, weight, builder(rng, host) -> URL).
def _homepage(rng, host):
    return f"https://{_www(host)}/"


def _article(rng, host):
    forms = (
        f"/{rng.choice(SECTIONS)}/{rng.randint(2015, 2025)}/{rng.randint(1, 12):02d}/{_slug(rng)}",
        f"/{rng.choice(SECTIONS)}/{_slug(rng)}-{rng.randint(10000, 99999999)}",
        f"/article/{rng.randint(1000, 999999)}/{_slug(rng)}.html",
        f"/{_slug(rng)}/",
    )
    return f"https://{_www(host)}{rng.choice(forms)}"


def _site_search(rng, host):
    forms = (
        f"/search?q={_terms(rng)}",
        f"/search?q={_terms(rng)}&page={rng.randint(2, 9)}",
        f"/?s={_terms(rng)}",
        f"/index.php?q={_terms(rng)}",
        f"/recherche?q={_terms(rng)}&sort=date",
        f"/jobs?q={_terms(rng)}&l={rng.choice(WORDS)}",
        f"/index.php?q=node/{rng.randint(1, 9999)}",  # Drupal without clean URLs
        f"/index.php?option=com_content&view=article&id={rng.randint(1, 999)}",
    )
    return f"https://{_www(host)}{rng.choice(forms)}"


def _pagination(rng, host):
    forms = (
        f"/{rng.choice(SECTIONS)}/page/{rng.randint(2, 40)}/",
        f"/{rng.choice(SECTIONS)}?page={rng.randint(2, 40)}",
        f"/category/{rng.choice(WORDS)}?p={rng.randint(2, 9)}&sort=newest",
    )
    return f"https://{_www(host)}{rng.choice(forms)}"


def _tracking(rng, host):
    params = rng.choice(
        (
            f"utm_source=newsletter&utm_medium=email&utm_campaign={rng.choice(WORDS)}",
            f"utm_source=facebook&utm_medium=social&fbclid={_token(rng, 40)}",
            f"gclid={_token(rng, 30)}",
            "ref=homepage&src=rss",
        )
    )
    return f"https://{_www(host)}/{rng.choice(SECTIONS)}/{_slug(rng)}?{params}"


def _static(rng, host):
    forms = (
        f"/static/js/app.{_hex(rng, 8)}.js",
        f"/wp-content/uploads/{rng.randint(2015, 2025)}/{rng.randint(1, 12):02d}/{_slug(rng)}.jpg",
        f"/images/logo.png?v={rng.randint(1, 30)}",
        f"/assets/css/site.min.css?ver={rng.randint(1, 9)}.{rng.randint(0, 9)}",
        "/favicon.ico",
    )
    return f"https://{_www(host)}{rng.choice(forms)}"


def _api(rng, host):
    forms = (
        f"/api/v1/articles?limit=20&offset={rng.randint(0, 400)}",
        f"/wp-json/wp/v2/posts?per_page=10&page={rng.randint(1, 9)}",
        f"/wp-admin/admin-ajax.php?action=load_more&page={rng.randint(2, 9)}",
        f"/graphql?operationName=Feed&variables=%7B%22first%22%3A{rng.randint(5, 50)}%7D",
    )
    return f"https://{_www(host)}{rng.choice(forms)}"


def _login_return(rng, host):
    """Return URLs after login: relative, absolute on the same host, or another host of the same site."""
    own = f"https://{_www(host)}/{rng.choice(('account', 'dashboard', 'my', 'checkout'))}/{_slug(rng)}"
    forms = (
        f"/login?next=/{rng.choice(SECTIONS)}/{_slug(rng)}",
        f"/account/login?ReturnUrl=%2F{rng.choice(SECTIONS)}%2F{_slug(rng)}",
        f"/signin?returnUrl={quote(own, safe='')}",
        f"/user/login?destination=node/{rng.randint(1, 999)}",
        f"/login?redirect_to={quote(own, safe='')}&reauth=1",
    )
    if rng.random() < 0.25:
        return f"https://sso.{host}/cas/login?service={quote(own, safe='')}"
    return f"https://{_www(host)}{rng.choice(forms)}"


def _oauth(rng, host):
    """Identity providers send the browser back to the site: redirect_uri and friends on another site."""
    back = quote(f"https://{_www(host)}/auth/callback", safe="")
    client = _token(rng, 24)
    forms = (
        f"https://accounts.google.com/o/oauth2/v2/auth?client_id={client}.apps.googleusercontent.com&redirect_uri={back}&response_type=code&scope=openid%20email&state={_token(rng, 16)}",
        f"https://login.microsoftonline.com/common/oauth2/v2.0/authorize?client_id={_hex(rng, 32)}&response_type=code&redirect_uri={back}&response_mode=query&scope=openid",
        f"https://www.facebook.com/v18.0/dialog/oauth?client_id={rng.randint(10**14, 10**15)}&redirect_uri={back}&state={_token(rng, 12)}",
        f"https://appleid.apple.com/auth/authorize?client_id=com.{host.split('.')[0]}.web&redirect_uri={back}&response_type=code",
        f"https://idp.example-university.ac.uk/idp/profile/SAML2/Redirect/SSO?SAMLRequest={_token(rng, 80)}&RelayState={back}",
    )
    return rng.choice(forms)


def _redirector(rng, host):
    """Search-engine and social click-through links to an allowed page."""
    page = _page_param(rng, host)
    forms = (
        f"https://www.google.com/url?sa=t&rct=j&q=&esrc=s&source=web&cd=&url={page}&ved={_token(rng, 40)}&usg={_token(rng, 28)}",
        f"https://www.google.co.uk/url?q={page}&sa=D&source=editors&ust={rng.randint(10**15, 10**16)}",
        f"https://l.facebook.com/l.php?u={page}&h=AT{_token(rng, 60)}",
        f"https://www.youtube.com/redirect?event=video_description&redir_token={_token(rng, 60)}&q={page}&v={_token(rng, 11)}",
        f"https://{_www(host)}/redirect?url={quote(rng.choice(PARTNERS), safe='')}",
        f"https://{_www(host)}/out?url={quote(rng.choice(PARTNERS), safe='')}&id={rng.randint(1, 999)}",
        f"https://steamcommunity.com/linkfilter/?url={page}",
        f"https://www.bing.com/ck/a?!&&p={_hex(rng, 64)}&u=a1{_token(rng, 60)}&ntb=1",
    )
    return rng.choice(forms)


def _share(rng, host):
    page = _page_param(rng, host)
    forms = (
        f"https://www.facebook.com/sharer/sharer.php?u={page}",
        f"https://twitter.com/intent/tweet?url={page}&text={_terms(rng)}",
        f"https://www.linkedin.com/sharing/share-offsite/?url={page}",
        f"https://pinterest.com/pin/create/button/?url={page}&media={page}.jpg&description={_terms(rng)}",
        f"https://www.reddit.com/submit?url={page}&title={_terms(rng)}",
        f"https://api.whatsapp.com/send?text={_terms(rng)}%20{page}",
        f"mailto:?subject={_terms(rng)}&body={page}".replace("mailto:", f"https://{_www(host)}/share/email"),
    )
    return rng.choice(forms)


def _beacon(rng, host):
    page = _page_param(rng, host)
    forms = (
        f"https://www.google-analytics.com/g/collect?v=2&tid=G-{_token(rng, 10)}&dl={page}&dr=https%3A%2F%2Fwww.google.com%2F&en=page_view",
        f"https://www.facebook.com/tr/?id={rng.randint(10**14, 10**15)}&ev=PageView&dl={page}&rl=&if=false",
        f"https://bat.bing.com/action/0?ti={rng.randint(10**6, 10**7)}&evt=pageLoad&p={page}&r=",
        f"https://googleads.g.doubleclick.net/pagead/ads?client=ca-pub-{rng.randint(10**15, 10**16)}&output=html&url={page}&ref=https%3A%2F%2Fwww.google.com%2F",
        f"https://secure.gravatar.com/avatar/{_hex(rng, 32)}?s=96&d=https%3A%2F%2F{_www(host)}%2Fdefault.png&r=g",
        f"https://www.googletagmanager.com/gtag/js?id=G-{_token(rng, 10)}",
    )
    return rng.choice(forms)


def _embed(rng, host):
    page = _page_param(rng, host)
    forms = (
        f"https://{_www(host)}/wp-json/oembed/1.0/embed?url={page}",
        f"https://www.youtube.com/oembed?url=https%3A%2F%2Fwww.youtube.com%2Fwatch%3Fv%3D{_token(rng, 11)}&format=json",
        f"https://docs.google.com/viewer?url={page}.pdf&embedded=true",
        f"https://{_www(host)}/pdfjs/web/viewer.html?file={page}.pdf",
        f"https://validator.w3.org/nu/?doc={page}",
        f"https://{_www(host)}/embed?url={quote(rng.choice(PARTNERS), safe='')}",
    )
    return rng.choice(forms)


SHAPES: tuple[tuple[str, float, Callable[[random.Random, str], str]], ...] = (
    ("homepage", 10, _homepage),
    ("article", 26, _article),
    ("site-search", 10, _site_search),
    ("pagination", 6, _pagination),
    ("tracking", 8, _tracking),
    ("static", 10, _static),
    ("api", 4, _api),
    ("login-return", 7, _login_return),
    ("oauth", 3, _oauth),
    ("redirector", 5, _redirector),
    ("share", 4, _share),
    ("beacon", 4, _beacon),
    ("embed", 3, _embed),
)


def benign_urls(ut1_dir: Path, count: int = DEFAULT_COUNT, seed: int = DEFAULT_SEED) -> list[BenignURL]:
    """`count` benign URLs (shape, url), deterministic for `seed`; empty when no UT1 hosts are found."""
    hosts = load_hosts(ut1_dir, seed)
    if not hosts:
        return []
    rng = random.Random(seed)
    names = [name for name, _, _ in SHAPES]
    weights = [weight for _, weight, _ in SHAPES]
    builders = {name: build for name, _, build in SHAPES}
    return [
        BenignURL(shape, builders[shape](rng, rng.choice(hosts)))
        for shape in rng.choices(names, weights=weights, k=count)
    ]
