"""The working tree and, beside it, a baseline commit checked out in a temporary git worktree: what the
side-by-side benchmarks (evaluation_cost.py, generation_cost.py, locate_edit_cost.py) time in one run,
each measurement in a fresh process of its tree."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
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


class MeasurementFailed(RuntimeError):
    """A measurement's process exited with an error; ``stderr`` is what it printed."""

    def __init__(self, message: str, stderr: str):
        super().__init__(message)
        self.stderr = stderr


def measure_in(tree: Path, script: str, arguments: list[str]) -> dict:
    """Run ``script`` with ``arguments`` in a fresh process, ``tree``'s packages first on the path and one
    torch thread unless OMP_NUM_THREADS says otherwise; its result is the JSON of its last output line."""
    command = [sys.executable, str(Path(script).resolve()), *arguments]
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        message = f"{' '.join(arguments)} in {tree} failed:\n{done.stderr[-3000:]}"
        raise MeasurementFailed(message, done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])
