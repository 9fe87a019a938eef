"""The workspace keeps the shape DESIGN.md promises: every member is a small, separately
installable package with its own version, README (with a runnable example), CHANGELOG,
dev dependency group and tests, and dependency arrows never point from a package to an app."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MEMBERS = sorted(p.parent for p in ROOT.glob("packages/*/pyproject.toml")) + sorted(
    p.parent for p in ROOT.glob("apps/*/pyproject.toml")
)
APP_NAMES = {"fm-toy2d", "fm-pixel", "fm-latentgen"}


def _project(member: Path) -> dict:
    return tomllib.loads((member / "pyproject.toml").read_text())


def test_root_is_virtual_and_lists_members():
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "project" not in root, "the workspace root must stay virtual"
    assert root["tool"]["uv"]["workspace"]["members"] == ["packages/*", "apps/*"]
    assert (ROOT / "uv.lock").exists()
    assert "fm-core" in {m.name for m in MEMBERS}


@pytest.mark.parametrize("member", MEMBERS, ids=lambda p: p.name)
def test_member_shape(member: Path):
    data = _project(member)
    project = data["project"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert project["requires-python"] == ">=3.11"
    assert "dev" in data.get("dependency-groups", {}), "each member has its own dev group"
    module = project["name"].replace("-", "_")
    assert (member / "src" / module / "__init__.py").exists()
    for name in ("README.md", "CHANGELOG.md"):
        assert (member / name).exists(), f"{member.name} lacks {name}"
    assert "```" in (member / "README.md").read_text(), f"{member.name}/README.md has no example"
    assert list((member / "tests").glob("test_*.py")), f"{member.name} has no tests"


@pytest.mark.parametrize("member", [m for m in MEMBERS if m.parent.name == "packages"], ids=lambda p: p.name)
def test_packages_never_depend_on_apps(member: Path):
    deps = " ".join(_project(member)["project"].get("dependencies", []))
    for app in APP_NAMES:
        assert app not in deps


def test_core_depends_on_torch_and_light_libraries_only():
    deps = {re.split(r"[<>=!~ \[]", d)[0] for d in _project(ROOT / "packages" / "fm-core")["project"]["dependencies"]}
    assert deps <= {"torch", "numpy", "scipy", "torchdiffeq"}, deps
