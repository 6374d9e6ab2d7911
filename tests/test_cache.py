"""The build-once cache: artefacts appear whole or not at all, and are built only once."""

from __future__ import annotations

import json

import pytest

from rledit_env.cache import cache_root, cached_build


def test_builds_once_with_its_record_written_last(tmp_path):
    calls = []

    def build(folder):
        calls.append(folder)
        (folder / "weights.bin").write_bytes(b"\0" * 8)
        return {"steps": 3}

    target = tmp_path / "thing"
    assert cached_build(target, "meta.json", build) == target
    assert cached_build(target, "meta.json", build) == target
    assert len(calls) == 1 and calls[0] != target  # built elsewhere, then moved into place
    assert json.loads((target / "meta.json").read_text()) == {"steps": 3}
    assert (target / "weights.bin").stat().st_mode & 0o777 == 0o644


def test_a_failed_build_leaves_nothing_behind(tmp_path):
    def broken(folder):
        (folder / "half.bin").write_bytes(b"\0")
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        cached_build(tmp_path / "thing", "meta.json", broken)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_root_follows_the_argument_then_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RLEDIT_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"
