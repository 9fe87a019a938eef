"""Untrusted files never run code: a static scan of every package's and app's source.

Weights and training state load only through safetensors or ``torch.load(..., weights_only=True)``;
nothing calls ``pickle.load``/``pickle.loads``, ``torch.jit.load``, ``np.load(..., allow_pickle=True)``
or ``torch.load`` without ``weights_only=True``. (The behaviour itself, a code-running pickle refused
with a one-line error and its payload never run, is tested in fm-train and fm-pixel.)
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for pattern in ("packages/*/src/**/*.py", "apps/*/src/**/*.py") for p in ROOT.glob(pattern))


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return "?"


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return None


def unsafe_calls(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        if name == "torch.load":
            wo = _keyword(node, "weights_only")
            if not (isinstance(wo, ast.Constant) and wo.value is True):
                found.append((node.lineno, "torch.load without weights_only=True"))
        elif name in ("pickle.load", "pickle.loads", "torch.jit.load", "dill.load", "cloudpickle.load", "joblib.load"):
            found.append((node.lineno, name))
        elif name in ("np.load", "numpy.load"):
            ap = _keyword(node, "allow_pickle")
            if (
                isinstance(ap, ast.Constant)
                and ap.value is True
                or (ap is not None and not isinstance(ap, ast.Constant))
            ):
                found.append((node.lineno, "np.load with allow_pickle"))
    return found


def test_the_scan_finds_unsafe_calls():
    """Control: the scanner flags each unsafe form and accepts the safe ones."""
    code = (
        "torch.load(f)\ntorch.load(f, weights_only=False)\npickle.loads(b)\nnp.load(f, allow_pickle=True)\n"
        "torch.jit.load(f)\ntorch.load(f, weights_only=True)\nnp.load(f)\nsafetensors.torch.load_file(f)\n"
    )
    assert [line for line, _ in unsafe_calls(ast.parse(code))] == [1, 2, 3, 4, 5]


def test_no_source_file_unpickles_untrusted_data():
    assert len(SOURCES) > 20  # the scan sees the workspace
    problems = []
    for path in SOURCES:
        for line, what in unsafe_calls(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            problems.append(f"{path.relative_to(ROOT)}:{line}: {what}")
    assert not problems, "\n".join(problems)
