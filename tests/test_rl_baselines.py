"""The RL-baselines comparison runs end to end and gives one row per agent (tiny budgets)."""

from __future__ import annotations

import pytest
from single_thread import one_torch_thread  # noqa: F401  (autouse)

from experiments.rl_baselines import compare


@pytest.mark.slow
def test_comparison_table_has_every_agent_on_the_same_edits():
    frame = compare(
        "tinyworld-tiny", num_batches=2, batch_size=3, train_batches=2, sb3_steps=8, cem_episodes=8,
        rledit_episodes=1, progress=False,
    )  # fmt: skip
    assert list(frame["agent"]) == ["rledit", "finetune", "noedit", "ppo", "sac", "cem (example)"]
    assert (frame["edits"] == 6).all()
    assert frame[["eff", "gen", "spe"]].apply(lambda c: c.between(0, 1)).all().all()
    noedit = frame.set_index("agent").loc["noedit"]
    assert noedit["spe_acc"] == 1.0  # the unedited model agrees with itself
    assert (frame.set_index("agent").loc[["ppo", "sac", "cem (example)"], "train_episodes"] > 0).all()
