"""One benchmark process per results folder: a lock file holding the owner's pid.

Two processes appending to the same results.csv would each rewrite it from what they read and lose
the other's rows. The lock is an advisory ``flock`` on ``<folder>/.lock``, which the kernel releases
when its owner exits, however it dies (SIGKILL included): a lock file left behind by a dead process is
stale and simply taken over. The file's content, the owner's pid, is what the refusal reports.
Re-entrant within a process (the command line holds it around a run that takes it too).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".lock"
_held: dict[Path, int] = {}  # folders this process holds -> nesting depth


class ResultsFolderBusy(RuntimeError):
    """Another live process is writing to this results folder."""


@contextmanager
def results_lock(folder: str | os.PathLike) -> Iterator[None]:
    """Hold the results folder's lock for the block; refuse if another live process holds it."""
    folder = Path(folder).resolve()
    if folder in _held:
        _held[folder] += 1
        try:
            yield
        finally:
            _held[folder] -= 1
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            raise ResultsFolderBusy(
                f"{folder} is in use by another benchmark process (pid {owner}); wait for it to finish, or "
                "use another --out folder"
            ) from None
        os.ftruncate(fd, 0)  # a stale owner's pid, if any, is replaced by ours
        os.write(fd, f"{os.getpid()}\n".encode())
        _held[folder] = 1
        try:
            yield
        finally:
            del _held[folder]
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock
