"""`aupguard lists`: import block lists, compile them into the proxy's index, update UT1."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from aupguard.base import paths
from aupguard.base.vocabulary import INCIDENT_CATEGORIES
from aupguard.cli.options import index_option, policy_option
from aupguard.config.loader import load_policy
from aupguard.config.policy import Policy
from aupguard.lists.model import ListError
from aupguard.offline.compile import CompileSummary, compile_from_folders
from aupguard.offline.importers import (
    DOMAIN_LIST_FORMATS,
    HOST_LIST_FORMATS,
    import_domain_list,
    import_host_list,
    import_ut1,
)
from aupguard.offline.update import update_ut1
from aupguard.runtime import index_classifier, overridden_allows

T = TypeVar("T")


@click.group()
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
@click.argument("source", type=click.Choice(["ut1", *HOST_LIST_FORMATS, *DOMAIN_LIST_FORMATS]))
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
def import_lists(
    source: str, path: Path, dest: Path | None, category: str | None, name: str, policy_path: Path
) -> None:
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
    if source in DOMAIN_LIST_FORMATS:
        if not category:
            raise click.UsageError(f"`lists import {source}` needs --category (the aupguard category of its entries)")
        if category == "school_allow":
            raise click.UsageError("the allow list is local: add entries to blocklists/school_allow/domains instead")
        known = [c for c in load_policy(policy_path).categories if c not in INCIDENT_CATEGORIES]
        if category not in known:
            raise click.BadParameter(
                f"unknown category {category!r}; the policy ({policy_path}) has {', '.join(known)}",
                param_hint="--category",
            )
        dest = dest or paths.IMPORTED_LISTS / name
        result = import_domain_list(source, path, dest, category)
    elif category:
        raise click.UsageError(f"--category is for hosts, domains and adblock lists, not {source}")
    else:
        dest = dest or paths.IMPORTED_LISTS / source
        result = import_ut1(path, dest) if source == "ut1" else import_host_list(source, path, dest)
    click.echo(f"imported {result} into {dest}")
    for problem in result.problems[:10]:
        click.echo(f"skipped {problem}", err=True)
    if len(result.problems) > 10:
        click.echo(f"... and {result.skipped - 10:,} more lines skipped", err=True)


def with_progress(compile_call: Callable[[Callable[[int, int], None]], T]) -> T:
    """Run `compile_call(progress)` under a rich progress bar on stderr (list lines read / total)."""
    columns = (TextColumn("compiling lists"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task("compile", total=None)
        return compile_call(lambda done, total: bar.update(task, completed=done, total=total))


def say_compiled(summary: CompileSummary, policy: Policy | None = None) -> None:
    """Say what was compiled; with `policy`, warn of allow entries its mandatory categories override."""
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
def compile_lists(policy_path: Path, index_path: Path) -> None:
    """Compile the policy's list folders into the index that `run` and `classify` serve.

    A running proxy (every worker) switches to the new index within seconds, without
    dropping a connection. When the lists cannot be compiled (a missing list folder,
    an unreadable list file) the index in place is kept and the exit status is 1.
    """
    policy = load_policy(policy_path)
    try:
        summary = with_progress(lambda progress: compile_from_folders(policy.lists, index_path, progress))
    except (ListError, OSError) as exc:
        raise click.ClickException(f"{exc}; the index in place is unchanged") from exc
    say_compiled(summary, policy)


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
def update_lists(
    source: str, url: str | None, tarball: Path | None, sha256: str | None, policy_path: Path, index_path: Path
) -> None:
    """Fetch (or take) the UT1 lists, check, import, compile and switch to them, all or nothing.

    Any failure (download, checksum, damaged archive, compile) leaves the lists and
    the index in service as they were, and the exit status is 1.
    """
    if url and tarball:
        raise click.UsageError("--url and --file are alternatives: give one")
    if sha256 and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256.strip()):
        raise click.BadParameter("expected 64 hexadecimal digits", param_hint="--sha256")
    policy = load_policy(policy_path)
    try:
        result = with_progress(
            lambda progress: update_ut1(policy, index_path, tarball=tarball, url=url, sha256=sha256, progress=progress)
        )
    except (ListError, OSError) as exc:
        raise click.ClickException(f"{exc}; the lists in service are unchanged") from exc
    click.echo(f"imported {result.imported} into {result.imported.dest} (sha256 {result.sha256})")
    say_compiled(result.compiled, policy)
