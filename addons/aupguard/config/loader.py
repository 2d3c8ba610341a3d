"""Reading the policy file (config/policy.yaml), once, checked thoroughly: load_policy builds the Policy.

Any mistake (bad YAML, unknown key, wrong type, unknown category or group, bad
address range, duplicate key, ...) is reported as `file:line: reason` (a
PolicyError), and nothing starts on a policy that does not check out.
config/README.md documents every key.
"""

from __future__ import annotations

import ipaddress
import os
import re
import zoneinfo
from collections.abc import Mapping
from pathlib import Path

from yaml.nodes import Node, ScalarNode

from aupguard.base import paths
from aupguard.base.addresses import Network
from aupguard.base.urlnorm import URLError, normalize_host
from aupguard.base.vocabulary import CATEGORIES, CATEGORY_NAME, DOWNLOAD_TYPES, SEVERITIES
from aupguard.config.policy import (
    DEFAULT_CIRCUMVENTION_TEXT,
    DEFAULT_EXEMPTION_MAX_DAYS,
    Category,
    CircumventionRules,
    Group,
    NetworkRule,
    Policy,
    PolicyError,
)
from aupguard.config.timetable import Timetable, read_timetable
from aupguard.config.userfiles import Member, UserFile, UserFileError, read_user_file
from aupguard.config.yamlfile import YamlDocument, did_you_mean, line_of
from aupguard.lists.mapping import load_mapping
from aupguard.lists.model import ListError, ListRoot, MappedFolder, mapped

SUPPORTED_VERSION = 1
GROUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # also list root names
MAX_RETENTION_DAYS = 3650
MAX_REPEAT_WINDOW_MINUTES = 24 * 60
MAX_REPEAT_THRESHOLD = 100
MAX_EXEMPTION_MAX_DAYS = 366  # a school year: anything longer belongs in the policy itself
TUNNEL_RULES = ("block", "allow")


def load_policy(path: Path) -> Policy:
    """Read and check a policy file. Raises PolicyError naming file, line and reason."""
    path = Path(path)
    doc = YamlDocument(path, PolicyError)
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
    retention_days = doc.integer_between(records["retention_days"], "records.retention_days", 1, MAX_RETENTION_DAYS)

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


def _read_timezone(doc: YamlDocument, node: Node) -> zoneinfo.ZoneInfo:
    name = doc.text(node, "school.timezone")
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        hint = did_you_mean(name, zoneinfo.available_timezones()) or " (a zoneinfo name such as Europe/London)"
        doc.fail(node, f"school.timezone: unknown time zone {name!r}{hint}")


def _read_categories(doc: YamlDocument, node: Node) -> dict[str, Category]:
    categories: dict[str, Category] = {}
    rule = "a category name (lower-case letters, digits and _)"
    for name, _key, value in doc.named_items(node, "categories", CATEGORY_NAME, rule):
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
    doc: YamlDocument, node: Node, categories: Mapping[str, Category], timetable: Timetable
) -> dict[str, Group]:
    groups: dict[str, Group] = {}
    for name, _key, value in doc.named_items(node, "groups", GROUP_NAME, "a group name (letters, digits, _ . -)"):
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


def _no_mandatory(doc: YamlDocument, node: Node | None, where: str, categories: Mapping[str, Category]) -> None:
    for item in doc.sequence(node, where):
        name = doc.text(item, where)
        if categories[name].mandatory:
            doc.fail(item, f"{where}: {name} is mandatory (blocked for everyone): it cannot be allowed")


def _read_timed_rules(
    doc: YamlDocument,
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
                    f"{where}.{key}: unknown window {window!r}{did_you_mean(window, timetable.windows)} "
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


def _read_downloads(doc: YamlDocument, node: Node | None, where: str) -> dict:
    """A group's `downloads:` as Group fields: blocked file types and a size limit."""
    if node is None or doc.is_null(node):
        return {}
    fields = doc.fields(node, where, optional=("block_types", "max_size_mb"))
    types = set()
    for item in doc.sequence(fields.get("block_types"), f"{where}.block_types"):
        name = doc.text(item, f"{where}.block_types")
        if name not in DOWNLOAD_TYPES:
            doc.fail(
                item,
                f"{where}.block_types: unknown file type {name!r}{did_you_mean(name, DOWNLOAD_TYPES)} "
                f"(one of {', '.join(DOWNLOAD_TYPES)})",
            )
        types.add(name)
    max_bytes = None
    if fields.get("max_size_mb") is not None:
        megabytes = doc.integer_between(fields["max_size_mb"], f"{where}.max_size_mb", 1, MAX_DOWNLOAD_MB)
        max_bytes = megabytes * 1024 * 1024
    return {"download_block_types": frozenset(types), "max_download_bytes": max_bytes}


def _category_names(
    doc: YamlDocument, node: Node | None, where: str, categories: Mapping[str, Category]
) -> frozenset[str]:
    names = set()
    for item in doc.sequence(node, where):
        names.add(doc.known_name(item, where, categories, "category"))
    return frozenset(names)


def _read_identity(
    doc: YamlDocument, node: Node, groups: Mapping[str, Group]
) -> tuple[str, dict[str, str], tuple[NetworkRule, ...], tuple[UserFile, ...], dict[str, Member]]:
    fields = doc.fields(node, "identity", required=("default_group",), optional=("users", "user_files", "networks"))

    default_group = doc.known_name(fields["default_group"], "identity.default_group", groups, "group")

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
        users[folded] = doc.known_name(value, f"identity.users.{name}", groups, "group")
        first_line[folded] = line_of(key)

    rules: list[NetworkRule] = []
    seen: dict[Network, int] = {}
    for number, item in enumerate(doc.sequence(fields.get("networks"), "identity.networks"), 1):
        where = f"identity.networks entry {number}"
        entry = doc.fields(item, where, required=("cidr", "group"))
        network = _read_network(doc, entry["cidr"], f"{where}: cidr")
        if network in seen:
            doc.fail(entry["cidr"], f"{where}: {network} is listed twice (first at line {seen[network]})")
        seen[network] = line_of(entry["cidr"])
        rules.append(NetworkRule(network, doc.known_name(entry["group"], f"{where}: group", groups, "group")))
    rules.sort(key=lambda r: (-r.network.prefixlen, r.network.version, r.network.network_address))
    user_files, members = _read_user_files(doc, fields.get("user_files"), groups)
    return default_group, users, tuple(rules), user_files, members


MAX_USER_FILES = 20


def _read_user_files(
    doc: YamlDocument, node: Node | None, groups: Mapping[str, Group]
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
            reason = f"{exc.reason} (identity.user_files in {doc.path}:{line_of(item)})"
            raise PolicyError(exc.file, exc.line, reason) from exc
        for user, member in found.items():
            if user in members:
                raise PolicyError(member.file, member.line, f"user {user!r} is also listed at {members[user].where}")
            members[user] = member
        specs.append(spec)
    return tuple(specs), members


_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def _read_network(doc: YamlDocument, node: Node, where: str) -> Network:
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


def _read_lists(doc: YamlDocument, node: Node, categories: Mapping[str, Category]) -> tuple[ListRoot, ...]:
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


def _read_circumvention(doc: YamlDocument, node: Node | None, groups: Mapping[str, Group]) -> CircumventionRules:
    default = CircumventionRules()
    if node is None or doc.is_null(node):
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
        return doc.integer_between(fields[key], f"circumvention.{key}", low, high)

    return CircumventionRules(
        connect_ports=frozenset(ports) or default.connect_ports,
        bare_ip_allowed=_groups_allowed(doc, fields.get("bare_ip"), "circumvention.bare_ip", groups),
        no_sni_allowed=_groups_allowed(doc, fields.get("no_sni"), "circumvention.no_sni", groups),
        repeat_window_minutes=number(
            "repeat_window_minutes", 1, MAX_REPEAT_WINDOW_MINUTES, default.repeat_window_minutes
        ),
        repeat_threshold=number("repeat_threshold", 2, MAX_REPEAT_THRESHOLD, default.repeat_threshold),
    )


def _read_exemptions(doc: YamlDocument, node: Node | None) -> int:
    """The `exemptions:` section: `max_days`, the longest an exemption or classroom override may run."""
    if node is None or doc.is_null(node):
        return DEFAULT_EXEMPTION_MAX_DAYS
    fields = doc.fields(node, "exemptions", optional=("max_days",))
    if "max_days" not in fields:
        return DEFAULT_EXEMPTION_MAX_DAYS
    return doc.integer_between(fields["max_days"], "exemptions.max_days", 1, MAX_EXEMPTION_MAX_DAYS)


def _groups_allowed(doc: YamlDocument, node: Node | None, where: str, groups: Mapping[str, Group]) -> frozenset[str]:
    """`block` or `allow` for every group, or a mapping of group (or `default`) to either; unnamed groups: default."""

    def rule(value: Node, at: str) -> bool:
        word = doc.text(value, at)
        if word not in TUNNEL_RULES:
            doc.fail(value, f"{at}: expected block or allow, not {word!r}")
        return word == "allow"

    if doc.is_null(node):
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
            doc.fail(key, f"{where}: unknown group {name!r}{did_you_mean(name, [*groups, 'default'])}")
    return frozenset(name for name in groups if chosen.get(name, fallback))


def _policy_path(text: str, folder: Path) -> Path:
    """A path as written in the policy: "{data}" is the data folder, relative paths start at the policy's folder."""
    path = Path(text.replace("{data}", str(paths.DATA_DIR)))
    return Path(os.path.normpath(folder / path))


def _read_mapping(
    doc: YamlDocument, node: Node, where: str, folder: Path, categories: Mapping[str, Category]
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
                f"{did_you_mean(target, categories)}",
            )
    return mapping


def _read_tls(
    doc: YamlDocument, node: Node, categories: Mapping[str, Category]
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
                f"tls.no_decrypt: {entry!r} is neither a category nor a host name{did_you_mean(entry, categories)}",
            )
    intercept = doc.boolean(fields["intercept"], "tls.intercept")
    return frozenset(no_decrypt_categories), frozenset(hosts), intercept
