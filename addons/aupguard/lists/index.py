"""The compiled list index: millions of list entries in one read-only file that loads in a blink.

This module holds the file format and reads it: `offline.compile` writes the file
(`aupguard lists compile`), `lists.serve` serves the proxy a private copy of it, and
`run` and `classify` look entries up through the same `domain_mask` / `url_mask`
protocol as the text-loaded `ListData`.

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

import json
import mmap
import os
import struct
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from xxhash import xxh3_64, xxh3_64_intdigest

from aupguard.base.errors import AupguardError
from aupguard.lists.model import ListRoot, ListSource, MappedFolder, mapped

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

_COMBO_TYPECODES: dict[int, Literal["B", "H", "I"]] = {1: "B", 2: "H", 4: "I"}
_VERIFY_CHUNK = 1 << 20
_MAX_JSON = 256 << 20

# What changes when a file is replaced or written in place: device, inode, size, mtime, ctime (ns).
Signature = tuple[int, int, int, int, int]


class IndexFormatError(AupguardError, ValueError):
    """The file is not a valid index (wrong magic or version, truncated, corrupt)."""


def key_hash(key: str, seed: int) -> int:
    """The 64-bit hash a table stores for `key`; never 0, which marks an empty slot."""
    return xxh3_64_intdigest(key.encode("utf-8", "surrogatepass"), seed) or 1


def check_little_endian() -> None:
    if sys.byteorder != "little":
        raise IndexFormatError("aupguard index files are little-endian; this host is big-endian")


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


def _mapping_json(value: str | MappedFolder | None) -> str | dict | None:
    category, skip = mapped(value)
    return {"category": category, "skip": sorted(skip)} if skip else category


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

    sources: Sequence[ListSource]
    expressions: Sequence[tuple[int, str]]
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
        header = read_header(os.pread(fd, HEADER_SIZE, 0), os.fstat(fd).st_size, path)
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
        return map_valid(f.fileno(), path, path, file_signature(os.fstat(f.fileno())))


def map_valid(fd: int, path: Path, origin: Path, signature: Signature) -> CompiledIndex:
    """Validate the index behind `fd` (header, whole-body checksum, json), then map that same file."""
    check_little_endian()
    header = read_header(os.pread(fd, HEADER_SIZE, 0), os.fstat(fd).st_size, path)
    _verify_body(fd, header, path)
    json_bytes = os.pread(fd, header["json_len"], header["json_off"])
    meta = _parse_meta(json_bytes, header, path)
    mapping = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)  # stays valid after fd is closed
    if hasattr(mapping, "madvise"):
        # Lookups touch random pages: do not read ahead around each one.
        mapping.madvise(mmap.MADV_RANDOM)
    return CompiledIndex(path, mapping, origin, signature, header, meta)


def read_header(raw: bytes, file_size: int, path: Path) -> dict:
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
