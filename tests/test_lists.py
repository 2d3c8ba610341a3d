"""List files in UT1/squidGuard format: parsing, the UT1 mapping, importing, and the bundled lists."""

from __future__ import annotations

import io
import os
import re
import stat
import tarfile
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from aupguard.base.urlnorm import normalize_host, normalize_url
from aupguard.lists import model as lists
from aupguard.lists import read as reading
from aupguard.lists.mapping import load_mapping
from aupguard.lists.model import ListError, ListRoot, MappedFolder, mapped
from aupguard.lists.read import load_lists
from aupguard.offline import importers
from aupguard.offline.importers import import_ut1
from aupguard.runtime import load_engine
from conftest import write_tree

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "blocklists"
MAPPING = REPO / "config" / "ut1-mapping.yaml"


def architecture_categories() -> set[str]:
    """The category names in ARCHITECTURE.md's "Categories" table."""
    text = (REPO / "ARCHITECTURE.md").read_text()
    section = text.split("## Categories", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|") and "`" in line]
    return {name for row in rows for name in re.findall(r"`([a-z_]+)`", row)}


CATEGORIES = architecture_categories()


def load_one(tmp_path: Path, files: dict[str, str | bytes]) -> lists.ListData:
    return load_lists([ListRoot(write_tree(tmp_path / "lists", files), "t")])


def categories_of(data: lists.ListData, mask: int) -> set[str]:
    return {s.category for s in data.sources if mask >> s.id & 1}


# ---------------------------------------------------------------------------- parsing


def test_comments_blank_lines_and_spacing(tmp_path):
    data = load_one(
        tmp_path,
        {
            "adult/domains": (
                "# a comment\n"
                "\n"
                "   \n"
                "Example-Adult.COM\r\n"  # CRLF and capitals
                "  spaced.test  \n"
                "trailing.test # why it is here\n"
                "tabbed.test\t# a tab before the hash\n"
                "*.wild.test\n"
                ".dotted.test\n"
                "enddot.test.\n"
                "   # an indented comment\n"
            ),
        },
    )
    assert set(data.domains) == {
        "example-adult.com", "spaced.test", "trailing.test", "tabbed.test", "wild.test", "dotted.test", "enddot.test",
    }  # fmt: skip
    assert data.problems == []


def test_invalid_lines_are_skipped_and_reported_with_file_and_line(tmp_path):
    data = load_one(
        tmp_path,
        {"adult/domains": "good.test\nbad host.test\nhash#inside.test\nsecond.test\n[::1\nbad/slash.test\n"},
    )
    path = tmp_path / "lists" / "adult" / "domains"
    assert set(data.domains) == {"good.test", "second.test"}
    lines = [int(re.match(rf"{re.escape(str(path))}:(\d+): ", p).group(1)) for p in data.problems]
    assert lines == [2, 3, 5, 6]


def test_idn_entries_are_stored_as_punycode(tmp_path):
    data = load_one(tmp_path, {"adult/domains": "пример.рф\nxn--e1afmkfd.xn--p1ai\nBÜCHER.example\n"})
    assert set(data.domains) == {"xn--e1afmkfd.xn--p1ai", "xn--bcher-kva.example"}
    assert data.problems == []


def test_ip_entries(tmp_path):
    data = load_one(tmp_path, {"doh/domains": "192.0.2.7\n0xc0.0.2.8\n2001:DB8::1\n[2001:db8::2]\n999.1.1.1\n"})
    assert set(data.domains) == {"192.0.2.7", "192.0.2.8", "2001:db8::1", "2001:db8::2"}
    assert len(data.problems) == 1 and ":5: " in data.problems[0]


def test_a_huge_line_is_skipped_and_the_rest_read(tmp_path):
    huge = "a" * (reading.MAX_LINE_CHARS + 1) + ".test"
    data = load_one(tmp_path, {"adult/domains": f"before.test\n{huge}\nafter.test\n", "adult/expressions": huge})
    assert set(data.domains) == {"before.test", "after.test"}
    assert data.expressions == []
    assert [p.split(": ", 1)[1] for p in data.problems] == ["line longer than 4096 characters"] * 2


def test_undecodable_bytes_spoil_only_their_line(tmp_path):
    data = load_one(tmp_path, {"adult/domains": b"ok.test\nbad\xff\xfe.test\nalso-ok.test\n"})
    assert set(data.domains) == {"ok.test", "also-ok.test"}
    assert len(data.problems) == 1 and ":2: " in data.problems[0]


def test_url_entries_use_the_classifiers_url_list_key(tmp_path):
    data = load_one(
        tmp_path,
        {
            "adult/urls": (
                "www.Example.com/Dir/\n"
                "www3.example.com/other\n"
                "example.org\n"
                "https://pasted.example/with/scheme/\n"
                "example.net/a/?q=x/\n"
                "example.net/b/%7euser/\n"
                "example.net/c#fragment\n"
                "example.net/go?to=http://x.test\n"
                "bad host.test/x\n"
            ),
        },
    )
    assert set(data.urls) == {
        "example.com/dir", "example.com/other", "example.org", "pasted.example/with/scheme",
        "example.net/a?q=x/", "example.net/b/~user", "example.net/c", "example.net/go?to=http://x.test",
    }  # fmt: skip
    assert len(data.problems) == 1 and ":9: " in data.problems[0]
    # What the classifier will ask for the same page.
    assert normalize_url("https://WWW.example.com/dir").url_list_key() in data.urls


def test_expressions_keep_their_text_and_only_whole_line_comments(tmp_path):
    data = load_one(
        tmp_path,
        {
            "anonymizers/expressions": "# glype\n(glype|phproxy)/browse\\.php\n\nfoo[ #]bar\n",
            "adult/very_restrictive_expression": "(sex|teen)\n",  # an opt-in UT1 extra: never read
        },
    )
    anonymizers = next(s for s in data.sources if s.category == "anonymizers")
    assert data.expressions == [(anonymizers.id, "(glype|phproxy)/browse\\.php"), (anonymizers.id, "foo[ #]bar")]


def test_problems_are_bounded_and_counted(tmp_path):
    bad = "".join(f"bad host{n}.test\n" for n in range(1500))
    data = load_one(tmp_path, {"adult/domains": bad})
    assert len(data.problems) == 1001  # MAX_PROBLEMS (1000) shown, and the line that counts the rest
    assert data.problems[-1] == "... and 500 more problems not shown"


def test_an_oversized_file_is_reported_not_loaded(tmp_path, monkeypatch):
    monkeypatch.setattr(reading, "MAX_LIST_FILE_BYTES", 100)
    data = load_one(tmp_path, {"adult/domains": "x.test\n" * 20, "gambling/domains": "small.test\n"})
    assert set(data.domains) == {"small.test"}
    assert len(data.problems) == 1 and "larger than" in data.problems[0]


# The loader takes already-canonical hosts as they are (a fast path); this is
# what makes that safe: it always agrees with normalize_host.
hostlike = st.one_of(
    st.from_regex(r"[a-z0-9-]{1,12}(\.(xn--)?[a-z0-9-]{1,12}){0,3}\.(xn--)?[a-z0-9-]{1,6}", fullmatch=True),
    st.from_regex(r"[0-9]{1,4}(\.[0-9]{1,4}){3}", fullmatch=True),
    st.text(st.characters(codec="utf-8"), max_size=40),
)


def or_none(function, entry):
    try:
        return function(entry)
    except ValueError:  # URLError, or a codec's UnicodeError
        return None


@given(hostlike)
def test_the_fast_path_agrees_with_normalize_host(entry):
    assume(not entry.startswith(("*", ".")))  # stripped first: see test_comments_blank_lines_and_spacing
    expected = or_none(normalize_host, entry)
    assert or_none(lists.domain_key, entry) == expected


# Hosts already canonical by construction: labels of letters and digits joined by single hyphens
# under a letters-only top-level label, and dotted quads without leading zeros.
canonical_label = st.from_regex(r"[a-z0-9]{1,10}(-[a-z0-9]{1,10}){0,2}", fullmatch=True)
canonical_name = st.builds(
    lambda labels, top: ".".join([*labels, top]),
    st.lists(canonical_label, min_size=1, max_size=4),
    st.from_regex(r"[a-z]{2,12}", fullmatch=True),
)
canonical_address = st.lists(st.integers(0, 255).map(str), min_size=4, max_size=4).map(".".join)
CANONICAL_HOSTS = [
    "example.com",
    "www.bbc.co.uk",
    "cri.univ-tlse1.fr",
    "1password.com",
    "a-b.c-d.io",
    "10.0.0.1",
    "255.255.255.255",
    "0.0.0.0",
]


@pytest.mark.parametrize("host", CANONICAL_HOSTS)
def test_a_canonical_host_is_its_own_key(host):
    assert normalize_host(host) == host
    assert lists.domain_key(host) == host
    assert lists.domain_key("*." + host) == lists.domain_key("." + host) == host


@given(st.one_of(canonical_name, canonical_address))
def test_a_host_canonical_by_construction_is_its_own_key(host):
    assert normalize_host(host) == host
    assert lists.domain_key(host) == host


@given(st.binary(max_size=300))
def test_any_bytes_load_without_crashing(tmp_path_factory, content):
    root = tmp_path_factory.mktemp("fuzz")
    data = load_one(root, {"adult/domains": content, "adult/urls": content, "adult/expressions": content})
    for key in data.domains:
        assert normalize_host(key) == key
    assert all(re.match(r".+:\d+: ", problem) for problem in data.problems)


# ---------------------------------------------------------------------------- roots, sources, masks


def test_sources_bits_and_masks_across_roots(tmp_path):
    first = write_tree(
        tmp_path / "one", {"adult/domains": "both.test\nfirst.test\n", "gambling/urls": "both.test/page\n"}
    )
    second = write_tree(tmp_path / "two", {"redir/domains": "both.test\n", "agr/urls": "both.test/page/\n"})
    data = load_lists(
        [ListRoot(first, "blocklists"), ListRoot(second, "ut1", mapping={"redir": "anonymizers", "agr": "hate"})]
    )
    assert [(s.id, s.category, s.name, s.path) for s in data.sources] == [
        (0, "adult", "blocklists/adult", first / "adult"),
        (1, "gambling", "blocklists/gambling", first / "gambling"),
        (2, "hate", "ut1/agr", second / "agr"),
        (3, "anonymizers", "ut1/redir", second / "redir"),
    ]
    assert data.domains == {"both.test": 0b1001, "first.test": 0b0001}
    assert data.urls == {"both.test/page": 0b0110}
    assert data.domain_mask("both.test") == 0b1001 and data.domain_mask("absent.test") == 0
    assert data.url_mask("both.test/page") == 0b0110 and data.url_mask("both.test") == 0


def test_mapping_picks_and_renames_folders(tmp_path):
    root = write_tree(
        tmp_path / "ut1",
        {
            "redirector/domains": "proxy.test\n",
            "strong_redirector/domains": "proxy.test\n",
            "liste_blanche/domains": "white.test\n",
            "unmapped/domains": "other.test\n",
            "vpn/domains": "vpn.test\n",
        },
    )
    mapping = {"redirector": "anonymizers", "strong_redirector": "anonymizers", "liste_blanche": None, "vpn": "vpn"}
    data = load_lists([ListRoot(root, "ut1", mapping=mapping)])
    assert [s.name for s in data.sources] == ["ut1/redirector", "ut1/strong_redirector", "ut1/vpn"]
    assert categories_of(data, data.domains["proxy.test"]) == {"anonymizers"}
    assert data.domains["proxy.test"] == 0b011
    assert set(data.domains) == {"proxy.test", "vpn.test"}


def test_a_mapping_can_leave_some_list_files_of_a_folder_unread(tmp_path):
    root = write_tree(
        tmp_path / "ut1",
        {
            "strict_redirector/domains": "proxy.test\n",
            "strict_redirector/urls": "example.org/anonymiser\n",
            "strict_redirector/expressions": "google\\..*/search.q=cache\n",
            "adult/domains": "a.test\n",
            "adult/expressions": "(porn|xxx)\n",
        },
    )
    mapping = {
        "strict_redirector": MappedFolder("anonymizers", frozenset({"expressions"})),
        "adult": MappedFolder("adult", frozenset({"domains", "urls"})),
    }
    data = load_lists([ListRoot(root, "ut1", mapping=mapping)])
    assert [(s.name, s.category, s.skip) for s in data.sources] == [
        ("ut1/adult", "adult", frozenset({"domains", "urls"})),
        ("ut1/strict_redirector", "anonymizers", frozenset({"expressions"})),
    ]
    assert data.domains == {"proxy.test": 0b10} and data.urls == {"example.org/anonymiser": 0b10}
    assert data.expressions == [(0, "(porn|xxx)")] and data.problems == []
    # The plain form reads every file.
    plain = load_lists([ListRoot(root, "ut1", mapping={"strict_redirector": "anonymizers"})])
    assert plain.expressions == [(0, "google\\..*/search.q=cache")]


def test_folders_that_do_not_count(tmp_path):
    root = write_tree(
        tmp_path / "lists",
        {"adult/domains": "a.test\n", ".hidden/domains": "h.test\n", "Bad Name/domains": "b.test\n", "README.md": "x"},
    )
    (root / "porn").symlink_to(root / "adult")  # a UT1 alias
    data = load_lists([ListRoot(root, "t")])
    assert [s.name for s in data.sources] == ["t/adult"]
    assert set(data.domains) == {"a.test"}
    assert len(data.problems) == 1 and "Bad Name" in data.problems[0]


def test_missing_roots(tmp_path):
    missing = tmp_path / "nowhere"
    assert load_lists([ListRoot(missing, "ut1", optional=True)]).sources == []
    with pytest.raises(ListError, match=re.escape(str(missing))):
        load_lists([ListRoot(missing, "blocklists")])
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ListError, match="a-file"):
        load_lists([ListRoot(tmp_path / "a-file", "ut1", optional=True)])


def test_an_empty_category_folder_is_still_a_source(tmp_path):
    (tmp_path / "lists" / "school_allow").mkdir(parents=True)
    data = load_lists([ListRoot(tmp_path / "lists", "t")])
    assert [s.category for s in data.sources] == ["school_allow"] and data.domains == {}


# ---------------------------------------------------------------------------- the UT1 mapping


def test_load_mapping_reads_names_and_nulls(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(
        "# comment\nadult: adult\naudio-video: streaming\nliste_blanche: null\nchild: ~\nempty:\n"
        "strict_redirector: {category: anonymizers, skip: [expressions]}\n"
        "two:\n  category: adult\n  skip:\n    - urls\n    - expressions\n"
    )
    assert load_mapping(path) == {
        "adult": "adult", "audio-video": "streaming", "liste_blanche": None, "child": None, "empty": None,
        "strict_redirector": MappedFolder("anonymizers", frozenset({"expressions"})),
        "two": MappedFolder("adult", frozenset({"urls", "expressions"})),
    }  # fmt: skip
    assert mapped(load_mapping(path)["two"]) == ("adult", frozenset({"urls", "expressions"}))
    assert mapped("adult") == ("adult", frozenset()) and mapped(None) == (None, frozenset())


@pytest.mark.parametrize(
    "text, message",
    [
        ("adult: adult\ngames: 3\n", r":2: games: expected an aupguard category name .* not '3'"),
        ("adult: adult\n\ngames: Games\n", r":3: games: expected an aupguard category name"),
        ("adult: [adult, porn]\n", r":1: adult: expected .* not a YAML sequence"),
        ("adult: adult\n../etc: adult\n", r":2: '../etc' is not a UT1 category folder name"),
        ("adult: adult\nyes: adult\n", r":2: 'yes' is not a UT1 category folder name"),
        ("adult: adult\nadult: gambling\n", r":2: 'adult' is mapped twice"),
        ("- adult\n- games\n", r":1: expected `ut1_category: aupguard_category` lines"),
        ("adult: adult\n  games: games\n", r":2: not valid YAML"),
        ("# nothing\n", r": the category mapping is empty"),
        # the long form
        (
            "a: adult\nsr: {category: anonymizers, skip: [expression]}\n",
            r":2: sr.skip: 'expression' is not a list file \(one of domains, urls, expressions\)",
        ),
        ("sr:\n  category: anonymizers\n  skip:\n    - urls\n    - 3\n", r":5: sr.skip: '3' is not a list file"),
        ("sr: {category: anonymizers, skip: expressions}\n", r":1: sr.skip: expected a list such as \[expressions\]"),
        (
            "sr: {category: anonymizers, skip: []}\n",
            r":1: sr.skip: name one or two of domains, urls, expressions \(to skip the whole folder, map it to null\)",
        ),
        ("sr: {category: anonymizers, skip: [domains, urls, expressions]}\n", r":1: sr.skip: name one or two"),
        (
            "sr: {category: Anonymizers, skip: [urls]}\n",
            r":1: sr.category: expected an aupguard category name .* not 'Anonymizers'",
        ),
        ("a: adult\nsr:\n  skip: [urls]\n", r":3: sr: the long form needs both category and skip"),
        (
            "sr: {category: anonymizers, skip: [urls], files: [domains]}\n",
            r":1: sr: unknown key 'files' \(expected category and skip\)",
        ),
        ("sr:\n  category: anonymizers\n  category: vpn\n  skip: [urls]\n", r":3: sr: category is given twice"),
    ],
)
def test_load_mapping_errors_name_file_and_line(tmp_path, text, message):
    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(ListError, match=re.escape(str(path)) + message):
        load_mapping(path)


def test_load_mapping_missing_file(tmp_path):
    with pytest.raises(ListError, match=r"nope\.yaml: cannot read"):
        load_mapping(tmp_path / "nope.yaml")


def test_the_bundled_mapping_targets_only_known_categories():
    mapping = load_mapping(MAPPING)
    targets = {mapped(value)[0] for value in mapping.values()} - {None}
    assert targets <= CATEGORIES - {"circumvention", "school_allow", "illegal"}
    # Choices made on purpose (see the comments in the file).
    assert mapping["redirector"] == "anonymizers" and mapping["agressif"] == "hate"
    assert mapping["liste_blanche"] is None and mapping["sexual_education"] is None
    assert mapping["tricheur_pix"] is None
    # UT1's web-proxy sites, without the expressions that block ordinary searches.
    without_expressions = MappedFolder("anonymizers", frozenset({"expressions"}))
    assert mapping["strict_redirector"] == mapping["strong_redirector"] == without_expressions


def test_the_bundled_mapping_covers_every_ut1_folder(shared_dir):
    folders = {p.name for p in (shared_dir / "blocklists-ut1").iterdir() if p.is_dir()}
    assert folders == set(load_mapping(MAPPING))


# ---------------------------------------------------------------------------- the real UT1 lists


@pytest.fixture(scope="module")
def ut1_loaded(shared_dir):
    root = ListRoot(shared_dir / "blocklists-ut1", "ut1", mapping=load_mapping(MAPPING))
    return load_lists([root])


@pytest.mark.parametrize(
    "entry, kind, category",
    [
        ("0000opengate.us", "domains", "anonymizers"),  # redirector/domains line 1
        ("croxyproxy.com", "domains", "anonymizers"),
        ("proxysite.com", "domains", "anonymizers"),
        ("108.61.76.59", "domains", "anonymizers"),  # a bare IPv4 entry
        ("armageddon.xn--48jwgybuise.jp", "domains", "anonymizers"),
        ("bet365.com", "domains", "gambling"),
        ("1075bets10.com", "domains", "gambling"),
        ("stormfront.org", "domains", "hate"),  # agressif
        ("abbc.com", "domains", "hate"),
        ("aesvpn.tk", "domains", "vpn"),
        ("adampowell.pro", "domains", "doh"),
        ("020sextoy.com/sk", "urls", "adult"),  # adult/urls: its domains file is not in the snapshot
        ("101soundboards.com/boards/231587-bbw-bdsm-erotic-audio-clips", "urls", "adult"),
    ],
)
def test_real_ut1_entries_land_in_their_aupguard_category(ut1_loaded, entry, kind, category):
    table = ut1_loaded.domains if kind == "domains" else ut1_loaded.urls
    assert category in categories_of(ut1_loaded, table[entry])


def test_real_ut1_redirector_variants_block_their_sites_but_not_with_their_expressions(ut1_loaded, shared_dir):
    for folder in ("strict_redirector", "strong_redirector"):
        source = next(s for s in ut1_loaded.sources if s.name == f"ut1/{folder}")
        assert (source.category, source.skip) == ("anonymizers", frozenset({"expressions"}))
        entries = (shared_dir / "blocklists-ut1" / folder / "domains").read_text().split()
        assert len(entries) > 100_000
        assert all(ut1_loaded.domains[lists.domain_key(e)] >> source.id & 1 for e in entries)
        assert ut1_loaded.urls[f"cri.univ-tlse1.fr/tools/test_filtrage/{folder}"] >> source.id & 1
        # UT1 ships a non-empty expressions file for both; none of it is loaded.
        assert (shared_dir / "blocklists-ut1" / folder / "expressions").read_text().strip()
        assert not [sid for sid, _pattern in ut1_loaded.expressions if sid == source.id]


def test_ut1_web_proxy_lists_block_proxies_not_searches(shared_dir, tmp_path):
    """Through `aupguard classify` (which compiles the index) with the bundled policy and mapping."""
    import json
    import shutil

    from conftest import aupguard, write_policy

    ut1 = tmp_path / "ut1"
    for folder in ("redirector", "strict_redirector", "strong_redirector"):
        shutil.copytree(shared_dir / "blocklists-ut1" / folder, ut1 / folder)

    def with_ut1(mapping: Path):
        def edit(doc):
            (root,) = [r for r in doc["lists"] if r["name"] == "ut1"]
            root.update(path=str(ut1), mapping=str(mapping), optional=False)

        return edit

    strict_domain = (ut1 / "strict_redirector" / "domains").read_text().split()[-1]
    urls = {
        f"http://{strict_domain}/": "block",  # UT1 strict_redirector/domains (and redirector's)
        "http://cri.univ-tlse1.fr/tools/test_filtrage/strict_redirector/": "block",  # strict_redirector/urls only
        "http://cri.univ-tlse1.fr/tools/test_filtrage/strong_redirector/": "block",  # strong_redirector/urls only
        "https://www.google.com/search?q=cache+memory": "allow",  # strict_redirector/expressions would block it
        "https://images.google.com/images?q=photosynthesis": "allow",  # strong_redirector/expressions ("hot")
        # A real Google cache page of a web-proxy site: nested-URL detection classifies the page inside.
        "https://webcache.googleusercontent.com/search?q=cache:https://www.croxyproxy.com/": "block",
    }
    env = {"AUPGUARD_DATA": str(tmp_path / "var")}
    policy = write_policy(tmp_path / "policy.yaml", with_ut1(MAPPING))
    done = aupguard("classify", "--config", str(policy), "--group", "pupils", stdin="\n".join(urls) + "\n", env=env)
    verdicts = [json.loads(line) for line in done.stdout.splitlines()]
    assert {v["url"]: v["action"] for v in verdicts} == urls
    assert all(v["categories"] == ["anonymizers"] for v in verdicts if v["action"] == "block"), verdicts
    assert verdicts[1]["rule"] == "ut1/strict_redirector/urls: cri.univ-tlse1.fr/tools/test_filtrage/strict_redirector"

    # The plain form reads the expressions too: then the ordinary searches are blocked.
    plain = tmp_path / "plain-mapping.yaml"
    plain.write_text(
        MAPPING.read_text()
        .replace("strict_redirector: {category: anonymizers, skip: [expressions]}", "strict_redirector: anonymizers")
        .replace("strong_redirector: {category: anonymizers, skip: [expressions]}", "strong_redirector: anonymizers")
    )
    policy = write_policy(tmp_path / "plain.yaml", with_ut1(plain))
    searches = [url for url in urls if "google.com/" in url]
    done = aupguard("classify", "--config", str(policy), "--group", "pupils", stdin="\n".join(searches) + "\n", env=env)
    assert [json.loads(line)["action"] for line in done.stdout.splitlines()] == ["block", "block"]


def test_real_ut1_lists_load_cleanly(ut1_loaded, shared_dir):
    # Every UT1 folder config/ut1-mapping.yaml maps to a category (the 30 mapped to null are not read).
    mapped_folders = [
        "adult", "agressif", "arjel", "audio-video", "bank", "chat", "cryptojacking", "dangerous_material", "dating",
        "ddos", "dialer", "doh", "download", "drogue", "filehosting", "forums", "gambling", "games", "hacking",
        "lingerie", "malware", "marketingware", "mixed_adult", "phishing", "publicite", "radio", "redirector",
        "remote-control", "residential-proxies", "shopping", "shortener", "social_networks", "stalkerware",
        "strict_redirector", "strong_redirector", "tricheur", "vpn", "warez", "webmail",
    ]  # fmt: skip
    assert sorted(s.name for s in ut1_loaded.sources) == [f"ut1/{folder}" for folder in mapped_folders]
    assert ut1_loaded.problems == []
    # UT1 blocks a few whole namespaces on purpose (Brazil's licensed-betting bet.br): a curated
    # list's bare public suffix is kept; only `lists import hosts|domains|adblock` refuses them.
    assert ut1_loaded.domains["bet.br"]
    # Every line of a mapped domains file is in, under (at least) that file's source.
    redirector = next(s for s in ut1_loaded.sources if s.name == "ut1/redirector")
    entries = (shared_dir / "blocklists-ut1" / "redirector" / "domains").read_text().split()
    assert all(ut1_loaded.domains[normalize_host(e.lstrip("."))] >> redirector.id & 1 for e in entries)
    assert len(ut1_loaded.domains) > 500_000


# ---------------------------------------------------------------------------- import


def read_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def no_staging_left(parent: Path) -> bool:
    return not [p for p in parent.iterdir() if p.name.startswith(".")]


def test_import_from_a_directory(tmp_path, shared_dir):
    src = shared_dir / "blocklists-ut1"
    dest = tmp_path / "var" / "lists" / "ut1"
    result = import_ut1(src, dest)
    folders = sorted(p.name for p in src.iterdir() if p.is_dir())
    assert list(result.categories) == folders
    for category in folders:
        for name in importers.UT1_FILES:
            original = src / category / name
            assert (dest / category / name).exists() == original.exists()
            if original.exists() and name != "usage":
                assert result.categories[category][name] == original.read_bytes().count(b"\n")
    assert (dest / "redirector" / "domains").read_bytes() == (src / "redirector" / "domains").read_bytes()
    assert not (dest / "global_usage").exists() and not (dest / "LICENSE.txt").exists()
    assert not (dest / "adult" / "very_restrictive_expression").exists()
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755
    notes = (dest / "SOURCE.md").read_text()
    assert "Blacklists UT1 — Université Toulouse 1 Capitole, Fabrice Prigent" in notes
    assert "CC BY-SA 4.0" in notes and str(src) in notes
    assert "| redirector | 132323 | 293 | 0 |" in notes
    assert "132,323" not in str(result) and f"{len(folders)} UT1 categories" in str(result)
    assert no_staging_left(dest.parent)
    # The imported copy loads exactly like the original.
    mapping = load_mapping(MAPPING)
    assert load_lists([ListRoot(dest, "ut1", mapping)]).domains == load_lists([ListRoot(src, "ut1", mapping)]).domains


def add_member(tar: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = ""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def ut1_tarball(path: Path, src: Path, categories: list[str]) -> Path:
    """A blacklists.tar.gz laid out as UT1 publishes it, from real snapshot folders."""
    with tarfile.open(path, "w:gz") as tar:
        tar.add(src / "global_usage", "blacklists/global_usage")
        for category in categories:
            tar.add(src / category, f"blacklists/{category}")
        add_member(tar, "blacklists/proxy", kind=tarfile.SYMTYPE, link="redirector")  # an upstream alias
    return path


def test_import_from_a_tarball(tmp_path, shared_dir):
    src = shared_dir / "blocklists-ut1"
    subset = ["adult", "agressif", "gambling", "redirector"]
    archive = ut1_tarball(tmp_path / "blacklists.tar.gz", src, subset)
    dest = tmp_path / "lists" / "ut1"
    result = import_ut1(archive, dest)
    assert list(result.categories) == subset
    assert result.categories["adult"] == {"urls": 1090, "expressions": 0}
    assert sorted(p.name for p in dest.iterdir()) == sorted([*subset, "SOURCE.md"])
    for category in subset:
        for name in importers.UT1_FILES:
            if (src / category / name).exists():
                assert (dest / category / name).read_bytes() == (src / category / name).read_bytes()
    assert not (dest / "adult" / "very_restrictive_expression").exists()
    data = load_lists([ListRoot(dest, "ut1", load_mapping(MAPPING))])
    assert "bet365.com" in data.domains and "stormfront.org" in data.domains


def test_a_malicious_tarball_cannot_escape_or_plant_links(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        add_member(tar, "blacklists/ok/domains", b"fine.test\n")
        add_member(tar, "../outside/domains", b"escaped.test\n")
        add_member(tar, "blacklists/../../outside/domains", b"escaped.test\n")
        add_member(tar, "blacklists/../domains", b"escaped.test\n")
        add_member(tar, "../domains", b"escaped.test\n")
        add_member(tar, str(outside / "x" / "domains"), b"escaped.test\n")  # absolute
        add_member(tar, "/domains", b"escaped.test\n")
        add_member(tar, "blacklists/sym/domains", kind=tarfile.SYMTYPE, link=str(outside / "target"))
        add_member(tar, "blacklists/hard/domains", kind=tarfile.LNKTYPE, link="blacklists/ok/domains")
        add_member(tar, "blacklists/dev/domains", kind=tarfile.CHRTYPE)
        add_member(tar, "blacklists/fifo/domains", kind=tarfile.FIFOTYPE)
        add_member(tar, "blacklists/linkdir", kind=tarfile.SYMTYPE, link=str(outside))
        add_member(tar, "blacklists/linkdir/domains", b"through.a.link\n")
        add_member(tar, "blacklists/ok/../../escape/domains", b"escaped.test\n")
        add_member(tar, "blacklists/deep/er/domains", b"nested.test\n")
        add_member(tar, "blacklists/ok/passwd", b"not a list\n")
        add_member(tar, "blacklists/.hidden/domains", b"hidden.test\n")
    dest = tmp_path / "var" / "ut1"
    result = import_ut1(archive, dest)
    # "linkdir" as a name is harmless: it is written as a real folder inside dest, never followed.
    assert set(result.categories) == {"ok", "linkdir"}
    assert read_tree(dest).keys() == {"ok/domains", "linkdir/domains", "SOURCE.md"}
    assert not [p for p in dest.rglob("*") if p.is_symlink()]
    assert list(outside.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tar.gz", "outside", "var"]
    assert not (tmp_path / "escape").exists() and not (tmp_path / "var" / "domains").exists()


def test_archive_members_are_read_only_as_category_files():
    place = importers._archive_place
    assert place("blacklists/adult/domains") == ("adult", "domains")
    assert place("./blacklists/audio-video/urls") == ("audio-video", "urls")
    assert place("adult/expressions") == ("adult", "expressions")
    for name in [
        "/blacklists/adult/domains", "blacklists/../domains", "../adult/domains",
        "blacklists/adult/very_restrictive_expression", "blacklists/adult", "other/adult/domains",
        "blacklists/a b/domains", "blacklists/a\\..\\b/domains", "blacklists/.x/domains",
    ]:  # fmt: skip
        assert place(name) is None, name


@pytest.fixture
def old_import(tmp_path):
    dest = tmp_path / "lists" / "ut1"
    import_ut1(write_tree(tmp_path / "v1", {"gambling/domains": "old.test\n", "gambling/usage": "black\n"}), dest)
    return dest, read_tree(dest)


def test_a_failed_import_keeps_the_old_lists(tmp_path, old_import, monkeypatch):
    dest, before = old_import
    # Too big: stopped half-way through the copy.
    monkeypatch.setattr(importers, "MAX_LIST_FILE_BYTES", 50)
    big = write_tree(tmp_path / "v2", {"adult/domains": "a.test\n", "gambling/domains": "new.test\n" * 100})
    with pytest.raises(ListError, match="size limit"):
        import_ut1(big, dest)
    assert read_tree(dest) == before and no_staging_left(dest.parent)
    # Nothing that looks like UT1.
    with pytest.raises(ListError, match="no UT1 category folders"):
        import_ut1(write_tree(tmp_path / "v3", {"README": "hello"}), dest)
    assert read_tree(dest) == before and no_staging_left(dest.parent)
    # A truncated download.
    archive = tmp_path / "full.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        add_member(tar, "blacklists/games/domains", b"game.test\n")
        add_member(tar, "blacklists/big/domains", os.urandom(1 << 20))  # incompressible: cut mid-file
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(ListError, match=r"cut\.tar\.gz"):
        import_ut1(cut, dest)
    assert read_tree(dest) == before and no_staging_left(dest.parent)
    # Not an archive, and not there at all.
    (tmp_path / "notes.txt").write_text("not a tarball")
    for src in (tmp_path / "notes.txt", tmp_path / "missing.tar.gz"):
        with pytest.raises(ListError, match=re.escape(src.name)):
            import_ut1(src, dest)
    assert read_tree(dest) == before and no_staging_left(dest.parent)


def test_a_failed_swap_puts_the_old_lists_back(tmp_path, old_import, monkeypatch):
    dest, before = old_import
    real_rename = os.rename

    def failing_rename(src, dst):
        if Path(src).name.startswith(".ut1.new-"):
            raise OSError(28, "No space left on device")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(OSError, match="No space"):
        import_ut1(write_tree(tmp_path / "v2", {"games/domains": "new.test\n"}), dest)
    assert read_tree(dest) == before and no_staging_left(dest.parent)


def test_a_new_import_replaces_the_old_one(tmp_path, old_import):
    dest, _ = old_import
    import_ut1(write_tree(tmp_path / "v2", {"games/domains": "new.test\n"}), dest)
    assert set(read_tree(dest)) == {"games/domains", "SOURCE.md"}
    assert no_staging_left(dest.parent)


def test_import_skips_links_and_special_files_in_a_directory(tmp_path):
    src = write_tree(tmp_path / "src", {"adult/domains": "a.test\n", "real/urls": "r.test/x\n"})
    secret = write_tree(tmp_path / "secret", {"domains": "secret\n"})
    (src / "alias").symlink_to(src / "adult")
    (src / "real" / "domains").symlink_to(secret / "domains")
    os.mkfifo(src / "real" / "expressions")
    result = import_ut1(src, tmp_path / "dest")
    assert result.categories == {"adult": {"domains": 1}, "real": {"urls": 1}}
    assert set(read_tree(tmp_path / "dest")) == {"adult/domains", "real/urls", "SOURCE.md"}


# ---------------------------------------------------------------------------- the bundled lists


def bundled_folders() -> list[Path]:
    return sorted(p for p in BUNDLED.iterdir() if p.is_dir())


def test_bundled_folders_are_exactly_the_list_categories():
    assert {p.name for p in bundled_folders()} == CATEGORIES - {"circumvention"}


def test_bundled_lists_load_without_problems():
    data = load_lists([ListRoot(BUNDLED, "blocklists")])
    assert data.problems == []
    assert len(data.domains) > 300
    samples = {"pornhub.com": "adult", "bet365.com": "gambling", "dns.google": "doh", "nhs.uk": "health"}
    for entry, category in samples.items():
        assert category in categories_of(data, data.domain_mask(entry))


def test_bundled_list_files_carry_their_header():
    for folder in bundled_folders():
        files = [folder / name for name in lists.LIST_FILES if (folder / name).exists()]
        assert folder / "domains" in files, folder
        for path in files:
            header = path.read_text().split("\n\n", 1)[0]
            assert f": {folder.name} ({path.name})" in header and "public domain (CC0 1.0)" in header, path


def test_school_allow_ships_empty():
    data = load_lists([ListRoot(BUNDLED, "blocklists")])
    allow = next(s for s in data.sources if s.category == "school_allow")
    assert not any(mask >> allow.id & 1 for mask in [*data.domains.values(), *data.urls.values()])


def test_support_services_are_never_in_a_block_list():
    data = load_lists([ListRoot(BUNDLED, "blocklists")])
    for host, mask in data.domains.items():
        found = categories_of(data, mask)
        if "health" in found or "banking" in found:
            assert found <= {"health", "banking"}, (host, found)


# ---------------------------------------------------------------------------- allow entries the mandatory tier overrides


def test_an_allow_entry_in_a_mandatory_category_is_refused_at_load_and_reported_by_compile(tmp_path):
    from aupguard.lists.model import ListError
    from conftest import aupguard, write_policy

    local = write_tree(
        tmp_path / "local",
        {
            "illegal/domains": "illegal-feed.example\n",
            "school_allow/domains": "homework-help.example\nwww.illegal-feed.example  # a teacher's request\n",
        },
    )

    def edit(doc):
        doc["lists"].append({"name": "local", "path": str(local)})

    policy = write_policy(tmp_path / "policy.yaml", edit)
    expected = (
        f"{local / 'school_allow' / 'domains'}:2: allow entry 'www.illegal-feed.example' (school_allow) is in the "
        "mandatory category illegal, which nothing may allow: remove the entry"
    )
    with pytest.raises(ListError) as refused:
        load_engine(policy, index_path=None, exemptions_path=None)
    assert str(refused.value) == expected
    done = aupguard(
        "lists", "compile", "--config", str(policy), "--index", str(tmp_path / "lists.idx"),
        env={"AUPGUARD_DATA": str(tmp_path / "var")},
    )  # fmt: skip
    assert f"error: {expected} (aupguard run refuses this policy until it is removed)" in done.stderr
    assert done.stderr.count("error:") == 1  # homework-help.example is in no mandatory category
