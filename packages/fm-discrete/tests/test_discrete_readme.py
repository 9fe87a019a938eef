"""The python blocks of fm-discrete's README run as written (each asserts its own numbers)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_readme_has_the_examples():
    assert len(BLOCKS) >= 2
    assert "ctmc_sample(" in BLOCKS[0] and "DiscreteFlowMatchingLoss(" in BLOCKS[1]


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, capsys):
    exec(compile(BLOCKS[index], f"{README.name}[block {index}]", "exec"), {"__name__": "readme"})
    assert capsys.readouterr().out  # every block prints what it shows
