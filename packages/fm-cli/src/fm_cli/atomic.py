"""Atomic file writes for outputs (sample files, pictures): write beside the target, then rename.

The temporary name is unique per writer (``tempfile.mkstemp``: process and thread alike), so two
processes writing the same file leave one of the two complete files, never a mix or a torn one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_file"]


@contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open a temporary binary file beside ``path``; on a clean exit it is flushed, synced and renamed
    to ``path`` (created folders included). On an error it is removed and ``path`` is untouched; an
    ``OSError`` is re-raised naming ``path``, not the temporary file.

        with atomic_file("out/samples.npz") as f:
            numpy.savez_compressed(f, images=images)
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        if e.errno is None:  # not from the file system (e.g. an encoder's own error): as it is
            raise
        raise type(e)(e.errno, e.strerror or str(e), str(path)) from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
