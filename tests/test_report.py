"""Plots of single episodes (experiments.report.plot_retention) and results folders' documentation pages."""

from __future__ import annotations

import matplotlib.image
import pandas as pd

from experiments.cli import main
from experiments.report import docs_page, plot_retention


def _curve(effs: list[float]) -> list[dict]:
    return [
        {"step": i + 1, "edits": 5 * (i + 1), "eff": e, "gen": e / 2, "spe": 1 - e, "ppl": 2.0}
        for i, e in enumerate(effs)
    ]


def test_plot_retention_draws_one_figure_of_three_panels_from_episode_curves(tmp_path):
    curves = {"forgets": _curve([0.9, 0.6, 0.3]), "keeps": _curve([0.5, 0.5, 0.5])}
    path = plot_retention(curves, tmp_path / "retention.png", "two episodes")
    assert path == tmp_path / "retention.png"
    image = matplotlib.image.imread(path)
    assert image.shape[1] > 2.5 * image.shape[0]  # three panels side by side
    single = plot_retention({"keeps": _curve([0.5, 0.5, 0.5])}, tmp_path / "one.png", "one episode")
    assert (image.shape == matplotlib.image.imread(single).shape) and path.read_bytes() != single.read_bytes()


def _results(tmp_path):
    """A results folder as a benchmark leaves it: results.csv (two agents, curves), summary.md, a plot."""
    from experiments.report import write_markdown

    rows = []
    for agent, effs in (("noedit", [0.0, 0.0]), ("rledit", [0.5, 0.25])):
        for step, eff in enumerate(effs, 1):
            rows.append(
                {
                    "agent": agent,
                    "model": "m",
                    "dataset": "d",
                    "schedule": "2x5",
                    "seed": 0,
                    "step": step,
                    "edits": 5 * step,
                    "eff": eff,
                    "eff_acc": eff,
                    "ppl": 1234.5 * step,
                    "final": step == 2,
                    "time_per_edit_s": 0.001,
                    "spe_reference": "the neighbour's true answer",
                    "stats_corpus": None,
                    "stats_texts": None,
                }
            )
    folder = tmp_path / "results" / "exp"
    folder.mkdir(parents=True)
    results = pd.DataFrame(rows)
    results.to_csv(folder / "results.csv", index=False)
    write_markdown(results, folder / "summary.md", "exp: a model, 2 x 5")
    (folder / "retention-2x5.png").write_bytes(b"png")
    return folder


def test_docs_page_is_made_from_the_folder_and_moves_the_notes_links(tmp_path):
    folder = _results(tmp_path)
    (folder / "notes.md").write_text("Ran on 2026-12-01. See [the settings](../../settings.md#rledit).\n")
    page = docs_page(folder, tmp_path / "site" / "results")
    assert page.startswith("# exp: a model, 2 x 5\n") and "Protocol:" in page
    assert "| rledit " in page  # summary.md's table
    assert "0.250" in page and "2,469.0" in page  # along the sequence: eff_acc and perplexity
    assert "![Eff, Gen and Spe" in page and "(../../results/exp/retention-2x5.png)" in page
    assert "[`results.csv`](../../results/exp/results.csv)" in page
    assert "See [the settings](../../settings.md#rledit)." in page  # from site/results to tmp_path


def test_report_docs_page_writes_only_the_page(tmp_path, capsys):
    folder = _results(tmp_path)
    before = sorted(p.name for p in folder.iterdir())
    assert main(["report", str(folder), "--docs-page", str(tmp_path / "page.md")]) == 0
    assert (tmp_path / "page.md").read_text() == docs_page(folder, tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == before  # summary and plots untouched
    assert main(["report", str(tmp_path), "--docs-page", str(tmp_path / "x.md")]) == 2  # no results.csv
    (folder / "summary.md").unlink()
    assert main(["report", str(folder), "--docs-page", str(tmp_path / "x.md")]) == 2
    assert "rledit report" in capsys.readouterr().err
