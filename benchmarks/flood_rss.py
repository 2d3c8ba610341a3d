"""The proxy's memory under a flood of distinct, huge, blocked requests (issue 9.9).

Starts `aupguard run` with the bundled policy, sends `--requests` GETs for distinct blocked URLs
(`http://pornhub.com/<--url-kb KB of random path>`) each with a `--ua-kb` KB User-Agent, from
`--clients` threads on keep-alive connections, and reads the proxy's VmRSS before, its VmHWM
(peak) at the end, and its VmRSS again after `--settle` seconds. Every request is blocked and
queued as an incident: what each queued incident holds is what this measures.

    .venv/bin/python benchmarks/flood_rss.py --requests 4000
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of `pid`, in KB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def flood(port: int, count: int, url_kb: int, ua_kb: int, refused: list[int]) -> None:
    agent = "A" * (ua_kb * 1024)
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    reader = sock.makefile("rb")
    for _ in range(count):
        path = secrets.token_hex(url_kb * 512)  # url_kb KB of hex, distinct every time
        sock.sendall(
            f"GET http://pornhub.com/{path} HTTP/1.1\r\nHost: pornhub.com\r\nUser-Agent: {agent}\r\n\r\n".encode()
        )
        status_line = reader.readline()
        length = 0
        while (line := reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        reader.read(length)
        if b" 403 " not in status_line:
            refused.append(1)
    sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--url-kb", type=int, default=60)
    parser.add_argument("--ua-kb", type=int, default=512)
    parser.add_argument("--settle", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        cmd = [sys.executable, "-m", "aupguard.cli", "run", "--listen-port", str(port),
               "--config", str(REPO / "config" / "policy.yaml"), "--db", f"{tmp}/incidents.db",
               "--confdir", f"{tmp}/mitmproxy"]  # fmt: skip
        env = {**os.environ, "AUPGUARD_DATA": tmp}
        proxy = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or proxy.poll() is not None:
                        raise SystemExit("the proxy did not start") from None
                    time.sleep(0.2)
            before = status(proxy.pid)
            wrong: list[int] = []
            started = time.monotonic()
            each = args.requests // args.clients
            threads = [threading.Thread(target=flood, args=(port, each, args.url_kb, args.ua_kb, wrong))
                       for _ in range(args.clients)]  # fmt: skip
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            took = time.monotonic() - started
            peak = status(proxy.pid)
            time.sleep(args.settle)
            after = status(proxy.pid)
        finally:
            proxy.send_signal(signal.SIGTERM)
            proxy.wait(60)
        print(json.dumps({
            "requests": each * args.clients, "url_kb": args.url_kb, "ua_kb": args.ua_kb, "seconds": round(took, 1),
            "not_blocked": len(wrong), "rss_before_mb": before["VmRSS"] // 1024,
            "rss_peak_mb": peak["VmHWM"] // 1024, "rss_after_mb": after["VmRSS"] // 1024,
        }))  # fmt: skip


if __name__ == "__main__":
    main()
