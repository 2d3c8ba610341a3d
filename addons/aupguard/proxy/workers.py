"""`aupguard run --workers N`: N mitmproxy processes serving one listening address.

Why SO_REUSEPORT, not a balancer: aupguard identifies devices by their address
(`identity.by_address`), so every worker must see the real client address. A TCP
balancer such as HAProxy hides it (mitmproxy does not read HAProxy's PROXY
protocol), and HTTP mode cannot balance CONNECT tunnels it must not decrypt.
With SO_REUSEPORT every worker binds the same address and port and the kernel
spreads new connections over them by a hash of the connection's addresses:
no extra hop, no extra process, the client address intact, and a worker that
dies takes only its own connections with it. Linux only lets sockets of the same
user join a port's group, and `serve` first checks that nothing else holds it.

mitmproxy creates its listening sockets with `asyncio.start_server`, which has no
hook for socket options; each worker installs an event loop (asyncio's supported
policy interface) whose `create_server` asks for `reuse_port`, instead of patching
mitmproxy. The workers share the read-only index through the page cache (one
mmap'd file) and write incidents to one SQLite file (WAL, BEGIN IMMEDIATE, busy
timeout: `incidents.IncidentWriter`); each follows a recompiled index on its own.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time

# How long workers get to finish their flows and flush incidents after SIGTERM.
STOP_TIMEOUT_S = 30.0


class ReusePortEventLoop(asyncio.SelectorEventLoop):
    async def create_server(self, *args, **kwargs):
        kwargs.setdefault("reuse_port", True)
        return await super().create_server(*args, **kwargs)


class ReusePortPolicy(asyncio.DefaultEventLoopPolicy):
    _loop_factory = ReusePortEventLoop


def check_free(host: str, port: int) -> None:
    """Raise OSError when another process (or an old aupguard) already listens on host:port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio binds: TIME_WAIT is no obstacle
        probe.bind((host, port))


def serve(mitmdump_args: list[str], workers: int, host: str, port: int) -> int:
    """Run `workers` mitmdump processes on host:port until SIGINT/SIGTERM; the exit status of the first to fail."""
    check_free(host, port)  # before mitmproxy, whose own message would suggest its --mode syntax, not --listen-port
    if workers == 1:
        from mitmproxy.tools.main import mitmdump

        return mitmdump(mitmdump_args) or 0
    command = [sys.executable, "-m", "aupguard.proxy.workers", *mitmdump_args]
    children = [subprocess.Popen(command) for _ in range(workers)]
    stopping = False

    def stop(signum, _frame) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    def forward_hup(_signum, _frame) -> None:  # a policy reload request goes to every worker
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGHUP)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, forward_hup)
    status = 0
    while any(child.poll() is None for child in children):
        for child in children:
            code = child.poll()
            if code is not None and not stopping:
                # One worker failed: stop the others rather than serve on with fewer and nobody told.
                status = code or 1
                stop(signal.SIGTERM, None)
        time.sleep(0.2)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            status = status or 1
    return status


def _worker(args: list[str]) -> int:
    from mitmproxy.tools.main import mitmdump

    asyncio.set_event_loop_policy(ReusePortPolicy())
    return mitmdump(args) or 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
