"""Atomic file writes: a reader, or a process killed mid-write, sees the old file or the new one, never
a torn one.

The new content goes to a temporary file in the target's folder (same file system, so the final
``os.replace`` is one atomic rename), is flushed to disk, then renamed over the target. A write that
fails removes its temporary file; a process killed mid-write can leave a hidden ``.<name>.*.tmp`` file
beside the target, never a damaged target.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to; it replaces ``path`` when the block ends
    without an error. Writers that pick a format from the file name need it given explicitly."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        with open(tmp, "rb") as f:  # the data on disk before the rename makes it visible
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
