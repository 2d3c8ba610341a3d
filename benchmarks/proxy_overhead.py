"""What aupguard costs a proxied request: wrk through bare mitmdump and through `aupguard run`.

    /tmp/venv/bin/python benchmarks/proxy_overhead.py [--runs 3] [--duration 20] [--workdir DIR] [--json]

One run, same settings for every proxy (issue 4, point 3):

- origin: a local nginx (Debian `nginx-light`) on a loopback port serving a 1 KiB page,
  started here as a child with a config written to the work folder (no daemon, no system files);
- `mitmdump -q`, mitmproxy with its defaults: the baseline;
- `mitmdump -q` with the mitmproxy options `aupguard run` sets (cli.MITMPROXY_OPTIONS), no addon:
  how much of the difference is options, how much is aupguard's own work;
- `aupguard run` with the full list set (the UT1 lists plus a generated adult list: about 6 million
  entries, built by index_scale.build_list_set and compiled once here with `aupguard lists compile`),
  for an allowed URL (the origin) and a blocked one (a listed adult domain, HTML block page,
  incident recorded; it never contacts upstream);
- load: `wrk -t1 -c32 -d<duration>s --latency`, plain HTTP through the proxy (absolute-form request
  lines set by a wrk Lua script). The runs are interleaved (each round measures every case once),
  so drift in the machine's load touches all cases alike; medians of the rounds are compared.

Targets: aupguard allowed >= 0.9x bare mitmdump req/s; aupguard blocked >= 1.5x bare mitmdump's
allowed req/s; p99 latency added by aupguard (allowed, median p99 minus bare's) <= 1 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from index_scale import UT1, reuse_or_build_list_set

REPO = Path(__file__).resolve().parents[1]
NGINX = "/usr/sbin/nginx"
WRK = "/usr/bin/wrk"
MITMDUMP = str(Path(sys.executable).parent / "mitmdump")
BLOCKED_URL = "http://www.pornhub.com/"  # in the bundled blocklists/adult (and mandatory): blocked for everyone
ACCEPT_HTML = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"  # as a browser sends it
say = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_listening(port: int, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with status {process.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listens on port {port} after {timeout:.0f} s")


def start(command: list[str], port: int, log: Path, env: dict | None = None) -> subprocess.Popen:
    """A child in its own session (so it and its children can be stopped together), listening on `port`."""
    process = subprocess.Popen(
        command,
        stdout=open(log, "wb"),  # noqa: SIM115 - the child keeps it open for its whole life
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    wait_listening(port, process)
    return process


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def start_nginx(folder: Path, port: int) -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "html").mkdir(exist_ok=True)
    (folder / "html" / "index.html").write_bytes((b"<!doctype html><title>origin</title><p>" + b"x" * 1024)[:1024])
    conf = folder / "nginx.conf"
    conf.write_text(f"""daemon off;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {folder}/tmp_body;
    proxy_temp_path {folder}/tmp_proxy;
    fastcgi_temp_path {folder}/tmp_fastcgi;
    uwsgi_temp_path {folder}/tmp_uwsgi;
    scgi_temp_path {folder}/tmp_scgi;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        root {folder}/html;
        location / {{ default_type text/html; }}
    }}
}}
""")
    return start(
        [NGINX, "-p", str(folder), "-c", str(conf), "-e", str(folder / "error.log")], port, folder / "nginx.out"
    )


def wrk(proxy_port: int, url: str, duration: int, folder: Path) -> dict:
    """One wrk run through the proxy at `proxy_port`, requesting `url` in absolute form."""
    host = url.split("/")[2]
    script = folder / f"wrk-{abs(hash(url))}.lua"
    script.write_text(f'wrk.path = "{url}"\nwrk.headers["Host"] = "{host}"\nwrk.headers["Accept"] = "{ACCEPT_HTML}"\n')
    done = subprocess.run(
        [WRK, "-t1", "-c32", f"-d{duration}s", "--latency", "-s", str(script), f"http://127.0.0.1:{proxy_port}/"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    out = done.stdout
    latency = dict(re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+\w+)", out, re.MULTILINE))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    requests = re.search(r"(\d+) requests in", out)
    return {
        "req_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "requests": int(requests.group(1)) if requests else None,
        "p50_ms": _ms(latency["50"]),
        "p99_ms": _ms(latency["99"]),
        "non_2xx_3xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": errors.group(1) if errors else None,
    }


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(\w+)", text).groups()
    return round(float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit], 3)


def write_policy(workdir: Path, root: Path) -> Path:
    """The bundled policy with every list path absolute, plus the full list set mapped as UT1 is."""
    doc = yaml.safe_load((REPO / "config" / "policy.yaml").read_text())
    lists = []
    for entry in doc["lists"]:
        entry = dict(entry)
        if entry["name"] == "ut1":
            entry["path"] = str(root)
            entry.pop("optional", None)
        elif "{data}" not in entry["path"]:
            entry["path"] = str((REPO / "config" / entry["path"]).resolve())
        if "mapping" in entry:
            entry["mapping"] = str((REPO / "config" / entry["mapping"]).resolve())
        lists.append(entry)
    doc["lists"] = lists
    path = workdir / "proxy-policy.yaml"  # beside classifier_vs_squidguard.py's files when --workdir is shared
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=20, help="seconds per wrk run")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of wrk before the measured runs, per case")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, help="keep the list set, index and logs here (reused when present)")
    parser.add_argument("--json", action="store_true", help="print only the JSON figures")
    args = parser.parse_args()
    for tool in (NGINX, WRK, MITMDUMP):
        if not Path(tool).exists():
            sys.exit(f"{tool} is missing (Debian: apt-get install nginx-light wrk)")
    if not UT1.is_dir():
        sys.exit(f"the UT1 snapshot is not at {UT1}")
    from aupguard.cli.run import MITMPROXY_OPTIONS

    with tempfile.TemporaryDirectory(prefix="aupguard-proxy-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        root = reuse_or_build_list_set(workdir, 6_000_000, args.seed, say)
        env = {**os.environ, "AUPGUARD_DATA": str(workdir / "var")}
        policy = write_policy(workdir, root)
        index = workdir / "proxy-lists.idx"
        say("compiling the index (aupguard lists compile) ...")
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "aupguard.cli", "lists", "compile", "--config", str(policy), "--index", str(index)],
            check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        compile_s = time.perf_counter() - started

        origin_port, bare_port, tuned_port, aup_port = (free_port() for _ in range(4))
        origin = f"http://127.0.0.1:{origin_port}/"
        processes = []
        try:
            processes.append(start_nginx(workdir / "nginx", origin_port))
            common = ["-q", "--listen-host", "127.0.0.1"]
            processes.append(start(
                [MITMDUMP, *common, "--listen-port", str(bare_port), "--set", f"confdir={workdir / 'conf-bare'}"],
                bare_port, workdir / "mitmdump-bare.log",
            ))  # fmt: skip
            processes.append(start(
                [MITMDUMP, *common, "--listen-port", str(tuned_port), "--set", f"confdir={workdir / 'conf-tuned'}",
                 *MITMPROXY_OPTIONS],
                tuned_port, workdir / "mitmdump-tuned.log",
            ))  # fmt: skip
            aup_command = [
                sys.executable, "-m", "aupguard.cli", "run", "--listen-port", str(aup_port), "--config", str(policy),
                "--index", str(index), "--db", str(workdir / "var" / "incidents.db"),
                "--confdir", str(workdir / "conf-aup"),
            ]  # fmt: skip
            started = time.perf_counter()
            processes.append(start(aup_command, aup_port, workdir / "aupguard.log", env))
            aup_start_s = time.perf_counter() - started
            cases = {
                "mitmdump_allowed": (bare_port, origin),
                "mitmdump_tuned_allowed": (tuned_port, origin),
                "aupguard_allowed": (aup_port, origin),
                "aupguard_blocked": (aup_port, BLOCKED_URL),
            }
            say("warming up ...")
            for name, (port, url) in cases.items():
                warm = wrk(port, url, args.warmup, workdir)
                say(f"  {name}: {warm['req_s']:.0f} req/s, non-2xx/3xx {warm['non_2xx_3xx']}")
            runs: dict[str, list[dict]] = {name: [] for name in cases}
            for round_ in range(args.runs):
                for name, (port, url) in cases.items():
                    result = wrk(port, url, args.duration, workdir)
                    runs[name].append(result)
                    say(f"round {round_ + 1}/{args.runs} {name}: {json.dumps(result)}")
        finally:
            for process in reversed(processes):
                stop(process)

        median = {
            name: {key: statistics.median(r[key] for r in results) for key in ("req_s", "p50_ms", "p99_ms")}
            for name, results in runs.items()
        }
        bare = median["mitmdump_allowed"]
        report = {
            "compile_s": round(compile_s, 1),
            "aupguard_start_s": round(aup_start_s, 2),
            "runs": runs,
            "median": median,
            "allowed_ratio": round(median["aupguard_allowed"]["req_s"] / bare["req_s"], 3),
            "blocked_ratio": round(median["aupguard_blocked"]["req_s"] / bare["req_s"], 3),
            "p99_added_ms": round(median["aupguard_allowed"]["p99_ms"] - bare["p99_ms"], 3),
        }
        report["targets_met"] = {
            "allowed >= 0.9x": report["allowed_ratio"] >= 0.9,
            "blocked >= 1.5x": report["blocked_ratio"] >= 1.5,
            "p99 added <= 1 ms": report["p99_added_ms"] <= 1.0,
        }
        print(json.dumps(report, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
