"""`aupguard run`: start the filtering proxy (mitmdump with the aupguard addon)."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import click

from aupguard.base import paths
from aupguard.cli.lists import say_compiled, with_progress
from aupguard.cli.options import db_option, index_option, policy_option
from aupguard.config.loader import load_policy
from aupguard.config.policy import Policy
from aupguard.lists.index import load_index
from aupguard.offline.compile import compile_from_folders, why_recompile

WEBFILTER_SCRIPT = paths.HOME / "addons" / "webfilter.py"

UT1_HINT = (
    "only the bundled starter lists are loaded: most adult, gambling and anonymizer sites are not in them and pass. "
    "Import the full UT1 lists with `aupguard lists update ut1` (or `aupguard lists import ut1 blacklists.tar.gz`)."
)

# mitmproxy options `aupguard run` sets (benchmarks/proxy_overhead.py measures them without aupguard too).
MITMPROXY_OPTIONS = [
    # Blocked sites are answered without contacting them: connect upstream only when needed.
    "--set", "connection_strategy=lazy",
    # One line per flow would flood the terminal of a school gateway; incidents go to the DB.
    "--set", "flow_detail=0",
]  # fmt: skip


@click.command()
@click.option("--listen-host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: all).")
@click.option(
    "--listen-port", default=8080, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on."
)
@policy_option
@db_option
@click.option(
    "--confdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="mitmproxy's folder for its CA certificate and key [default: ~/.mitmproxy].",
)
@click.option(
    "--proxyauth",
    metavar="SPEC",
    default=None,
    help="Ask clients to log in: '@/path/htpasswd', 'ldap[s]:server:dn:password:base' (mitmproxy's proxyauth).",
)
@click.option("--set", "extra", multiple=True, metavar="OPTION=VALUE", help="Any other mitmproxy option (repeatable).")
@click.option(
    "--script",
    "scripts",
    multiple=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Another mitmproxy script to load after aupguard's (repeatable).",
)
@index_option
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Proxy processes sharing the listening address (SO_REUSEPORT); about one per CPU core.",
)
def run(
    listen_host: str,
    listen_port: int,
    policy_path: Path,
    db: Path,
    confdir: Path | None,
    proxyauth: str | None,
    extra: tuple[str, ...],
    scripts: tuple[Path, ...],
    index_path: Path,
    workers: int,
) -> None:
    """Start the filtering proxy (mitmdump with the aupguard addon).

    Point devices at LISTEN-HOST:LISTEN-PORT as their HTTP and HTTPS proxy.
    A bad policy stops the start with the file, line and reason. The lists are
    served from the compiled index, compiled here first when there is none or
    the policy's list folders, mappings or list files changed since.
    """
    # mitmproxy is imported only by the one command that runs it: every other command starts without it.
    from aupguard.proxy.workers import serve

    policy = load_policy(policy_path)  # fail before mitmproxy starts, with a clear message
    reason = why_recompile(index_path, policy.lists)
    if reason:
        click.echo(f"compiling the list index: {reason}", err=True)
        say_compiled(with_progress(lambda progress: compile_from_folders(policy.lists, index_path, progress)))
    say_loaded(policy, index_path)
    args = mitmdump_args(listen_host, listen_port, policy_path, db, confdir, proxyauth, extra, scripts)
    args += ["--set", f"aupguard_index={Path(index_path).resolve()}"]
    try:
        sys.exit(serve(args, workers, listen_host, listen_port))
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on {listen_host}:{listen_port}: {exc.strerror or exc} "
            "(is aupguard already running? else choose another port with --listen-port)"
        ) from exc


def say_loaded(policy: Policy, index_path: Path) -> None:
    """What the proxy starts with, per list root; and, with no full (mapped, e.g. UT1) list set, how to import one."""
    with load_index(index_path) as index:
        per_root = Counter(source.name.split("/", 1)[0] for source in index.sources)
        counts, expressions = index.counts, len(index.expressions)
    roots = ", ".join(f"{root.name} {per_root[root.name]}" for root in policy.lists if per_root[root.name])
    click.echo(
        f"lists loaded: {counts['domains']:,} domains, {counts['urls']:,} urls and {expressions:,} expressions "
        f"from {sum(per_root.values())} list folders ({roots or 'none'})",
        err=True,
    )
    if not any(root.mapping is not None and per_root[root.name] for root in policy.lists):
        click.echo(UT1_HINT, err=True)


def mitmdump_args(
    listen_host: str,
    listen_port: int,
    policy_path: Path,
    db: Path,
    confdir: Path | None,
    proxyauth: str | None,
    extra: Sequence[str],
    scripts: Sequence[Path] = (),
) -> list[str]:
    args = [
        "--listen-host", listen_host,
        "--listen-port", str(listen_port),
        "-s", str(WEBFILTER_SCRIPT),
        "--set", f"aupguard_policy={Path(policy_path).resolve()}",
        "--set", f"aupguard_db={Path(db).resolve()}",
        *MITMPROXY_OPTIONS,
    ]  # fmt: skip
    if confdir:
        args += ["--set", f"confdir={confdir}"]
    if proxyauth:
        args += ["--set", f"proxyauth={proxyauth}"]
    for item in extra:
        args += ["--set", item]
    for script in scripts:
        args += ["-s", str(Path(script).resolve())]
    return args
