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

from . import paths
from .lists import ListError, ListRoot, load_mapping
from .urlnorm import URLError, normalize_host

SUPPORTED_VERSION = 1
MAX_POLICY_BYTES = 1 << 20  # a policy is a few kilobytes; anything this big is not one

SEVERITIES = ("low", "medium", "high", "critical")

# Categories that aupguard itself reports, with no list behind them.
INCIDENT_CATEGORIES = ("circumvention", "filter_error")
# Every category the code, the bundled lists or the UT1 mapping can produce (ARCHITECTURE.md):
# a policy must give each a label, severity and reason, so a block page or
# incident never meets a category it cannot explain. Schools may add their own.
CATEGORIES = (
    # harmful
    "adult", "adult_mixed", "gambling", "hate", "violence", "drugs", "self_harm", "extremism",
    "malware", "phishing", "piracy", "hacking", "cheating",
    # circumvention
    "anonymizers", "vpn", "doh", "remote_access",
    # communication
    "social_networks", "webmail", "chat", "dating", "forums",
    # leisure
    "games", "streaming", "shopping",
    # sensitive: never decrypted
    "banking", "health",
    # other
    "downloads", "filehosting", "shorteners", "ads", "school_allow",
    *INCIDENT_CATEGORIES,
)  # fmt: skip

CATEGORY_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
GROUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # also list root names
MAX_RETENTION_DAYS = 3650


def severity_rank(severity: str) -> int:
    """0 for "low" up to 3 for "critical"; raises ValueError for anything else."""
    return SEVERITIES.index(severity)


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


@dataclass(frozen=True, slots=True)
class Group:
    name: str
    description: str
    block: frozenset[str]
    allow: frozenset[str]  # a match in one of these overrides any block (the local allow list)
    fail_closed: bool  # when aupguard itself fails: block (True) or let the request through


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
    log_allowed: bool
    network_index: NetworkIndex = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "network_index", NetworkIndex(self.networks))


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
    )
    version = doc.integer(top["version"], "version")
    if version != SUPPORTED_VERSION:
        doc.fail(top["version"], f"unknown version {version} (this aupguard reads version {SUPPORTED_VERSION})")

    school = doc.fields(top["school"], "school", required=("name", "timezone", "it_contact"))
    categories = _read_categories(doc, top["categories"])
    groups = _read_groups(doc, top["groups"], categories)
    default_group, users, networks = _read_identity(doc, top["identity"], groups)
    no_decrypt_categories, no_decrypt_hosts, intercept = _read_tls(doc, top["tls"], categories)
    block_page = doc.fields(top["block_page"], "block_page", required=("accidental",))
    records = doc.fields(top["records"], "records", required=("retention_days",), optional=("log_allowed",))
    retention_days = doc.integer(records["retention_days"], "records.retention_days")
    if not 1 <= retention_days <= MAX_RETENTION_DAYS:
        doc.fail(records["retention_days"], f"records.retention_days must be between 1 and {MAX_RETENTION_DAYS}")

    return Policy(
        path=path,
        school_name=doc.text(school["name"], "school.name"),
        timezone=_read_timezone(doc, school["timezone"]),
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
        log_allowed=doc.boolean(records.get("log_allowed"), "records.log_allowed", default=False),
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
        fields = doc.fields(value, where, required=("label", "severity", "reason"), optional=("no_decrypt",))
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
        )
    missing = [name for name in CATEGORIES if name not in categories]
    if missing:
        doc.fail(
            doc.heading(node),
            f"categories: missing {', '.join(missing)} (every aupguard category needs a label, severity "
            "and reason; copy them from the bundled config/policy.yaml)",
        )
    return categories


def _read_groups(doc: _Document, node: Node, categories: Mapping[str, Category]) -> dict[str, Group]:
    groups: dict[str, Group] = {}
    for name, key, value in doc.items(node, "groups"):
        if not GROUP_NAME.fullmatch(name):
            doc.fail(key, f"groups: {name!r} is not a group name (letters, digits, _ . -)")
        where = f"groups.{name}"
        fields = doc.fields(value, where, optional=("description", "block", "allow", "fail_closed"))
        block = _category_names(doc, fields.get("block"), f"{where}.block", categories)
        allow = _category_names(doc, fields.get("allow"), f"{where}.allow", categories)
        both = sorted(block & allow)
        if both:
            doc.fail(fields["allow"], f"{where}: {', '.join(both)} is both blocked and allowed")
        description = fields.get("description")
        groups[name] = Group(
            name=name,
            description="" if description is None else doc.text(description, f"{where}.description"),
            block=block,
            allow=allow,
            # Failing closed is the safe default: a broken filter must not open the internet to pupils.
            fail_closed=doc.boolean(fields.get("fail_closed"), f"{where}.fail_closed", default=True),
        )
    if not groups:
        doc.fail(doc.heading(node), "groups: at least one group is needed")
    return groups


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
) -> tuple[str, dict[str, str], tuple[NetworkRule, ...]]:
    fields = doc.fields(node, "identity", required=("default_group",), optional=("users", "networks"))

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
    return default_group, users, tuple(rules)


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


def _policy_path(text: str, folder: Path) -> Path:
    """A path as written in the policy: "{data}" is the data folder, relative paths start at the policy's folder."""
    path = Path(text.replace("{data}", str(paths.DATA_DIR)))
    return Path(os.path.normpath(folder / path))


def _read_mapping(
    doc: _Document, node: Node, where: str, folder: Path, categories: Mapping[str, Category]
) -> dict[str, str | None]:
    mapping_path = _policy_path(doc.text(node, where), folder)
    try:
        mapping = load_mapping(mapping_path)
    except ListError as exc:  # its message names the mapping file and line
        doc.fail(node, f"{where}: {exc}")
    for source, target in mapping.items():
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
