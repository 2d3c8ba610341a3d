"""The policy file's YAML reader: a node tree whose typed accessors fail with `file:line: reason`.

The file is parsed with `yaml.compose`, not `safe_load`, so every node keeps its line: a
mistake (bad YAML, a wrong type, a duplicate or unknown key, ...) is raised as the located
error the reader was given, naming the line to fix. The policy loader and the timetable
read through it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from typing import NoReturn, TypeVar

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from aupguard.base.errors import LocatedError

MAX_POLICY_BYTES = 1 << 20  # a policy is a few kilobytes; anything this big is not one

_Scalar = TypeVar("_Scalar", str, int, bool)


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
            if mark is not None and main is not None and mark.line != main.line:
                text = f"{text} (line {mark.line + 1})"
            parts.append(text)
    return (main.line + 1 if main else None), "invalid YAML: " + " ".join(parts)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the closest of `choices`, or nothing: the tail of an "unknown ..." reason."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def line_of(node: Node) -> int:
    """The 1-based line a node starts on."""
    return node.start_mark.line + 1


_KINDS = {
    "tag:yaml.org,2002:str": "text",
    "tag:yaml.org,2002:int": "a number",
    "tag:yaml.org,2002:float": "a number",
    "tag:yaml.org,2002:bool": "true/false",
    "tag:yaml.org,2002:null": "nothing",
    "tag:yaml.org,2002:timestamp": "a date",
}


def _kind(node: Node | None) -> str:
    if node is None:
        return "nothing"
    if isinstance(node, MappingNode):
        return "a mapping (key: value lines)"
    if isinstance(node, SequenceNode):
        return "a list"
    return _KINDS.get(node.tag, f"a value tagged {node.tag}")


class YamlDocument:
    """The policy file's node tree, with typed accessors that fail with the node's line.

    Every failure raises `error` (a LocatedError such as PolicyError) for this file.
    """

    def __init__(self, path: Path, error: type[LocatedError]):
        self.path = path
        self.error = error
        self._constructor = SafeConstructor()
        self._key_nodes: dict[int, Node] = {}  # id(value node) -> its key node, to blame a section's heading

    def heading(self, node: Node) -> Node:
        """The `key:` line a value sits under (the value itself at the top level)."""
        return self._key_nodes.get(id(node), node)

    def fail(self, node: Node | None, reason: str) -> NoReturn:
        self.fail_at(None if node is None else line_of(node), reason)

    def fail_at(self, line: int | None, reason: str) -> NoReturn:
        """Fail at a line found otherwise than from one node (None: the whole file)."""
        raise self.error(self.path, line, reason)

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
            raise self.error(self.path, data[: exc.start].count(b"\n") + 1, "not valid UTF-8 text") from exc
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            raise self.error(self.path, *_yaml_problem(exc)) from exc
        except yaml.reader.ReaderError as exc:
            raise self.error(self.path, text[: exc.position].count("\n") + 1, f"invalid YAML: {exc.reason}") from exc
        if root is None:
            self.fail(None, "the policy file is empty")
        return root

    def _scalar(self, node: Node | None, where: str, kind: str, python_type: type[_Scalar]) -> _Scalar:
        if isinstance(node, ScalarNode):
            try:
                value = self._constructor.construct_object(node)
            except ConstructorError as exc:
                self.fail(node, f"{where}: {exc.problem}")
            # exactly the type: a bool is an int to isinstance, but true is no number of days
            if isinstance(value, python_type) and type(value) is python_type:
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

    def known_name(self, node: Node, where: str, names: Collection[str], kind: str) -> str:
        """Text naming one of `names` (the policy's categories, groups, ...); `kind` is what they are."""
        name = self.text(node, where)
        if name not in names:
            self.fail(node, f"{where}: unknown {kind} {name!r}{did_you_mean(name, names)}")
        return name

    def integer_between(self, node: Node, where: str, low: int, high: int) -> int:
        """A whole number from `low` to `high`, both included."""
        value = self.integer(node, where)
        if not low <= value <= high:
            self.fail(node, f"{where} must be between {low} and {high}")
        return value

    def boolean(self, node: Node | None, where: str, *, default: bool | None = None) -> bool:
        if node is None and default is not None:
            return default
        return self._scalar(node, where, "true or false", bool)

    def is_null(self, node: Node | None) -> bool:
        """An absent value, or `key:` with nothing after it (YAML's null)."""
        return node is None or (isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:null")

    def sequence(self, node: Node | None, where: str) -> list[Node]:
        """A list's items; an absent or empty value (`key:` with every entry commented out) is an empty list."""
        if self.is_null(node):
            return []
        if not isinstance(node, SequenceNode):
            self.fail(node, f"{where}: expected a list, got {_kind(node)}")
        return node.value

    def items(self, node: Node | None, where: str) -> list[tuple[str, Node, Node]]:
        """A mapping's (key, key node, value node); duplicate keys, which YAML silently allows, are errors."""
        if self.is_null(node):
            return []
        if not isinstance(node, MappingNode):
            self.fail(node, f"{where or 'the policy file'}: expected a mapping (key: value lines), got {_kind(node)}")
        first: dict[str, int] = {}
        out: list[tuple[str, Node, Node]] = []
        for key_node, value_node in node.value:
            key = self._scalar(key_node, f"{where or 'top level'}: key", "text", str)
            if key in first:
                prefix = f"{where}: " if where else ""
                self.fail(key_node, f"{prefix}duplicate key {key!r} (first at line {first[key]})")
            first[key] = line_of(key_node)
            self._key_nodes[id(value_node)] = key_node
            out.append((key, key_node, value_node))
        return out

    def named_items(
        self, node: Node | None, where: str, pattern: re.Pattern[str], what: str
    ) -> Iterator[tuple[str, Node, Node]]:
        """items() of a section keyed by names the policy defines (categories, groups, windows).

        Each key is checked against `pattern` as it is reached, so mistakes are still reported in file
        order; `what` says what a name must be.
        """
        for key, key_node, value_node in self.items(node, where):
            if not pattern.fullmatch(key):
                self.fail(key_node, f"{where}: {key!r} is not {what}")
            yield key, key_node, value_node

    def fields(
        self, node: Node, where: str, *, required: tuple[str, ...] = (), optional: tuple[str, ...] = ()
    ) -> dict[str, Node]:
        """A section with a fixed set of keys: unknown keys and missing required ones are errors."""
        if not isinstance(node, MappingNode):
            self.fail(node, f"{where or 'the policy file'}: expected a mapping (key: value lines), got {_kind(node)}")
        known = required + optional
        found: dict[str, Node] = {}
        for key, key_node, value_node in self.items(node, where):
            if key not in known:
                hint = did_you_mean(key, known) or f" (expected {', '.join(known)})"
                self.fail(key_node, f"{where + ': unknown key' if where else 'unknown top-level key'} {key!r}{hint}")
            found[key] = value_node
        for key in required:
            if key not in found:
                self.fail(self.heading(node), f"{where + ': missing' if where else 'missing top-level'} key {key!r}")
        return found
