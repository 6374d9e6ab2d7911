"""The one-command lifelong evaluation of the agents (experiments.lifelong_agents)."""

from __future__ import annotations

import pytest
from single_thread import one_torch_thread  # noqa: F401  (autouse)

from experiments.lifelong_agents import evaluate_agents, main


def test_evaluate_agents_trains_then_scores_every_agent_on_the_same_episode():
    frame = evaluate_agents(
        "tinyworld-tiny",
        num_batches=2,
        batch_size=3,
        agents=["rledit", "rledit-untrained", "noedit"],
        train_episodes={"rledit": 2},
        configs={"rledit": {"rank": 16, "num_blocks": 1, "train_num_batches": 2}},
        metrics_every=1,
        progress=False,
    )
    assert list(frame["agent"]) == ["rledit", "rledit-untrained", "noedit"]
    rows = frame.set_index("agent")
    assert (rows["edits"] == 6).all() and (rows["ms_per_edit"] > 0).all()
    assert rows.loc["rledit", "train_episodes"] == 2 and rows.loc["rledit-untrained", "train_episodes"] == 0
    assert len(frame.attrs["training_logs"]["rledit"]) == 2 and not frame.attrs["training_logs"]["noedit"]
    # the ablation is RLEdit's configuration, untrained
    assert frame.attrs["configs"]["rledit-untrained"]["rank"] == 16
    assert [p["step"] for p in frame.attrs["curves"]["noedit"]] == [1, 2]
    # no edit leaves the unedited model's locality predictions exactly as they were
    assert rows.loc["noedit", "spe_acc"] == 1.0


def test_unknown_agents_are_refused_by_name():
    with pytest.raises(ValueError, match="unknown agents \\['rome'\\]"):
        evaluate_agents("tinyworld-tiny", agents=["rome"])
    with pytest.raises(SystemExit):
        main(["--model", "tinyworld-tiny", "--train-episodes", "rledit:3"])
