"""Compiling list folders into the index file (`aupguard lists compile`).

`IndexWriter` builds the open-addressing tables and writes the file in the format
`lists.index` reads (atomically, recording its digest as published); `ensure_index`
compiles at start when the index is missing or stale, then serves it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from xxhash import xxh3_64, xxh3_64_intdigest

from aupguard.base.files import atomic_write
from aupguard.base.paths import make_dir
from aupguard.lists.index import (
    _COMBO_TYPECODES,
    _HEADER,
    _HEADER_CHECKSUM,
    _VERIFY_CHUNK,
    FORMAT_VERSION,
    HEADER_SIZE,
    KINDS,
    MAGIC,
    TABLES,
    CompiledIndex,
    IndexFormatError,
    check_little_endian,
    read_meta,
    roots_fingerprint,
)
from aupguard.lists.model import LIST_FILES, ListData, ListError, ListRoot, ListSource, Problems, url_host
from aupguard.lists.read import category_folders, list_sources, source_expressions, source_keys
from aupguard.lists.serve import record_publication, serve_for, serve_index

_PAGE = 4096
# Load factors: what a table is sized for when its entry count is known, and when it grows.
_TARGET_LOAD = 0.65
_MAX_LOAD = 0.8
Progress = Callable[[int, int], None]  # (done, total), in whatever unit the caller counts


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
        check_little_endian()
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
                host = url_host(key)
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
        with atomic_write(out_path) as f:
            f.write(header)
            for chunk in chunks:
                f.write(chunk)
                published.update(chunk)
            record_publication(published.hexdigest())  # before the file appears: a watcher may be quick
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
    read through `list_sources` / `source_keys` / `source_expressions`), except
    that a list file that cannot be read at all (unreadable, over the size limit)
    stops the compile with ListError: an index silently missing a whole list would
    let its sites through. `progress(done, total)` counts list lines. Nothing is
    written unless the compile succeeds, so the index in place keeps serving.

    `staged` maps a root's name to a folder read in its place (a new import not yet
    moved to the root's path): the index records the root as the policy names it.
    """
    started = time.time()  # before reading: a list edited during the compile makes the index stale
    problems = Problems()
    staged = staged or {}
    read_roots = [replace(root, path=staged[root.name]) if root.name in staged else root for root in roots]
    sources = list_sources(read_roots, problems)
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
            tick = progress and _counting_on(progress, done, total)
            writer.add(kind, ((key, bit) for key in source_keys(source, kind, problems)), tick=tick)
            done += lines[source.id, kind]
            if progress:
                progress(done, total)
        writer.expressions.extend((source.id, pattern) for pattern in source_expressions(source, problems))
    if problems.unreadable:
        raise ListError("cannot compile: " + "; ".join(problems.unreadable[:5]))
    return replace(writer.write(out_path), problems=tuple(problems.as_list()))


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
        folders = category_folders(root, Problems())
    except ListError:
        return
    for folder, _category, _skip in folders:
        yield folder
        for name in LIST_FILES:
            yield folder / name


def _count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return 1 + sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(_VERIFY_CHUNK), b""))
    except OSError:  # missing (most folders lack a `urls` file) or unreadable: lists reports it
        return 0


def _counting_on(progress: Progress, base: int, total: int) -> Callable[[int], None]:
    """A `tick` for IndexWriter.add that reports its count after the `base` entries done before."""
    return lambda n: progress(base + n, total)


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
