"""README.md says what the program does (issue 11.7): its mitmproxy options table lists every
`aupguard_*` option the addons declare, and the policy error it shows is what `aupguard run` prints."""

from __future__ import annotations

import ast
import re

from conftest import REPO, aupguard

README = (REPO / "README.md").read_text(encoding="utf-8")
PACKAGE = REPO / "addons" / "aupguard"


def declared_options() -> dict[str, str]:
    """{option name: type name} of every `add_option("aupguard_...", type, ...)` call in the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            if node.func.attr != "add_option" or not node.args:
                continue
            name, kind = node.args[0], node.args[1] if len(node.args) > 1 else None
            if isinstance(name, ast.Constant) and str(name.value).startswith("aupguard_"):
                found[name.value] = ast.unparse(kind) if kind is not None else "?"
    return found


def documented_options() -> dict[str, str]:
    """{option name: type} of the rows of README's mitmproxy options table."""
    return dict(re.findall(r"^\| `(aupguard_\w+)` \| (\w+) \|", README, re.MULTILINE))


def test_the_readme_lists_every_aupguard_option_with_its_type():
    declared = declared_options()
    assert len(declared) >= 7  # the reader finds the addons' options at all
    assert documented_options() == declared, (
        "README.md's mitmproxy option table (name | type | default | meaning) and the add_option calls differ"
    )


def test_the_documented_policy_error_is_what_aupguard_run_prints(tmp_path):
    """A policy that does not load stops the start with the file, the line and the reason."""
    (documented,) = re.findall(r"^Error: config/policy\.yaml:\d+: .*$", README, re.MULTILINE)
    line = int(documented.split(":")[2])
    # The README's example: the bundled policy with `games` misspelt on the line it names.
    lines = (REPO / "config" / "policy.yaml").read_text(encoding="utf-8").splitlines(keepends=True)
    assert "games," in lines[line - 1], f"README.md's policy error names line {line}, which has no `games`"
    lines[line - 1] = lines[line - 1].replace("games,", "gamez,", 1)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "policy.yaml").write_text("".join(lines), encoding="utf-8")
    (tmp_path / "config" / "ut1-mapping.yaml").symlink_to(REPO / "config" / "ut1-mapping.yaml")
    (tmp_path / "blocklists").symlink_to(REPO / "blocklists")
    done = aupguard("run", "--config", "config/policy.yaml", data=tmp_path / "var", check=False, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [documented]
