"""The documentation site builds strictly (no broken link, no missing reference, no page outside the
navigation) and offline, with a page for every results folder (slow: about 15 s)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# mkdocs in a fresh interpreter whose sockets cannot connect: a build that reached the network fails
OFFLINE_MKDOCS = """
import socket, sys

def refuse(*args, **kwargs):
    raise OSError("the documentation build tried to reach the network")

socket.socket.connect = refuse
socket.create_connection = refuse
from mkdocs.__main__ import cli

sys.argv = ["mkdocs", *sys.argv[1:]]
cli()
"""


@pytest.mark.slow
def test_the_site_builds_strictly_and_offline(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra: pip install -e '.[docs]'")
    pytest.importorskip("mkdocstrings_handlers.python")
    pytest.importorskip("material")
    site = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-c", OFFLINE_MKDOCS, "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1", "OMP_NUM_THREADS": "1"},
    )
    assert build.returncode == 0, build.stdout + build.stderr
    assert "WARNING" not in build.stderr, build.stderr

    # every results folder under docs/ has its generated page, with its table and retention plot
    folders = sorted(p.parent for p in (ROOT / "docs").rglob("summary.md"))
    assert len(folders) >= 6
    for folder in folders:
        name = folder.relative_to(ROOT / "docs").as_posix().replace("/", "-")
        page = (site / "results" / name / "index.html").read_text()
        assert "Protocol:" in page and "retention-" in page and "along the sequence" in page, name
    # the README's sections the site includes arrived, and no include marker was left behind
    assert "bash scripts/setup.sh --smollm2" in (site / "getting-started" / "index.html").read_text()
    assert "rledit_env/LifelongEditCompact-v0" in (site / "environment" / "index.html").read_text()
    environment = (site / "environment" / "index.html").read_text()
    assert 'id="rledit_env.envs.LifelongEditEnv--action-space"' in environment  # the spec's sections
    assert 'id="agents.base.EditAgent.act"' in (site / "reference" / "agents" / "index.html").read_text()
    assert "tutorial-gradient-retention.png" in (site / "tutorial" / "notebook" / "index.html").read_text()
    for html in site.rglob("*.html"):
        assert "--8&lt;--" not in html.read_text(), html
