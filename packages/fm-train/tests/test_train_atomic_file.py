"""atomic_file: all or nothing, no temporary files left, OSError naming the target."""

from __future__ import annotations

import pytest

from fm_train import atomic_file


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


def test_atomic_write_text_through_atomic_file(tmp_path):
    from fm_train import atomic_write_text

    assert atomic_write_text(tmp_path / "x.json", "{}\n").read_text() == "{}\n"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
