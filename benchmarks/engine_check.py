"""Time `Engine.check` (lists + circumvention checks + carried URLs) per request, on the benign set and the corpus.

    /tmp/venv/bin/python benchmarks/engine_check.py [--shared ../shared] [--count 24000]

The engine runs on the bundled policy and lists, plus the imported DoH and VPN
lists when ../shared/blocklists-extra is there, as the proxy would. Reports the
mean and the 99th percentile per request, and how many benign URLs a group that
blocks only the circumvention categories would block (its false positives).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import yaml
from benchmarks.benign_urls import DEFAULT_COUNT, benign_urls

import circumvention_corpus as corpus
from aupguard.core.engine import Engine
from aupguard.core.identify import Identity
from aupguard.offline.importers import import_host_list
from aupguard.runtime import load_engine

REPO = Path(__file__).resolve().parent.parent
CIRCUMVENTION_ONLY = ["anonymizers", "vpn", "doh", "remote_access", "circumvention"]


def build_engine(shared: Path, work: Path) -> Engine:
    policy = yaml.safe_load((REPO / "config" / "policy.yaml").read_text())
    policy["lists"] = [{"name": "blocklists", "path": str(REPO / "blocklists")}]
    for kind, folder in (("doh", "dibdot-doh"), ("vpn", "az0-vpn_ip")):
        source = shared / "blocklists-extra" / folder
        if source.is_dir():
            import_host_list(kind, source, work / kind)
            policy["lists"].append({"name": kind, "path": str(work / kind)})
    policy["groups"]["circumvention_only"] = {"block": CIRCUMVENTION_ONLY, "allow": ["school_allow"]}
    path = work / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    return load_engine(path, index_path=None, exemptions_path=None)


def timed(engine: Engine, identity: Identity, requests: list[tuple[str, dict[str, str]]]) -> tuple[list[float], int]:
    times, blocked = [], 0
    for url, headers in requests:
        started = time.perf_counter()
        verdict = engine.check(url, identity, content_type=headers.get("Content-Type"), accept=headers.get("Accept"))
        times.append(time.perf_counter() - started)
        blocked += verdict.blocked
    return times, blocked


def summary(name: str, times: list[float], blocked: int) -> str:
    micro = sorted(t * 1e6 for t in times)
    p99 = micro[int(len(micro) * 0.99) - 1]
    return (
        f"{name}: {len(micro):,} requests, mean {statistics.fmean(micro):.0f} µs, p99 {p99:.0f} µs, blocked {blocked:,}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        engine = build_engine(args.shared, Path(work))
        who = Identity(None, "10.1.2.3", "circumvention_only", "benchmark")
        benign = [(b.url, {}) for b in benign_urls(args.shared / "blocklists-ut1", args.count)]
        attempts = [(a.url, a.headers) for a in corpus.attempts()] * 50
        timed(engine, who, benign[:2000])  # warm the caches, as a running proxy has them
        print(summary("benign set", *timed(engine, who, benign)))
        print(summary("circumvention corpus x50", *timed(engine, who, attempts)))


if __name__ == "__main__":
    main()
