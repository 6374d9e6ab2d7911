"""The guide's custom agent (examples/cem_agent.py): it trains, acts in the benchmark and checkpoints."""

from __future__ import annotations

import numpy as np
from helpers import tiny_env
from single_thread import one_torch_thread  # noqa: F401  (autouse)

from agents.base import run_episode
from examples.cem_agent import CEMConfig, CEMStepSizes

SETUP = {"num_batches": 2, "batch_size": 3, "probe_texts": []}


def test_cem_finds_better_steps_than_a_too_small_start(tmp_path):
    env = tiny_env(**SETUP)
    agent = CEMStepSizes(env, CEMConfig(population=6, elite=3))
    start = np.array([-1.0, -1.0])  # alpha = base_step / 10 all episode: edits barely take
    agent.mean = start.copy()
    before = run_episode(env, agent, seed=0)
    agent.learn(24, train_env=tiny_env(split="train", evaluate_at_end=False, **SETUP), progress_bar=False)
    assert not np.allclose(agent.mean, start)
    after = run_episode(env, agent, seed=0)  # held-out edits: what was learnt transfers
    assert after["return"] > before["return"] + 0.5
    assert after["metrics"]["eff_acc"] > before["metrics"]["eff_acc"]

    agent.save(tmp_path / "cem.safetensors")
    loaded = CEMStepSizes.load(tmp_path / "cem.safetensors", env)
    np.testing.assert_array_equal(loaded.mean, agent.mean)
    np.testing.assert_array_equal(loaded.std, agent.std)
