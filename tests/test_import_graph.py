"""The import graph of ../shared/DESIGN.md, checked over every module's imports (AST, not pyproject files).

- apps import packages only, never another app;
- fm-core imports no other fm package; fm-nets, fm-nflows, fm-data and fm-latent import none either;
- fm-train may use fm-core; fm-eval may use fm-core and fm-data; fm-cli may use fm-core, fm-train and
  fm-eval; no package imports fm-cli;
- every fm package a module imports is declared in its member's pyproject.toml dependencies (so each
  package installs and imports on its own).

Imports inside functions count too: a lazy import is still an edge of the graph.
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: fm package -> the fm packages its source may import (DESIGN.md, "The import graph").
ALLOWED: dict[str, set[str]] = {
    "fm-core": set(),
    "fm-nets": set(),
    "fm-nflows": set(),
    "fm-data": set(),
    "fm-latent": set(),
    "fm-discrete": {"fm-core"},
    "fm-train": {"fm-core"},
    "fm-eval": {"fm-core", "fm-data"},
    "fm-cli": {"fm-core", "fm-train", "fm-eval"},
}


def _members() -> dict[str, Path]:
    out = {}
    for pyproject in sorted(ROOT.glob("packages/*/pyproject.toml")) + sorted(ROOT.glob("apps/*/pyproject.toml")):
        name = tomllib.loads(pyproject.read_text())["project"]["name"]
        out[name] = pyproject.parent
    return out


MEMBERS = _members()
MODULE_TO_MEMBER = {name.replace("-", "_"): name for name in MEMBERS}
APPS = {name for name, path in MEMBERS.items() if path.parent.name == "apps"}
PACKAGES = {name for name, path in MEMBERS.items() if path.parent.name == "packages"}


def imported_members(path: Path) -> dict[str, int]:
    """Workspace members imported by the module at ``path`` -> the first line that imports each."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            member = MODULE_TO_MEMBER.get(name.split(".")[0])
            if member is not None:
                found.setdefault(member, node.lineno)
    return found


def _declared(member: str) -> set[str]:
    deps = tomllib.loads((MEMBERS[member] / "pyproject.toml").read_text())["project"].get("dependencies", [])
    return {re.split(r"[<>=!~ \[;]", d)[0].strip() for d in deps}


def graph_violations(members: dict[str, Path] = MEMBERS) -> list[str]:
    """Every forbidden edge, as 'file:line: A imports B (why)'."""
    problems = []
    for member, root in members.items():
        own = member.replace("-", "_")
        declared = _declared(member)
        for path in sorted((root / "src").rglob("*.py")):
            rel = path.relative_to(ROOT)
            for other, line in imported_members(path).items():
                if other == member:
                    continue
                where = f"{rel}:{line}: {own} imports {other.replace('-', '_')}"
                if other in APPS:
                    problems.append(f"{where} (nothing imports an app)")
                elif member in PACKAGES and other not in ALLOWED.get(member, set()):
                    allowed = ", ".join(sorted(ALLOWED.get(member, set()))) or "no other fm package"
                    problems.append(f"{where} ({member} may use {allowed})")
                elif other not in declared:
                    problems.append(f"{where} ({other} is not in {member}'s pyproject dependencies)")
        for path in sorted((root / "tests").rglob("*.py")):
            rel = path.relative_to(ROOT)
            for other, line in imported_members(path).items():
                if other in APPS and other != member:
                    problems.append(f"{rel}:{line}: a test of {member} imports the app {other}")
    return problems


def test_every_package_in_the_design_map_is_known():
    assert PACKAGES <= set(ALLOWED), f"add {sorted(PACKAGES - set(ALLOWED))} to ALLOWED (and to DESIGN.md's graph)"
    assert {"fm-toy2d", "fm-pixel", "fm-latentgen"} <= APPS


def test_import_graph_follows_the_design():
    problems = graph_violations()
    assert not problems, "import graph violations:\n" + "\n".join(problems)


def test_the_checker_sees_an_app_to_app_import(tmp_path):
    """The checker itself: a lazy app-to-app import inside a function is reported."""
    app = tmp_path / "apps" / "a"
    (app / "src" / "fm_latentgen").mkdir(parents=True)
    (app / "tests").mkdir()
    (app / "src" / "fm_latentgen" / "x.py").write_text("def f():\n    from fm_pixel.cli import main\n    return main\n")
    tree = imported_members(app / "src" / "fm_latentgen" / "x.py")
    assert tree == {"fm-pixel": 2}


@pytest.mark.parametrize("member", sorted(PACKAGES))
def test_no_package_imports_fm_cli(member):
    if member == "fm-cli":
        pytest.skip("fm-cli itself")
    for path in (MEMBERS[member] / "src").rglob("*.py"):
        assert "fm-cli" not in imported_members(path), f"{path} imports fm_cli"
