"""The UT1 category mapping (`config/ut1-mapping.yaml`): UT1 folder -> aupguard category.

Read with `file:line: reason` errors (ListError); the long form also names list files not read.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from aupguard.base.vocabulary import CATEGORY_NAME
from aupguard.lists.model import LIST_FILES, ListError, MappedFolder

MAX_MAPPING_BYTES = 1 << 20
# A UT1 folder name (audio-video, remote-control, ...); never "." or "..".
UT1_CATEGORY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")


def load_mapping(path: Path) -> dict[str, str | MappedFolder | None]:
    """Read a `ut1_category: aupguard_category` YAML file (null: ignore that UT1 folder).

    The long form `ut1_category: {category: aupguard_category, skip: [expressions]}` maps
    the folder but leaves the named list files unread (a MappedFolder).
    """
    try:
        with open(path, "rb") as file:
            raw = file.read(MAX_MAPPING_BYTES + 1)
    except OSError as exc:
        raise ListError(f"{path}: cannot read the category mapping: {exc.strerror}") from exc
    if len(raw) > MAX_MAPPING_BYTES:
        raise ListError(f"{path}: larger than {MAX_MAPPING_BYTES >> 10} KiB; not a category mapping")
    try:
        root = yaml.compose(raw.decode("utf-8"), Loader=yaml.SafeLoader)
    except UnicodeDecodeError as exc:
        raise ListError(f"{path}: not UTF-8 text") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ListError(f"{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from exc
    if root is None:
        raise ListError(f"{path}: the category mapping is empty")
    if not isinstance(root, MappingNode):
        raise ListError(f"{path}:{root.start_mark.line + 1}: expected `ut1_category: aupguard_category` lines")
    mapping: dict[str, str | MappedFolder | None] = {}
    for key_node, value_node in root.value:
        where = f"{path}:{key_node.start_mark.line + 1}"
        if not (_is_text(key_node) and UT1_CATEGORY.fullmatch(key_node.value)):
            raise ListError(f"{where}: {_shown(key_node)} is not a UT1 category folder name")
        key = key_node.value
        if key in mapping:
            raise ListError(f"{where}: {key!r} is mapped twice")
        if isinstance(value_node, ScalarNode) and value_node.tag == "tag:yaml.org,2002:null":
            mapping[key] = None
        elif _is_text(value_node) and CATEGORY_NAME.fullmatch(value_node.value):
            mapping[key] = value_node.value
        elif isinstance(value_node, MappingNode):
            mapping[key] = _mapped_folder(path, key, value_node)
        else:
            where = f"{path}:{value_node.start_mark.line + 1}"
            raise ListError(
                f"{where}: {key}: expected an aupguard category name (a-z, 0-9, _), null, or "
                f"{{category: NAME, skip: [FILE, ...]}}, not {_shown(value_node)}"
            )
    return mapping


def _mapped_folder(path: Path, folder: str, node: MappingNode) -> MappedFolder:
    """The long form `{category: NAME, skip: [FILE, ...]}` of a mapping entry, checked field by field."""
    fields: dict[str, yaml.Node] = {}
    for key_node, value_node in node.value:
        where = f"{path}:{key_node.start_mark.line + 1}"
        name = key_node.value if _is_text(key_node) else None
        if name not in ("category", "skip"):
            raise ListError(f"{where}: {folder}: unknown key {_shown(key_node)} (expected category and skip)")
        if name in fields:
            raise ListError(f"{where}: {folder}: {name} is given twice")
        fields[name] = value_node
    category, skip = fields.get("category"), fields.get("skip")
    where = f"{path}:{node.start_mark.line + 1}"
    if category is None or skip is None:
        raise ListError(f"{where}: {folder}: the long form needs both category and skip")
    if not (_is_text(category) and CATEGORY_NAME.fullmatch(category.value)):
        raise ListError(
            f"{path}:{category.start_mark.line + 1}: {folder}.category: expected an aupguard category name "
            f"(a-z, 0-9, _), not {_shown(category)}"
        )
    if not isinstance(skip, SequenceNode):
        raise ListError(f"{path}:{skip.start_mark.line + 1}: {folder}.skip: expected a list such as [expressions]")
    names = []
    for item in skip.value:
        if not (_is_text(item) and item.value in LIST_FILES):
            raise ListError(
                f"{path}:{item.start_mark.line + 1}: {folder}.skip: {_shown(item)} is not a list file "
                f"(one of {', '.join(LIST_FILES)})"
            )
        names.append(item.value)
    if not names or set(names) == set(LIST_FILES):
        raise ListError(
            f"{path}:{skip.start_mark.line + 1}: {folder}.skip: name one or two of {', '.join(LIST_FILES)} "
            "(to skip the whole folder, map it to null)"
        )
    return MappedFolder(category.value, frozenset(names))


def _is_text(node: yaml.Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:str"


def _shown(node: yaml.Node) -> str:
    if isinstance(node, ScalarNode):
        return repr(node.value[:80])
    return f"a YAML {'mapping' if isinstance(node, MappingNode) else 'sequence'}"
