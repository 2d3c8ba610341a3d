"""The compiled list index: lookups equal the text-loaded lists, corruption is refused, replacement is atomic."""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aupguard.lists import index as index_module
from aupguard.lists import serve as serve_module
from aupguard.lists.index import HEADER_SIZE, IndexFormatError, key_hash, load_index
from aupguard.lists.model import ListData, ListRoot, ListSource, MappedFolder, url_host
from aupguard.lists.read import load_lists
from aupguard.offline.compile import IndexWriter, compile_from_folders, compile_list_data, why_recompile
from conftest import rewrite_header, write_tree


def make_sources(n: int) -> list[ListSource]:
    categories = ["adult", "gambling", "anonymizers", "social_networks", "school_allow"]
    return [
        ListSource(i, categories[i % len(categories)], f"blocklists/list{i}", Path(f"/lists/list{i}")) for i in range(n)
    ]


@pytest.fixture
def small_lists() -> ListData:
    sources = make_sources(70)  # more than 64: masks wider than a machine word
    domains = {
        "example.com": 1 << 0,
        "porn.example": 1 << 0 | 1 << 69,
        "bet.example.co.uk": 1 << 1,
        "proxy.example.net": 1 << 2 | 1 << 3,
        "192.0.2.7": 1 << 2,
        "xn--bcher-kva.example": 1 << 4,
    }
    urls = {
        "example.org/bad": 1 << 0,
        "example.org/bad/worse": 1 << 0 | 1 << 1,
        "example.org/search?q=x": 1 << 68,
    }
    expressions = [(0, r"(porn|xxx)"), (69, r"casino\d+"), (2, "naïve ☃")]
    return ListData(sources, domains, urls, expressions, ["adult/domains:3: not a domain"])


@pytest.fixture
def compiled(small_lists, tmp_path):
    summary = compile_list_data(small_lists, tmp_path / "lists.idx")
    with load_index(summary.path) as index:
        yield small_lists, summary, index


def test_every_entry_is_found_with_its_mask(compiled):
    data, _summary, index = compiled
    for key, mask in data.domains.items():
        assert index.domain_mask(key) == mask, key
    for key, mask in data.urls.items():
        assert index.url_mask(key) == mask, key


def test_misses_return_zero(compiled):
    data, _summary, index = compiled
    for key in ["", "com", "www.example.com", "example.co", "example.org/bad", "ünïcode.example", "\udcff"]:
        assert index.domain_mask(key) == 0, key
    # A domain is not a URL key and vice versa: the tables are separate.
    for key in data.domains:
        assert index.url_mask(key) == 0
    for key in data.urls:
        assert index.domain_mask(key) == 0
    assert index.url_mask("example.org/bad/wors") == 0


def test_sources_expressions_and_summary_round_trip(compiled):
    data, summary, index = compiled
    assert index.sources == data.sources
    assert index.expressions == data.expressions
    url_hosts = {key.partition("/")[0] for key in data.urls}
    assert index.counts == {"domains": len(data.domains), "urls": len(data.urls), "url_hosts": len(url_hosts)}
    assert (summary.domains, summary.urls, summary.expressions, summary.sources) == (6, 3, 3, 70)
    assert summary.problems == ("adult/domains:3: not a domain",)
    assert summary.size == summary.path.stat().st_size


def test_a_key_met_again_gets_the_union_of_its_masks(tmp_path):
    writer = IndexWriter(make_sources(3))
    writer.add("domains", [("a.example", 1), ("b.example", 2)])
    writer.add("domains", [("a.example", 4), ("a.example", 2)])
    writer.add("urls", [("a.example/x", 4)])
    summary = writer.write(tmp_path / "i.idx")
    assert (summary.domains, summary.urls) == (2, 1)
    with load_index(summary.path) as index:
        assert index.domain_mask("a.example") == 7
        assert index.domain_mask("b.example") == 2
        assert index.url_mask("a.example/x") == 4


def test_tables_grow_past_the_expected_size(tmp_path):
    writer = IndexWriter(make_sources(2), expected={"domains": 1})
    keys = [f"host{i}.example" for i in range(5000)]
    writer.add("domains", ((k, 1 << (i % 2)) for i, k in enumerate(keys)))
    with load_index(writer.write(tmp_path / "i.idx").path) as index:
        assert all(index.domain_mask(k) == 1 << (i % 2) for i, k in enumerate(keys))
        assert index.domain_mask("host5000.example") == 0


def test_probing_wraps_around_the_end_of_the_table(tmp_path):
    seed, slots = 42, IndexWriter(make_sources(1), seed=42)._tables["domains"].slots
    last = [k for k in (f"k{i}" for i in range(100_000)) if key_hash(k, seed) % slots == slots - 1][:3]
    assert len(last) == 3
    writer = IndexWriter(make_sources(3), seed=seed)
    writer.add("domains", [(k, 1 << n) for n, k in enumerate(last)])
    with load_index(writer.write(tmp_path / "i.idx").path) as index:
        assert index._tables["domains"].slots == slots
        assert [index.domain_mask(k) for k in last] == [1, 2, 4]


def test_progress_reaches_the_total(small_lists, tmp_path):
    calls = []
    compile_list_data(small_lists, tmp_path / "i.idx", progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (9, 9)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_empty_lists_compile_and_load(tmp_path):
    summary = compile_list_data(ListData([], {}, {}, [], []), tmp_path / "i.idx")
    with load_index(summary.path) as index:
        assert index.domain_mask("example.com") == 0
        assert index.url_mask("example.com/x") == 0
        assert index.sources == [] and index.expressions == []


# -- compiling list folders directly ------------------------------------------------------------------


def assert_index_answers_as(data: ListData, path: Path) -> None:
    with load_index(path) as index:
        assert index.sources == data.sources
        assert index.expressions == data.expressions
        url_hosts = {key.partition("/")[0] for key in data.urls}
        assert index.counts == {"domains": len(data.domains), "urls": len(data.urls), "url_hosts": len(url_hosts)}
        assert all(index.domain_mask(key) == mask for key, mask in data.domains.items())
        assert all(index.url_mask(key) == mask for key, mask in data.urls.items())


def test_compiling_folders_gives_what_loading_them_gives(tmp_path):
    local, ut1 = tmp_path / "local", tmp_path / "ut1"
    write_tree(
        local,
        {
            "adult/domains": "# comment\nExample.COM\n*.porn.example\nbad..host\n\nporn.example # dup\n",
            "adult/urls": "example.org/Bad/\nhttps://example.org/x?q=1\n",
            "adult/expressions": "(porn|xxx) #not a comment\n",
            "gambling/domains": "bet.example\nexample.com\n",
            "Not A Category/domains": "ignored.example\n",
        },
    )
    write_tree(
        ut1,
        {
            "redirector/domains": "proxy.example\nexample.com\n",
            "redirector/urls": "proxy.example/browse\n",
            "astrology/domains": "stars.example\n",  # mapped to null: ignored
            "strict_redirector/domains": "proxy.example\nstrict.example\n",
            "strict_redirector/urls": "strict.example/anonymiser\n",
            "strict_redirector/expressions": "google\\..*/search.q=cache\n",  # skipped: not read
        },
    )
    strict = MappedFolder("anonymizers", frozenset({"expressions"}))
    roots = [
        ListRoot(local, "blocklists"),
        ListRoot(ut1, "ut1", mapping={"redirector": "anonymizers", "astrology": None, "strict_redirector": strict}),
        ListRoot(tmp_path / "absent", "local", optional=True),
    ]
    calls = []
    summary = compile_from_folders(roots, tmp_path / "lists.idx", progress=lambda *a: calls.append(a))
    data = load_lists(roots)
    assert_index_answers_as(data, summary.path)
    assert summary.problems == tuple(data.problems)
    assert [pattern for _sid, pattern in data.expressions] == ["(porn|xxx) #not a comment"]
    assert data.sources[-1].skip == {"expressions"} and "strict.example/anonymiser" in data.urls
    # Which files a mapping skips is part of what the index was compiled from.
    assert why_recompile(summary.path, roots) is None
    plain = [roots[0], ListRoot(ut1, "ut1", mapping={**roots[1].mapping, "strict_redirector": "anonymizers"}), roots[2]]
    assert "category mappings changed" in why_recompile(summary.path, plain)
    assert [p.rpartition("/")[2] for p in summary.problems] == [
        "Not A Category: folder name is not a category name (a-z, 0-9, _); folder skipped",
        "domains:4: invalid host: 'bad..host'",
    ]
    assert calls[-1][0] == calls[-1][1] and [c[0] for c in calls] == sorted(c[0] for c in calls)


def test_compiled_ut1_answers_as_loaded_ut1(shared_dir, tmp_path):
    mapping = {
        "malware": "malware",
        "phishing": "phishing",
        "redirector": "anonymizers",
        "strict_redirector": "anonymizers",
        "adult": "adult",
        "gambling": "gambling",
        "social_networks": "social_networks",
    }
    roots = [ListRoot(shared_dir / "blocklists-ut1", "ut1", mapping=mapping)]
    summary = compile_from_folders(roots, tmp_path / "ut1.idx")
    assert summary.domains > 300_000
    assert_index_answers_as(load_lists(roots), summary.path)


# -- refusing bad files ---------------------------------------------------------------------------


@pytest.fixture
def index_file(small_lists, tmp_path) -> Path:
    return compile_list_data(small_lists, tmp_path / "lists.idx").path


def flip_byte(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x40
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.write_bytes(b""), "truncated"),
        (lambda p: p.write_bytes(p.read_bytes()[: HEADER_SIZE - 1]), "truncated"),
        (lambda p: p.write_bytes(p.read_bytes()[:-1]), "truncated"),
        (lambda p: p.write_bytes(p.read_bytes() + b"\0"), "header says"),
        (lambda p: p.write_bytes(b"NOTINDEX" + p.read_bytes()[8:]), "bad magic"),
        (lambda p: p.write_bytes(b"# a text list\nexample.com\n" * 20), "bad magic"),
        (lambda p: flip_byte(p, 20), "header checksum"),
        (lambda p: flip_byte(p, HEADER_SIZE - 1), "header padding"),
        (lambda p: flip_byte(p, HEADER_SIZE + 3), "body checksum"),
        (lambda p: flip_byte(p, p.stat().st_size - 1), "body checksum"),
        (lambda p: rewrite_header(p, version=1), "format version 1"),
        (lambda p: rewrite_header(p, width=3), "combo width"),
        (lambda p: rewrite_header(p, file_size=1 << 40), "header says"),
        (lambda p: rewrite_header(p, json_len=1 << 40), "outside the file"),
        (lambda p: rewrite_header(p, domains_slots=1 << 40), "outside the file"),
        (lambda p: rewrite_header(p, domains_slots=0), "entries in 0 slots"),
    ],
    ids=[
        "empty", "short-header", "cut-end", "extra-byte", "wrong-magic", "text-file", "header-bit", "padding-bit",
        "json-bit", "table-bit", "version", "width", "size-field", "json-range", "table-range", "no-slots",
    ],
)  # fmt: skip
def test_a_damaged_file_is_refused(index_file, damage, message):
    damage(index_file)
    with pytest.raises(IndexFormatError, match=message):
        load_index(index_file)


def test_invalid_json_section_is_refused_even_with_valid_checksums(tmp_path):
    writer = IndexWriter(make_sources(1), [(5, "unknown source")])
    path = writer.write(tmp_path / "i.idx").path
    with pytest.raises(IndexFormatError, match="bad expression"):
        load_index(path)


def test_a_missing_file_is_not_a_format_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_index(tmp_path / "absent.idx")


# -- replacing an index while it is in use ------------------------------------------------------------


def test_a_new_index_replaces_the_old_while_its_readers_keep_working(tmp_path):
    path = tmp_path / "lists.idx"
    old_data = ListData(make_sources(2), {f"old{i}.example": 1 for i in range(1000)}, {"old.example/x": 2}, [], [])
    new_data = ListData(make_sources(2), {f"new{i}.example": 2 for i in range(1000)}, {}, [(1, "new")], [])
    compile_list_data(old_data, path)
    old = load_index(path)
    assert not old.stale()

    compile_list_data(new_data, path)
    assert old.stale()
    # The old mapping still holds the old inode: every old lookup still answers as before.
    assert all(old.domain_mask(f"old{i}.example") == 1 for i in range(1000))
    assert old.url_mask("old.example/x") == 2 and old.domain_mask("new1.example") == 0
    with load_index(path) as new:
        assert new.domain_mask("new1.example") == 2 and new.domain_mask("old1.example") == 0
        assert new.expressions == [(1, "new")]
        assert not new.stale()
    old.close()
    assert [p.name for p in tmp_path.iterdir()] == ["lists.idx"]  # no temporary file left behind


def test_a_failed_write_leaves_the_previous_index_untouched(tmp_path, monkeypatch):
    path = tmp_path / "lists.idx"
    compile_list_data(ListData(make_sources(1), {"kept.example": 1}, {}, [], []), path)
    before = path.read_bytes()

    def failing_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(index_module.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        compile_list_data(ListData(make_sources(1), {"other.example": 1}, {}, [], []), path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["lists.idx"]
    with load_index(path) as index:
        assert index.domain_mask("kept.example") == 1


def test_a_removed_index_is_stale_and_lookups_after_close_fail(index_file):
    index = load_index(index_file)
    os.unlink(index_file)
    assert index.stale()
    assert index.domain_mask("example.com") == 1  # still mapped
    index.close()
    with pytest.raises(ValueError):
        index.domain_mask("example.com")


# -- the index answers exactly as the dict it was compiled from ----------------------------------------

keys = st.text(min_size=0, max_size=40)  # any text, surrogates included: list files are untrusted
masks = st.integers(min_value=1, max_value=(1 << 100) - 1)
# A url key is its host, then its path and query if any: drawn as the two parts, so the host is known.
url_parts = st.tuples(
    st.text(st.characters(exclude_characters="/"), max_size=20),
    st.one_of(st.just(""), st.text(max_size=20).map(lambda rest: "/" + rest)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    domains=st.dictionaries(keys, masks, max_size=300),
    url_entries=st.dictionaries(url_parts, masks, max_size=50),
    probes=st.lists(keys, max_size=50),
    seed=st.integers(min_value=0, max_value=(1 << 64) - 1),
)
def test_index_lookups_equal_dict_lookups(tmp_path, domains, url_entries, probes, seed):
    urls = {host + path: mask for (host, path), mask in url_entries.items()}
    host_masks: dict[str, int] = {}
    for (host, _), mask in url_entries.items():
        host_masks[host] = host_masks.get(host, 0) | mask
    writer = IndexWriter(make_sources(100), seed=seed)  # expected sizes unknown: tables grow
    writer.add("domains", domains.items())
    writer.add("urls", urls.items())
    path = writer.write(tmp_path / "prop.idx").path
    text = ListData([], domains, urls, [], [])
    with load_index(path) as index:
        for key in [*domains, *urls, *probes]:
            assert index.domain_mask(key) == domains.get(key, 0)
            assert index.url_mask(key) == urls.get(key, 0)
        # The url_hosts gate: non-zero exactly for the hosts of url keys, in both lookups.
        for host in [*host_masks, *domains, *probes]:
            assert index.url_host_mask(host) == text.url_host_mask(host) == host_masks.get(host, 0)


def test_url_host_is_the_key_up_to_the_first_slash():
    assert url_host("example.com/dir/page?q=1") == "example.com"
    assert url_host("example.com") == "example.com"
    assert url_host("10.0.0.1:8080/a/b") == "10.0.0.1:8080"


def test_header_layout_is_what_the_docstring_says(index_file):
    raw = index_file.read_bytes()
    magic, version = struct.unpack_from("<8sI", raw)
    assert (magic, version) == (b"AUPGIDX\x00", 3)
    offsets = index_module._HEADER.unpack_from(raw)[7::3][:3]
    assert all(offset % 4096 == 0 for offset in offsets)


# -- a damaged table never hangs a lookup ----------------------------------------------------------


class CountingSlots:
    """A table's hash slots, every one occupied (no empty slot ends a probe), counting the slots read."""

    def __init__(self, slots: int):
        self.slots, self.reads = slots, 0

    def __len__(self) -> int:
        return self.slots

    def __getitem__(self, i: int) -> int:
        self.reads += 1
        assert self.reads <= 10 * self.slots, "the probe ran on past the whole table"
        return 0xDEADBEEF  # never a key's hash here, never 0


def test_a_probe_of_a_full_table_stops_after_the_whole_table_and_says_damaged():
    hashes = CountingSlots(1000)
    table = index_module._Table(hashes, memoryview(bytes(1000)), 42, [1])  # type: ignore[arg-type]
    with pytest.raises(IndexFormatError, match="no empty slot"):
        table.mask("absent.example")
    assert hashes.reads == 1000


# -- serving a private copy: what is done to the file afterwards never reaches a lookup -----------


def zero_in_place(path: Path) -> None:
    with open(path, "r+b") as f:
        f.write(bytes(path.stat().st_size))


def random_in_place(path: Path) -> None:
    with open(path, "r+b") as f:
        f.write(os.urandom(path.stat().st_size))


def truncate_in_place(path: Path) -> None:
    os.truncate(path, HEADER_SIZE + 100)


def other_index_copied_over(path: Path) -> None:
    other = compile_list_data(ListData(make_sources(1), {"other.example": 1}, {}, [], []), path.with_name("o.idx"))
    path.write_bytes(other.path.read_bytes())  # as `cp` does: the same inode, rewritten


IN_PLACE = {
    "zeroes": zero_in_place,
    "random": random_in_place,
    "truncate": truncate_in_place,
    "cp-other": other_index_copied_over,
}


@pytest.mark.parametrize("damage", IN_PLACE.values(), ids=IN_PLACE.keys())
def test_a_served_index_answers_the_same_whatever_is_done_to_its_file(small_lists, tmp_path, damage):
    path = compile_list_data(small_lists, tmp_path / "index" / "lists.idx").path
    store = tmp_path / "served"
    with serve_module.serve_index(path, store) as served:
        assert served.path.parent == store and served.origin == path
        inode = path.stat().st_ino
        damage(path)
        assert path.stat().st_ino == inode  # written in place, not replaced
        assert served.stale()
        for key, mask in small_lists.domains.items():
            assert served.domain_mask(key) == mask, key
        assert served.url_mask("example.org/bad") == 1 and served.domain_mask("other.example") == 0
        if damage is other_index_copied_over:
            with serve_module.serve_index(path, store) as other:  # a valid index is served, from its own copy
                assert other.domain_mask("other.example") == 1 and other.path != served.path
        else:
            with pytest.raises(IndexFormatError):
                serve_module.serve_index(path, store)
    assert {p.name for p in (tmp_path / "index").iterdir()} <= {"lists.idx", "o.idx"}  # no copy beside the index


def test_served_copies_are_private_content_named_shared_and_only_the_two_newest_kept(tmp_path):
    store = tmp_path / "served"
    path = tmp_path / "lists.idx"
    digests = []
    for n in range(4):
        compile_list_data(ListData(make_sources(1), {f"v{n}.example": 1}, {}, [], []), path)
        digests.append(hashlib.sha256(path.read_bytes()).hexdigest())
        first, second = serve_module.serve_index(path, store), serve_module.serve_index(path, store)
        assert first.path == second.path == store / f"{digests[-1]}.idx"  # two workers map one file
        assert os.stat(first.path).st_ino == os.stat(second.path).st_ino
        first.close()
        second.close()
    assert sorted(p.name for p in store.iterdir()) == sorted(f"{d}.idx" for d in digests[-2:])
    assert store.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o777 == 0o400 for p in store.iterdir())


def test_a_file_changed_while_copied_is_not_served(index_file, tmp_path, monkeypatch):
    real_copy = serve_module._copy

    def copy_then_touch(src, dst):
        digest = real_copy(src, dst)
        os.utime(index_file, ns=(1, 1))
        return digest

    monkeypatch.setattr(serve_module, "_copy", copy_then_touch)
    with pytest.raises(IndexFormatError, match="changed while it was being copied"):
        serve_module.serve_index(index_file, tmp_path / "served")
    assert not list((tmp_path / "served").iterdir())


def test_only_an_index_the_writer_published_here_is_served(small_lists, tmp_path, monkeypatch):
    path = tmp_path / "index" / "lists.idx"
    # Compiled by an aupguard with another data folder (another machine, or a file forged with valid
    # checksums): it validates, but this data folder never recorded publishing it.
    monkeypatch.setattr(serve_module.paths, "DATA_DIR", tmp_path / "elsewhere")
    compile_list_data(ListData(small_lists.sources, {}, {}, [], []), path)  # same folders, nothing listed
    monkeypatch.setattr(serve_module.paths, "DATA_DIR", tmp_path / "here")
    load_index(path).close()  # a valid index in every other respect
    with pytest.raises(IndexFormatError, match="not an index that `aupguard lists compile` published here"):
        serve_module.serve_index(path, tmp_path / "served")
    compile_list_data(small_lists, path)  # published here: served
    with serve_module.serve_index(path, tmp_path / "served") as served:
        assert served.domain_mask("porn.example") == small_lists.domains["porn.example"]
    marks = list(serve_module.published_dir().iterdir())
    assert [m.stat().st_mode & 0o777 for m in marks] == [0o400]
    assert serve_module.published_dir().stat().st_mode & 0o777 == 0o700


def test_a_fifo_at_the_index_path_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "lists.idx"
    os.mkfifo(fifo)
    with pytest.raises(IndexFormatError, match="not a regular file"):
        serve_module.serve_index(fifo, tmp_path / "served")


def test_a_partial_copy_left_by_a_killed_process_is_deleted_a_fresh_one_kept(index_file, tmp_path):
    store = tmp_path / "served"
    store.mkdir()
    old, fresh = store / ".copy-old.tmp", store / ".copy-fresh.tmp"
    old.write_bytes(b"x")
    fresh.write_bytes(b"x")  # another worker's copy in progress
    os.utime(old, (1, 1))
    serve_module.serve_index(index_file, store).close()
    assert not old.exists() and fresh.exists()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(at=st.integers(min_value=0), junk=st.binary(min_size=1, max_size=600), cut=st.booleans())
def test_any_write_into_a_served_file_changes_no_lookup_and_is_not_served(small_lists, tmp_path_factory, at, junk, cut):
    folder = tmp_path_factory.mktemp("served")
    path = compile_list_data(small_lists, folder / "lists.idx").path
    size = path.stat().st_size
    at %= size
    with serve_module.serve_index(path, folder / "store") as served:
        original = path.read_bytes()
        with open(path, "r+b") as f:
            f.seek(at)
            f.write(junk)
            if cut:
                f.truncate(at + len(junk) // 2)
        for key, mask in small_lists.domains.items():
            assert served.domain_mask(key) == mask
        if path.read_bytes() != original:
            with pytest.raises(IndexFormatError):
                serve_module.serve_index(path, folder / "store")
