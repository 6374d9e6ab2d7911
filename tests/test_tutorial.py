"""The tutorial (examples/tutorial.py) runs from start to end as a notebook: jupytext -> nbformat ->
nbclient on a python3 kernel, on TinyWorld-tiny with the small budgets it picks for it."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _outputs(notebook, kind: str) -> list:
    return [out for cell in notebook.cells for out in cell.get("outputs", []) if out["output_type"] == kind]


@pytest.mark.slow
def test_tutorial_notebook_runs_and_draws_its_figures(tmp_path, monkeypatch):
    import jupytext
    from nbclient import NotebookClient

    notebook = jupytext.read(ROOT / "examples" / "tutorial.py")
    assert any("parameters" in cell.metadata.get("tags", []) for cell in notebook.cells)
    monkeypatch.setenv("TUTORIAL_MODEL", "tinyworld-tiny")
    monkeypatch.setenv("TUTORIAL_OUT", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel's torch: one thread, as the other tests
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "examples")}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell

    text = "".join(out.get("text", "") for out in _outputs(notebook, "stream"))
    assert "ridge solve by hand matches: True" in text
    assert "to edit: batch 1" in text and "edited: batch 2" in text  # the ansi render, per step
    assert "tutorial finished" in text
    images = [out for out in _outputs(notebook, "display_data") if "image/png" in out["data"]]
    assert len(images) == 4  # gradient retention, hypernetwork retention, training curves, benchmark
    for name in ("gradient-retention.png", "hypernetwork-retention.png", "training-curves.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    results = pd.read_csv(tmp_path / "benchmark" / "results.csv")
    assert set(results["agent"]) == {"rledit", "cem_agent:CEMStepSizes", "noedit"}
    final = results[results["final"]].set_index("agent")
    assert final.loc["noedit", "eff"] == 0 and final.loc["cem_agent:CEMStepSizes", "eff"] > 0
