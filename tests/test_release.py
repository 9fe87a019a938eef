"""What RELEASING.md promises of every package and app, read from the files themselves:

- the version in ``pyproject.toml``, ``__version__`` in the package's ``__init__.py`` and the newest
  ``## X.Y.Z (date or unreleased)`` heading of ``CHANGELOG.md`` agree;
- every requirement on another fm-* member is bounded to one minor series (``>=X.Y,<X.Y+1``) and
  admits that member's version in this repository;
- ``LICENSE`` is there and listed in ``license-files`` (so the wheel carries it), with classifiers
  and ``py.typed``.

The version in ``__init__.py`` is read with ``ast`` rather than imported, so a broken import cannot
hide a mismatch, and so the test needs no package installed.
"""

from __future__ import annotations

import ast
import datetime
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MEMBERS = sorted(p.parent for p in ROOT.glob("packages/*/pyproject.toml")) + sorted(
    p.parent for p in ROOT.glob("apps/*/pyproject.toml")
)
HEADING = re.compile(r"^## (\d+\.\d+\.\d+) \((unreleased|\d{4}-\d{2}-\d{2})\)\s*$", re.M)


def _project(member: Path) -> dict:
    return tomllib.loads((member / "pyproject.toml").read_text())["project"]


def _module_dir(member: Path) -> Path:
    return member / "src" / _project(member)["name"].replace("-", "_")


def _dunder_version(init: Path) -> str | None:
    for node in ast.parse(init.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__version__" for t in node.targets):
            value = node.value
            assert isinstance(value, ast.Constant) and isinstance(value.value, str), f"{init}: __version__ not a string"
            return value.value
    return None


VERSIONS = {_project(m)["name"]: _project(m)["version"] for m in MEMBERS}


def _parse(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


@pytest.mark.parametrize("member", MEMBERS, ids=lambda p: p.name)
def test_versions_agree(member: Path):
    version = _project(member)["version"]
    init = _module_dir(member) / "__init__.py"
    assert _dunder_version(init) == version, f"{init}: __version__ != pyproject's {version}"
    headings = HEADING.findall((member / "CHANGELOG.md").read_text())
    assert headings, f"{member.name}/CHANGELOG.md has no '## X.Y.Z (YYYY-MM-DD)' heading"
    newest, when = headings[0]
    assert newest == version, f"{member.name}: newest CHANGELOG heading {newest}, pyproject {version}"
    if when != "unreleased":
        datetime.date.fromisoformat(when)  # a real date
    # older headings go down in version
    versions = [_parse(v) for v, _ in headings]
    assert versions == sorted(versions, reverse=True) and len(set(versions)) == len(versions), headings


@pytest.mark.parametrize("member", MEMBERS, ids=lambda p: p.name)
def test_internal_requirements_are_bounded(member: Path):
    for req in _project(member).get("dependencies", []):
        m = re.fullmatch(r"(fm-[a-z0-9]+)(.*)", req.replace(" ", ""))
        if not m:
            continue
        name, spec = m.groups()
        bounds = re.fullmatch(r">=(\d+)\.(\d+),<(\d+)\.(\d+)", spec)
        assert bounds, f"{member.name}: {req!r} should read '{name}>=X.Y,<X.Y+1'"
        lo_major, lo_minor, hi_major, hi_minor = map(int, bounds.groups())
        assert (hi_major, hi_minor) == (lo_major, lo_minor + 1), f"{member.name}: {req!r} spans more than one minor"
        assert name in VERSIONS, f"{member.name}: {name} is not a member of this workspace"
        have = _parse(VERSIONS[name])[:2]
        assert (lo_major, lo_minor) <= have < (hi_major, hi_minor), f"{member.name}: {req!r} excludes {name} {have}"


@pytest.mark.parametrize("member", MEMBERS, ids=lambda p: p.name)
def test_license_classifiers_and_types_ship(member: Path):
    project = _project(member)
    assert project.get("license") == "MIT"
    assert "LICENSE" in project.get("license-files", []), f"{member.name}: LICENSE not in license-files"
    assert (member / "LICENSE").read_text() == (ROOT / "LICENSE").read_text()
    classifiers = project.get("classifiers", [])
    assert "Typing :: Typed" in classifiers and any(
        c.startswith("Programming Language :: Python :: 3.") for c in classifiers
    )
    assert not any(c.startswith("License ::") for c in classifiers), "license classifiers conflict with PEP 639"
    assert (_module_dir(member) / "py.typed").exists()
