"""Block lists in UT1/squidGuard format: reading them into `ListData`, and importing UT1.

A list root is a folder with one sub-folder per category, each holding up to
three files (squidGuard's formats):

* `domains`: a domain or bare IP per line; an entry matches itself and its subdomains.
* `urls`: host + path without scheme; an entry matches that page and everything below it.
* `expressions`: regular expressions over the whole URL.

Every (root, folder) pair becomes one `ListSource`, whose id is a bit position:
`ListData.domains` and `ListData.urls` map each normalised entry to the OR of
the bits of every source listing it, so a lookup is one dict probe whatever
the number of lists. List files are untrusted text: a line that cannot be
read is skipped and reported in `ListData.problems`, never fatal.

UT1's `adult/very_restrictive_expression` is deliberately not read (nor
imported): upstream ships it as an opt-in extra that squidGuard configs leave
off, and its bare-word terms (teen, gay, lesb, mature, sex...) would block
sex-education, LGBT+ support and plain words such as "Middlesex": the
over-blocking KCSIE warns schools against.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import ipaddress
import logging
import lzma
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from aupguard.base.errors import AupguardError
from aupguard.base.paths import make_dir
from aupguard.base.urlnorm import is_public_suffix, normalize_host, normalize_url
from aupguard.base.vocabulary import CATEGORY_NAME

log = logging.getLogger(__name__)

LIST_FILES = ("domains", "urls", "expressions")
# What an import copies: the lists plus UT1's `usage` metadata (black/white, aliases).
UT1_FILES = (*LIST_FILES, "usage")

MAX_LINE_CHARS = 4096
MAX_LIST_FILE_BYTES = 512 << 20  # upstream's biggest file (adult/domains) is ~110 MB
MAX_IMPORT_BYTES = 4 << 30  # all files of one import together: a decompression-bomb guard
MAX_ARCHIVE_MEMBERS = 100_000  # UT1 has a few hundred; tarfile keeps every member header in memory
MAX_MAPPING_BYTES = 1 << 20
MAX_PROBLEMS = 1000

# A UT1 folder name (audio-video, remote-control, ...); never "." or "..".
UT1_CATEGORY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")

_LABEL = r"(?![a-z0-9]{2}--)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
# Hosts already in normalize_host's output form (nearly every real list line):
# taking them as they are skips ~2 s of parsing on the UT1 lists. The
# property test in tests/test_lists.py holds normalize_host(h) == h for all of them.
# "ab--" labels (punycode and friends) always take the full path.
_CANONICAL_HOST = re.compile(rf"(?:{_LABEL}\.)+[a-z]{{2,63}}|(?:{_OCTET}\.){{3}}{_OCTET}")
# A comment after an entry; not applied to expressions, where " #" or "[ #]" can be part of a regex.
_TRAILING_COMMENT = re.compile(r"\s#")
_URL_SCHEME = re.compile(r"^https?://", re.IGNORECASE)

ATTRIBUTION = "Blacklists UT1 — Université Toulouse 1 Capitole, Fabrice Prigent"
UT1_LICENSE = "CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/)"
UT1_HOME = "https://dsi.ut-capitole.fr/blacklists/"


class ListError(AupguardError, ValueError):
    """A list root, mapping or import source that cannot be used at all."""


@dataclass(frozen=True, slots=True)
class ListSource:
    id: int  # bit position in the masks below
    category: str  # aupguard category
    name: str  # how a rule is shown, e.g. "blocklists/adult" or "ut1/redirector"
    path: Path
    skip: frozenset[str] = frozenset()  # list files (of LIST_FILES) of the folder that are not read


@dataclass(frozen=True, slots=True)
class MappedFolder:
    """A category mapping's long form: the folder counts as `category`, but its `skip` files are not read.

    `strict_redirector: {category: anonymizers, skip: [expressions]}` takes UT1's web-proxy
    sites without the expressions that would block ordinary searches.
    """

    category: str
    skip: frozenset[str]  # names from LIST_FILES, never all of them (that is `null`)


def mapped(value: str | MappedFolder | None) -> tuple[str | None, frozenset[str]]:
    """(category, list files not read) of a mapping value in either form; category None: not loaded."""
    if isinstance(value, MappedFolder):
        return value.category, value.skip
    return value, frozenset()


@dataclass
class ListData:
    sources: list[ListSource]
    domains: dict[str, int]  # normalised domain or IP -> bit mask of source ids
    urls: dict[str, int]  # squid key (no trailing "/") -> bit mask of source ids
    expressions: list[tuple[int, str]]  # (source id, regex)
    problems: list[str]  # lines skipped, "file:line: reason"

    # The classifier's lookup protocol, shared with the compiled index.
    def domain_mask(self, key: str) -> int:
        return self.domains.get(key, 0)

    def url_mask(self, key: str) -> int:
        return self.urls.get(key, 0)

    def url_host_mask(self, host: str) -> int:
        """Non-zero when some `urls` entry is on `host` (a squid key's host): else no url lookup can match."""
        return self._url_hosts.get(host, 0)

    @functools.cached_property
    def _url_hosts(self) -> dict[str, int]:
        hosts: dict[str, int] = {}
        for key, mask in self.urls.items():
            host = url_host(key)
            hosts[host] = hosts.get(host, 0) | mask
        return hosts


@dataclass(frozen=True)
class ListRoot:
    """A folder of category folders, e.g. the bundled `blocklists/` or an imported UT1 copy."""

    path: Path
    name: str  # prefixes rule sources: "blocklists/adult/domains"
    # Folder name -> aupguard category, or a MappedFolder that also skips some of its
    # files (None or absent: the folder is ignored); without a mapping the folder name
    # is the category.
    mapping: Mapping[str, str | MappedFolder | None] | None = None
    optional: bool = False  # a missing folder is skipped instead of an error


@dataclass(frozen=True)
class ImportResult:
    dest: Path
    categories: dict[str, dict[str, int]]  # category folder -> list file -> line count
    origin: str = "UT1"  # whose lists, for the summary
    skipped: int = 0  # lines that named no entry
    narrowed: int = 0  # of them, Adblock rules whose $options block less than the whole domain
    problems: tuple[str, ...] = ()  # the first skipped lines, "file:line: reason"

    def total(self, filename: str) -> int:
        return sum(counts.get(filename, 0) for counts in self.categories.values())

    def __str__(self) -> str:
        narrowed = f", {self.narrowed:,} of them Adblock rules narrowed by $options" if self.narrowed else ""
        return (
            f"{len(self.categories)} {self.origin} categories ({self.total('domains'):,} domain, "
            f"{self.total('urls'):,} url and {self.total('expressions'):,} expression lines)"
        ) + (f"; {self.skipped:,} lines skipped{narrowed}" if self.skipped else "")


# ---------------------------------------------------------------------------- reading
#
# One set of per-file readers serves both consumers: `load_lists` (dicts in memory, for
# small lists and tests) and `index.compile_from_folders` (streamed into the on-disk index).


class Problems:
    """The first MAX_PROBLEMS problems, and how many there were in all."""

    def __init__(self) -> None:
        self.shown: list[str] = []
        self.count = 0
        self.unreadable: list[str] = []  # whole files that could not be read: fatal to a compile

    def add_unreadable(self, path: Path, reason: str) -> None:
        self.unreadable.append(f"{path}: {reason}")
        self.add(str(path), reason)

    def add(self, where: str, reason: str) -> None:
        self.count += 1
        if len(self.shown) < MAX_PROBLEMS:
            self.shown.append(f"{where}: {reason[:200]}")

    def as_list(self) -> list[str]:
        hidden = self.count - len(self.shown)
        return self.shown + [f"... and {hidden} more problems not shown"] if hidden else self.shown


def list_sources(roots: Sequence[ListRoot], problems: Problems) -> list[ListSource]:
    """One `ListSource` per category folder of every root, ids in order. Raises ListError for a missing root."""
    sources: list[ListSource] = []
    for root in roots:
        for folder, category, skip in category_folders(root, problems):
            sources.append(ListSource(len(sources), category, f"{root.name}/{folder.name}", folder, skip))
    return sources


def source_keys(source: ListSource, kind: str, problems: Problems) -> Iterator[str]:
    """The lookup key of each entry of the source's `domains` or `urls` file; bad lines go to `problems`."""
    if kind in source.skip:
        return
    path = source.path / kind
    key_of = domain_key if kind == "domains" else url_key
    # Bare public suffixes are kept here: curated lists block whole namespaces on purpose
    # (the bundled adult list's `xxx` and `porn`, health's `nhs.uk`, UT1's `bet.br`).
    # Third-party lists imported by `aupguard lists import` get no such trust (`one_site`).
    for number, entry in read_entries(path, problems, strip_comments=True):
        try:
            yield key_of(entry)
        except ValueError as exc:  # URLError, or a codec's UnicodeError
            problems.add(f"{path}:{number}", str(exc))


def source_expressions(source: ListSource, problems: Problems) -> Iterator[str]:
    """The patterns of the source's `expressions` file (compiled by the classifier, with RE2)."""
    if "expressions" in source.skip:
        return
    for _number, pattern in read_entries(source.path / "expressions", problems, strip_comments=False):
        yield pattern


def load_lists(roots: Sequence[ListRoot]) -> ListData:
    """Read every category folder of every root. Raises ListError for a missing, non-optional root."""
    problems = Problems()
    sources = list_sources(roots, problems)
    tables: dict[str, dict[str, int]] = {"domains": {}, "urls": {}}
    expressions: list[tuple[int, str]] = []
    for source in sources:
        bit = 1 << source.id
        for kind, table in tables.items():
            for key in source_keys(source, kind, problems):
                table[key] = table.get(key, 0) | bit
        expressions.extend((source.id, pattern) for pattern in source_expressions(source, problems))
    if problems.count:
        log.warning("skipped %d unreadable list lines or files (see ListData.problems)", problems.count)
    return ListData(
        sources=sources,
        domains=tables["domains"],
        urls=tables["urls"],
        expressions=expressions,
        problems=problems.as_list(),
    )


def category_folders(root: ListRoot, problems: Problems) -> list[tuple[Path, str, frozenset[str]]]:
    """(folder, aupguard category, list files not read) for each folder of `root` that counts, in name order."""
    try:
        entries = sorted(os.scandir(root.path), key=lambda entry: entry.name)
    except FileNotFoundError:
        if root.optional:
            return []
        raise ListError(f"{root.path}: list folder {root.name!r} does not exist") from None
    except OSError as exc:
        raise ListError(f"{root.path}: cannot read list folder {root.name!r}: {exc.strerror}") from exc
    folders = []
    for entry in entries:
        # Symlinked folders are UT1's aliases (porn -> adult): loading them would count lists twice.
        if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
            continue
        skip: frozenset[str] = frozenset()
        if root.mapping is not None:
            category, skip = mapped(root.mapping.get(entry.name))
            if category is None:
                continue
        elif CATEGORY_NAME.fullmatch(entry.name):
            category = entry.name
        else:
            problems.add(entry.path, "folder name is not a category name (a-z, 0-9, _); folder skipped")
            continue
        folders.append((Path(entry.path), category, skip))
    return folders


_READ_CHUNK = 1 << 20
_MAX_LINE_BYTES = 4 * MAX_LINE_CHARS  # UTF-8: at most 4 bytes a character


def read_lines(path: Path, problems: Problems) -> Iterator[tuple[int, str]]:
    """(line number, text) of every line of a list file, read 1 MiB at a time; a missing file has none.

    Memory stays bounded whatever the file size (the 120 MB adult list is never one string);
    invalid UTF-8 is replaced, and a line longer than MAX_LINE_CHARS is reported and skipped.
    """
    try:
        file = open(path, "rb")  # noqa: SIM115 - the `with file:` below closes it
    except FileNotFoundError:
        return
    except OSError as exc:
        problems.add_unreadable(path, f"cannot read: {exc.strerror}")
        return
    with file:
        if os.fstat(file.fileno()).st_size > MAX_LIST_FILE_BYTES:
            problems.add_unreadable(path, f"larger than {MAX_LIST_FILE_BYTES >> 20} MiB, not loaded")
            return
        number, tail, size, overlong = 0, b"", 0, False
        while True:
            try:
                chunk = file.read(_READ_CHUNK)
            except OSError as exc:
                problems.add_unreadable(path, f"cannot read: {exc.strerror}")
                return
            size += len(chunk)
            if size > MAX_LIST_FILE_BYTES:  # it grew while being read
                problems.add_unreadable(path, f"larger than {MAX_LIST_FILE_BYTES >> 20} MiB, read no further")
                return
            if not chunk:
                lines = [tail]
            else:
                data = tail + chunk
                cut = data.rfind(b"\n")
                if cut < 0:
                    # No line end in sight: keep at most one overlong line's worth, then skip to its end.
                    tail = data if len(data) <= _MAX_LINE_BYTES else data[: _MAX_LINE_BYTES + 1]
                    overlong = overlong or len(data) > _MAX_LINE_BYTES
                    continue
                lines, tail = data[:cut].split(b"\n"), data[cut + 1 :]
            for raw in lines:
                number += 1
                if overlong or len(raw) > MAX_LINE_CHARS:
                    text = None if overlong else raw.decode("utf-8", errors="replace")
                    overlong = False
                    if text is None or len(text) > MAX_LINE_CHARS:
                        problems.add(f"{path}:{number}", f"line longer than {MAX_LINE_CHARS} characters")
                        continue
                    yield number, text
                else:
                    yield number, raw.decode("utf-8", errors="replace")
            if not chunk:
                return


def read_entries(path: Path, problems: Problems, *, strip_comments: bool) -> Iterator[tuple[int, str]]:
    """(line number, entry) for each entry of a list file: blank lines and `#` comments dropped."""
    for number, line in read_lines(path, problems):
        if strip_comments and "#" in line:
            comment = _TRAILING_COMMENT.search(line)
            if comment:
                line = line[: comment.start()]
        line = line.strip()
        if line and line[0] != "#":
            yield number, line


def domain_key(entry: str) -> str:
    """The lookup key of a `domains` entry: "*.example.com" and ".example.com" mean example.com."""
    if entry.startswith("*."):
        entry = entry[2:]
    elif entry.startswith("."):
        entry = entry[1:]
    if len(entry) <= 253 and _CANONICAL_HOST.fullmatch(entry):
        return entry
    return normalize_host(entry)


def one_site(name: str) -> str:
    """A host name or address that names one site (a registrable domain or a host below one), normalised.

    Every entry that can let a whole namespace through goes through this: lines of
    imported third-party lists, allow-list entries, exemption and classroom sites.
    Raises ValueError (URLError) for anything that is not one site: an invalid host,
    a single label (`uk`, `not`) or a bare public suffix (`co.uk`, `COM.`, `.com`),
    any of which would match every site under it.
    """
    host = domain_key(name)
    if "." not in host and ":" not in host:
        raise ValueError(f"{host!r} is a single label, not a host name: it would match every site under it")
    if is_public_suffix(host):
        raise ValueError(f"{host!r} is a public suffix, not one site: it would match every site under it")
    return host


def url_host(key: str) -> str:
    """The host of a `urls` key (a squid key: host, then the path and query if any)."""
    return key.partition("/")[0]


def url_key(entry: str) -> str:
    """The squid key of a `urls` entry, as the classifier builds it for a request."""
    # The format has no scheme, but a pasted "https://..." means the same page.
    entry = _URL_SCHEME.sub("", entry, count=1)
    # url_list_key drops a trailing slash: "example.com/dir/" and "example.com/dir" are one entry.
    return normalize_url("http://" + entry).url_list_key()


# ---------------------------------------------------------------------------- mapping


def load_mapping(path: Path) -> dict[str, str | MappedFolder | None]:
    """Read a `ut1_category: aupguard_category` YAML file (null: ignore that UT1 folder).

    The long form `ut1_category: {category: aupguard_category, skip: [expressions]}` maps
    the folder but leaves the named list files unread (a MappedFolder).
    """
    try:
        with open(path, "rb") as file:
            raw = file.read(MAX_MAPPING_BYTES + 1)
    except OSError as exc:
        raise ListError(f"{path}: cannot read the category mapping: {exc.strerror}") from exc
    if len(raw) > MAX_MAPPING_BYTES:
        raise ListError(f"{path}: larger than {MAX_MAPPING_BYTES >> 10} KiB; not a category mapping")
    try:
        root = yaml.compose(raw.decode("utf-8"), Loader=yaml.SafeLoader)
    except UnicodeDecodeError as exc:
        raise ListError(f"{path}: not UTF-8 text") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ListError(f"{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from exc
    if root is None:
        raise ListError(f"{path}: the category mapping is empty")
    if not isinstance(root, MappingNode):
        raise ListError(f"{path}:{root.start_mark.line + 1}: expected `ut1_category: aupguard_category` lines")
    mapping: dict[str, str | MappedFolder | None] = {}
    for key_node, value_node in root.value:
        where = f"{path}:{key_node.start_mark.line + 1}"
        if not (_is_text(key_node) and UT1_CATEGORY.fullmatch(key_node.value)):
            raise ListError(f"{where}: {_shown(key_node)} is not a UT1 category folder name")
        key = key_node.value
        if key in mapping:
            raise ListError(f"{where}: {key!r} is mapped twice")
        if isinstance(value_node, ScalarNode) and value_node.tag == "tag:yaml.org,2002:null":
            mapping[key] = None
        elif _is_text(value_node) and CATEGORY_NAME.fullmatch(value_node.value):
            mapping[key] = value_node.value
        elif isinstance(value_node, MappingNode):
            mapping[key] = _mapped_folder(path, key, value_node)
        else:
            where = f"{path}:{value_node.start_mark.line + 1}"
            raise ListError(
                f"{where}: {key}: expected an aupguard category name (a-z, 0-9, _), null, or "
                f"{{category: NAME, skip: [FILE, ...]}}, not {_shown(value_node)}"
            )
    return mapping


def _mapped_folder(path: Path, folder: str, node: MappingNode) -> MappedFolder:
    """The long form `{category: NAME, skip: [FILE, ...]}` of a mapping entry, checked field by field."""
    fields: dict[str, yaml.Node] = {}
    for key_node, value_node in node.value:
        where = f"{path}:{key_node.start_mark.line + 1}"
        name = key_node.value if _is_text(key_node) else None
        if name not in ("category", "skip"):
            raise ListError(f"{where}: {folder}: unknown key {_shown(key_node)} (expected category and skip)")
        if name in fields:
            raise ListError(f"{where}: {folder}: {name} is given twice")
        fields[name] = value_node
    category, skip = fields.get("category"), fields.get("skip")
    where = f"{path}:{node.start_mark.line + 1}"
    if category is None or skip is None:
        raise ListError(f"{where}: {folder}: the long form needs both category and skip")
    if not (_is_text(category) and CATEGORY_NAME.fullmatch(category.value)):
        raise ListError(
            f"{path}:{category.start_mark.line + 1}: {folder}.category: expected an aupguard category name "
            f"(a-z, 0-9, _), not {_shown(category)}"
        )
    if not isinstance(skip, SequenceNode):
        raise ListError(f"{path}:{skip.start_mark.line + 1}: {folder}.skip: expected a list such as [expressions]")
    names = []
    for item in skip.value:
        if not (_is_text(item) and item.value in LIST_FILES):
            raise ListError(
                f"{path}:{item.start_mark.line + 1}: {folder}.skip: {_shown(item)} is not a list file "
                f"(one of {', '.join(LIST_FILES)})"
            )
        names.append(item.value)
    if not names or set(names) == set(LIST_FILES):
        raise ListError(
            f"{path}:{skip.start_mark.line + 1}: {folder}.skip: name one or two of {', '.join(LIST_FILES)} "
            "(to skip the whole folder, map it to null)"
        )
    return MappedFolder(category.value, frozenset(names))


def _is_text(node: yaml.Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:str"


def _shown(node: yaml.Node) -> str:
    if isinstance(node, ScalarNode):
        return repr(node.value[:80])
    return f"a YAML {node.id}"


# ---------------------------------------------------------------------------- import


def import_ut1(src: Path, dest: Path) -> ImportResult:
    """Copy UT1's category folders from a folder or a blacklists.tar.gz into `dest`.

    `dest` is replaced only once the new copy is complete: a failed import
    leaves the previous lists in place. Only regular files named
    <category>/{domains,urls,expressions,usage} are taken; links, devices,
    absolute or `..` names and anything else in an archive are ignored.
    """
    src, dest = Path(src), Path(dest)
    make_dir(dest.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.new-", dir=dest.parent))
    try:
        try:
            with contextlib.closing(_ut1_files(src)) as files:
                categories = _copy_files(files, staging)
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError) as exc:
            raise ListError(f"{src}: damaged archive: {exc}") from exc
        if not categories:
            raise ListError(f"{src}: no UT1 category folders found (expected <category>/domains files)")
        (staging / "SOURCE.md").write_text(_source_notes(src, categories), encoding="utf-8")
        os.chmod(staging, 0o755)  # block lists are public data, unlike incident logs
        _swap_into_place(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ImportResult(dest, categories)


def _ut1_files(src: Path) -> Iterator[tuple[str, str, BinaryIO]]:
    """(category, file name, open binary file) for each UT1 list file of a folder or archive."""
    if src.is_dir():
        yield from _folder_files(src)
        return
    try:
        with tarfile.open(src, "r:*") as archive:
            yield from _archive_files(archive, src)
    except (tarfile.TarError, OSError) as exc:  # a missing src is an OSError too
        raise ListError(f"{src}: not a readable UT1 folder or archive: {exc}") from exc


def _folder_files(root: Path) -> Iterator[tuple[str, str, BinaryIO]]:
    if (root / "blacklists").is_dir():  # an unpacked blacklists.tar.gz
        root = root / "blacklists"
    for entry in sorted(os.scandir(root), key=lambda entry: entry.name):
        if not (UT1_CATEGORY.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False)):
            continue
        for filename in UT1_FILES:
            file = _open_regular(Path(entry.path, filename))
            if file is not None:
                with file:
                    yield entry.name, filename, file


def _open_regular(path: Path) -> BinaryIO | None:
    """The file opened for reading if it is a regular file (not a link, FIFO or device), else None."""
    try:
        # O_NONBLOCK: opening a FIFO must not hang; it is then refused by the check below.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:  # missing, a symlink (ELOOP), unreadable
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return os.fdopen(fd, "rb")


def _archive_files(archive: tarfile.TarFile, src: Path) -> Iterator[tuple[str, str, BinaryIO]]:
    for count, member in enumerate(archive, 1):
        if count > MAX_ARCHIVE_MEMBERS:
            raise ListError(f"{src}: more than {MAX_ARCHIVE_MEMBERS} entries; not a UT1 archive")
        place = _archive_place(member.name)
        if place is None or not member.isreg():
            continue
        file = archive.extractfile(member)
        if file is not None:
            yield *place, file


def _archive_place(name: str) -> tuple[str, str] | None:
    """(category, file name) for an archive member name such as "blacklists/adult/domains", else None."""
    if name.startswith("/"):
        return None
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if len(parts) == 3 and parts[0] == "blacklists":
        parts = parts[1:]
    if len(parts) != 2:
        return None
    category, filename = parts
    if filename not in UT1_FILES or not UT1_CATEGORY.fullmatch(category):
        return None
    return category, filename


def _copy_files(files: Iterator[tuple[str, str, BinaryIO]], staging: Path) -> dict[str, dict[str, int]]:
    """Write each file to staging/<category>/<name>, within size bounds; line counts per category."""
    categories: dict[str, dict[str, int]] = {}
    budget = MAX_IMPORT_BYTES
    for category, filename, file in files:
        folder = staging / category
        folder.mkdir(mode=0o755, exist_ok=True)
        lines, size = _copy_counting_lines(file, folder / filename, min(budget, MAX_LIST_FILE_BYTES))
        budget -= size
        counts = categories.setdefault(category, {})
        if filename in LIST_FILES:
            counts[filename] = lines
    return dict(sorted(categories.items()))


def _copy_counting_lines(file: BinaryIO, target: Path, limit: int) -> tuple[int, int]:
    lines = size = 0
    last = b"\n"
    with open(target, "wb") as out:
        while chunk := file.read(1 << 20):
            size += len(chunk)
            if size > limit:
                raise ListError(
                    f"{target.parent.name}/{target.name}: over the size limit ({limit >> 20} MiB); import stopped"
                )
            lines += chunk.count(b"\n")
            last = chunk[-1:]
            out.write(chunk)
    if last != b"\n":  # a last line without its newline
        lines += 1
    return lines, size


def _source_notes(src: Path, categories: dict[str, dict[str, int]]) -> str:
    imported = datetime.now(UTC).isoformat(timespec="seconds")
    rows = "\n".join(
        f"| {name} | " + " | ".join(str(counts.get(f, "-")) for f in LIST_FILES) + " |"
        for name, counts in categories.items()
    )
    return f"""# UT1 block lists (imported)

{ATTRIBUTION}
{UT1_HOME}

Licence: {UT1_LICENSE}. These lists are the work of their authors; any copy or
derived list you share must keep this attribution and the same licence.

- Imported: {imported} by `aupguard lists import ut1`
- From: `{src}`
- Category folders are kept under their UT1 names; `config/ut1-mapping.yaml`
  says which aupguard category each counts as. Symlinked alias folders and
  `adult/very_restrictive_expression` (an opt-in upstream extra) are not imported.

| UT1 category | domains | urls | expressions |
|:--|--:|--:|--:|
{rows}
"""


def _swap_into_place(staging: Path, dest: Path) -> None:
    """Put the complete `staging` folder at `dest`, keeping the old one until the new one is there."""
    if not (dest.exists() or dest.is_symlink()):
        os.rename(staging, dest)
        return
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    if old.exists():
        shutil.rmtree(old)  # left by an import that died between the renames below
    os.rename(dest, old)
    try:
        os.rename(staging, dest)
    except BaseException:
        os.rename(old, dest)
        raise
    shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------- host lists (DoH, VPN)


@dataclass(frozen=True)
class HostListFormat:
    """A published list of host names and addresses, and the aupguard category folders it fills."""

    origin: str
    home: str
    licence: str
    files: dict[str, tuple[str, ...]]  # category folder -> files of a checkout, first existing alternatives
    allow_hosts: tuple[str, ...] = ()  # upstream's own exclusions (false positives such as CDNs)
    allow_networks: tuple[str, ...] = ()


# The formats `aupguard lists import doh|vpn` reads: checkouts of the upstream repositories (or one
# of their files). Their lines are `host`, `IP  # hosts`, `IP # brand` or AdGuard `||domain^`.
HOST_LIST_FORMATS = {
    "doh": HostListFormat(
        origin="dibdot/DoH-IP-blocklists",
        home="https://github.com/dibdot/DoH-IP-blocklists",
        licence="GPL-3.0",
        files={"doh": ("doh-domains_overall.txt|doh-domains.txt", "doh-ipv4.txt", "doh-ipv6.txt")},
    ),
    "vpn": HostListFormat(
        origin="az0/vpn_ip",
        home="https://github.com/az0/vpn_ip",
        licence="GPL-3.0-or-later",
        files={
            "vpn": (
                "output/hostname.txt|data/output/hostname.txt",
                "output/adguard.txt|data/output/adguard.txt",
                "output/ip.txt|data/output/ip.txt",
            ),
            # Free web-proxy and proxy-list sites: anonymizers, not VPNs.
            "anonymizers": ("input/hostname_only/proxy.txt|data/input/hostname_only/proxy.txt",),
        },
        allow_hosts=("input/allowlist_hostname_only.txt|data/input/allowlist_hostname_only.txt",),
        allow_networks=("input/allowlist_ip.txt|data/input/allowlist_ip.txt",),
    ),
}
_ADGUARD_RULE = re.compile(r"\|\|([^\^/$|]+)\^(?:\$.*)?")


def host_entry(line: str) -> str | None:
    """The host or address on a host-list line, normalised; None for blank lines, comments and exceptions.

    Raises ValueError (URLError) for a line that names no valid host.
    """
    line = line.split("#", 1)[0].strip()
    if not line or line[0] in "!@[":  # AdGuard comments, exception rules and section headers
        return None
    rule = _ADGUARD_RULE.fullmatch(line)
    if rule:
        line = rule.group(1)
    if len(line.split()) != 1:
        raise ValueError(f"{line[:80]!r} is not one host name or address")
    return one_site(line)


def import_host_list(kind: str, src: Path, dest: Path) -> ImportResult:
    """Import a DoH or VPN host list (HOST_LIST_FORMATS[kind]) from a checkout folder or one file.

    Writes `dest/<category>/domains` (names and IP addresses, which `domains`
    files take alike), keeps upstream's licence beside them, and replaces `dest`
    only once the new copy is complete. Lines that name no host are skipped.
    """
    form = HOST_LIST_FORMATS[kind]
    src, dest = Path(src), Path(dest)
    if src.is_dir():
        sources = {category: _existing(src, names) for category, names in form.files.items()}
        allow_hosts = set(_read_hosts(_existing(src, form.allow_hosts), Problems()))
        allow_networks = [net for path in _existing(src, form.allow_networks) for net in _read_networks(path)]
    elif src.is_file():
        sources = {next(iter(form.files)): [src]}
        allow_hosts, allow_networks = set(), []
    else:
        raise ListError(f"{src}: no such file or folder")
    if not any(sources.values()):
        expected = ", ".join(name for names in form.files.values() for name in names)
        raise ListError(f"{src}: not a {form.origin} checkout (expected one of {expected})")

    problems = Problems()
    make_dir(dest.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.new-", dir=dest.parent))
    try:
        categories: dict[str, dict[str, int]] = {}
        for category, paths in sources.items():
            if not paths:
                continue
            entries = sorted(
                {host for host in _read_hosts(paths, problems) if not _allowed(host, allow_hosts, allow_networks)}
            )
            folder = staging / category
            folder.mkdir(mode=0o755)
            header = f"# {form.origin} ({form.licence}), imported by `aupguard lists import {kind}`\n"
            (folder / "domains").write_text(header + "".join(f"{host}\n" for host in entries), encoding="utf-8")
            categories[category] = {"domains": len(entries)}
        licence = src / "LICENSE" if src.is_dir() else src.parent / "LICENSE"
        if licence.is_file():
            shutil.copyfile(licence, staging / "LICENSE")
        (staging / "SOURCE.md").write_text(_host_list_notes(form, kind, src, categories, problems), encoding="utf-8")
        os.chmod(staging, 0o755)
        _swap_into_place(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ImportResult(dest, categories, form.origin)


def _existing(root: Path, names: Sequence[str]) -> list[Path]:
    """For each `a|b` alternative, the first that is a file under root."""
    found = []
    for alternatives in names:
        for name in alternatives.split("|"):
            if (root / name).is_file():
                found.append(root / name)
                break
    return found


def _read_hosts(paths: Sequence[Path], problems: Problems) -> Iterator[str]:
    for path in paths:
        for number, line in read_lines(path, problems):
            try:
                host = host_entry(line)
            except ValueError as exc:
                problems.add(f"{path}:{number}", str(exc))
                continue
            if host is not None:
                yield host


def _read_networks(path: Path) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    networks = []
    for _number, line in read_lines(path, Problems()):
        text = line.split("#", 1)[0].strip()
        if text:
            with contextlib.suppress(ValueError):
                networks.append(ipaddress.ip_network(text, strict=False))
    return networks


def _allowed(host: str, hosts: set[str], networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        labels = host.split(".")
        return any(".".join(labels[i:]) in hosts for i in range(len(labels)))
    return any(address in network for network in networks)


def _host_list_notes(
    form: HostListFormat, kind: str, src: Path, categories: dict[str, dict[str, int]], problems: Problems
) -> str:
    imported = datetime.now(UTC).isoformat(timespec="seconds")
    rows = "\n".join(f"| {name} | {counts['domains']} |" for name, counts in categories.items())
    skipped = "".join(f"\n- skipped: {problem}" for problem in problems.as_list()[:20])
    return f"""# {form.origin} (imported)

{form.home}

Licence: {form.licence} (upstream's LICENSE is kept beside this file). Keep the licence and this
attribution with any copy you pass on; these lists are not part of aupguard's own bundled lists.

- Imported: {imported} by `aupguard lists import {kind}`
- From: `{src}`
- Host names and IP addresses are both in `domains`; upstream's own allow lists were applied.

| category | domains |
|:--|--:|
{rows}
{skipped}
"""


# ---------------------------------------------------------------------------- plain domain lists

# `aupguard lists import hosts|domains|adblock`: third-party lists of bare names, one category each.
DOMAIN_LIST_FORMATS = ("hosts", "domains", "adblock")
# Names a hosts file maps for the machine itself, never list entries.
_HOSTS_SELF = frozenset({"localhost", "localhost.localdomain", "local", "broadcasthost", "ip6-localhost",
                         "ip6-loopback", "ip6-localnet", "ip6-mcastprefix", "ip6-allnodes", "ip6-allrouters",
                         "ip6-allhosts", "0.0.0.0"})  # fmt: skip
_ADBLOCK_DOMAIN_RULE = re.compile(r"\|\|([^\^/$|*]+)\^(?:\$(.*))?")
# Adblock options that leave a `||domain^` rule blocking the whole domain; any other
# ($third-party, $domain=, $script, ...) blocks only some requests to it.
_ADBLOCK_WHOLE_DOMAIN_OPTIONS = frozenset({"important", "all"})


class NarrowedRule(AupguardError, ValueError):
    """An Adblock `||domain^$options` rule whose options block only some requests: not a domain entry."""


def domain_list_entries(fmt: str, line: str) -> list[str]:
    """The entries (as `domains` keys) on one line of a hosts, plain domain or Adblock-style list.

    hosts: `0.0.0.0 ads.example.com tracker.example.net`; domains: `example.com`,
    exactly one name; adblock: `||example.com^`, bare or with options that do not
    narrow it ($important, $all). Comments, exception rules (`@@`) and hosts lines
    for the machine itself name no domain: []. Raises ValueError for a line that
    names no valid host, or a single label or bare public suffix (`uk`, `co.uk`),
    and NarrowedRule for an Adblock rule its options narrow ($third-party, ...).
    """
    if fmt == "adblock":
        line = line.strip()
        if not line or line[0] in "!#[" or line.startswith("@@"):
            return []
        rule = _ADBLOCK_DOMAIN_RULE.fullmatch(line)
        if rule is None:
            raise ValueError("not a `||domain^` rule (element-hiding and path rules are not domain lists)")
        options = {o.strip().lower() for o in rule.group(2).split(",")} if rule.group(2) is not None else set()
        if options - _ADBLOCK_WHOLE_DOMAIN_OPTIONS:
            raise NarrowedRule(f"${rule.group(2)[:80]} narrows the rule to some requests: not a whole-domain block")
        return [one_site(rule.group(1))]
    text = line.split("#", 1)[0].split()
    if not text:
        return []
    if fmt == "domains":
        if len(text) != 1:
            raise ValueError(f"{line.strip()[:80]!r} is not one domain: a domains line holds exactly one name")
        return [one_site(text[0])]
    address, names = text[0], text[1:]
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"{address[:80]!r} is not an address: a hosts line is `0.0.0.0 name...`") from None
    if not names:
        raise ValueError(f"{address!r} with no name: a hosts line is `0.0.0.0 name...`")
    return [one_site(name) for name in names if name.lower() not in _HOSTS_SELF]


def import_domain_list(fmt: str, src: Path, dest: Path, category: str) -> ImportResult:
    """Import a hosts, plain domain or Adblock-style list file as `dest/<category>/domains`.

    `dest` is a list root (DATA_DIR/lists/<name>); its other category folders stay
    as they are. The new `domains` file replaces the old one in one rename, only
    once it is complete. Lines naming no single site (see `domain_list_entries`)
    are skipped, counted and the first of them returned in the result.
    """
    if fmt not in DOMAIN_LIST_FORMATS:
        raise ListError(f"unknown list format {fmt!r}; expected one of {', '.join(DOMAIN_LIST_FORMATS)}")
    if not CATEGORY_NAME.fullmatch(category):
        raise ListError(f"{category!r} is not a category name (a-z, 0-9, _)")
    src = Path(src)
    if not src.is_file():
        raise ListError(f"{src}: no such file")
    problems = Problems()
    entries: set[str] = set()
    narrowed = 0
    for number, line in read_lines(src, problems):
        try:
            entries.update(domain_list_entries(fmt, line))
        except ValueError as exc:  # URLError, NarrowedRule, or a codec's UnicodeError
            narrowed += isinstance(exc, NarrowedRule)
            problems.add(f"{src}:{number}", str(exc))
    if problems.unreadable:
        raise ListError("; ".join(problems.unreadable))
    if not entries:
        raise ListError(f"{src}: no {fmt} entries found ({problems.count} lines skipped); nothing imported")
    folder = make_dir(Path(dest) / category)
    fd, tmp_name = tempfile.mkstemp(prefix=".domains.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(f"# imported from {src.name} ({fmt} format) by `aupguard lists import {fmt}`\n")
            out.writelines(f"{entry}\n" for entry in sorted(entries))
        os.chmod(tmp_name, 0o644)  # block lists are public data, unlike incident logs
        os.replace(tmp_name, folder / "domains")
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return ImportResult(
        Path(dest),
        {category: {"domains": len(entries)}},
        f"{src.name} ({fmt})",
        problems.count,
        narrowed,
        tuple(problems.as_list()),
    )
