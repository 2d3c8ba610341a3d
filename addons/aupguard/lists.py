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
import gzip
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
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

import yaml
from yaml.nodes import MappingNode, ScalarNode

from .urlnorm import normalize_host, normalize_url

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
# An aupguard category name, as the policy spells them.
CATEGORY_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")

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


class ListError(ValueError):
    """A list root, mapping or import source that cannot be used at all."""


@dataclass(frozen=True, slots=True)
class ListSource:
    id: int  # bit position in the masks below
    category: str  # aupguard category
    name: str  # how a rule is shown, e.g. "blocklists/adult" or "ut1/redirector"
    path: Path


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


@dataclass(frozen=True)
class ListRoot:
    """A folder of category folders, e.g. the bundled `blocklists/` or an imported UT1 copy."""

    path: Path
    name: str  # prefixes rule sources: "blocklists/adult/domains"
    # Folder name -> aupguard category (None or absent: the folder is ignored);
    # without a mapping the folder name is the category.
    mapping: Mapping[str, str | None] | None = None
    optional: bool = False  # a missing folder is skipped instead of an error


@dataclass(frozen=True)
class ImportResult:
    dest: Path
    categories: dict[str, dict[str, int]]  # UT1 category -> list file -> line count

    def total(self, filename: str) -> int:
        return sum(counts.get(filename, 0) for counts in self.categories.values())

    def __str__(self) -> str:
        return (
            f"{len(self.categories)} UT1 categories ({self.total('domains'):,} domain, "
            f"{self.total('urls'):,} url and {self.total('expressions'):,} expression lines)"
        )


# ---------------------------------------------------------------------------- reading


class _Problems:
    """The first MAX_PROBLEMS problems, and how many there were in all."""

    def __init__(self) -> None:
        self.shown: list[str] = []
        self.count = 0

    def add(self, where: str, reason: str) -> None:
        self.count += 1
        if len(self.shown) < MAX_PROBLEMS:
            self.shown.append(f"{where}: {reason[:200]}")

    def as_list(self) -> list[str]:
        hidden = self.count - len(self.shown)
        return self.shown + [f"... and {hidden} more problems not shown"] if hidden else self.shown


@dataclass
class _Builder:
    sources: list[ListSource] = field(default_factory=list)
    domains: dict[str, int] = field(default_factory=dict)
    urls: dict[str, int] = field(default_factory=dict)
    expressions: list[tuple[int, str]] = field(default_factory=list)
    problems: _Problems = field(default_factory=_Problems)

    def add_folder(self, folder: Path, category: str, name: str) -> None:
        source = ListSource(len(self.sources), category, name, folder)
        self.sources.append(source)
        bit = 1 << source.id
        for table, path, key in (
            (self.domains, folder / "domains", _domain_key),
            (self.urls, folder / "urls", _url_key),
        ):
            for number, entry in _entries(path, self.problems, strip_comments=True):
                try:
                    entry_key = key(entry)
                except ValueError as exc:  # URLError, or a codec's UnicodeError
                    self.problems.add(f"{path}:{number}", str(exc))
                    continue
                table[entry_key] = table.get(entry_key, 0) | bit
        # Compiled once, by the classifier (RE2), which also reports patterns it cannot use.
        path = folder / "expressions"
        for _number, pattern in _entries(path, self.problems, strip_comments=False):
            self.expressions.append((source.id, pattern))


def load_lists(roots: Sequence[ListRoot]) -> ListData:
    """Read every category folder of every root. Raises ListError for a missing, non-optional root."""
    builder = _Builder()
    for root in roots:
        for folder, category in _category_folders(root, builder.problems):
            builder.add_folder(folder, category, f"{root.name}/{folder.name}")
    if builder.problems.count:
        log.warning("skipped %d unreadable list lines or files (see ListData.problems)", builder.problems.count)
    return ListData(
        sources=builder.sources,
        domains=builder.domains,
        urls=builder.urls,
        expressions=builder.expressions,
        problems=builder.problems.as_list(),
    )


def _category_folders(root: ListRoot, problems: _Problems) -> list[tuple[Path, str]]:
    """(folder, aupguard category) for each folder of `root` that counts, in name order."""
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
        if root.mapping is not None:
            category = root.mapping.get(entry.name)
            if category is None:
                continue
        elif CATEGORY_NAME.fullmatch(entry.name):
            category = entry.name
        else:
            problems.add(entry.path, "folder name is not a category name (a-z, 0-9, _); folder skipped")
            continue
        folders.append((Path(entry.path), category))
    return folders


def _entries(path: Path, problems: _Problems, *, strip_comments: bool) -> Iterator[tuple[int, str]]:
    """(line number, entry) for each entry of a list file; a missing file has none."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_LIST_FILE_BYTES + 1)
    except FileNotFoundError:
        return
    except OSError as exc:
        problems.add(str(path), f"cannot read: {exc.strerror}")
        return
    if len(data) > MAX_LIST_FILE_BYTES:
        problems.add(str(path), f"larger than {MAX_LIST_FILE_BYTES >> 20} MiB, not loaded")
        return
    for number, line in enumerate(data.decode("utf-8", errors="replace").split("\n"), 1):
        if len(line) > MAX_LINE_CHARS:
            problems.add(f"{path}:{number}", f"line longer than {MAX_LINE_CHARS} characters")
            continue
        if strip_comments and "#" in line:
            comment = _TRAILING_COMMENT.search(line)
            if comment:
                line = line[: comment.start()]
        line = line.strip()
        if line and line[0] != "#":
            yield number, line


def _domain_key(entry: str) -> str:
    if entry.startswith("*."):
        entry = entry[2:]
    elif entry.startswith("."):
        entry = entry[1:]
    if len(entry) <= 253 and _CANONICAL_HOST.fullmatch(entry):
        return entry
    return normalize_host(entry)


def _url_key(entry: str) -> str:
    """The squid key of a `urls` entry, as the classifier builds it for a request."""
    # The format has no scheme, but a pasted "https://..." means the same page.
    entry = _URL_SCHEME.sub("", entry, count=1)
    key = normalize_url("http://" + entry).squid_key()
    # "example.com/dir/" and "example.com/dir" are one entry; a query keeps its slashes.
    return key if "?" in key else key.rstrip("/")


# ---------------------------------------------------------------------------- mapping


def load_mapping(path: Path) -> dict[str, str | None]:
    """Read a `ut1_category: aupguard_category` YAML file (null: ignore that UT1 folder)."""
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
    mapping: dict[str, str | None] = {}
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
        else:
            where = f"{path}:{value_node.start_mark.line + 1}"
            raise ListError(
                f"{where}: {key}: expected an aupguard category name (a-z, 0-9, _) or null, "
                f"not {_shown(value_node)}"
            )
    return mapping


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
    dest.parent.mkdir(parents=True, exist_ok=True)
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
    imported = datetime.now(timezone.utc).isoformat(timespec="seconds")
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
