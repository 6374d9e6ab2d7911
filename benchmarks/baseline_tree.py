"""The working tree and, beside it, a baseline commit checked out in a temporary git worktree: what the
side-by-side benchmarks (evaluation_cost.py, locate_edit_cost.py) time in one run."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def trees(baseline: str | None) -> Iterator[dict[str, Path]]:
    """{"now": the working tree, "baseline": ``baseline`` checked out} (no "baseline" when None); the
    temporary worktree is removed afterwards."""
    found = {"now": ROOT}
    if baseline is None:
        yield found
        return
    tmp = tempfile.mkdtemp(prefix="rledit-baseline-")
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", tmp, baseline],
        check=True,
        capture_output=True,
    )
    try:
        yield {**found, "baseline": Path(tmp)}
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", tmp], capture_output=True)
