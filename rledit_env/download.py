"""Resumable, checksummed downloads of the full benchmark files (``rledit data download NAME``).

A download writes ``<file>.part`` and resumes it with an HTTP Range request when an earlier attempt
left one (a server that ignores Range sends the whole file and the part starts over), checks the
sha256, and renames the part to the file in one step: the file is either absent or complete. Without
a pinned digest (``DataFile.sha256``) the first download records its digest in ``<file>.sha256``, and
every later download or check of that name is verified against it.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from rledit_env.cache import build_lock
from rledit_env.data_files import DataFile, data_file, known_names

CHUNK = 1 << 20


class ChecksumError(ValueError):
    """A file whose sha256 is not the expected one."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: Path, sha256: str | None = None, *, progress: bool = True) -> str:
    """Fetch ``url`` into ``dest`` (resuming ``dest.part``) and return its sha256.

    Raises ChecksumError, and deletes the part so that the next attempt starts afresh, when ``sha256``
    is given and the bytes do not match it.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    with build_lock(dest.with_name(f".{dest.name}.lock")):  # two processes must not append to one part
        offset = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60)
        except urllib.error.HTTPError as err:
            if not (err.code == 416 and offset):  # 416 with a part: the part already holds every byte
                raise
            response = None
        if response is not None:
            with response:
                if offset and response.status != 206:
                    offset = 0
                length = response.headers.get("Content-Length")
                total = offset + int(length) if length is not None else None
                bar = tqdm(
                    total=total,
                    initial=offset,
                    unit="B",
                    unit_scale=True,
                    desc=dest.name,
                    disable=not progress,
                )
                with bar, open(part, "ab" if offset else "wb") as out:
                    while block := response.read(CHUNK):
                        out.write(block)
                        bar.update(len(block))
        actual = sha256_of(part)
        if sha256 is not None and actual != sha256:
            part.unlink()
            raise ChecksumError(
                f"{url}: sha256 {actual} is not the expected {sha256}; the download was deleted"
            )
        os.replace(part, dest)
    return actual


@dataclass
class Fetched:
    """What ``fetch_dataset`` did: where the file is and how its checksum was checked."""

    path: Path
    sha256: str | None
    status: str


def _recorded(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def expected_sha256(entry: DataFile, path: Path) -> tuple[str | None, str]:
    """The digest a file must have, and where it comes from: pinned, recorded at first download, or none."""
    if entry.sha256 is not None:
        return entry.sha256, "pinned"
    if _recorded(path).is_file():
        return _recorded(path).read_text().split()[0], "recorded at first download"
    return None, "none"


def fetch_dataset(
    name: str, *, url: str | None = None, cache_dir: str | os.PathLike | None = None, progress: bool = True
) -> Fetched:
    """Download a known dataset into the cache, or verify it if it is already there."""
    entry = data_file(name)
    if entry is None:
        raise ValueError(f"unknown dataset {name!r}; known names: {', '.join(known_names())}")
    path = entry.path(cache_dir)
    if entry.packaged:
        return Fetched(path, None, "ships with the package; nothing to download")
    expected, source = expected_sha256(entry, path)
    if path.is_file():
        actual = sha256_of(path)
        if expected is not None and actual != expected:
            raise ChecksumError(
                f"{path}: sha256 {actual} is not the {source} {expected}; delete it and download again"
            )
        return Fetched(path, actual, f"already there; sha256 checked against the {source} digest")
    url = url or entry.url
    if url is None:
        raise FileNotFoundError(
            f"{entry.name}: no direct download; {entry.manual}: put it at {path}, or pass --url"
        )
    actual = download(url, path, expected, progress=progress)
    if expected is not None:
        return Fetched(path, actual, f"downloaded; sha256 matches the {source} digest")
    _recorded(path).write_text(f"{actual}  {path.name}\n")
    return Fetched(
        path, actual, "downloaded; no pinned sha256, so this one is recorded and checked from now on"
    )
