"""atomic_file: all or nothing, no temporary files left, OSError naming the target; progress bars
stay off where nobody watches."""

from __future__ import annotations

import pytest

from fm_cli import atomic_file, progress


def test_atomic_file_replaces_or_leaves_untouched(tmp_path):
    target = tmp_path / "a" / "f.bin"
    with atomic_file(target) as f:
        f.write(b"first")
    assert target.read_bytes() == b"first"
    with pytest.raises(RuntimeError), atomic_file(target) as f:
        f.write(b"half")
        raise RuntimeError("killed half-way")
    assert target.read_bytes() == b"first"
    assert [p.name for p in target.parent.iterdir()] == ["f.bin"]


def test_atomic_file_oserror_names_the_target(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError) as e, atomic_file(blocker / "out.npz") as f:
        f.write(b"x")
    assert e.value.filename == str(blocker / "out.npz")


def test_progress_is_off_when_quiet_or_not_a_terminal(capsys):
    assert list(progress(range(5), desc="x")) == [0, 1, 2, 3, 4]  # pytest's stderr is no terminal
    assert progress(range(2), quiet=True).disable
    assert progress(total=3).disable
    assert capsys.readouterr().err == ""
