"""Importing third-party lists into list folders (`aupguard lists import`).

UT1 (a folder or blacklists.tar.gz), DoH/VPN host lists (checkouts of their upstream
repositories) and hosts/domains/Adblock files: untrusted input, bounded in size and
count; a folder or `domains` file is replaced only once its new copy is complete.
"""

from __future__ import annotations

import contextlib
import gzip
import ipaddress
import lzma
import os
import re
import shutil
import stat
import tarfile
import zlib
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from aupguard.base.errors import AupguardError
from aupguard.base.files import atomic_write_text, staged_dir
from aupguard.base.paths import make_dir
from aupguard.base.vocabulary import CATEGORY_NAME
from aupguard.lists.mapping import UT1_CATEGORY
from aupguard.lists.model import LIST_FILES, ListError, Problems, one_site
from aupguard.lists.read import MAX_LIST_FILE_BYTES, read_lines

# What an import copies: the lists plus UT1's `usage` metadata (black/white, aliases).
UT1_FILES = (*LIST_FILES, "usage")
MAX_IMPORT_BYTES = 4 << 30  # all files of one import together: a decompression-bomb guard
MAX_ARCHIVE_MEMBERS = 100_000  # UT1 has a few hundred; tarfile keeps every member header in memory
ATTRIBUTION = "Blacklists UT1 — Université Toulouse 1 Capitole, Fabrice Prigent"
UT1_LICENSE = "CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/)"
UT1_HOME = "https://dsi.ut-capitole.fr/blacklists/"


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


def import_ut1(src: Path, dest: Path) -> ImportResult:
    """Copy UT1's category folders from a folder or a blacklists.tar.gz into `dest`.

    `dest` is replaced only once the new copy is complete: a failed import
    leaves the previous lists in place. Only regular files named
    <category>/{domains,urls,expressions,usage} are taken; links, devices,
    absolute or `..` names and anything else in an archive are ignored.
    """
    src, dest = Path(src), Path(dest)
    with staged_dir(dest) as staging:  # 0755: block lists are public data, unlike incident logs
        try:
            with contextlib.closing(_ut1_files(src)) as files:
                categories = _copy_files(files, staging)
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError) as exc:
            raise ListError(f"{src}: damaged archive: {exc}") from exc
        if not categories:
            raise ListError(f"{src}: no UT1 category folders found (expected <category>/domains files)")
        (staging / "SOURCE.md").write_text(_source_notes(src, categories), encoding="utf-8")
    return ImportResult(dest, categories)


def _ut1_files(src: Path) -> Generator[tuple[str, str, IO[bytes]]]:
    """(category, file name, open binary file) for each UT1 list file of a folder or archive."""
    if src.is_dir():
        yield from _folder_files(src)
        return
    try:
        with tarfile.open(src, "r:*") as archive:
            yield from _archive_files(archive, src)
    except (tarfile.TarError, OSError) as exc:  # a missing src is an OSError too
        raise ListError(f"{src}: not a readable UT1 folder or archive: {exc}") from exc


def _folder_files(root: Path) -> Iterator[tuple[str, str, IO[bytes]]]:
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


def _open_regular(path: Path) -> IO[bytes] | None:
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


def _archive_files(archive: tarfile.TarFile, src: Path) -> Iterator[tuple[str, str, IO[bytes]]]:
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


def _copy_files(files: Iterator[tuple[str, str, IO[bytes]]], staging: Path) -> dict[str, dict[str, int]]:
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


def _copy_counting_lines(file: IO[bytes], target: Path, limit: int) -> tuple[int, int]:
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


# An Adblock/AdGuard domain rule, `||name^` or `||name^$options`: group 1 the name, group 2 the options.
_ADBLOCK_RULE = re.compile(r"\|\|([^\^/$|]+)\^(?:\$(.*))?")


def host_entry(line: str) -> str | None:
    """The host or address on a host-list line, normalised; None for blank lines, comments and exceptions.

    Raises ValueError (URLError) for a line that names no valid host.
    """
    line = line.split("#", 1)[0].strip()
    if not line or line[0] in "!@[":  # AdGuard comments, exception rules and section headers
        return None
    rule = _ADBLOCK_RULE.fullmatch(line)
    if rule:  # a DoH or VPN host is blocked whole, whatever options the rule gives
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
    with staged_dir(dest) as staging:
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


# `aupguard lists import hosts|domains|adblock`: third-party lists of bare names, one category each.
DOMAIN_LIST_FORMATS = ("hosts", "domains", "adblock")
# Names a hosts file maps for the machine itself, never list entries.
_HOSTS_SELF = frozenset({"localhost", "localhost.localdomain", "local", "broadcasthost", "ip6-localhost",
                         "ip6-loopback", "ip6-localnet", "ip6-mcastprefix", "ip6-allnodes", "ip6-allrouters",
                         "ip6-allhosts", "0.0.0.0"})  # fmt: skip


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
        rule = _ADBLOCK_RULE.fullmatch(line)
        if rule is None or "*" in rule.group(1):  # a wildcard makes a pattern, not a domain
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
    with atomic_write_text(folder / "domains", 0o644) as out:  # block lists are public data, unlike incident logs
        out.write(f"# imported from {src.name} ({fmt} format) by `aupguard lists import {fmt}`\n")
        out.writelines(f"{entry}\n" for entry in sorted(entries))
    return ImportResult(
        Path(dest),
        {category: {"domains": len(entries)}},
        f"{src.name} ({fmt})",
        problems.count,
        narrowed,
        tuple(problems.as_list()),
    )
