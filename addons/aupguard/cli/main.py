"""The `aupguard` command: run the proxy, classify URLs, report and export incidents, manage lists."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import click

from aupguard.base import paths
from aupguard.config.loader import load_policy
from aupguard.config.policy import PolicyError

WEBFILTER_SCRIPT = paths.HOME / "addons" / "webfilter.py"

policy_option = click.option(
    "--config",
    "policy_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=paths.DEFAULT_POLICY,
    show_default=True,
    help="Policy file (YAML).",
)
index_option = click.option(
    "--index",
    "index_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=paths.DEFAULT_INDEX,
    show_default=True,
    help="Compiled list index (`aupguard lists compile`); compiled first when missing or out of date.",
)
db_option = click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    default=paths.DEFAULT_DB,
    show_default=True,
    help="SQLite incident database.",
)


class WhenType(click.ParamType):
    """A date or date-time; without a zone it is the school's local time (the policy's timezone)."""

    name = "DATE[THH:MM]"

    def convert(self, value, param, ctx):
        if isinstance(value, datetime):
            return value
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            self.fail(
                f"{value!r} is not an ISO-8601 date or date-time (e.g. 2026-11-23 or 2026-11-23T09:30)", param, ctx
            )


WHEN = WhenType()


def _aware(when: datetime | None, zone: ZoneInfo) -> datetime | None:
    if when is None:
        return None
    return when if when.tzinfo else when.replace(tzinfo=zone)


def _period(since: datetime | None, until: datetime | None, zone: ZoneInfo) -> tuple[datetime | None, datetime | None]:
    """--since and --until as aware times in the school's zone; a reversed period is a usage error (exit 2)."""
    from aupguard.report.summary import check_period

    since, until = _aware(since, zone), _aware(until, zone)
    try:
        check_period(since, until)
    except ValueError as exc:
        raise click.BadParameter(f"--since must be before --until: {exc}", param_hint="'--since'") from exc
    return since, until


def _check_out(ctx, param, value):
    """Every --out: "-" is standard output; an existing target that is not a regular file is refused (exit 2)."""
    from aupguard.report.output import OutputError, check_output

    if value is not None:
        try:
            check_output(value)
        except OutputError as exc:
            raise click.BadParameter(str(exc), ctx, param) from exc
    return value


def out_option(help: str, required: bool = False):
    return click.option(
        "--out",
        type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
        required=required,
        default=None,
        callback=_check_out,
        help=f"{help} (mode 0600; - for standard output).",
    )


def _load_policy_or_exit(path: Path):
    try:
        return load_policy(path)
    except PolicyError as exc:
        raise click.ClickException(str(exc)) from exc


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="aupguard")
def main() -> None:
    """aupguard: the web filter that keeps a school's Acceptable Use Policy.

    \b
    Start the proxy:            aupguard run
    Ask what it would do:       echo https://example.com/ | aupguard classify --group pupils
    ... and why:                aupguard explain https://www.instagram.com/ --group pupils --at 2026-11-23T10:15
    Let a group reach a site:   aupguard exempt add --group pupils --site scratch.mit.edu \\
                                    --until +1h --by "Ms Khan" --reason "coding lesson"
    Lock one room for an exam:  aupguard classroom set --ip 10.20.4.0/24 --mode block-all \\
                                    --until +50m --by "Mr Jones" --reason "mock exam"
    Update the UT1 lists:       aupguard lists update ut1
    Summarise blocked attempts: aupguard report --since 2026-11-01
    Hand flagged ones to DSL:   aupguard dsl-export --out reports/dsl.csv

    \b
    Environment:
      AUPGUARD_DATA  where incidents, exemptions, imported lists and the index go [default: var/]
      AUPGUARD_HOME  where the bundled config/ and blocklists/ are [default: the checkout]
    Run `aupguard COMMAND --help` for a command's options and examples.
    """


@main.command()
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
def run(listen_host, listen_port, policy_path, db, confdir, proxyauth, extra, scripts, index_path, workers) -> None:
    """Start the filtering proxy (mitmdump with the aupguard addon).

    Point devices at LISTEN-HOST:LISTEN-PORT as their HTTP and HTTPS proxy.
    A bad policy stops the start with the file, line and reason. The lists are
    served from the compiled index, compiled here first when there is none or
    the policy's list folders, mappings or list files changed since.
    """
    from aupguard.lists.index import IndexFormatError, why_recompile
    from aupguard.proxy.workers import serve

    policy = _load_policy_or_exit(policy_path)  # fail before mitmproxy starts, with a clear message
    reason = why_recompile(index_path, policy.lists)
    if reason:
        from aupguard.lists.folders import ListError
        from aupguard.lists.index import compile_from_folders

        click.echo(f"compiling the list index: {reason}", err=True)
        try:
            _say_compiled(_with_progress(lambda progress: compile_from_folders(policy.lists, index_path, progress)))
        except (ListError, IndexFormatError, OSError) as exc:
            raise click.ClickException(str(exc)) from exc
    _say_loaded(policy, index_path)
    args = mitmdump_args(listen_host, listen_port, policy_path, db, confdir, proxyauth, extra, scripts)
    args += ["--set", f"aupguard_index={Path(index_path).resolve()}"]
    try:
        sys.exit(serve(args, workers, listen_host, listen_port))
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on {listen_host}:{listen_port}: {exc.strerror or exc} "
            "(is aupguard already running? else choose another port with --listen-port)"
        ) from exc


UT1_HINT = (
    "only the bundled starter lists are loaded: most adult, gambling and anonymizer sites are not in them and pass. "
    "Import the full UT1 lists with `aupguard lists update ut1` (or `aupguard lists import ut1 blacklists.tar.gz`)."
)


def _say_loaded(policy, index_path: Path) -> None:
    """What the proxy starts with, per list root; and, with no full (mapped, e.g. UT1) list set, how to import one."""
    from collections import Counter

    from aupguard.lists.index import IndexFormatError, load_index

    try:
        with load_index(index_path) as index:
            per_root = Counter(source.name.split("/", 1)[0] for source in index.sources)
            counts, expressions = index.counts, len(index.expressions)
    except (IndexFormatError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    roots = ", ".join(f"{root.name} {per_root[root.name]}" for root in policy.lists if per_root[root.name])
    click.echo(
        f"lists loaded: {counts['domains']:,} domains, {counts['urls']:,} urls and {expressions:,} expressions "
        f"from {sum(per_root.values())} list folders ({roots or 'none'})",
        err=True,
    )
    if not any(root.mapping is not None and per_root[root.name] for root in policy.lists):
        click.echo(UT1_HINT, err=True)


# mitmproxy options `aupguard run` sets (benchmarks/proxy_overhead.py measures them without aupguard too).
MITMPROXY_OPTIONS = [
    # Blocked sites are answered without contacting them: connect upstream only when needed.
    "--set", "connection_strategy=lazy",
    # One line per flow would flood the terminal of a school gateway; incidents go to the DB.
    "--set", "flow_detail=0",
]  # fmt: skip


def mitmdump_args(listen_host, listen_port, policy_path, db, confdir, proxyauth, extra, scripts=()) -> list[str]:
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


def who_and_when(command):
    """The options that say who is asking and when, shared by `classify` and `explain`."""
    for option in reversed(
        [
            click.option("--group", default=None, help="Decide as this group (skips identification)."),
            click.option("--user", default=None, help="Decide as this proxy-authenticated user."),
            click.option(
                "--ip", "client_ip", default="0.0.0.0", show_default=True, help="Client address to identify by."
            ),
            click.option(
                "--at",
                "at",
                type=WHEN,
                default=None,
                help="Decide as at this time (school local unless a zone is given).",
            ),
        ]
    ):
        command = option(command)
    return command


def _decider(
    policy_path: Path,
    group: str | None,
    user: str | None,
    client_ip: str,
    at: datetime | None,
    index_path: Path | None = paths.DEFAULT_INDEX,
    store: Path | None = None,
):
    """(engine, identity, when) for `classify` and `explain`; `when` is None when --at was not given.

    The engine is the one `run` builds (runtime.load_engine): the lists served from the compiled index
    (compiled first if out of date), with the exemptions and overrides active in the store at --at.
    """
    from aupguard.core.identify import Identity
    from aupguard.lists.folders import ListError
    from aupguard.runtime import load_engine
    from aupguard.store.exemptions import DEFAULT_STORE

    if group and user:
        raise click.UsageError("--group and --user are alternatives: give one")
    try:
        engine = load_engine(policy_path, index_path=index_path, exemptions_path=store or DEFAULT_STORE, when=at)
    except (PolicyError, ListError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    if group and group not in engine.policy.groups:
        raise click.BadParameter(f"unknown group {group!r}; the policy has {', '.join(engine.policy.groups)}")
    identity = Identity(None, client_ip, group, "given with --group") if group else engine.identify(user, client_ip)
    return engine, identity, _aware(at, engine.policy.timezone)


@main.command()
@policy_option
@who_and_when
@index_option
def classify(policy_path, group, user, client_ip, at, index_path) -> None:
    """Read URLs from stdin, one per line; write one JSON verdict per line.

    \b
    {"url": ..., "action": "block"|"allow", "categories": [...], "group": ..., "rule": ...}
    A circumvention attempt adds "technique" (list, signature, nested, heuristic, doh
    or tunnel) and, when one URL carried another, "inner_url".
    A line that is not a URL gets "action": "error" with a reason, and reading goes on.
    """
    from aupguard.base.urlnorm import URLError, normalize_url

    engine, identity, when = _decider(policy_path, group, user, client_ip, at, index_path)
    dumps = json.dumps
    # The line json.dumps would write, built from json's own C string encoder: half the cost
    # of dumps() on a dict, which matters at tens of thousands of URLs a second.
    quote = json.encoder.encode_basestring_ascii
    group_json = dumps(identity.group)
    categories_json: dict[tuple[str, ...], str] = {}  # few distinct combinations: each encoded once

    def answer(line: str, now: datetime) -> str:
        try:
            url = normalize_url(line)
        except URLError as exc:
            return dumps({"url": line[:2048], "action": "error", "error": str(exc)}) + "\n"
        verdict = engine.check(url, identity, when=now)
        decision = verdict.decision
        categories = verdict.categories
        encoded = categories_json.get(categories)
        if encoded is None:
            encoded = dumps(list(categories))
            if len(categories_json) < 4096:
                categories_json[categories] = encoded
        rule = decision.rule
        # A circumvention attempt also says how (list|signature|nested|heuristic|doh|tunnel) and what it carried.
        extra = f', "technique": {quote(verdict.technique)}' if verdict.technique else ""
        if verdict.inner_url:
            extra += f', "inner_url": {quote(verdict.inner_url[:2048])}'
        return (
            f'{{"url": {quote(line[:2048])}, "action": {quote(decision.action)}, "categories": {encoded}, '
            f'"group": {group_json}, "rule": {quote(rule) if rule else "null"}{extra}}}\n'
        )

    # Every line already read is answered in one write: a piped million URLs go out in a few
    # thousand writes, while a person typing, or a program waiting for each answer, gets it at once.
    # Without --at, the lines read together are decided as at the moment they were read.
    out, stdin, tail = sys.stdout, sys.stdin.buffer, b""
    while chunk := stdin.read1(1 << 16):
        now = when or datetime.now(UTC)
        lines = (tail + chunk).split(b"\n")
        tail = lines.pop()
        text = (raw.decode("utf-8", "replace").strip() for raw in lines)
        out.write("".join(answer(line, now) for line in text if line))
        out.flush()
    if tail.strip():
        out.write(answer(tail.decode("utf-8", "replace").strip(), when or datetime.now(UTC)))


@main.command()
@db_option
@policy_option
@click.option("--since", type=WHEN, default=None, help="From this date/time (inclusive).")
@click.option("--until", type=WHEN, default=None, help="Up to this date/time (exclusive).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@out_option("Write to a file")
@click.option(
    "--requests", "requests", is_flag=True, help='List the block page\'s "report a mistake" requests instead.'
)
def report(db, policy_path, since, until, fmt, out, requests) -> None:
    """Summarise blocked attempts for the IT department.

    By category, by day, by user and by client address, the most blocked
    hosts, and every anonymizer/VPN/DoH attempt listed one by one.
    """
    from rich.console import Console

    from aupguard.report.output import STDOUT, private_text_file
    from aupguard.report.summary import build_report, build_requests_report, render_csv, render_json, render_table

    zone = _load_policy_or_exit(policy_path).timezone
    since, until = _period(since, until, zone)
    build = build_requests_report if requests else build_report
    summary = build(_open_existing_db(db), since, until, zone)
    if out is None:
        if fmt == "table":
            render_table(summary, Console())
        else:
            (render_csv if fmt == "csv" else render_json)(summary, sys.stdout)
        return
    with private_text_file(out) as handle:
        if fmt == "table":
            render_table(summary, Console(file=handle, width=120, no_color=True))
        else:
            (render_csv if fmt == "csv" else render_json)(summary, handle)
    click.echo(f"wrote {out}", err=str(out) == STDOUT)


@main.command("dsl-export")
@db_option
@policy_option
@click.option("--since", type=WHEN, default=None, help="From this date/time (inclusive).")
@click.option("--until", type=WHEN, default=None, help="Up to this date/time (exclusive).")
@out_option("CSV file to write", required=True)
@click.option("--min-severity", type=click.Choice(["high", "critical"]), default="high", show_default=True)
def dsl_export_command(db, policy_path, since, until, out, min_severity) -> None:
    """Export flagged incidents (severity high or critical) as CSV for the DSL.

    Cells a spreadsheet would run as formulas are neutralised; the file is
    readable by its owner only. Hand it over securely and delete it after use.
    """
    from aupguard.report.output import STDOUT
    from aupguard.report.summary import dsl_export

    zone = _load_policy_or_exit(policy_path).timezone
    since, until = _period(since, until, zone)
    count = dsl_export(_open_existing_db(db), out, since, until, min_severity=min_severity)
    click.echo(f"wrote {count} flagged incident(s) to {out}", err=str(out) == STDOUT)


@main.command()
@db_option
@policy_option
@click.option(
    "--days",
    type=click.IntRange(1),
    default=None,
    help="Keep this many days [default: the policy's records.retention_days].",
)
def purge(db, policy_path, days) -> None:
    """Delete incidents older than the retention period (UK GDPR: no longer than necessary)."""
    from aupguard.store.incidents import purge as purge_incidents

    days = days or _load_policy_or_exit(policy_path).retention_days
    removed = purge_incidents(_open_existing_db(db), days, now=datetime.now(UTC))
    click.echo(f"deleted {removed} incident(s) older than {days} days")


def _open_existing_db(db: Path):
    """The incident database at `db`; a mistyped --db is an error, not a new empty database."""
    from aupguard.store.incidents import open_db

    if not db.is_file():
        raise click.ClickException(f"no incident database at {db} (has the proxy run? see --db)")
    return open_db(db)


@main.group()
def lists() -> None:
    """Block lists: import, compile into the proxy's index, update UT1.

    \b
    Fetch, check, import, compile and switch to UT1's newest lists, all or nothing:
        aupguard lists update ut1
    Import lists from a file or folder (see `aupguard lists import --help`):
        aupguard lists import ut1 blacklists.tar.gz
        aupguard lists import adblock feed.txt --category ads --name feeds
    Recompile after editing a list file or the policy's `lists:`:
        aupguard lists compile
    A running proxy switches to a newly compiled index by itself.
    """


@lists.command("import")
@click.argument("source", type=click.Choice(["ut1", "doh", "vpn", "hosts", "domains", "adblock"]))
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--dest",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where imported lists go [default: DATA/lists/<source>].",
)
@click.option("--category", default=None, help="hosts/domains/adblock: the aupguard category the entries are.")
@click.option(
    "--name", default="imported", show_default=True, help="hosts/domains/adblock: the list root, DATA/lists/<name>."
)
@policy_option
def import_lists(source, path, dest, category, name, policy_path) -> None:
    """Import block lists from a folder or file.

    \b
    ut1  the UT1 lists (a folder or blacklists.tar.gz); config/ut1-mapping.yaml
         says which aupguard category each UT1 folder counts as (edit it, no re-import needed)
    doh  a dibdot/DoH-IP-blocklists checkout: DNS-over-HTTPS resolvers by name and IP
    vpn  an az0/vpn_ip checkout: VPN services by name and IP, and web-proxy sites
    hosts    a hosts file (`0.0.0.0 name ...`) into DATA/lists/<name>/<category>/domains
    domains  a plain list of domains, one a line, likewise
    adblock  Adblock/AdGuard `||domain^` rules, likewise (other rule kinds are skipped)
    The policy's `lists:` must name the root (`{data}/lists/<name>`) for its entries to count;
    then `aupguard lists compile` (a running proxy switches to the new index by itself).
    """
    from aupguard.lists.folders import DOMAIN_LIST_FORMATS, ListError, import_domain_list, import_host_list, import_ut1

    if source in DOMAIN_LIST_FORMATS:
        if not category:
            raise click.UsageError(f"`lists import {source}` needs --category (the aupguard category of its entries)")
        if category == "school_allow":
            raise click.UsageError("the allow list is local: add entries to blocklists/school_allow/domains instead")
        from aupguard.base.vocabulary import INCIDENT_CATEGORIES

        known = [c for c in _load_policy_or_exit(policy_path).categories if c not in INCIDENT_CATEGORIES]
        if category not in known:
            raise click.BadParameter(
                f"unknown category {category!r}; the policy ({policy_path}) has {', '.join(known)}",
                param_hint="--category",
            )
    elif category:
        raise click.UsageError(f"--category is for hosts, domains and adblock lists, not {source}")
    dest = dest or paths.IMPORTED_LISTS / (name if source in DOMAIN_LIST_FORMATS else source)
    try:
        if source == "ut1":
            result = import_ut1(path, dest)
        elif source in DOMAIN_LIST_FORMATS:
            result = import_domain_list(source, path, dest, category)
        else:
            result = import_host_list(source, path, dest)
    except (ListError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"imported {result} into {dest}")
    for problem in result.problems[:10]:
        click.echo(f"skipped {problem}", err=True)
    if len(result.problems) > 10:
        click.echo(f"... and {result.skipped - 10:,} more lines skipped", err=True)


def _with_progress(compile_call):
    """Run `compile_call(progress)` under a rich progress bar on stderr (list lines read / total)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = (TextColumn("compiling lists"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task("compile", total=None)
        return compile_call(lambda done, total: bar.update(task, completed=done, total=total))


def _say_compiled(summary, policy=None) -> None:
    """Say what was compiled; with `policy`, warn of allow entries its mandatory categories override."""
    from aupguard.runtime import index_classifier, overridden_allows

    click.echo(
        f"compiled {summary.domains:,} domains, {summary.urls:,} urls and {summary.expressions:,} expressions "
        f"from {summary.sources} list folders into {summary.path} ({summary.size / 1e6:.1f} MB)"
    )
    if summary.problems:
        click.echo(
            f"skipped list lines, e.g. {summary.problems[0]} ({len(summary.problems)} shown in the log)", err=True
        )
    if policy is not None:  # `run` leaves this to the proxy, which warns when it loads the policy
        for warning in overridden_allows(policy, index_classifier(policy.lists, summary.path)):
            click.echo(f"error: {warning} (aupguard run refuses this policy until it is removed)", err=True)


@lists.command("compile")
@policy_option
@index_option
def compile_lists(policy_path, index_path) -> None:
    """Compile the policy's list folders into the index that `run` and `classify` serve.

    A running proxy (every worker) switches to the new index within seconds, without
    dropping a connection. When the lists cannot be compiled (a missing list folder,
    an unreadable list file) the index in place is kept and the exit status is 1.
    """
    from aupguard.lists.folders import ListError
    from aupguard.lists.index import compile_from_folders

    policy = _load_policy_or_exit(policy_path)
    try:
        summary = _with_progress(lambda progress: compile_from_folders(policy.lists, index_path, progress))
    except (ListError, OSError) as exc:
        raise click.ClickException(f"{exc}; the index in place is unchanged") from exc
    _say_compiled(summary, policy)


@lists.command("update")
@click.argument("source", type=click.Choice(["ut1"]))
@click.option("--url", default=None, help="Fetch the tarball from this http(s) URL [default: UT1's download].")
@click.option(
    "--file",
    "tarball",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Use this local blacklists.tar.gz instead of fetching.",
)
@click.option("--sha256", default=None, metavar="HEX", help="The tarball's published SHA-256: refused if it differs.")
@policy_option
@index_option
def update_lists(source, url, tarball, sha256, policy_path, index_path) -> None:
    """Fetch (or take) the UT1 lists, check, import, compile and switch to them, all or nothing.

    Any failure (download, checksum, damaged archive, compile) leaves the lists and
    the index in service as they were, and the exit status is 1.
    """
    import re

    from aupguard.lists.folders import ListError
    from aupguard.lists.update import update_ut1

    if url and tarball:
        raise click.UsageError("--url and --file are alternatives: give one")
    if sha256 and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256.strip()):
        raise click.BadParameter("expected 64 hexadecimal digits", param_hint="--sha256")
    policy = _load_policy_or_exit(policy_path)
    try:
        result = _with_progress(
            lambda progress: update_ut1(policy, index_path, tarball=tarball, url=url, sha256=sha256, progress=progress)
        )
    except (ListError, OSError) as exc:
        raise click.ClickException(f"{exc}; the lists in service are unchanged") from exc
    click.echo(f"imported {result.imported} into {result.imported.dest} (sha256 {result.sha256})")
    _say_compiled(result.compiled, policy)


# -- exemptions and classroom overrides -----------------------------------------------------------

store_option = click.option(
    "--store",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The exemption store [default: DATA/exemptions.db, where the proxy looks].",
)
until_option = click.option(
    "--until",
    "until",
    required=True,
    metavar="TIME",
    help="When it ends: +45m, +2h, +3d, 15:30 (today) or 2026-11-23T15:30.",
)
by_option = click.option("--by", "by", required=True, metavar="NAME", help="Who is making this change (recorded).")


def _store(path: Path | None):
    from aupguard.store.exemptions import DEFAULT_STORE, open_store

    return open_store(path or DEFAULT_STORE)


def _show(items, fmt: str, policy_path: Path) -> None:
    """Exemptions as a table (rich, never markup) in the school's time, or JSON lines in UTC."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from aupguard.report.output import visible
    from aupguard.store.db import utc_iso

    if fmt == "json":
        when = utc_iso
    else:  # what a teacher typed (--until 15:30) is shown back as 15:30, in the policy's time zone
        try:
            zone = load_policy(policy_path).timezone
        except PolicyError as exc:
            click.echo(f"warning: times in UTC: {exc}", err=True)
            zone = UTC
        when = lambda moment: moment.astimezone(zone).strftime("%Y-%m-%d %H:%M")  # noqa: E731
    rows = [
        {
            "id": item.id,
            "kind": item.kind,
            "who": item.who,
            # A stored site that names no one site (a public suffix recorded before it was refused) never applies.
            "what": item.what + "".join(f" (refused, never applied: {why})" for why in item.refused_sites().values()),
            "until": when(item.until),
            "by": item.created_by,
            "os_user": item.os_user,  # the account that ran the command, beside the name given as --by
            "reason": item.reason,
            "revoked": f"{when(item.revoked_at)} by {item.revoked_by}" if item.revoked_at else None,
        }
        for item in items
    ]
    if fmt == "json":
        for row in rows:
            click.echo(json.dumps(row))
        return
    if not rows:
        click.echo("none")
        return
    table = Table()
    for column in rows[0]:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(Text(visible(value)) for value in row.values()))  # names and reasons are typed by people
    Console().print(table)


def _record_change(change) -> None:
    from aupguard.core.exemptions import ExemptionError
    from aupguard.report.output import visible

    try:
        item = change()
    except ExemptionError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{'revoked' if item.revoked_at else 'added'} {visible(item.describe())}")


@main.group()
def exempt() -> None:
    """Time-limited exemptions: let a group, user or address range reach a site or category.

    \b
    aupguard exempt add --group pupils --category games --until +1h --by "Ms Khan" --reason "coding lesson"
    aupguard exempt add --user j.smith --category adult --until +14d --by "Head" --reason "art history, letter 14/11"
    aupguard exempt list
    aupguard exempt revoke 12 --by "Ms Khan"
    Every change is recorded with who, when, why and the computer account that ran it; a running
    proxy honours it within seconds. Any category can be exempted except a mandatory one
    (`mandatory: true` in the policy; the bundled policy marks only illegal): adult included, for
    the Head's written permission. A --site must be one site, not a public suffix such as com or
    co.uk. --until may be at most the policy's exemptions.max_days ahead (bundled: 31).
    """


@exempt.command("add")
@policy_option
@store_option
@click.option("--group", default=None, help="Exempt this policy group.")
@click.option("--user", default=None, help="Exempt this proxy-authenticated user.")
@click.option("--ip", "network", default=None, metavar="IP/CIDR", help="Exempt this address or range.")
@click.option("--site", default=None, metavar="DOMAIN", help="This site (and its subdomains); not a public suffix.")
@click.option("--category", default=None, help="This category (any but a mandatory one).")
@until_option
@by_option
@click.option("--reason", required=True, help="Why (recorded; e.g. the lesson, or the Head's written permission).")
def exempt_add(policy_path, store, group, user, network, site, category, until, by, reason) -> None:
    """Add an exemption."""
    from aupguard.base.urlnorm import normalize_url
    from aupguard.lists.folders import ListError
    from aupguard.runtime import load_engine
    from aupguard.store import exemptions

    try:
        engine = load_engine(policy_path, exemptions_path=None)
        deadline = exemptions.parse_until(until, engine.policy.timezone)
    except (PolicyError, ListError, exemptions.ExemptionError) as exc:
        raise click.ClickException(str(exc)) from exc

    def site_categories(domain: str):
        return engine.classifier.classify(normalize_url(f"http://{domain}/")).categories

    db = _store(store)
    _record_change(
        lambda: exemptions.add(
            db,
            engine.policy,
            group=group,
            user=user,
            network=network,
            sites=[site] if site else [],
            category=category,
            until=deadline,
            by=by,
            reason=reason,
            site_categories=site_categories,
        )
    )


@exempt.command("list")
@store_option
@policy_option
@click.option("--all", "include_ended", is_flag=True, help="Include ended and revoked ones.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def exempt_list(store, policy_path, include_ended, fmt) -> None:
    """List active exemptions and classroom overrides (newest first).

    The table shows times in the school's time zone (the policy's); JSON in UTC.
    """
    from aupguard.store.exemptions import listing

    _show(listing(_store(store), include_ended=include_ended), fmt, policy_path)


@exempt.command("revoke")
@store_option
@click.argument("exemption_id", type=int, metavar="ID")
@by_option
@click.option("--reason", default=None, help="Why (recorded).")
def exempt_revoke(store, exemption_id, by, reason) -> None:
    """End an exemption (or classroom override) now."""
    from aupguard.store.exemptions import revoke

    db = _store(store)
    _record_change(lambda: revoke(db, exemption_id, by=by, reason=reason))


@exempt.command("audit")
@store_option
def exempt_audit(store) -> None:
    """Every change ever made, oldest first, as JSON lines (who, when, what, why)."""
    from aupguard.store.exemptions import audit_trail

    for row in audit_trail(_store(store)):
        click.echo(json.dumps(row))


@main.group()
def classroom() -> None:
    """Classroom overrides: one room's address range in "allow only these sites" or "block all" mode.

    \b
    aupguard classroom set --ip 10.20.4.0/24 --mode allow-only --site bbc.co.uk --site kahoot.it \\
        --until +1h --by "Mr Jones" --reason "Year 10 mock exam"
    aupguard classroom list
    aupguard classroom end 14 --by "Mr Jones"
    Sites in mandatory categories stay blocked whatever the mode. Each --site must be one site,
    not a public suffix such as com or co.uk.
    """


@classroom.command("set")
@policy_option
@store_option
@click.option("--ip", "network", required=True, metavar="IP/CIDR", help="The room's address range.")
@click.option("--mode", type=click.Choice(["allow-only", "block-all"]), required=True)
@click.option(
    "--site",
    "sites",
    multiple=True,
    metavar="DOMAIN",
    help="A site allowed in allow-only mode (repeatable; not a public suffix).",
)
@until_option
@by_option
@click.option("--reason", required=True, help="Why (recorded; e.g. the lesson or exam).")
@click.option(
    "--whole-school",
    is_flag=True,
    help="Allow a range wider than a /16 (IPv6: /48), such as 0.0.0.0/0: refused without it.",
)
def classroom_set(policy_path, store, network, mode, sites, until, by, reason, whole_school) -> None:
    """Put a room into allow-only or block-all mode until a time.

    A range wider than a /16 (IPv6: /48) is refused unless --whole-school is given,
    so that one mistyped command cannot lock every room.
    """
    from aupguard.store import exemptions

    policy = _load_policy_or_exit(policy_path)
    try:
        deadline = exemptions.parse_until(until, policy.timezone)
    except exemptions.ExemptionError as exc:
        raise click.ClickException(str(exc)) from exc
    kind = exemptions.ALLOW_ONLY if mode == "allow-only" else exemptions.BLOCK_ALL
    db = _store(store)
    _record_change(
        lambda: exemptions.add(
            db,
            policy,
            kind=kind,
            network=network,
            sites=sites,
            until=deadline,
            by=by,
            reason=reason,
            whole_school=whole_school,
        )
    )


@classroom.command("list")
@store_option
@policy_option
@click.option("--all", "include_ended", is_flag=True, help="Include ended ones.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def classroom_list(store, policy_path, include_ended, fmt) -> None:
    """List classroom overrides (newest first), times in the school's time zone (JSON: UTC)."""
    from aupguard.core.exemptions import EXEMPTION
    from aupguard.store.exemptions import listing

    items = [item for item in listing(_store(store), include_ended=include_ended) if item.kind != EXEMPTION]
    _show(items, fmt, policy_path)


@classroom.command("end")
@store_option
@click.argument("override_id", type=int, metavar="ID")
@by_option
@click.option("--reason", default=None, help="Why (recorded).")
def classroom_end(store, override_id, by, reason) -> None:
    """End a classroom override now."""
    from aupguard.core.exemptions import ALLOW_ONLY, BLOCK_ALL
    from aupguard.store.exemptions import revoke

    db = _store(store)
    _record_change(lambda: revoke(db, override_id, by=by, reason=reason, kinds=(ALLOW_ONLY, BLOCK_ALL)))


@main.command()
@click.argument("url")
@policy_option
@who_and_when
@store_option
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def explain(url, policy_path, group, user, client_ip, at, store, fmt) -> None:
    """Show the whole decision for URL, as the proxy would make it.

    \b
    The group and why, every list entry that matched and what the group does
    with it, the timetable window in force, the exemptions considered, and the
    final action. Without --at: now.
    """
    from aupguard.base.urlnorm import URLError, normalize_url
    from aupguard.report.explain import explain as explain_url
    from aupguard.report.explain import render_text

    try:
        normalize_url(url)
    except URLError as exc:
        raise click.BadParameter(str(exc), param_hint="URL") from exc
    when = at or datetime.now(UTC)
    engine, identity, when = _decider(policy_path, group, user, client_ip, when, store=store)
    result = explain_url(engine, url, identity, when)
    click.echo(json.dumps(result) if fmt == "json" else render_text(result), nl=fmt == "json")
