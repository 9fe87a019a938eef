"""Progress bars stay off where nobody watches."""

from __future__ import annotations

from fm_cli import progress


def test_progress_is_off_when_quiet_or_not_a_terminal(capsys):
    assert list(progress(range(5), desc="x")) == [0, 1, 2, 3, 4]  # pytest's stderr is no terminal
    assert progress(range(2), quiet=True).disable
    assert progress(total=3).disable
    assert capsys.readouterr().err == ""
