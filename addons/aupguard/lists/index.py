"""The compiled list index: millions of list entries in one read-only file that loads in a blink.

`aupguard lists compile` writes it; `run` and `classify` map it and look entries up
through the same `domain_mask` / `url_mask` protocol as the text-loaded `ListData`.

File layout (little-endian; every offset is from the start of the file)::

    header   128 bytes: magic, format version, combo width, hash seed, file size,
             offsets/lengths/counts below, checksum of the body, checksum of the header
    json     {"sources": [...], "expressions": [[source id, regex], ...],
              "combos": [[source id, ...], ...]}
    domains    page-aligned: `slots` uint64 key hashes, then `slots` combo ids (uint8/16/32)
    urls       the same layout
    url_hosts  the same layout: each host some `urls` entry is on, with the union of their
               masks, so that a URL on any other host costs one lookup instead of one a segment

Why this design:

* **One mmap'd file, shared by every worker.** The tables are never copied into
  Python objects: lookups index a `memoryview` of a read-only shared mapping, so
  N proxy processes share one copy in the page cache, loading costs a header
  parse plus a checksum pass, and memory grows only with the pages actually touched.
* **Open addressing, linear probing, load ≤ 0.8 (0.65 when the entry count is
  known up front).** A lookup hashes the key once and probes a few adjacent
  slots (one cache line): constant time whatever the list size.
* **Slots hold a 64-bit key hash, not the key.** Storing the keys would triple the file and
  RSS. The hash is xxh3_64 with a random per-index seed (in the header), so
  nobody outside can precompute a domain that collides with a listed one. The
  home slot is the hash modulo the slot count, and a key absent from the lists
  is wrongly found only when its full 64-bit hash equals a listed one's:
  about N/2^64 per lookup, 3e-13 at N = 6 million, i.e. once in ~90 years for a
  school doing 10^8 lookups a day. Two listed keys sharing a hash (N^2/2^65,
  ~1e-6 per compile of 6M entries) merge their source masks.
* **Combo ids instead of masks.** A slot stores the index of its distinct source
  bitmask ("combo"); there are few distinct combos (hundreds), so 1 or 2 bytes a
  slot instead of an arbitrary-width int: 10 bytes a slot in all.
* **Atomic replacement.** The writer writes a temporary file in the target's
  directory, fsyncs it, `os.replace`s it over the target and fsyncs the directory.
  A reader keeps its mapping of the old inode, which stays valid after the
  replace (a versioned file plus a `current` pointer would add nothing), and
  `CompiledIndex.stale()` tells it a newer file is there.
* **The proxy maps a private copy, never the published file.** A file written in place
  (`cp` over it, zeroed blocks, a truncation) would change what a mapping shows, or SIGBUS
  its reader. `serve_index` copies the file into a 0700 folder under AUPGUARD_DATA, as a
  0400 file named by its SHA-256 (so every worker maps the same one), validates that copy
  and maps it: nobody else writes it. Every probe loop is also bounded by its table's size.
* **Only what aupguard compiled is served.** The writer records the SHA-256 of every index
  it publishes in a 0700 folder under AUPGUARD_DATA (`published_dir`); `serve_index` serves
  nothing else, so a file put at the index path by anyone else (a copy from elsewhere, one
  forged with valid checksums) is refused, however well it validates.
* **Corruption is caught at load** (of the copy, before any swap): magic, version, header checksum, file size,
  bounds, an xxh3 checksum of the whole body (read with `pread`, not through the
  mapping, so it adds no RSS) and the JSON structure. Any failure raises
  `IndexFormatError` so a reloading caller can keep the index it has.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import stat
import struct
import sys
import tempfile
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from xxhash import xxh3_64, xxh3_64_intdigest

from aupguard.base import paths
from aupguard.base.errors import AupguardError
from aupguard.base.paths import make_dir, private_dir
from aupguard.lists import folders as lists
from aupguard.lists.folders import ListData, ListRoot, ListSource

log = logging.getLogger(__name__)

MAGIC = b"AUPGIDX\x00"
FORMAT_VERSION = 3  # 2: the url_hosts table; 3: urls keyed by urlnorm.server_path
KINDS = ("domains", "urls")  # the list files compiled
TABLES = (*KINDS, "url_hosts")  # the tables of the file

# magic, version, combo width (bytes), seed, file size, json offset, json length,
# then offset, slots, entries for each table, then the body checksum;
# the header checksum (xxh3 of the bytes before it) follows.
_HEADER = struct.Struct("<8sIIQQQQ" + "QQQ" * len(TABLES) + "Q")
_HEADER_CHECKSUM = struct.Struct("<Q")
HEADER_SIZE = 256
assert _HEADER.size + _HEADER_CHECKSUM.size <= HEADER_SIZE

_PAGE = 4096
# Load factors: what a table is sized for when its entry count is known, and when it grows.
_TARGET_LOAD = 0.65
_MAX_LOAD = 0.8
_COMBO_TYPECODES = {1: "B", 2: "H", 4: "I"}
_VERIFY_CHUNK = 1 << 20
_MAX_JSON = 256 << 20

Progress = Callable[[int, int], None]  # (done, total), in whatever unit the caller counts
# What changes when a file is replaced or written in place: device, inode, size, mtime, ctime (ns).
Signature = tuple[int, int, int, int, int]
KEEP_SERVED = 2  # private copies kept in the served folder: the one in service and the one before
KEEP_PUBLISHED = 64  # digests of recent publications kept (empty files): an older compile copied back is still taken
_ABANDONED_COPY_S = 3600  # a partial copy this old was left by a killed process: deleted


class IndexFormatError(AupguardError, ValueError):
    """The file is not a valid index (wrong magic or version, truncated, corrupt)."""


def key_hash(key: str, seed: int) -> int:
    """The 64-bit hash a table stores for `key`; never 0, which marks an empty slot."""
    return xxh3_64_intdigest(key.encode("utf-8", "surrogatepass"), seed) or 1


def _check_little_endian() -> None:
    if sys.byteorder != "little":
        raise IndexFormatError("aupguard index files are little-endian; this host is big-endian")


# ---------------------------------------------------------------------------- writing


class _TableBuilder:
    """One open-addressing table under construction: key hashes and combo ids."""

    def __init__(self, expected: int):
        self.slots = max(8, int(expected / _TARGET_LOAD) + 1)
        self.hashes = array("Q", bytes(8 * self.slots))
        self.combos = array("I", bytes(4 * self.slots))
        self.count = 0
        self.limit = int(self.slots * _MAX_LOAD)

    def grow(self) -> None:
        old_hashes, old_combos = self.hashes, self.combos
        self.slots *= 2
        self.limit = int(self.slots * _MAX_LOAD)
        slots = self.slots
        hashes = self.hashes = array("Q", bytes(8 * slots))
        combos = self.combos = array("I", bytes(4 * slots))
        for h, combo in zip(old_hashes, old_combos):
            if h:
                i = h % slots
                while hashes[i]:
                    i = i + 1 if i + 1 < slots else 0
                hashes[i] = h
                combos[i] = combo


class IndexWriter:
    """Collects entries into the tables, then writes the index file atomically.

    Entries arrive as (key, mask) pairs; a key met again (the same domain in two
    lists) gets the union of its masks. Memory while compiling: 12 bytes a slot
    per table, no per-key Python objects.
    """

    def __init__(
        self,
        sources: Sequence[ListSource],
        expressions: Sequence[tuple[int, str]] = (),
        *,
        expected: dict[str, int] | None = None,
        seed: int | None = None,
        roots: list[dict] | None = None,
        compiled_at: float = 0.0,
    ):
        _check_little_endian()
        self.sources = list(sources)
        self.expressions = list(expressions)
        self.roots = roots  # `roots_fingerprint` of the folders compiled, when compiled from folders
        self.compiled_at = compiled_at
        self.seed = int.from_bytes(os.urandom(8), "little") if seed is None else seed
        expected = {"url_hosts": (expected or {}).get("urls", 0), **(expected or {})}  # at most one host a url
        self._tables = {kind: _TableBuilder(expected.get(kind, 0)) for kind in TABLES}
        self._combo_masks: list[int] = []
        self._combo_of_mask: dict[int, int] = {}
        self._merged: dict[tuple[int, int], int] = {}

    def _combo(self, mask: int) -> int:
        combo = self._combo_of_mask.get(mask)
        if combo is None:
            combo = self._combo_of_mask[mask] = len(self._combo_masks)
            self._combo_masks.append(mask)
        return combo

    def _merge(self, combo: int, mask: int) -> int:
        merged = self._merged.get((combo, mask))
        if merged is None:
            merged = self._merged[combo, mask] = self._combo(self._combo_masks[combo] | mask)
        return merged

    def add(
        self,
        kind: str,
        items: Iterable[tuple[str, int]],
        *,
        tick: Callable[[int], None] | None = None,
    ) -> int:
        """Add (key, mask) pairs to the `kind` table; returns how many pairs were read.

        `tick(n)` is called after every 65,536 pairs (n = pairs so far) to drive a progress bar.
        `urls` keys also add their host to the url_hosts table.
        """
        if kind != "urls":
            return self._add(kind, items, tick)
        hosts: dict[str, int] = {}

        def noting_hosts() -> Iterator[tuple[str, int]]:
            for key, mask in items:
                host = lists.url_host(key)
                hosts[host] = hosts.get(host, 0) | mask
                yield key, mask

        read = self._add("urls", noting_hosts(), tick)
        self._add("url_hosts", hosts.items(), None)
        return read

    def _add(self, kind: str, items: Iterable[tuple[str, int]], tick: Callable[[int], None] | None) -> int:
        table = self._tables[kind]
        seed = self.seed
        # The loop runs once per list entry (millions): everything it touches is a local.
        hashes, combos, slots, limit = table.hashes, table.combos, table.slots, table.limit
        count = table.count
        last_mask, last_combo = None, 0
        read = 0
        for key, mask in items:
            read += 1
            if tick is not None and not read & 0xFFFF:
                tick(read)
            h = xxh3_64_intdigest(key.encode("utf-8", "surrogatepass"), seed) or 1  # key_hash(), inlined
            i = h % slots
            while True:
                v = hashes[i]
                if v == h:
                    combos[i] = self._merge(combos[i], mask)
                    break
                if not v:
                    if mask != last_mask:
                        last_mask, last_combo = mask, self._combo(mask)
                    hashes[i] = h
                    combos[i] = last_combo
                    count += 1
                    if count > limit:
                        table.count = count
                        table.grow()
                        hashes, combos, slots, limit = table.hashes, table.combos, table.slots, table.limit
                    break
                i += 1
                if i == slots:
                    i = 0
        table.count = count
        return read

    def write(self, out_path: Path) -> CompileSummary:
        """Write the index to `out_path`, atomically replacing any index already there."""
        out_path = Path(out_path)
        width = next(w for w in (1, 2, 4) if len(self._combo_masks) <= 1 << (8 * w))
        meta = {
            "sources": [
                {"id": s.id, "category": s.category, "name": s.name, "path": str(s.path), "skip": sorted(s.skip)}
                for s in self.sources
            ],
            "expressions": [[sid, pattern] for sid, pattern in self.expressions],
            "combos": [_bits(mask) for mask in self._combo_masks],
            "roots": self.roots,
            "compiled_at": self.compiled_at,
        }
        json_bytes = json.dumps(meta, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")
        layout = []  # (offset, table)
        offset = HEADER_SIZE + len(json_bytes)
        for kind in TABLES:
            table = self._tables[kind]
            offset = _align(offset, _PAGE)
            layout.append((offset, table))
            offset += table.slots * (8 + width)
        file_size = offset

        body = xxh3_64()
        chunks: list[bytes | array] = [json_bytes]
        position = HEADER_SIZE + len(json_bytes)
        for table_offset, table in layout:
            chunks.append(bytes(table_offset - position))
            chunks.append(table.hashes)
            chunks.append(table.combos if width == 4 else array(_COMBO_TYPECODES[width], table.combos))
            position = table_offset + table.slots * (8 + width)
        for chunk in chunks:
            body.update(chunk)

        fields = [MAGIC, FORMAT_VERSION, width, self.seed, file_size, HEADER_SIZE, len(json_bytes)]
        for table_offset, table in layout:
            fields += [table_offset, table.slots, table.count]
        fields.append(body.intdigest())
        header = _HEADER.pack(*fields)
        header += _HEADER_CHECKSUM.pack(xxh3_64_intdigest(header))
        header += bytes(HEADER_SIZE - len(header))

        make_dir(out_path.parent)
        published = hashlib.sha256(header)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(header)
                for chunk in chunks:
                    f.write(chunk)
                    published.update(chunk)
                f.flush()
                os.fsync(f.fileno())
            _record_publication(published.hexdigest())  # before the file appears: a watcher may be quick
            os.replace(tmp_name, out_path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        _fsync_dir(out_path.parent)
        return CompileSummary(
            path=out_path,
            domains=self._tables["domains"].count,
            urls=self._tables["urls"].count,
            expressions=len(self.expressions),
            sources=len(self.sources),
            combos=len(self._combo_masks),
            size=file_size,
        )


@dataclass(frozen=True, slots=True)
class CompileSummary:
    path: Path
    domains: int  # distinct keys in each table
    urls: int
    expressions: int
    sources: int
    combos: int  # distinct source masks
    size: int  # bytes
    problems: tuple[str, ...] = ()  # list lines skipped while reading the sources


def compile_from_folders(
    roots: Sequence[ListRoot],
    out_path: Path,
    progress: Progress | None = None,
    staged: Mapping[str, Path] | None = None,
) -> CompileSummary:
    """Compile list folders straight into an index file, streaming: no dict of every entry is built.

    Sources, ids, keys and problems are exactly those `load_lists(roots)` gives (both
    read through `lists.list_sources` / `source_keys` / `source_expressions`), except
    that a list file that cannot be read at all (unreadable, over the size limit)
    stops the compile with ListError: an index silently missing a whole list would
    let its sites through. `progress(done, total)` counts list lines. Nothing is
    written unless the compile succeeds, so the index in place keeps serving.

    `staged` maps a root's name to a folder read in its place (a new import not yet
    moved to the root's path): the index records the root as the policy names it.
    """
    started = time.time()  # before reading: a list edited during the compile makes the index stale
    problems = lists.Problems()
    staged = staged or {}
    read_roots = [replace(root, path=staged[root.name]) if root.name in staged else root for root in roots]
    sources = lists.list_sources(read_roots, problems)
    # Line counts first (a fast pass over cached files): they size the tables and the progress bar.
    lines = {
        (source.id, kind): 0 if kind in source.skip else _count_lines(source.path / kind)
        for source in sources
        for kind in KINDS
    }
    expected = {kind: sum(n for (_sid, k), n in lines.items() if k == kind) for kind in KINDS}
    total = sum(expected.values())
    real_path = {root.name: Path(root.path) for root in roots}
    recorded = [
        replace(s, path=real_path[s.name.split("/")[0]] / s.path.name) if s.name.split("/")[0] in staged else s
        for s in sources
    ]
    writer = IndexWriter(recorded, expected=expected, roots=roots_fingerprint(roots), compiled_at=started)
    done = 0
    for source in sources:
        bit = 1 << source.id
        for kind in KINDS:
            tick = progress and (lambda n, base=done: progress(base + n, total))
            writer.add(kind, ((key, bit) for key in lists.source_keys(source, kind, problems)), tick=tick)
            done += lines[source.id, kind]
            if progress:
                progress(done, total)
        writer.expressions.extend((source.id, pattern) for pattern in lists.source_expressions(source, problems))
    if problems.unreadable:
        raise lists.ListError("cannot compile: " + "; ".join(problems.unreadable[:5]))
    return replace(writer.write(out_path), problems=tuple(problems.as_list()))


def roots_fingerprint(roots: Sequence[ListRoot]) -> list[dict]:
    """What an index records of the list roots it was compiled from, to tell when the policy changed them."""
    return [
        {
            "name": root.name,
            "path": str(Path(root.path).absolute()),
            "mapping": {folder: _mapping_json(value) for folder, value in sorted(root.mapping.items())}
            if root.mapping is not None
            else None,
            "optional": root.optional,
        }
        for root in roots
    ]


def _mapping_json(value: str | lists.MappedFolder | None) -> str | dict | None:
    category, skip = lists.mapped(value)
    return {"category": category, "skip": sorted(skip)} if skip else category


def why_recompile(index_path: Path, roots: Sequence[ListRoot]) -> str | None:
    """Why the index at `index_path` does not serve `roots` as they are now, or None when it does.

    The rule `aupguard run` and `classify` follow: compile when there is no valid index,
    when the policy names other list roots or category mappings, or when a list folder
    or file changed after the index's compile started.
    """
    try:
        meta = read_meta(Path(index_path))
    except FileNotFoundError:
        return f"no compiled index at {index_path}"
    except (IndexFormatError, OSError) as exc:
        return f"the index cannot be used ({exc})"
    return _stale_reason(meta.get("roots"), meta.get("compiled_at", 0), roots)


def _stale_reason(recorded_roots: object, compiled_at: float, roots: Sequence[ListRoot]) -> str | None:
    if recorded_roots != roots_fingerprint(roots):
        return "the policy's list folders or category mappings changed"
    for root in roots:
        for path in _list_paths(root):
            try:
                if os.stat(path).st_mtime > compiled_at:
                    return f"{path} changed after the index was compiled"
            except OSError:
                continue
    return None


def _list_paths(root: ListRoot) -> Iterator[Path]:
    """The root folder, its category folders and their list files: where a change shows."""
    yield Path(root.path)
    try:
        folders = lists.category_folders(root, lists.Problems())
    except lists.ListError:
        return
    for folder, _category, _skip in folders:
        yield folder
        for name in lists.LIST_FILES:
            yield folder / name


def _count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return 1 + sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(_VERIFY_CHUNK), b""))
    except OSError:  # missing (most folders lack a `urls` file) or unreadable: lists reports it
        return 0


def compile_list_data(data: ListData, out_path: Path, progress: Progress | None = None) -> CompileSummary:
    """Compile lists already loaded as text (`ListData`) into an index file."""
    writer = IndexWriter(
        data.sources, data.expressions, expected={"domains": len(data.domains), "urls": len(data.urls)}
    )
    total = len(data.domains) + len(data.urls)
    writer.add("domains", data.domains.items(), tick=progress and (lambda n: progress(n, total)))
    done = len(data.domains)
    writer.add("urls", data.urls.items(), tick=progress and (lambda n: progress(done + n, total)))
    if progress:
        progress(total, total)
    return replace(writer.write(out_path), problems=tuple(data.problems))


def _bits(mask: int) -> list[int]:
    out = []
    while mask:
        low = mask & -mask
        out.append(low.bit_length() - 1)
        mask ^= low
    return out


def _align(offset: int, to: int) -> int:
    return -(-offset // to) * to


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------- reading


class _Table:
    """A read-only table over the mapping; `mask(key)` is the hot path."""

    __slots__ = ("combos", "hashes", "masks", "seed", "slots")

    def __init__(self, hashes: memoryview, combos: memoryview, seed: int, masks: list[int]):
        self.hashes = hashes
        self.combos = combos
        self.slots = len(hashes)
        self.seed = seed
        self.masks = masks

    def mask(self, key: str) -> int:
        h = xxh3_64_intdigest(key.encode("utf-8", "surrogatepass"), self.seed) or 1  # key_hash(), inlined
        slots = self.slots
        hashes = self.hashes
        i = h % slots
        probes = slots  # a table with no empty slot (a damaged one) must not spin forever
        while probes:
            v = hashes[i]
            if v == h:
                return self.masks[self.combos[i]]
            if not v:
                return 0
            i += 1
            if i == slots:
                i = 0
            probes -= 1
        raise IndexFormatError("damaged index: a table has no empty slot")

    def release(self) -> None:
        self.hashes.release()
        self.combos.release()


class CompiledIndex:
    """A loaded index: the `ListLookup` protocol over a shared read-only mapping."""

    sources: list[ListSource]
    expressions: list[tuple[int, str]]
    domain_mask: Callable[[str], int]  # 0 when absent
    url_mask: Callable[[str], int]
    url_host_mask: Callable[[str], int]

    def __init__(self, path: Path, mapping: mmap.mmap, origin: Path, signature: Signature, header: dict, meta: dict):
        self.path = path  # the file mapped: for the proxy, a private copy (`serve_index`)
        self.origin = origin  # the file it was copied from, watched for a newer index
        self.signature = signature  # `origin` as it was when copied
        self._mapping = mapping
        self.roots = meta.get("roots")
        self.compiled_at = meta.get("compiled_at", 0)
        self.sources = [
            ListSource(s["id"], s["category"], s["name"], Path(s["path"]), frozenset(s.get("skip", ())))
            for s in meta["sources"]
        ]
        self.expressions = [(sid, pattern) for sid, pattern in meta["expressions"]]
        masks = [sum(1 << sid for sid in combo) for combo in meta["combos"]]
        self.counts = {kind: header[kind][2] for kind in TABLES}
        self._view = memoryview(mapping)
        typecode = _COMBO_TYPECODES[header["width"]]
        tables = {}
        for kind in TABLES:
            offset, slots, _count = header[kind]
            hashes = self._view[offset : offset + 8 * slots].cast("Q")
            combos_at = offset + 8 * slots
            combos = self._view[combos_at : combos_at + header["width"] * slots].cast(typecode)
            tables[kind] = _Table(hashes, combos, header["seed"], masks)
        self._tables = tables
        # Bound methods as attributes: one Python call per lookup on the hot path.
        self.domain_mask = tables["domains"].mask
        self.url_mask = tables["urls"].mask
        self.url_host_mask = tables["url_hosts"].mask

    def stale(self) -> bool:
        """True when `origin` was replaced, written to or removed since this index was read from it."""
        try:
            return file_signature(os.stat(self.origin)) != self.signature
        except FileNotFoundError:
            return True

    def close(self) -> None:
        """Unmap the file. Lookups after this raise ValueError."""
        for table in self._tables.values():
            table.release()
        self._view.release()
        self._mapping.close()

    def __enter__(self) -> CompiledIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_meta(path: Path) -> dict:
    """The validated header's json section (sources, roots, compile time) without mapping the tables."""
    with open(path, "rb") as f:
        fd = f.fileno()
        header = _read_header(os.pread(fd, HEADER_SIZE, 0), os.fstat(fd).st_size, path)
        return _parse_meta(os.pread(fd, header["json_len"], header["json_off"]), header, path)


def file_signature(st: os.stat_result) -> Signature:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def load_index(path: Path) -> CompiledIndex:
    """Map the index at `path` after validating it; raises `IndexFormatError` when it is not valid.

    The mapping shows whatever is later written into the file itself (zeroes, another
    index, a truncation: SIGBUS), so only files nobody else writes are mapped this way
    in service: the proxy maps the private copy `serve_index` makes.
    """
    path = Path(path)
    with open(path, "rb") as f:
        return _map_valid(f.fileno(), path, path, file_signature(os.fstat(f.fileno())))


def _map_valid(fd: int, path: Path, origin: Path, signature: Signature) -> CompiledIndex:
    """Validate the index behind `fd` (header, whole-body checksum, json), then map that same file."""
    _check_little_endian()
    header = _read_header(os.pread(fd, HEADER_SIZE, 0), os.fstat(fd).st_size, path)
    _verify_body(fd, header, path)
    json_bytes = os.pread(fd, header["json_len"], header["json_off"])
    meta = _parse_meta(json_bytes, header, path)
    mapping = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)  # stays valid after fd is closed
    if hasattr(mapping, "madvise"):
        # Lookups touch random pages: do not read ahead around each one.
        mapping.madvise(mmap.MADV_RANDOM)
    return CompiledIndex(path, mapping, origin, signature, header, meta)


def served_dir() -> Path:
    """The private folder of the copies the proxy serves (0700, files 0400), outside the index's own folder."""
    return paths.DATA_DIR / "served-index"


def published_dir() -> Path:
    """The private folder where the writer records the SHA-256 of each index it publishes."""
    return paths.DATA_DIR / "published-index"


def _record_publication(digest: str) -> None:
    """Note `digest` as published (an empty 0400 file named by it); keep the KEEP_PUBLISHED newest."""
    folder = private_dir(published_dir())
    mark = folder / digest
    mark.touch(mode=0o400)
    os.utime(mark)  # published again: the newest
    _fsync_dir(folder)
    _delete_all_but_newest(folder.iterdir(), KEEP_PUBLISHED)


def _delete_all_but_newest(files: Iterable[Path], keep: int, spare: Path | None = None) -> None:
    """Delete all but the `keep` most recently modified of `files`, and never `spare`."""
    for old in sorted(files, key=_mtime, reverse=True)[keep:]:
        if old != spare:
            old.unlink(missing_ok=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed meanwhile (by another worker or compile): the oldest
        return 0.0


def serve_index(path: Path, store: Path | None = None) -> CompiledIndex:
    """The index at `path`, served from a validated private copy that nothing else writes.

    Whatever is later done to `path` (written over in place, zeroed, truncated) cannot
    reach the copy, so it can neither change a lookup nor SIGBUS the reader. The copy is
    named by its SHA-256 in `store` (default `served_dir()`): every proxy worker maps the
    same file, sharing its pages. Raises IndexFormatError when the file is not a valid
    index (checked before anything is copied into service), changed while copied, or is
    not one the writer published (`published_dir`).
    """
    path = Path(path)
    store = private_dir(Path(store) if store is not None else served_dir())
    # O_NONBLOCK: a FIFO put at the path must not hang the watcher (or the start) waiting for a writer.
    with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as source:
        src = source.fileno()
        st = os.fstat(src)
        if not stat.S_ISREG(st.st_mode):
            raise IndexFormatError(f"{path}: not a regular file")
        signature = file_signature(st)
        _read_header(os.pread(src, HEADER_SIZE, 0), st.st_size, path)  # garbage is refused before any copying
        fd, tmp = tempfile.mkstemp(prefix=".copy-", suffix=".tmp", dir=store)
        try:
            digest = _copy(src, fd)
            if file_signature(os.fstat(src)) != signature:
                raise IndexFormatError(f"{path}: changed while it was being copied")
            if not (published_dir() / digest).is_file():
                raise IndexFormatError(f"{path}: not an index that `aupguard lists compile` published here")
            os.fchmod(fd, 0o400)
            index = _map_valid(fd, path, path, signature)  # the very inode mapped is the one validated
            served = store / f"{digest}.idx"
            try:
                os.link(tmp, served)
            except FileExistsError:
                # Another worker (or an earlier start) made this copy: map that one so the workers share
                # its pages, unless it does not validate (a copy cut short by a crash): then ours replaces it.
                try:
                    shared = _open_served(served, path, signature)
                except (IndexFormatError, OSError):
                    os.replace(tmp, served)
                else:
                    index.close()
                    index = shared
        finally:
            os.close(fd)
            Path(tmp).unlink(missing_ok=True)
    index.path = served
    os.utime(served)  # the newest copy, whichever worker made it
    _prune(store, served)
    return index


def _open_served(served: Path, origin: Path, signature: Signature) -> CompiledIndex:
    with open(served, "rb") as f:
        return _map_valid(f.fileno(), served, origin, signature)


def _copy(src: int, dst: int) -> str:
    """Copy the file `src` to `dst`; its SHA-256 (hex)."""
    digest = hashlib.sha256()
    position = 0
    while chunk := os.pread(src, _VERIFY_CHUNK, position):
        digest.update(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view) :]
        position += len(chunk)
    return digest.hexdigest()


def _prune(store: Path, serving: Path) -> None:
    """Delete all but the KEEP_SERVED newest copies (a reader keeps its mapping of a deleted one),
    and partial copies a killed process left behind."""
    _delete_all_but_newest(store.glob("*.idx"), KEEP_SERVED, spare=serving)
    abandoned = time.time() - _ABANDONED_COPY_S
    for partial in store.glob(".copy-*.tmp"):
        if _mtime(partial) < abandoned:
            partial.unlink(missing_ok=True)


def serve_for(roots: Sequence[ListRoot], path: Path, store: Path | None = None) -> CompiledIndex:
    """`serve_index`, refusing an index compiled for other list folders than `roots`."""
    index = serve_index(path, store)
    if index.roots != roots_fingerprint(roots):
        index.close()
        raise IndexFormatError(f"{path}: compiled for other list folders or mappings than the policy's")
    return index


def _read_header(raw: bytes, file_size: int, path: Path) -> dict:
    if len(raw) < HEADER_SIZE:
        raise IndexFormatError(f"{path}: truncated ({file_size} bytes, shorter than the header)")
    fields = _HEADER.unpack_from(raw)
    magic, version, width, seed, size, json_off, json_len = fields[:7]
    if magic != MAGIC:
        raise IndexFormatError(f"{path}: not an aupguard index (bad magic)")
    if version != FORMAT_VERSION:
        raise IndexFormatError(f"{path}: index format version {version}, this aupguard reads {FORMAT_VERSION}")
    (stored,) = _HEADER_CHECKSUM.unpack_from(raw, _HEADER.size)
    if stored != xxh3_64_intdigest(raw[: _HEADER.size]):
        raise IndexFormatError(f"{path}: header checksum mismatch")
    if any(raw[_HEADER.size + _HEADER_CHECKSUM.size : HEADER_SIZE]):  # the writer zeroes it: no byte goes unchecked
        raise IndexFormatError(f"{path}: header padding is not zero")
    if size != file_size:
        raise IndexFormatError(f"{path}: file is {file_size} bytes, its header says {size} (truncated?)")
    if width not in _COMBO_TYPECODES:
        raise IndexFormatError(f"{path}: invalid combo width {width}")
    header = {"width": width, "seed": seed, "json_off": json_off, "json_len": json_len, "body": fields[-1]}
    _check_range(path, "json", json_off, json_len, size)
    if json_len > _MAX_JSON:
        raise IndexFormatError(f"{path}: json section of {json_len} bytes is too large")
    for n, kind in enumerate(TABLES):
        offset, slots, count = fields[7 + 3 * n : 10 + 3 * n]
        if slots < 1 or count >= slots:
            raise IndexFormatError(f"{path}: {kind} table has {count} entries in {slots} slots")
        _check_range(path, kind, offset, slots * (8 + width), size)
        if offset % 8:
            raise IndexFormatError(f"{path}: {kind} table is not aligned")
        header[kind] = (offset, slots, count)
    return header


def _check_range(path: Path, what: str, offset: int, length: int, size: int) -> None:
    if offset < HEADER_SIZE or offset + length > size:
        raise IndexFormatError(f"{path}: {what} section [{offset}, +{length}) is outside the file")


def _verify_body(fd: int, header: dict, path: Path) -> None:
    digest = xxh3_64()
    position = HEADER_SIZE
    while chunk := os.pread(fd, _VERIFY_CHUNK, position):
        digest.update(chunk)
        position += len(chunk)
    if digest.intdigest() != header["body"]:
        raise IndexFormatError(f"{path}: body checksum mismatch (corrupt index)")


def _parse_meta(raw: bytes, header: dict, path: Path) -> dict:
    try:
        meta = json.loads(raw.decode("utf-8", "surrogatepass"))
        ids = set()
        for source in meta["sources"]:
            texts = (source["category"], source["name"], source["path"], *source.get("skip", ()))
            if not (isinstance(source["id"], int) and source["id"] >= 0 and all(isinstance(t, str) for t in texts)):
                raise ValueError(f"bad source {source!r}")
            ids.add(source["id"])
        for sid, pattern in meta["expressions"]:
            if sid not in ids or not isinstance(pattern, str):
                raise ValueError(f"bad expression {[sid, pattern]!r}")
        combos = meta["combos"]
        if not all(isinstance(c, list) and set(c) <= ids for c in combos):
            raise ValueError("a combo names an unknown source")
        if len(combos) > 1 << (8 * header["width"]):
            raise ValueError(f"{len(combos)} combos do not fit {header['width']} bytes")
    except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise IndexFormatError(f"{path}: invalid json section: {exc}") from exc
    return meta


def ensure_index(
    roots: Sequence[ListRoot], path: Path, progress: Progress | None = None, store: Path | None = None
) -> tuple[CompiledIndex, str | None]:
    """The index at `path` for `roots`, compiled first when `why_recompile` says so, served by `serve_index`.

    Returns the served index and why it was compiled (None when the one in place served).
    Raises ListError when the lists cannot be compiled, IndexFormatError when the result cannot be served.
    """
    path = Path(path)
    reason = why_recompile(path, roots)  # the header alone: no copy of an index about to be recompiled
    if reason is None:
        try:
            index = serve_index(path, store)
        except (IndexFormatError, OSError) as exc:
            reason = f"the index cannot be used ({exc})"
        else:
            reason = _stale_reason(index.roots, index.compiled_at, roots)  # judge the copy that serves
            if reason is None:
                return index, None
            index.close()
    compile_from_folders(roots, path, progress)
    return serve_for(roots, path, store), reason
