"""The shape of the package, checked from its source (issue 11, acceptance).

Every `import` in every module is read with `ast`, wherever it stands: at the top, inside a
function, or under `if TYPE_CHECKING:`. A late import is still an edge of the graph: moving an
import into a function to dodge a cycle does not make the cycle go away, so it counts here.

- only modules under `aupguard/proxy/` import mitmproxy;
- no import cycles between modules;
- the layering: a module never imports from a layer above its own;
- every module imports alone, in a fresh interpreter.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "addons"
PACKAGE = SOURCE / "aupguard"

# The rooms of the house, lowest first; a module may import from its own room and rooms of a lower
# rank, never from a higher one. Rooms of one rank stand beside each other and do not import each
# other (offline tooling is not request-time code; the proxy does not read reports). `runtime` is the
# one module at the top of the package; `cli` may import anything.
LAYERS: dict[str, int] = {
    "base": 0,
    "lists": 1,
    "config": 2,
    "core": 3,
    "store": 4,
    "offline": 5,
    "runtime": 6,  # the engine factory: compiles the index at start when it is missing or stale
    "proxy": 7,
    "report": 7,
    "cli": 8,
}
# The package's own __init__ is a docstring and a version: it stands outside the layering.
ROOT = "aupguard"


@dataclass(frozen=True)
class Import:
    importer: str  # the module whose source holds the import
    imported: str  # the module it names, resolved to the most specific module of the package
    line: int
    text: str  # the import statement as written, for the failure message

    def where(self) -> str:
        path = module_path(self.importer).relative_to(REPO)
        return f"{path}:{self.line}: {self.text}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def module_path(name: str) -> Path:
    base = SOURCE.joinpath(*name.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def resolve_relative(importer: str, level: int, module: str | None) -> str:
    """The absolute name `from .x import y` means inside `importer`."""
    base = importer.split(".")
    if not is_package(importer):
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def owning_module(name: str) -> str | None:
    """The most specific module of the package that `name` is or lies in (`a.b.func` -> `a.b`)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


def raw_imports(importer: str, source: str | None = None) -> list[tuple[str, int, str]]:
    """(absolute dotted name, line, statement text) for every import in the module, at any depth."""
    if source is None:
        source = MODULES[importer].read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(module_path(importer)))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            text = ast.get_source_segment(source, node) or ""
            found += [(alias.name, node.lineno, text) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            text = ast.get_source_segment(source, node) or ""
            module = resolve_relative(importer, node.level, node.module) if node.level else (node.module or "")
            # `from aupguard.core import engine` imports the module aupguard.core.engine.
            found += [(f"{module}.{alias.name}", node.lineno, text) for alias in node.names if alias.name != "*"]
            found.append((module, node.lineno, text))
    return found


def package_imports() -> list[Import]:
    edges = set()
    for importer in MODULES:
        for name, line, text in raw_imports(importer):
            imported = owning_module(name)
            if imported is not None and imported != importer:
                edges.add(Import(importer, imported, line, " ".join(text.split())))
    return sorted(edges, key=lambda edge: (edge.importer, edge.line, edge.imported))


IMPORTS = package_imports()


def room(module: str) -> str:
    """The subpackage a module lives in (`aupguard.core.engine` -> `core`), or `runtime`."""
    return module.split(".")[1] if module != ROOT else ROOT


def fail(rule: str, breaking: list[str]) -> None:
    """Fail with the rule and each place that breaks it, one a line (no traceback: the places say it all)."""
    pytest.fail("\n".join([rule, *breaking]), pytrace=False)


# -- the checks ---------------------------------------------------------------------------------


def test_the_graph_reader_sees_every_kind_of_import():
    # The reader itself must not miss imports, or every check below passes for the wrong reason.
    source = (
        "from typing import TYPE_CHECKING\n"
        "import aupguard.base.paths\n"
        "from aupguard.base import errors\n"
        "from aupguard.base.vocabulary import SEVERITIES\n"
        "if TYPE_CHECKING:\n"
        "    from aupguard.core.engine import Engine\n"
        "def late():\n"
        "    import mitmproxy.http\n"
    )
    found = {(line, name) for name, line, _ in raw_imports("aupguard.core.engine", source)}
    assert found == {
        (1, "typing"),
        (1, "typing.TYPE_CHECKING"),
        (2, "aupguard.base.paths"),
        (3, "aupguard.base"),
        (3, "aupguard.base.errors"),
        (4, "aupguard.base.vocabulary"),
        (4, "aupguard.base.vocabulary.SEVERITIES"),
        (6, "aupguard.core.engine"),
        (6, "aupguard.core.engine.Engine"),
        (8, "mitmproxy.http"),
    }
    relative = "from . import decide\nfrom ..base.paths import DEFAULT_INDEX\n"
    assert {name for name, _, _ in raw_imports("aupguard.core.engine", relative)} == {
        "aupguard.core",
        "aupguard.core.decide",
        "aupguard.base.paths",
        "aupguard.base.paths.DEFAULT_INDEX",
    }
    assert owning_module("aupguard.base.vocabulary.SEVERITIES") == "aupguard.base.vocabulary"
    assert owning_module("aupguard.base.errors") == "aupguard.base.errors"
    assert owning_module("aupguard.base") == "aupguard.base"
    assert owning_module("mitmproxy.http") is None
    assert resolve_relative("aupguard.core.engine", 1, "decide") == "aupguard.core.decide"
    assert resolve_relative("aupguard.core", 1, "decide") == "aupguard.core.decide"
    assert resolve_relative("aupguard.core.engine", 2, "base.paths") == "aupguard.base.paths"


def test_only_the_proxy_subpackage_imports_mitmproxy():
    offenders = []
    for importer in MODULES:
        if importer.startswith("aupguard.proxy.") or importer == "aupguard.proxy":
            continue
        for name, line, text in raw_imports(importer):
            if name == "mitmproxy" or name.startswith("mitmproxy."):
                where = f"{MODULES[importer].relative_to(REPO)}:{line}: {' '.join(text.split())}"
                if where not in offenders:
                    offenders.append(where)
    if offenders:
        fail("only aupguard/proxy/ may import mitmproxy; these imports break the rule:", offenders)


def shortest_cycle_through(start: str, graph: dict[str, list[Import]]) -> list[Import] | None:
    """The fewest imports that lead from `start` back to itself (breadth first), or None."""
    came_by: dict[str, Import] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for edge in graph.get(node, []):
            if edge.imported == start:
                path = [edge]
                while node != start:
                    path.append(came_by[node])
                    node = came_by[node].importer
                return path[::-1]
            if edge.imported not in came_by:
                came_by[edge.imported] = edge
                queue.append(edge.imported)
    return None


def find_cycles(imports: list[Import]) -> list[list[Import]]:
    """A shortest cycle through each module that stands on one, each distinct set of modules once."""
    graph: dict[str, list[Import]] = {}
    for edge in imports:
        graph.setdefault(edge.importer, []).append(edge)
    cycles, seen = [], set()
    for start in sorted(graph):
        cycle = shortest_cycle_through(start, graph)
        if cycle is not None and (members := frozenset(edge.importer for edge in cycle)) not in seen:
            seen.add(members)
            cycles.append(cycle)
    return cycles


def describe_cycle(cycle: list[Import]) -> str:
    chain = " -> ".join([edge.importer for edge in cycle] + [cycle[0].importer])
    return chain + "\n" + "\n".join(f"    {edge.where()}" for edge in cycle)


def test_no_import_cycles_between_modules():
    cycles = find_cycles(IMPORTS)
    if cycles:
        fail("import cycles (late imports count: move code instead):", [describe_cycle(cycle) for cycle in cycles])


def test_the_cycle_finder_finds_a_cycle_and_names_its_imports():
    # A cycle the finder must report, built from edges of the same type the real graph has.
    a, b, c = "aupguard.base.paths", "aupguard.base.errors", "aupguard.base.urlnorm"
    ring = [Import(a, b, 3, "import b"), Import(b, c, 4, "import c"), Import(c, a, 5, "import a")]
    chain = [Import(a, b, 3, "import b"), Import(b, c, 4, "import c")]
    assert find_cycles(chain) == []
    cycles = find_cycles(ring)
    assert len(cycles) == 1
    assert [edge.line for edge in cycles[0]] == [4, 5, 3]  # starting from the least name, errors
    assert describe_cycle(cycles[0]).splitlines()[0] == (
        "aupguard.base.errors -> aupguard.base.urlnorm -> aupguard.base.paths -> aupguard.base.errors"
    )


def test_every_module_lives_in_a_known_layer():
    unknown = sorted({room(m) for m in MODULES if m != ROOT} - set(LAYERS))
    if unknown:
        fail("subpackages not in the layering (LAYERS in tests/test_architecture.py):", unknown)


def layering_breaks(imports: list[Import]) -> list[str]:
    breaks = []
    for edge in imports:
        if edge.importer == ROOT or edge.imported == ROOT:
            if edge.importer == ROOT:
                breaks.append(f"{edge.where()}  (the package's __init__ imports nothing of its own)")
            continue
        low, high = room(edge.importer), room(edge.imported)
        if low == high or low not in LAYERS or high not in LAYERS:
            continue
        if LAYERS[high] > LAYERS[low]:
            breaks.append(f"{edge.where()}  ({low} may not import {high}: {high} is a higher layer)")
        elif LAYERS[high] == LAYERS[low]:
            breaks.append(f"{edge.where()}  ({low} may not import {high}: they stand side by side)")
    return breaks


def test_no_module_imports_from_a_higher_layer():
    breaks = layering_breaks(IMPORTS)
    order = " < ".join(", ".join(r for r in LAYERS if LAYERS[r] == rank) for rank in sorted(set(LAYERS.values())))
    if breaks:
        fail(f"layering {order} broken by:", breaks)


def test_the_layering_check_refuses_an_upward_and_a_sideways_import():
    upward = Import("aupguard.core.engine", "aupguard.store.db", 7, "from aupguard.store import db")
    sideways = Import("aupguard.proxy.addon", "aupguard.report.output", 8, "from aupguard.report import output")
    downward = Import("aupguard.cli.main", "aupguard.base.paths", 9, "from aupguard.base import paths")
    breaks = layering_breaks([upward, sideways, downward])
    assert breaks == [
        "addons/aupguard/core/engine.py:7: from aupguard.store import db  (core may not import store: store is a higher layer)",
        "addons/aupguard/proxy/addon.py:8: from aupguard.report import output  (proxy may not import report: they stand side by side)",
    ]


def import_alone(module: str) -> tuple[str, int, str]:
    # -I: isolated, so neither the caller's environment nor the working folder leaks into the import.
    done = subprocess.run(
        [sys.executable, "-I", "-c", f"import {module}"], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    return module, done.returncode, done.stderr


def test_every_module_imports_alone_in_a_fresh_interpreter():
    # Two at a time: the test machines are small. Each import is a new interpreter, so no module
    # succeeds only because another one ran first.
    # A `__main__` module is the program itself: importing it runs the command, so it is left out.
    modules = [module for module in MODULES if not module.endswith(".__main__")]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(import_alone, modules))
    failures = [
        f"import {module} (exit {returncode}):\n" + "\n".join(stderr.strip().splitlines()[-3:])
        for module, returncode, stderr in results
        if returncode
    ]
    if failures:
        fail("modules that do not import alone:", failures)


@pytest.mark.parametrize("module", ["aupguard.base.paths", "aupguard.runtime"])
def test_the_package_is_read_from_this_checkout(module):
    # The graph is read from the files; the import check must import those same files.
    done = subprocess.run(
        [sys.executable, "-I", "-c", f"import {module}; print({module}.__file__)"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == MODULES[module]


def test_architecture_md_lists_every_module_and_only_modules_that_exist():
    """ARCHITECTURE.md's "Every module" table is the map of the tree: no module missing, none invented."""
    text = (REPO / "ARCHITECTURE.md").read_text()
    table = text[text.index("## Every module") : text.index("## Where a change goes")]
    listed = set(re.findall(r"^\| `([a-z_/]+(?:/__init__|/__main__)?\.py)` \|", table, re.MULTILINE))
    on_disk = {str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")}
    # A subpackage's own __init__ is its docstring: the table names it by its room's row instead.
    on_disk -= {
        p for p in on_disk if p.endswith("__init__.py") and p not in ("__init__.py", "core/circumvention/__init__.py")
    }
    assert sorted(on_disk - listed) == [], "modules ARCHITECTURE.md does not list"
    assert sorted(listed - on_disk) == [], "modules ARCHITECTURE.md lists that do not exist"
