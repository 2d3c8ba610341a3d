"""Classification and decisions as plain Python, without the proxy."""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aupguard.base.urlnorm import from_parts, normalize_url
from aupguard.config.loader import load_policy
from aupguard.core.classify import Classifier, url_prefixes
from aupguard.core.decide import decide, filter_error
from aupguard.core.identify import Identity
from aupguard.lists.index import load_index
from aupguard.lists.model import ListRoot
from aupguard.lists.read import load_lists
from aupguard.offline.compile import compile_from_folders
from conftest import BUNDLED_POLICY

LISTS = {
    "adult/domains": "example-adult.com\n192.0.2.7\nпример.рф\n",
    "adult/urls": "example-mixed.org/nsfw\nexample-mixed.org/s/malware.html\nexample-mixed.org/adultpage;v=2/\n",
    "gambling/domains": "bets.example\nexample-adult.com\n",
    "anonymizers/urls": "www.tools.example/proxy/\n",
    "anonymizers/expressions": "(^|[/.?=&])(glype|phproxy)[^/]*/browse\\.php\n",
    "school_allow/domains": "bets.example\n",
}


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Classifier:
    root = tmp_path_factory.mktemp("lists")
    for name, text in LISTS.items():
        (root / name).parent.mkdir(exist_ok=True)
        (root / name).write_text(text)
    return Classifier(load_lists([ListRoot(root, "t")]))


def categories(classifier, url):
    return set(classifier.classify(normalize_url(url)).categories)


@pytest.mark.parametrize(
    "url, expected",
    [
        ("http://example-adult.com/", {"adult", "gambling"}),  # in two lists: both kept
        ("https://deep.sub.EXAMPLE-ADULT.com./x", {"adult", "gambling"}),
        ("http://notexample-adult.com/", set()),  # a domain entry is not a suffix of another name
        ("http://example-adult.com.evil.test/", set()),
        ("http://good.test@example-adult.com/", {"adult", "gambling"}),  # userinfo is not the host
        ("http://example-adult.com:8080/", {"adult", "gambling"}),
        ("http://3221225991/", {"adult"}),  # 192.0.2.7 as a decimal number
        ("http://0xc0.0.2.7/", {"adult"}),
        ("http://xn--e1afmkfd.xn--p1ai/", {"adult"}),  # the IDN entry, written in punycode
        ("http://пример.рф/page", {"adult"}),
        ("http://example-mixed.org/nsfw", {"adult"}),
        ("http://www3.example-mixed.org/NSFW/pics?id=1", {"adult"}),  # www\d* and case, as squidGuard
        ("http://example-mixed.org/nsfwx", set()),  # urls match whole path segments
        ("http://example-mixed.org/safe/../nsfw/a", {"adult"}),  # dot-segments resolved first
        ("http://example-mixed.org/", set()),
        ("http://tools.example/proxy/go?u=1", {"anonymizers"}),
        ("http://any.host.test/glype-2/browse.php?u=abc", {"anonymizers"}),
    ],
)
def test_categories(classifier, url, expected):
    assert categories(classifier, url) == expected


# Each a spelling some mainstream server (nginx, Apache, IIS, a servlet container) serves as the listed page.
SPELLINGS_OF_A_LISTED_PATH = [
    "http://example-mixed.org/adultpage",
    "http://example-mixed.org/adultpage;x",
    "http://example-mixed.org/adultpage;jsessionid=AB12/pic.jpg",
    "http://example-mixed.org/adultpage%2f",
    "http://example-mixed.org/adultpage%2Fpic.jpg",
    "http://example-mixed.org/s%2Fmalware.html",
    "http://example-mixed.org/s%5cmalware.html",
    "http://example-mixed.org/adultpage.",
    "http://example-mixed.org/adultpage%20",
    "http://example-mixed.org/adultpage%00",
    "http://example-mixed.org/adultpage%00.html",
    "http://example-mixed.org//adultpage",
    "http://example-mixed.org/AdultPage",
    "http://example-mixed.org/ok/..;/adultpage",
    "http://example-mixed.org/ok%2f..%2fadultpage",
    "http://example-mixed.org/%61dultpage",
]


@pytest.mark.parametrize("url", SPELLINGS_OF_A_LISTED_PATH)
def test_a_urls_entry_matches_every_server_equivalent_spelling(classifier, url):
    assert categories(classifier, url) == {"adult"}
    # As the proxy builds it from mitmproxy's request: host, port and the raw path apart.
    path = url.removeprefix("http://example-mixed.org")
    assert set(classifier.classify(from_parts("http", "example-mixed.org", 80, path)).categories) == {"adult"}


@pytest.mark.parametrize(
    "url",
    [
        "http://example-mixed.org/adultpages",  # still whole segments only
        "http://example-mixed.org/adult/page",
        "http://example-mixed.org/ok/adultpage",
        "http://example-mixed.org/adultpage%252f",  # one decoding layer, as servers: a file "adultpage%2f"
        "http://example-mixed.org/s/malware.htm",
        "http://example-mixed.org/s%2ftiny/malware.html",
    ],
)
def test_a_urls_entry_does_not_match_other_paths(classifier, url):
    assert categories(classifier, url) == set()


def test_the_compiled_index_matches_the_same_spellings(tmp_path):
    root = tmp_path / "lists"
    (root / "adult").mkdir(parents=True)
    (root / "adult" / "urls").write_text("example-mixed.org/adultpage\nexample-mixed.org/s/malware.html\n")
    summary = compile_from_folders([ListRoot(root, "t")], tmp_path / "lists.idx")
    with load_index(summary.path) as index:
        indexed = Classifier(index)
        for url in SPELLINGS_OF_A_LISTED_PATH:
            assert set(indexed.classify(normalize_url(url)).categories) == {"adult"}, url
        assert not indexed.classify(normalize_url("http://example-mixed.org/adultpages")).matches


def test_every_match_names_its_list_file_and_entry(classifier):
    matches = classifier.classify(normalize_url("http://www.example-mixed.org/nsfw/1")).matches
    assert [(m.category, m.kind, m.entry, m.source) for m in matches] == [
        ("adult", "url", "example-mixed.org/nsfw", "t/adult/urls")
    ]
    (expression,) = classifier.classify(normalize_url("http://x.test/phproxy/browse.php")).matches
    assert expression.kind == "expression" and expression.source == "t/anonymizers/expressions"


def test_url_prefixes_are_bounded_and_segmented():
    assert url_prefixes("example.com") == ["example.com"]
    assert url_prefixes("example.com/a/b?c=1") == [
        "example.com",
        "example.com/a",
        "example.com/a/b",
        "example.com/a/b?c=1",
    ]
    assert len(url_prefixes("h/" + "a/" * 10_000)) <= 33


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=200))
def test_classification_of_any_url_never_fails(classifier, text):
    try:
        url = normalize_url(text)
    except ValueError:
        return
    classifier.classify(url)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True), min_size=1, max_size=5))
def test_a_domain_entry_covers_every_subdomain(classifier, labels):
    assert "adult" in categories(classifier, f"http://{'.'.join(labels)}.example-adult.com/")


# -- decisions -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def policy():
    return load_policy(BUNDLED_POLICY)


def verdict_for(policy, classifier, group, url, when=None):
    identity = Identity(None, "10.0.0.1", group, "test")
    return decide(policy, identity, classifier.classify(normalize_url(url)), when)


def test_pupils_and_staff_get_their_own_policies(policy, classifier):
    assert verdict_for(policy, classifier, "pupils", "http://example-adult.com/").action == "block"
    assert verdict_for(policy, classifier, "staff", "http://example-adult.com/").action == "block"
    assert verdict_for(policy, classifier, "pupils", "http://tools.example/proxy/").action == "block"
    assert verdict_for(policy, classifier, "pupils", "http://unlisted.example/").action == "allow"


def test_the_most_severe_category_is_the_one_explained(policy, classifier):
    decision = verdict_for(policy, classifier, "pupils", "http://example-adult.com/")
    assert decision.category == "adult"  # adult (high) outranks gambling (medium)
    assert decision.severity == policy.categories["adult"].severity
    assert decision.rule == "t/adult/domains: example-adult.com"


def test_the_school_allow_list_overrides_a_block(policy, classifier):
    decision = verdict_for(policy, classifier, "pupils", "http://bets.example/")
    assert decision.action == "allow"
    assert decision.allowed_by[0].category == "school_allow"


def test_a_filter_error_blocks_groups_that_fail_closed(policy):
    pupils = filter_error(policy, Identity(None, "10.0.0.1", "pupils", "test"))
    assert pupils.action == "block" and pupils.category == "filter_error"
    staff = filter_error(policy, Identity(None, "10.0.0.1", "staff", "test"))
    assert staff.action == ("block" if policy.groups["staff"].fail_closed else "allow")


def test_decisions_use_the_bundled_lists(policy):
    bundled = Classifier(load_lists(policy.lists))
    for url in ("https://www.pornhub.com/", "https://bet365.com/", "https://www.instagram.com/"):
        assert verdict_for(policy, bundled, "pupils", url).action == "block", url
    lunch, lesson = datetime(2026, 11, 23, 12, 45), datetime(2026, 11, 23, 9, 30)  # naive: school-local
    assert verdict_for(policy, bundled, "staff", "https://www.instagram.com/", lunch).action == "allow"
    assert verdict_for(policy, bundled, "staff", "https://www.instagram.com/", lesson).action == "block"
    assert verdict_for(policy, bundled, "pupils", "https://www.bbc.co.uk/bitesize").action == "allow"
