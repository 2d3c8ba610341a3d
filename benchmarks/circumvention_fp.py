"""Measure the circumvention checks on the benign set (false positives) and on UT1 redirector URLs.

    /tmp/venv/bin/python benchmarks/circumvention_fp.py [--shared ../shared] [--count 24000]

A false positive is a benign URL given a verdict finding: signature, heuristic
or doh. Nested findings are not verdicts (the caller classifies the carried URL),
so they are counted separately. The UT1 redirector/urls entries are proxy entry
pages rather than proxied requests; the heuristic's rate on them is reported as
information, not as a target.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.benign_urls import CATEGORIES, DEFAULT_COUNT, DEFAULT_SEED, benign_urls

from aupguard.base.urlnorm import URLError, normalize_url
from aupguard.core.circumvention import inspect_request, inspect_url
from aupguard.core.circumvention.heuristic import HEURISTIC_THRESHOLD

VERDICTS = frozenset({"signature", "heuristic", "doh"})
REPO = Path(__file__).resolve().parent.parent


def measure_benign(ut1_dir: Path, count: int = DEFAULT_COUNT, seed: int = DEFAULT_SEED) -> dict:
    """False positives on the benign set, overall and per shape, with the offending URLs."""
    urls = benign_urls(ut1_dir, count, seed)
    positives: list[tuple[str, str, tuple]] = []
    nested = 0
    per_shape: Counter[str] = Counter()
    per_shape_fp: Counter[str] = Counter()
    started = time.perf_counter()
    for shape, raw in urls:
        per_shape[shape] += 1
        findings = inspect_request(normalize_url(raw), "GET", None, "text/html,*/*;q=0.8")
        if any(finding.technique in VERDICTS for finding in findings):
            positives.append((shape, raw, findings))
            per_shape_fp[shape] += 1
        elif findings:
            nested += 1
    elapsed = time.perf_counter() - started
    return {
        "total": len(urls),
        "false_positives": len(positives),
        "rate": len(positives) / len(urls) if urls else 0.0,
        "nested_only": nested,
        "per_shape": {shape: (per_shape[shape], per_shape_fp[shape]) for shape in sorted(per_shape)},
        "examples": positives[:20],
        "microseconds_per_url": elapsed / len(urls) * 1e6 if urls else 0.0,
    }


# The host-name signals judge a site's home page alone: every host of the categories a school
# leaves open (not a sample, since few names carry a proxy word), and UT1's own proxy sites.
HOME_PAGE_BENIGN = (*CATEGORIES, "shopping", "liste_blanche")
HOME_PAGE_PROXIES = ("redirector",)


def _domain_names(ut1_dir: Path, categories: tuple[str, ...]) -> list[str]:
    names: set[str] = set()
    for category in categories:
        path = ut1_dir / category / "domains"
        if path.is_file():
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
            names.update(line.strip().lower() for line in lines if line.strip() and not line.startswith("#"))
    return sorted(names)


def measure_home_pages(ut1_dir: Path, categories: tuple[str, ...]) -> dict:
    """How many `https://<host>/` of the categories' domains get a heuristic verdict, with examples."""
    flagged: list[str] = []
    parsed = 0
    for name in _domain_names(ut1_dir, categories):
        try:
            url = normalize_url(f"https://{name}/")
        except URLError:
            continue
        parsed += 1
        if any(finding.technique == "heuristic" for finding in inspect_url(url)):
            flagged.append(name)
    return {"hosts": parsed, "flagged": len(flagged), "examples": flagged[:10]}


def measure_redirector(ut1_dir: Path) -> dict:
    """How many UT1 redirector/urls entries the checks flag (information: these are entry pages)."""
    path = ut1_dir / "redirector" / "urls"
    entries = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    flagged: Counter[str] = Counter()
    parsed = 0
    for entry in entries:
        try:
            url = normalize_url("http://" + entry)
        except URLError:
            continue
        parsed += 1
        techniques = {finding.technique for finding in inspect_url(url)}
        for technique in techniques:
            flagged[technique] += 1
        if techniques & VERDICTS:
            flagged["any verdict"] += 1
    return {"entries": len(entries), "parsed": parsed, "flagged": dict(flagged)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    ut1 = args.shared / "blocklists-ut1"
    if not ut1.is_dir():
        print(f"no UT1 snapshot at {ut1}", file=sys.stderr)
        return 2

    benign = measure_benign(ut1, args.count, args.seed)
    print(f"heuristic threshold: {HEURISTIC_THRESHOLD}")
    print(
        f"benign set: {benign['total']} URLs, {benign['false_positives']} false positives "
        f"({benign['rate']:.3%}); {benign['nested_only']} carry a nested URL only; "
        f"{benign['microseconds_per_url']:.1f} µs per URL"
    )
    for shape, (total, fp) in benign["per_shape"].items():
        print(f"  {shape:<14} {total:>6} URLs  {fp:>4} false positives")
    for shape, raw, findings in benign["examples"]:
        print(f"  FP [{shape}] {raw}")
        for finding in findings:
            print(f"      {finding}")

    redirector = measure_redirector(ut1)
    print(
        f"UT1 redirector/urls: {redirector['entries']} entries, {redirector['parsed']} parsed; flagged: {redirector['flagged']}"
    )
    for label, categories in (("benign", HOME_PAGE_BENIGN), ("proxy (UT1 redirector)", HOME_PAGE_PROXIES)):
        homes = measure_home_pages(ut1, categories)
        print(
            f"home pages, {label} hosts of {', '.join(categories)}: {homes['hosts']} hosts, {homes['flagged']} flagged by the heuristic"
        )
        if label == "benign" or homes["flagged"] < 10:
            for name in homes["examples"]:
                print(f"  flagged: {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
