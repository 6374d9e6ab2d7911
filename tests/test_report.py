"""Plots of single episodes (experiments.report.plot_retention)."""

from __future__ import annotations

import matplotlib.image

from experiments.report import plot_retention


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
