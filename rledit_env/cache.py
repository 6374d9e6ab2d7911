"""The on-disk cache of what rledit-env builds once: TinyWorld models, the converted SmolLM2, key
statistics. Root: ``cache_dir`` when given, else $RLEDIT_CACHE, else ~/.cache/rledit_env."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any


def cache_root(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    if cache_dir is not None:
        return pathlib.Path(cache_dir)
    return pathlib.Path(os.environ.get("RLEDIT_CACHE") or pathlib.Path.home() / ".cache" / "rledit_env")


@contextlib.contextmanager
def build_lock(path: pathlib.Path) -> Iterator[None]:
    """An advisory inter-process lock (POSIX) so that concurrent first uses build only once."""
    try:
        import fcntl
    except ImportError:  # Windows: the atomic rename in cached_build still keeps the cache consistent
        yield
        return
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cached_build(target: pathlib.Path, meta_file: str, build: Callable[[pathlib.Path], dict[str, Any]]):
    """The folder ``target``, built first if it has no ``meta_file``.

    ``build(folder)`` writes the artefact's files into a fresh folder and returns its metadata, which
    is written last as ``meta_file``; the folder is then renamed to ``target`` in one step, so readers
    see either nothing or the complete artefact, and a failed build leaves nothing behind.
    """
    if (target / meta_file).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with build_lock(target.parent / f".{target.name}.lock"):
        if (target / meta_file).exists():  # another process built it while we waited
            return target
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            meta = build(tmp)
            (tmp / meta_file).write_text(json.dumps(meta, indent=1))
            # mkdtemp (and safetensors) create owner-only modes; a cache is readable like any model folder
            for path in [tmp, *tmp.iterdir()]:
                path.chmod(0o755 if path.is_dir() else 0o644)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target
