"""Decide: the school's policy file (config/policy.yaml), read once and checked thoroughly.

The file is parsed with `yaml.compose`, not `safe_load`, so every node keeps
its line: any mistake (bad YAML, unknown key, wrong type, unknown category or
group, bad address range, duplicate key, ...) is reported as
`file:line: reason`, and nothing starts on a policy that does not check out.
config/README.md documents every key.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import zoneinfo
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from aupguard.base import paths
from aupguard.base.urlnorm import URLError, normalize_host
from aupguard.base.vocabulary import CATEGORIES, CATEGORY_NAME, DOWNLOAD_TYPES, SEVERITIES
from aupguard.config.timetable import Timetable, read_timetable
from aupguard.config.userfiles import Member, UserFile, UserFileError, read_user_file
from aupguard.lists.mapping import load_mapping
from aupguard.lists.model import ListError, ListRoot, MappedFolder, mapped

SUPPORTED_VERSION = 1
MAX_POLICY_BYTES = 1 << 20  # a policy is a few kilobytes; anything this big is not one


GROUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # also list root names
MAX_RETENTION_DAYS = 3650
MAX_REPEAT_WINDOW_MINUTES = 24 * 60
MAX_REPEAT_THRESHOLD = 100
DEFAULT_EXEMPTION_MAX_DAYS = 31  # a month: a lesson, a project, a term's half
MAX_EXEMPTION_MAX_DAYS = 366  # a school year: anything longer belongs in the policy itself
TUNNEL_RULES = ("block", "allow")

DEFAULT_CIRCUMVENTION_TEXT = (
    "Trying to get round the school's filter (with web proxies, VPNs, hidden web addresses or other tricks) "
    "is against our Acceptable Use Policy. If you need this page for your work, ask your teacher: they can "
    "ask for it to be checked."
)


class PolicyError(Exception):
    """A policy file that cannot be used, with where and why."""

    def __init__(self, file: str | os.PathLike[str], line: int | None, reason: str):
        self.file = str(file)
        self.line = line  # 1-based; None when the problem is the whole file
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Category:
    name: str
    label: str  # plain words for the block page
    severity: str  # one of SEVERITIES
    reason: str  # why the AUP blocks it, shown on the block page
    no_decrypt: bool  # never TLS-decrypted (banking, health)
    mandatory: bool = False  # blocked for every group, whatever allows, timetables or exemptions say

    @property
    def exemptable(self) -> bool:
        """Whether an exemption may lift a block by this category: every one but the mandatory tier.

        The one rule `exemptions.add` refuses by, `ExemptionSet.apply` lifts by and `exempt --help` states.
        """
        return not self.mandatory


@dataclass(frozen=True, slots=True)
class Group:
    name: str
    description: str
    block: frozenset[str]
    allow: frozenset[str]  # a match in one of these overrides any block (the local allow list)
    fail_closed: bool  # when aupguard itself fails: block (True) or let the request through
    download_block_types: frozenset[str] = frozenset()  # names from DOWNLOAD_TYPES
    max_download_bytes: int | None = None  # None: no size limit
    walled_garden: bool = False  # only pages in an `allow` category may be visited
    allow_during: Mapping[str, frozenset[str]] = field(default_factory=dict)  # window -> blocks lifted then
    block_during: Mapping[str, frozenset[str]] = field(default_factory=dict)  # window -> extra blocks then
    # window -> the whole block set while it is in force, precomputed so a request costs one dict probe
    by_window: Mapping[str, frozenset[str]] = field(default_factory=dict, repr=False, compare=False)

    def blocks(self, window: str | None) -> frozenset[str]:
        """The categories blocked while `window` is in force (None: outside every window)."""
        return self.by_window.get(window, self.block)


@dataclass(frozen=True, slots=True)
class CircumventionRules:
    """The `circumvention:` section: what a CONNECT tunnel may be, and when attempts count as repeated."""

    connect_ports: frozenset[int] = frozenset({443})
    # Groups whose CONNECTs to a bare IP address / TLS without a server name are allowed; all others are blocked.
    bare_ip_allowed: frozenset[str] = frozenset()
    no_sni_allowed: frozenset[str] = frozenset()
    repeat_window_minutes: int = 10
    repeat_threshold: int = 3  # this many attempts within the window by one user or device: severity high


@dataclass(frozen=True, slots=True)
class NetworkRule:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    group: str


class NetworkIndex:
    """Longest-prefix lookup of a client address in identity.networks.

    One dict per prefix length in use, tried longest first: a lookup costs at
    most one dict probe per distinct prefix length, whatever the rule count.
    """

    def __init__(self, rules: Iterable[NetworkRule]):
        by_length: dict[int, dict[int, dict[int, NetworkRule]]] = {4: {}, 6: {}}
        for rule in rules:
            net = rule.network
            table = by_length[net.version].setdefault(net.prefixlen, {})
            table.setdefault(int(net.network_address) >> (net.max_prefixlen - net.prefixlen), rule)
        bits = {4: 32, 6: 128}
        self._tables = {
            version: tuple((bits[version] - length, tables[length]) for length in sorted(tables, reverse=True))
            for version, tables in by_length.items()
        }

    def match(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> NetworkRule | None:
        value = int(address)
        for shift, table in self._tables[address.version]:
            rule = table.get(value >> shift)
            if rule is not None:
                return rule
        return None


@dataclass(frozen=True)
class Policy:
    path: Path
    school_name: str
    timezone: zoneinfo.ZoneInfo
    it_contact: str
    categories: dict[str, Category]
    groups: dict[str, Group]
    default_group: str
    users: dict[str, str]  # casefolded username -> group
    networks: tuple[NetworkRule, ...]  # most specific first
    lists: tuple[ListRoot, ...]
    tls_intercept: bool
    no_decrypt_categories: frozenset[str]
    no_decrypt_hosts: frozenset[str]  # normalised; each covers its subdomains
    accidental_text: str
    retention_days: int
    circumvention: CircumventionRules = CircumventionRules()
    circumvention_text: str = DEFAULT_CIRCUMVENTION_TEXT  # the block page's note on a circumvention attempt
    exemption_max_days: int = DEFAULT_EXEMPTION_MAX_DAYS  # `exemptions.max_days`: the longest exemption or override
    network_index: NetworkIndex = field(init=False, repr=False, compare=False)
    timetable: Timetable = field(default_factory=Timetable.empty)
    user_files: tuple[UserFile, ...] = ()
    members: Mapping[str, Member] = field(default_factory=dict)  # casefolded username -> group, from user_files
    mandatory: frozenset[str] = field(init=False, repr=False, compare=False)  # blocked for everyone

    def __post_init__(self) -> None:
        object.__setattr__(self, "network_index", NetworkIndex(self.networks))
        object.__setattr__(self, "mandatory", frozenset(n for n, c in self.categories.items() if c.mandatory))

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file the policy was read from: a change to any of them is a change of policy."""
        return (self.path, *(f.path for f in self.user_files))


# -- reading ------------------------------------------------------------------------------------


def load_policy(path: Path) -> Policy:
    """Read and check a policy file. Raises PolicyError naming file, line and reason."""
    path = Path(path)
    doc = _Document(path)
    root = doc.parse()
    top = doc.fields(
        root,
        "",
        required=("version", "school", "categories", "groups", "identity", "lists", "tls", "block_page", "records"),
        optional=("circumvention", "timetable", "exemptions"),
    )
    version = doc.integer(top["version"], "version")
    if version != SUPPORTED_VERSION:
        doc.fail(top["version"], f"unknown version {version} (this aupguard reads version {SUPPORTED_VERSION})")

    school = doc.fields(top["school"], "school", required=("name", "timezone", "it_contact"))
    categories = _read_categories(doc, top["categories"])
    timezone = _read_timezone(doc, school["timezone"])
    timetable = read_timetable(doc, top.get("timetable"), timezone)
    groups = _read_groups(doc, top["groups"], categories, timetable)
    default_group, users, networks, user_files, members = _read_identity(doc, top["identity"], groups)
    no_decrypt_categories, no_decrypt_hosts, intercept = _read_tls(doc, top["tls"], categories)
    block_page = doc.fields(top["block_page"], "block_page", required=("accidental",), optional=("circumvention",))
    records = doc.fields(top["records"], "records", required=("retention_days",))
    retention_days = doc.integer(records["retention_days"], "records.retention_days")
    if not 1 <= retention_days <= MAX_RETENTION_DAYS:
        doc.fail(records["retention_days"], f"records.retention_days must be between 1 and {MAX_RETENTION_DAYS}")

    return Policy(
        path=path,
        school_name=doc.text(school["name"], "school.name"),
        timezone=timezone,
        it_contact=doc.text(school["it_contact"], "school.it_contact"),
        categories=categories,
        groups=groups,
        default_group=default_group,
        users=users,
        networks=networks,
        lists=_read_lists(doc, top["lists"], categories),
        tls_intercept=intercept,
        no_decrypt_categories=no_decrypt_categories,
        no_decrypt_hosts=no_decrypt_hosts,
        accidental_text=doc.text(block_page["accidental"], "block_page.accidental"),
        retention_days=retention_days,
        circumvention=_read_circumvention(doc, top.get("circumvention"), groups),
        timetable=timetable,
        user_files=user_files,
        members=members,
        exemption_max_days=_read_exemptions(doc, top.get("exemptions")),
        circumvention_text=(
            doc.text(block_page["circumvention"], "block_page.circumvention")
            if "circumvention" in block_page
            else DEFAULT_CIRCUMVENTION_TEXT
        ),
    )


def _read_timezone(doc: _Document, node: Node) -> zoneinfo.ZoneInfo:
    name = doc.text(node, "school.timezone")
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        hint = _did_you_mean(name, zoneinfo.available_timezones()) or " (a zoneinfo name such as Europe/London)"
        doc.fail(node, f"school.timezone: unknown time zone {name!r}{hint}")


def _read_categories(doc: _Document, node: Node) -> dict[str, Category]:
    categories: dict[str, Category] = {}
    for name, key, value in doc.items(node, "categories"):
        if not CATEGORY_NAME.fullmatch(name):
            doc.fail(key, f"categories: {name!r} is not a category name (lower-case letters, digits and _)")
        where = f"categories.{name}"
        fields = doc.fields(
            value, where, required=("label", "severity", "reason"), optional=("no_decrypt", "mandatory")
        )
        severity = doc.text(fields["severity"], f"{where}.severity")
        if severity not in SEVERITIES:
            known = ", ".join(SEVERITIES)
            doc.fail(fields["severity"], f"{where}.severity: unknown severity {severity!r} (one of {known})")
        categories[name] = Category(
            name=name,
            label=doc.text(fields["label"], f"{where}.label"),
            severity=severity,
            reason=doc.text(fields["reason"], f"{where}.reason"),
            no_decrypt=doc.boolean(fields.get("no_decrypt"), f"{where}.no_decrypt", default=False),
            mandatory=doc.boolean(fields.get("mandatory"), f"{where}.mandatory", default=False),
        )
    missing = [name for name in CATEGORIES if name not in categories]
    if missing:
        doc.fail(
            doc.heading(node),
            f"categories: missing {', '.join(missing)} (every aupguard category needs a label, severity "
            "and reason; copy them from the bundled config/policy.yaml)",
        )
    return categories


def _read_groups(
    doc: _Document, node: Node, categories: Mapping[str, Category], timetable: Timetable
) -> dict[str, Group]:
    groups: dict[str, Group] = {}
    for name, key, value in doc.items(node, "groups"):
        if not GROUP_NAME.fullmatch(name):
            doc.fail(key, f"groups: {name!r} is not a group name (letters, digits, _ . -)")
        where = f"groups.{name}"
        fields = doc.fields(
            value,
            where,
            optional=(
                "description", "block", "allow", "allow_during", "block_during", "walled_garden", "fail_closed",
                "downloads",
            ),
        )  # fmt: skip
        block = _category_names(doc, fields.get("block"), f"{where}.block", categories)
        allow = _category_names(doc, fields.get("allow"), f"{where}.allow", categories)
        both = sorted(block & allow)
        if both:
            doc.fail(fields["allow"], f"{where}: {', '.join(both)} is both blocked and allowed")
        _no_mandatory(doc, fields.get("allow"), f"{where}.allow", categories)
        # Mandatory categories are blocked for every group, listed or not.
        block |= {c for c, category in categories.items() if category.mandatory}
        timed = _read_timed_rules(doc, fields, where, categories, timetable, block)
        description = fields.get("description")
        groups[name] = Group(
            name=name,
            description="" if description is None else doc.text(description, f"{where}.description"),
            block=block,
            allow=allow,
            # Failing closed is the safe default: a broken filter must not open the internet to pupils.
            fail_closed=doc.boolean(fields.get("fail_closed"), f"{where}.fail_closed", default=True),
            **_read_downloads(doc, fields.get("downloads"), f"{where}.downloads"),
            walled_garden=doc.boolean(fields.get("walled_garden"), f"{where}.walled_garden", default=False),
            **timed,
        )
    if not groups:
        doc.fail(doc.heading(node), "groups: at least one group is needed")
    return groups


def _no_mandatory(doc: _Document, node: Node | None, where: str, categories: Mapping[str, Category]) -> None:
    for item in doc.sequence(node, where):
        name = doc.text(item, where)
        if categories[name].mandatory:
            doc.fail(item, f"{where}: {name} is mandatory (blocked for everyone): it cannot be allowed")


def _read_timed_rules(
    doc: _Document,
    fields: Mapping[str, Node],
    where: str,
    categories: Mapping[str, Category],
    timetable: Timetable,
    block: frozenset[str],
) -> dict:
    """A group's `allow_during` / `block_during` as Group fields, with the block set of each window precomputed."""
    rules: dict[str, dict[str, frozenset[str]]] = {}
    for key in ("allow_during", "block_during"):
        rules[key] = {}
        for window, window_node, value in doc.items(fields.get(key), f"{where}.{key}"):
            if window not in timetable.windows:
                known = ", ".join(sorted(timetable.windows))
                doc.fail(
                    window_node,
                    f"{where}.{key}: unknown window {window!r}{_did_you_mean(window, timetable.windows)} "
                    f"(timetable.windows defines: {known})",
                )
            rule_where = f"{where}.{key}.{window}"
            names = _category_names(doc, value, rule_where, categories)
            if key == "allow_during":
                _no_mandatory(doc, value, rule_where, categories)
                loose = sorted(names - block)
                if loose:
                    doc.fail(
                        value, f"{rule_where}: {', '.join(loose)} is not in {where}.block, so there is nothing to lift"
                    )
            else:
                twice = sorted(names & block)
                if twice:
                    doc.fail(value, f"{rule_where}: {', '.join(twice)} is already blocked at all times ({where}.block)")
                both = sorted(names & rules["allow_during"].get(window, frozenset()))
                if both:
                    doc.fail(value, f"{rule_where}: {', '.join(both)} is both allowed and blocked during {window}")
            rules[key][window] = names
    allow_during, block_during = rules["allow_during"], rules["block_during"]
    by_window = {
        window: (block | block_during.get(window, frozenset())) - allow_during.get(window, frozenset())
        for window in {*allow_during, *block_during}
    }
    return {"allow_during": allow_during, "block_during": block_during, "by_window": by_window}


MAX_DOWNLOAD_MB = 1 << 20  # a terabyte: any larger limit is a typo


def _read_downloads(doc: _Document, node: Node | None, where: str) -> dict:
    """A group's `downloads:` as Group fields: blocked file types and a size limit."""
    if node is None or doc._is_null(node):
        return {}
    fields = doc.fields(node, where, optional=("block_types", "max_size_mb"))
    types = set()
    for item in doc.sequence(fields.get("block_types"), f"{where}.block_types"):
        name = doc.text(item, f"{where}.block_types")
        if name not in DOWNLOAD_TYPES:
            doc.fail(
                item,
                f"{where}.block_types: unknown file type {name!r}{_did_you_mean(name, DOWNLOAD_TYPES)} "
                f"(one of {', '.join(DOWNLOAD_TYPES)})",
            )
        types.add(name)
    max_bytes = None
    if fields.get("max_size_mb") is not None:
        megabytes = doc.integer(fields["max_size_mb"], f"{where}.max_size_mb")
        if not 1 <= megabytes <= MAX_DOWNLOAD_MB:
            doc.fail(fields["max_size_mb"], f"{where}.max_size_mb must be between 1 and {MAX_DOWNLOAD_MB}")
        max_bytes = megabytes * 1024 * 1024
    return {"download_block_types": frozenset(types), "max_download_bytes": max_bytes}


def _category_names(
    doc: _Document, node: Node | None, where: str, categories: Mapping[str, Category]
) -> frozenset[str]:
    names = set()
    for item in doc.sequence(node, where):
        name = doc.text(item, where)
        if name not in categories:
            doc.fail(item, f"{where}: unknown category {name!r}{_did_you_mean(name, categories)}")
        names.add(name)
    return frozenset(names)


def _read_identity(
    doc: _Document, node: Node, groups: Mapping[str, Group]
) -> tuple[str, dict[str, str], tuple[NetworkRule, ...], tuple[UserFile, ...], dict[str, Member]]:
    fields = doc.fields(node, "identity", required=("default_group",), optional=("users", "user_files", "networks"))

    def group_name(value: Node, where: str) -> str:
        name = doc.text(value, where)
        if name not in groups:
            doc.fail(value, f"{where}: unknown group {name!r}{_did_you_mean(name, groups)}")
        return name

    default_group = group_name(fields["default_group"], "identity.default_group")

    # Usernames from proxy authentication (htpasswd, LDAP) are compared ignoring case.
    users: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for name, key, value in doc.items(fields.get("users"), "identity.users"):
        folded = name.casefold()
        if folded in users:
            doc.fail(
                key,
                f"identity.users: {name!r} is listed twice (first at line {first_line[folded]}; "
                "usernames are compared ignoring case)",
            )
        users[folded] = group_name(value, f"identity.users.{name}")
        first_line[folded] = _line(key)

    rules: list[NetworkRule] = []
    seen: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, int] = {}
    for number, item in enumerate(doc.sequence(fields.get("networks"), "identity.networks"), 1):
        where = f"identity.networks entry {number}"
        entry = doc.fields(item, where, required=("cidr", "group"))
        network = _read_network(doc, entry["cidr"], f"{where}: cidr")
        if network in seen:
            doc.fail(entry["cidr"], f"{where}: {network} is listed twice (first at line {seen[network]})")
        seen[network] = _line(entry["cidr"])
        rules.append(NetworkRule(network, group_name(entry["group"], f"{where}: group")))
    rules.sort(key=lambda r: (-r.network.prefixlen, r.network.version, r.network.network_address))
    user_files, members = _read_user_files(doc, fields.get("user_files"), groups)
    return default_group, users, tuple(rules), user_files, members


MAX_USER_FILES = 20


def _read_user_files(
    doc: _Document, node: Node | None, groups: Mapping[str, Group]
) -> tuple[tuple[UserFile, ...], dict[str, Member]]:
    """identity.user_files: the MIS exports, read now so that a bad row stops the load like a bad policy line."""
    folder = doc.path.absolute().parent
    specs: list[UserFile] = []
    members: dict[str, Member] = {}
    items = doc.sequence(node, "identity.user_files")
    if len(items) > MAX_USER_FILES:
        doc.fail(node, f"identity.user_files: more than {MAX_USER_FILES} files")
    for number, item in enumerate(items, 1):
        where = f"identity.user_files entry {number}"
        entry = doc.fields(item, where, required=("path",), optional=("user_column", "group_column"))
        column = {
            key: doc.text(entry[key], f"{where}: {key}") if key in entry else default
            for key, default in (("user_column", "username"), ("group_column", "group"))
        }
        spec = UserFile(_policy_path(doc.text(entry["path"], f"{where}: path"), folder), **column)
        try:
            found = read_user_file(spec, groups)
        except UserFileError as exc:  # the CSV's own file and line are where the mistake is
            reason = f"{exc.reason} (identity.user_files in {doc.path}:{_line(item)})"
            raise PolicyError(exc.file, exc.line, reason) from exc
        for user, member in found.items():
            if user in members:
                raise PolicyError(member.file, member.line, f"user {user!r} is also listed at {members[user].where}")
            members[user] = member
        specs.append(spec)
    return tuple(specs), members


_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def _read_network(doc: _Document, node: Node, where: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    text = doc.text(node, where)
    try:
        network = ipaddress.ip_network(text)
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            doc.fail(node, f"{where}: {text!r} is not an address range such as 10.20.0.0/16 ({exc})")
        doc.fail(node, f"{where}: {text!r} has host bits set; did you mean {loose}?")
    if network.version == 6 and network.prefixlen >= 96 and network.subnet_of(_IPV4_MAPPED):
        # Clients are identified by their unwrapped IPv4 address, so this rule could never match.
        ipv4 = ipaddress.IPv4Network((int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96))
        doc.fail(node, f"{where}: write IPv4 ranges in IPv4 form: {ipv4}")
    return network


def _read_lists(doc: _Document, node: Node, categories: Mapping[str, Category]) -> tuple[ListRoot, ...]:
    folder = doc.path.absolute().parent
    roots: list[ListRoot] = []
    seen: set[str] = set()
    for number, item in enumerate(doc.sequence(node, "lists"), 1):
        where = f"lists entry {number}"
        entry = doc.fields(item, where, required=("name", "path"), optional=("mapping", "optional"))
        name = doc.text(entry["name"], f"{where}: name")
        if not GROUP_NAME.fullmatch(name):
            doc.fail(entry["name"], f"{where}: {name!r} is not a list name (letters, digits, _ . -)")
        if name in seen:
            doc.fail(entry["name"], f"{where}: the list name {name!r} is used twice")
        seen.add(name)
        where = f"lists.{name}"
        mapping = None
        if entry.get("mapping") is not None:
            mapping = _read_mapping(doc, entry["mapping"], f"{where}.mapping", folder, categories)
        roots.append(
            ListRoot(
                path=_policy_path(doc.text(entry["path"], f"{where}.path"), folder),
                name=name,
                mapping=mapping,
                optional=doc.boolean(entry.get("optional"), f"{where}.optional", default=False),
            )
        )
    return tuple(roots)


def _read_circumvention(doc: _Document, node: Node | None, groups: Mapping[str, Group]) -> CircumventionRules:
    default = CircumventionRules()
    if doc._is_null(node):
        return default
    fields = doc.fields(
        node,
        "circumvention",
        optional=("connect_ports", "bare_ip", "no_sni", "repeat_window_minutes", "repeat_threshold"),
    )
    ports = set()
    for item in doc.sequence(fields.get("connect_ports"), "circumvention.connect_ports"):
        port = doc.integer(item, "circumvention.connect_ports")
        if not 1 <= port <= 65535:
            doc.fail(item, f"circumvention.connect_ports: {port} is not a TCP port (1 to 65535)")
        ports.add(port)
    if "connect_ports" in fields and not ports:
        doc.fail(
            doc.heading(fields["connect_ports"]), "circumvention.connect_ports: name at least one port, e.g. [443]"
        )

    def number(key: str, low: int, high: int, fallback: int) -> int:
        if key not in fields:
            return fallback
        value = doc.integer(fields[key], f"circumvention.{key}")
        if not low <= value <= high:
            doc.fail(fields[key], f"circumvention.{key} must be between {low} and {high}")
        return value

    return CircumventionRules(
        connect_ports=frozenset(ports) or default.connect_ports,
        bare_ip_allowed=_groups_allowed(doc, fields.get("bare_ip"), "circumvention.bare_ip", groups),
        no_sni_allowed=_groups_allowed(doc, fields.get("no_sni"), "circumvention.no_sni", groups),
        repeat_window_minutes=number(
            "repeat_window_minutes", 1, MAX_REPEAT_WINDOW_MINUTES, default.repeat_window_minutes
        ),
        repeat_threshold=number("repeat_threshold", 2, MAX_REPEAT_THRESHOLD, default.repeat_threshold),
    )


def _read_exemptions(doc: _Document, node: Node | None) -> int:
    """The `exemptions:` section: `max_days`, the longest an exemption or classroom override may run."""
    if node is None or doc._is_null(node):
        return DEFAULT_EXEMPTION_MAX_DAYS
    fields = doc.fields(node, "exemptions", optional=("max_days",))
    if "max_days" not in fields:
        return DEFAULT_EXEMPTION_MAX_DAYS
    days = doc.integer(fields["max_days"], "exemptions.max_days")
    if not 1 <= days <= MAX_EXEMPTION_MAX_DAYS:
        doc.fail(fields["max_days"], f"exemptions.max_days must be between 1 and {MAX_EXEMPTION_MAX_DAYS}")
    return days


def _groups_allowed(doc: _Document, node: Node | None, where: str, groups: Mapping[str, Group]) -> frozenset[str]:
    """`block` or `allow` for every group, or a mapping of group (or `default`) to either; unnamed groups: default."""

    def rule(value: Node, at: str) -> bool:
        word = doc.text(value, at)
        if word not in TUNNEL_RULES:
            doc.fail(value, f"{at}: expected block or allow, not {word!r}")
        return word == "allow"

    if doc._is_null(node):
        return frozenset()
    if isinstance(node, ScalarNode):
        return frozenset(groups) if rule(node, where) else frozenset()
    chosen: dict[str, bool] = {}
    fallback = False
    for name, key, value in doc.items(node, where):
        if name == "default":
            fallback = rule(value, f"{where}.default")
        elif name in groups:
            chosen[name] = rule(value, f"{where}.{name}")
        else:
            doc.fail(key, f"{where}: unknown group {name!r}{_did_you_mean(name, [*groups, 'default'])}")
    return frozenset(name for name in groups if chosen.get(name, fallback))


def _policy_path(text: str, folder: Path) -> Path:
    """A path as written in the policy: "{data}" is the data folder, relative paths start at the policy's folder."""
    path = Path(text.replace("{data}", str(paths.DATA_DIR)))
    return Path(os.path.normpath(folder / path))


def _read_mapping(
    doc: _Document, node: Node, where: str, folder: Path, categories: Mapping[str, Category]
) -> dict[str, str | MappedFolder | None]:
    mapping_path = _policy_path(doc.text(node, where), folder)
    try:
        mapping = load_mapping(mapping_path)
    except ListError as exc:  # its message names the mapping file and line
        doc.fail(node, f"{where}: {exc}")
    for source, value in mapping.items():
        target, _skip = mapped(value)
        if target is not None and target not in categories:
            doc.fail(
                node,
                f"{where}: {mapping_path} maps {source!r} to unknown category {target!r}"
                f"{_did_you_mean(target, categories)}",
            )
    return mapping


def _read_tls(
    doc: _Document, node: Node, categories: Mapping[str, Category]
) -> tuple[frozenset[str], frozenset[str], bool]:
    fields = doc.fields(node, "tls", required=("intercept",), optional=("no_decrypt",))
    no_decrypt_categories = {name for name, category in categories.items() if category.no_decrypt}
    hosts = set()
    for item in doc.sequence(fields.get("no_decrypt"), "tls.no_decrypt"):
        entry = doc.text(item, "tls.no_decrypt")
        if entry in categories:
            no_decrypt_categories.add(entry)
        elif "." in entry or ":" in entry:
            try:
                hosts.add(normalize_host(entry))
            except URLError as exc:
                doc.fail(item, f"tls.no_decrypt: {entry!r} is not a valid host name ({exc})")
        else:
            doc.fail(
                item,
                f"tls.no_decrypt: {entry!r} is neither a category nor a host name{_did_you_mean(entry, categories)}",
            )
    intercept = doc.boolean(fields["intercept"], "tls.intercept")
    return frozenset(no_decrypt_categories), frozenset(hosts), intercept


def _yaml_problem(exc: yaml.MarkedYAMLError) -> tuple[int | None, str]:
    """The line to blame for a YAML syntax error, and the reason naming any other line involved.

    The scanner's context is where a token began (an unclosed quote, a key
    missing its colon): the line to fix. The parser's context is the start of
    an enclosing block, often far away, so there the problem's own line is better.
    """
    marks = [exc.context_mark, exc.problem_mark]
    if not isinstance(exc, yaml.scanner.ScannerError):
        marks.reverse()
    main = next((mark for mark in marks if mark is not None), None)
    parts = []
    for text, mark in ((exc.context, exc.context_mark), (exc.problem, exc.problem_mark)):
        if text:
            elsewhere = mark is not None and main is not None and mark.line != main.line
            parts.append(f"{text} (line {mark.line + 1})" if elsewhere else text)
    return (main.line + 1 if main else None), "invalid YAML: " + " ".join(parts)


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _line(node: Node) -> int:
    return node.start_mark.line + 1


_KINDS = {
    "tag:yaml.org,2002:str": "text",
    "tag:yaml.org,2002:int": "a number",
    "tag:yaml.org,2002:float": "a number",
    "tag:yaml.org,2002:bool": "true/false",
    "tag:yaml.org,2002:null": "nothing",
    "tag:yaml.org,2002:timestamp": "a date",
}


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping (key: value lines)"
    if isinstance(node, SequenceNode):
        return "a list"
    return _KINDS.get(node.tag, f"a value tagged {node.tag}")


class _Document:
    """The policy file's node tree, with typed accessors that fail with the node's line."""

    def __init__(self, path: Path):
        self.path = path
        self._constructor = SafeConstructor()
        self._key_nodes: dict[int, Node] = {}  # id(value node) -> its key node, to blame a section's heading

    def heading(self, node: Node) -> Node:
        """The `key:` line a value sits under (the value itself at the top level)."""
        return self._key_nodes.get(id(node), node)

    def fail(self, node: Node | None, reason: str) -> NoReturn:
        raise PolicyError(self.path, None if node is None else _line(node), reason)

    def parse(self) -> Node:
        try:
            with self.path.open("rb") as handle:
                data = handle.read(MAX_POLICY_BYTES + 1)
        except OSError as exc:
            self.fail(None, f"cannot read the policy file: {exc.strerror or exc}")
        if len(data) > MAX_POLICY_BYTES:
            self.fail(None, f"the policy file is larger than {MAX_POLICY_BYTES // 1024} KiB")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise PolicyError(self.path, data[: exc.start].count(b"\n") + 1, "not valid UTF-8 text") from exc
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            raise PolicyError(self.path, *_yaml_problem(exc)) from exc
        except yaml.reader.ReaderError as exc:
            raise PolicyError(self.path, text[: exc.position].count("\n") + 1, f"invalid YAML: {exc.reason}") from exc
        if root is None:
            self.fail(None, "the policy file is empty")
        return root

    def _scalar(self, node: Node, where: str, kind: str, python_type: type) -> object:
        if isinstance(node, ScalarNode):
            try:
                value = self._constructor.construct_object(node)
            except ConstructorError as exc:
                self.fail(node, f"{where}: {exc.problem}")
            if type(value) is python_type:
                return value
        hint = ""
        if python_type is str and isinstance(node, ScalarNode) and node.style is None and node.value:
            hint = f" (put it in quotes to mean the text {node.value!r})"
        self.fail(node, f"{where}: expected {kind}, got {_kind(node)}{hint}")

    def text(self, node: Node, where: str) -> str:
        value = self._scalar(node, where, "text", str)
        if not value.strip():
            self.fail(node, f"{where}: must not be empty")
        return value

    def integer(self, node: Node, where: str) -> int:
        return self._scalar(node, where, "a whole number", int)

    def boolean(self, node: Node | None, where: str, *, default: bool | None = None) -> bool:
        if node is None and default is not None:
            return default
        return self._scalar(node, where, "true or false", bool)

    def _is_null(self, node: Node | None) -> bool:
        return node is None or (isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:null")

    def sequence(self, node: Node | None, where: str) -> list[Node]:
        """A list's items; an absent or empty value (`key:` with every entry commented out) is an empty list."""
        if self._is_null(node):
            return []
        if not isinstance(node, SequenceNode):
            self.fail(node, f"{where}: expected a list, got {_kind(node)}")
        return node.value

    def items(self, node: Node | None, where: str) -> list[tuple[str, Node, Node]]:
        """A mapping's (key, key node, value node); duplicate keys, which YAML silently allows, are errors."""
        if self._is_null(node):
            return []
        if not isinstance(node, MappingNode):
            self.fail(node, f"{where or 'the policy file'}: expected a mapping (key: value lines), got {_kind(node)}")
        first: dict[str, int] = {}
        out = []
        for key_node, value_node in node.value:
            key = self._scalar(key_node, f"{where or 'top level'}: key", "text", str)
            if key in first:
                prefix = f"{where}: " if where else ""
                self.fail(key_node, f"{prefix}duplicate key {key!r} (first at line {first[key]})")
            first[key] = _line(key_node)
            self._key_nodes[id(value_node)] = key_node
            out.append((key, key_node, value_node))
        return out

    def fields(
        self, node: Node, where: str, *, required: tuple[str, ...] = (), optional: tuple[str, ...] = ()
    ) -> dict[str, Node]:
        """A section with a fixed set of keys: unknown keys and missing required ones are errors."""
        if not isinstance(node, MappingNode):
            self.fail(node, f"{where or 'the policy file'}: expected a mapping (key: value lines), got {_kind(node)}")
        known = required + optional
        found = {}
        for key, key_node, value_node in self.items(node, where):
            if key not in known:
                hint = _did_you_mean(key, known) or f" (expected {', '.join(known)})"
                self.fail(key_node, f"{where + ': unknown key' if where else 'unknown top-level key'} {key!r}{hint}")
            found[key] = value_node
        for key in required:
            if key not in found:
                self.fail(self.heading(node), f"{where + ': missing' if where else 'missing top-level'} key {key!r}")
        return found
