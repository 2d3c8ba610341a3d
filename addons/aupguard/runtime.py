"""Load what a decision needs into one Engine: the one factory behind the proxy and every command.

`run` (at start and at every reload), `classify`, `explain`, `exempt add` and `classroom` all call
`load_engine`, so they decide alike: the policy, its lists served from the compiled index (compiled
first when missing or out of date), and the exemptions and classroom overrides active in the store.
Loading reads files; the Engine it returns does no I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from aupguard.base import paths
from aupguard.base.urlnorm import normalize_url
from aupguard.config.loader import load_policy
from aupguard.config.policy import Policy
from aupguard.core.classify import Classifier
from aupguard.core.engine import Engine
from aupguard.core.exemptions import ExemptionSet
from aupguard.lists.index import IndexFormatError
from aupguard.lists.model import ListError, ListRoot, Problems, domain_key, one_site, url_key
from aupguard.lists.read import load_lists, read_entries
from aupguard.offline.compile import ensure_index
from aupguard.store.exemptions import DEFAULT_STORE, load_active

log = logging.getLogger(__name__)


def load_engine(
    policy_path: Path,
    *,
    index_path: Path | None = paths.DEFAULT_INDEX,
    exemptions_path: Path | None = DEFAULT_STORE,
    when: datetime | None = None,
    previous: Engine | None = None,
) -> Engine:
    """The Engine for the policy at `policy_path`. Raises PolicyError or ListError: nothing runs on a bad policy.

    `index_path` None reads the lists as text instead (tests; a list set too small to compile).
    `exemptions_path`: the store whose exemptions and overrides active at `when` apply (default now; a
    time without a zone is the school's);
    None when a watcher supplies them (the proxy). A reload passes the running engine as `previous`:
    its lists are reused when the policy names the same ones, and its exemptions carry over.
    """
    policy = load_policy(policy_path)
    if previous is not None and previous.policy.lists == policy.lists:
        classifier = previous.classifier
    elif index_path is not None:
        classifier = index_classifier(policy.lists, index_path)
    else:
        lists = load_lists(policy.lists)
        for problem in lists.problems[:20]:
            log.warning("list line skipped: %s", problem)
        classifier = Classifier(lists)
    refused = overridden_allows(policy, classifier)
    if refused:
        # Issue 4's mandatory tier: an allow list that would let it through is refused, not ignored.
        raise ListError("; ".join(refused[:10]) + (f" (and {len(refused) - 10} more)" if len(refused) > 10 else ""))
    if exemptions_path is not None:
        if when is not None and when.tzinfo is None:
            when = when.replace(tzinfo=policy.timezone)
        exemptions = load_active(exemptions_path, when)
    elif previous is not None:
        exemptions = previous.exemptions
    else:
        exemptions = ExemptionSet()
    return Engine(policy, classifier, exemptions)


# Allow-list lines looked up by `overridden_allows`: a local allow list is short; a big list
# mapped onto an allow category is not read to its end at every load.
MAX_ALLOW_ENTRIES_CHECKED = 20_000


def overridden_allows(policy: Policy, classifier: Classifier) -> list[str]:
    """Allow-list entries the policy is refused for, as "file:line: ..." messages.

    A `domains` entry that names no one site (`com`, `co.uk`) would allow every site
    under it; an entry in a mandatory category would be blocked whatever allows it.
    A policy whose allow lists hold either is refused at load (`load_engine`)
    rather than silently applied or not applied.
    Cheap: only the allow categories' own `domains` and `urls` files are read, and
    each entry is looked up once in the classifier (no scan of the block lists).
    """
    allow = frozenset().union(*(group.allow for group in policy.groups.values()))
    if not allow:
        return []
    warnings: list[str] = []
    checked = 0
    for source in classifier.lookup.sources:
        if source.category not in allow:
            continue
        for kind in ("domains", "urls"):
            if kind in source.skip:
                continue
            path = source.path / kind
            for number, entry in read_entries(path, Problems(), strip_comments=True):
                try:
                    key = domain_key(entry) if kind == "domains" else None  # a urls key only when looked up
                except ValueError:
                    continue  # the list loader reports the line
                if key is not None:
                    try:
                        one_site(key)
                    except ValueError as exc:
                        warnings.append(f"{path}:{number}: allow entry {entry!r} ({source.category}): {exc}")
                        continue
                checked += 1
                if not policy.mandatory or checked > MAX_ALLOW_ENTRIES_CHECKED:
                    continue
                try:
                    key = key if key is not None else url_key(entry)
                    bracketed = f"[{key}]" if kind == "domains" and ":" in key else key  # an IPv6 address
                    url = normalize_url(f"http://{bracketed}")
                except ValueError:
                    continue  # the list loader reports the line
                forced = sorted({m.category for m in classifier.matches(url) if m.category in policy.mandatory})
                if forced:
                    warnings.append(
                        f"{path}:{number}: allow entry {entry!r} ({source.category}) is in the mandatory category "
                        f"{', '.join(forced)}, which nothing may allow: remove the entry"
                    )
    return warnings


def index_classifier(roots: Sequence[ListRoot], index_path: Path) -> Classifier:
    """A classifier over the compiled index of `roots` at `index_path`, compiling it first if needed.

    Raises ListError when the lists cannot be compiled or the index cannot be loaded.
    """
    try:
        index, reason = ensure_index(roots, index_path)
    except IndexFormatError as exc:
        raise ListError(str(exc)) from exc
    if reason:
        log.warning("aupguard: compiled the list index %s (%s)", index_path, reason)
    return Classifier(index)
