"""The compiled list index at full UT1 scale: compile time, file size, load time, RSS, lookups/s.

    /tmp/venv/bin/python benchmarks/index_scale.py [--entries 6000000] [--seed 1] [--workdir DIR] [--json]

Builds a 6-million-entry list set in a temporary folder: every UT1 category of
../shared/blocklists-ut1 (list files linked, not copied) plus a generated
`adult/domains` of plausible domains that brings the index to about --entries
distinct keys (the shared snapshot lacks UT1's 4.6M-line adult list). Then, each in a fresh
process so no figure includes another's memory:

1. `compile_from_folders` on it: wall time and the compiler's peak RSS;
2. `serve_index` (what the proxy does: copy into a private folder, validate, map), and
   `load_index` alone (validate and map): load time and RSS (VmRSS, and its anonymous /
   file-backed parts) before the load, after it, and after 100k hit + 100k miss lookups;
3. lookups/s on the 6M index and on a 10k-entry index of the same kind of
   domains, hits and misses apart: lookup time must not grow with list size;
4. for scale, the same lookups on a Python dict of the generated domains and of
   the 10k ones (what text-loaded `ListData` does, at ~100 bytes a key).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
UT1 = REPO.parent / "shared" / "blocklists-ut1"
LIST_KINDS = ("domains", "urls", "expressions")
SAMPLE = 100_000
SMALL_ENTRIES = 10_000

_SYLLABLES = [
    "ba",
    "be",
    "bi",
    "bo",
    "bu",
    "ca",
    "co",
    "cu",
    "da",
    "de",
    "di",
    "do",
    "fa",
    "fe",
    "fi",
    "fo",
    "ga",
    "go",
    "ha",
    "he",
    "hi",
    "ho",
    "ja",
    "jo",
    "ka",
    "ke",
    "ki",
    "ko",
    "la",
    "le",
    "li",
    "lo",
    "lu",
    "ma",
    "me",
    "mi",
    "mo",
    "mu",
    "na",
    "ne",
    "ni",
    "no",
    "nu",
    "pa",
    "pe",
    "pi",
    "po",
    "ra",
    "re",
    "ri",
    "ro",
    "ru",
    "sa",
    "se",
    "si",
    "so",
    "su",
    "ta",
    "te",
    "ti",
    "to",
    "tu",
    "va",
    "ve",
    "vi",
    "vo",
    "xa",
    "xo",
    "za",
    "zo",
    "sex",
    "hot",
    "cam",
    "tube",
    "porn",
    "xxx",
    "teen",
    "milf",
    "babe",
    "girl",
    "live",
    "chat",
    "date",
    "nude",
    "love",
    "kink",
    "fet",
]
_TLDS = ["com"] * 55 + ["net"] * 8 + ["ru"] * 5 + ["org"] * 4 + ["info"] * 3 + ["de"] * 3 + ["fr"] * 3
_TLDS += ["xxx", "co.uk", "nl", "pl", "tv", "br"] * 2 + ["cam", "live", "es", "it", "jp", "biz"]


def plausible_domains(count: int, seed: int):
    """`count` distinct domains such as "hotcamlive.com", "ba-tube24.ru" or "www.girlchat.co.uk"."""
    rnd = random.Random(seed)
    syllables, tlds, choice, randrange = _SYLLABLES, _TLDS, random.Random.choice, rnd.randrange
    seen: set[str] = set()
    while len(seen) < count:
        name = "".join(choice(rnd, syllables) for _ in range(randrange(3, 6)))
        shape = randrange(10)
        if shape < 2:
            name = f"{name}{randrange(1000)}"
        elif shape < 4:
            name = f"{name}-{choice(rnd, syllables)}{choice(rnd, syllables)}"
        elif shape == 4:
            name = f"{choice(rnd, ('www', 'm', 'fr', 'de', 'cdn', 'img'))}.{name}"
        domain = f"{name}.{choice(rnd, tlds)}"
        if domain not in seen:
            seen.add(domain)
            yield domain


def reuse_or_build_list_set(workdir: Path, entries: int, seed: int, say) -> Path:
    """The list set's root in `workdir`: built there first unless an earlier run (--workdir) left it."""
    root = workdir / "ut1"
    if not root.is_dir():
        say(f"building the {f'{entries:,}-entry' if entries else 'UT1-only'} list set in {workdir} ...")
        build_list_set(workdir, entries, seed)
    return root


def build_list_set(workdir: Path, entries: int, seed: int) -> dict:
    """The UT1 folders (files linked) plus a generated adult/domains; returns what was made.

    Sized so that the index holds about `entries` distinct keys: UT1 lists many
    domains in several categories (redirector, strict_redirector...), so its
    1.1M lines are ~0.58M distinct keys.
    """
    root = workdir / "ut1"
    ut1_lines, ut1_keys = 0, {kind: set() for kind in ("domains", "urls")}
    for category in sorted(p for p in UT1.iterdir() if p.is_dir() and not p.is_symlink()):
        folder = root / category.name
        folder.mkdir(parents=True)
        for kind in LIST_KINDS:
            if (category / kind).is_file():
                (folder / kind).symlink_to(category / kind)
                if kind in ut1_keys:
                    lines = (category / kind).read_text(errors="replace").lower().split()
                    ut1_lines += len(lines)
                    ut1_keys[kind].update(lines)
    ut1_distinct = sum(len(keys) for keys in ut1_keys.values())
    del ut1_keys
    generated = max(0, entries - ut1_distinct)
    # Keys for the lookup phase: listed domains (hits, spread over the list) and other plausible ones (misses).
    hits, every = [], max(1, generated // SAMPLE)
    with open(root / "adult" / "domains", "w") as out:
        for n, domain in enumerate(plausible_domains(generated, seed)):
            out.write(domain + "\n")
            if n % every == 0:
                hits.append(domain)
    hits = hits[:SAMPLE]
    misses = [f"{d}.example" for d in plausible_domains(SAMPLE, seed + 1)]
    small = list(plausible_domains(SMALL_ENTRIES, seed + 2))
    (workdir / "hits.txt").write_text("\n".join(hits))
    (workdir / "misses.txt").write_text("\n".join(misses))
    (workdir / "small.txt").write_text("\n".join(small))
    return {"ut1_lines": ut1_lines, "ut1_distinct": ut1_distinct, "generated": generated, "root": str(root)}


def run_phase(*args: str) -> dict:
    """Run a phase of this script in a fresh interpreter; it prints one JSON object."""
    command = [sys.executable, __file__, "--phase", *args]
    done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout)


def phase_compile(root: str, out: str) -> dict:
    from aupguard.lists.model import ListRoot
    from aupguard.offline.compile import compile_from_folders

    folders = sorted(p.name for p in Path(root).iterdir())
    # Every UT1 folder counts, named as a category ("audio-video" -> "audio_video").
    mapping = {name: name.replace("-", "_").lower() for name in folders}
    ticks = []
    start = time.perf_counter()
    summary = compile_from_folders(
        [ListRoot(Path(root), "ut1", mapping=mapping)], Path(out), progress=lambda done, total: ticks.append(done)
    )
    seconds = time.perf_counter() - start
    return {
        "compile_s": round(seconds, 2),
        # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over fork and exec, so it would
        # report this script's parent (which generated the list set) instead of the compile.
        "compile_peak_rss_mb": memory(("VmHWM",))["VmHWM"],
        "progress_calls": len(ticks),
        "domains": summary.domains,
        "urls": summary.urls,
        "expressions": summary.expressions,
        "sources": summary.sources,
        "combos": summary.combos,
        "problems": len(summary.problems),
        "index_bytes": summary.size,
    }


def phase_compile_small(keys_file: str, out: str) -> dict:
    from aupguard.lists.model import ListSource
    from aupguard.offline.compile import IndexWriter

    keys = Path(keys_file).read_text().split("\n")
    writer = IndexWriter([ListSource(0, "adult", "small/adult", Path("small"))], expected={"domains": len(keys)})
    writer.add("domains", ((k, 1) for k in keys))
    return {"domains": writer.write(Path(out)).domains}


def phase_dict(keys_file: str, hits_file: str, misses_file: str) -> dict:
    """The same lookups on a plain dict (what text-loaded `ListData` uses), for scale."""
    table = dict.fromkeys(Path(keys_file).read_text().split(), 1)
    hits = Path(hits_file).read_text().split("\n")
    misses = Path(misses_file).read_text().split("\n")
    return {"keys": len(table), **lookup_rates(table.get, hits, misses)}


def lookup_rates(lookup, hits: list[str], misses: list[str]) -> dict:
    """Best of 3 rounds of looking up every hit, then every miss."""
    rates = {}
    for name, keys in (("hits", hits), ("misses", misses)):
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            for key in keys:
                lookup(key)
            best = min(best, time.perf_counter() - start)
        rates[f"{name}_per_s"] = round(len(keys) / best)
        rates[f"{name}_ns"] = round(best / len(keys) * 1e9)
    return rates


def memory(names: tuple[str, ...] = ("VmRSS", "RssAnon", "RssFile")) -> dict:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in names:
            fields[name] = round(int(value.split()[0]) / 1024, 1)  # MiB
    return fields


def phase_load(index_file: str, hits_file: str, misses_file: str) -> dict:
    from aupguard.lists.index import load_index
    from aupguard.lists.serve import serve_index

    hits = Path(hits_file).read_text().split("\n")
    misses = Path(misses_file).read_text().split("\n")
    with tempfile.TemporaryDirectory(prefix="aupguard-served-") as store:
        start = time.perf_counter()
        load_index(Path(index_file)).close()
        map_only_s = time.perf_counter() - start
        before = memory()
        start = time.perf_counter()
        index = serve_index(Path(index_file), Path(store))
        load_s = time.perf_counter() - start
    after_load = memory()
    lookup = index.domain_mask
    assert all(lookup(k) for k in hits[:1000]), "sample hits must be in the index"
    rates = lookup_rates(lookup, hits, misses)
    after_lookups = memory()
    found = sum(1 for k in misses if lookup(k))
    return {
        "load_s": round(load_s, 3),  # serve_index: copy, validate, map
        "load_index_s": round(map_only_s, 3),  # validate and map the file in place
        "rss_before_mb": before,
        "rss_after_load_mb": after_load,
        "rss_after_lookups_mb": after_lookups,
        "added_rss_after_load_mb": round(after_load["VmRSS"] - before["VmRSS"], 1),
        "added_rss_after_lookups_mb": round(after_lookups["VmRSS"] - before["VmRSS"], 1),
        "false_positives_in_misses": found,
        **rates,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=6_000_000, help="distinct list entries in all (UT1 + generated)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, help="keep the generated lists and index here")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON only")
    parser.add_argument("--phase", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        phase, *rest = args.phase
        phases = {"compile": phase_compile, "small": phase_compile_small, "load": phase_load, "dict": phase_dict}
        print(json.dumps(phases[phase](*rest)))
        return
    if not UT1.is_dir():
        sys.exit(f"the UT1 snapshot is not at {UT1}")
    with tempfile.TemporaryDirectory(prefix="aupguard-index-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        say = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))
        say(f"building a {args.entries:,}-line list set in {workdir} ...")
        start = time.perf_counter()
        made = build_list_set(workdir, args.entries, args.seed)
        made["generate_s"] = round(time.perf_counter() - start, 1)
        say(json.dumps(made))
        say("compiling ...")
        big, small = workdir / "lists.idx", workdir / "small.idx"
        compiled = run_phase("compile", made["root"], str(big))
        say(json.dumps(compiled))
        run_phase("small", str(workdir / "small.txt"), str(small))
        results = {"list_set": made, "compile": compiled}
        misses, small_keys = str(workdir / "misses.txt"), str(workdir / "small.txt")
        for name, index_file, hits in (("6M", big, str(workdir / "hits.txt")), ("10k", small, small_keys)):
            say(f"loading and looking up ({name}) ...")
            results[f"load_{name}"] = run_phase("load", str(index_file), hits, misses)
            say(json.dumps(results[f"load_{name}"]))
        say("the same lookups on dicts ...")
        adult = str(Path(made["root"]) / "adult" / "domains")
        for name, keys, hits in (("6M", adult, str(workdir / "hits.txt")), ("10k", small_keys, small_keys)):
            results[f"dict_{name}"] = run_phase("dict", keys, hits, misses)
            say(json.dumps(results[f"dict_{name}"]))
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
