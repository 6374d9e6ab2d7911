"""stable-baselines3 on the compact interface: training unchanged, editing metrics in SB3's logger, and
the adapter that puts a trained SB3 model in the benchmark."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import assert_same_state, model_state, tiny_env
from single_thread import one_torch_thread  # noqa: F401  (autouse)
from stable_baselines3 import A2C, PPO, SAC, TD3
from stable_baselines3.common.logger import configure

from agents.base import Callback, CheckpointError, run_episode
from agents.sb3 import EditMetricsCallback, SB3Agent, SB3AgentConfig
from rledit_env.envs import LifelongEditEnv
from rledit_env.wrappers import CompactEditWrapper

EPISODE = {"num_batches": 2, "batch_size": 2, "probe_texts": []}
HEADLINE = ("edit/eff", "edit/gen", "edit/spe")


def compact_train_env() -> CompactEditWrapper:
    return CompactEditWrapper(tiny_env(split="train", **EPISODE))


def logged_metrics(model, steps: int, tmp_path, **learn_kwargs) -> pd.DataFrame:
    """Train with the metrics callback, logging to CSV; the rows of progress.csv."""
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(steps, callback=EditMetricsCallback(), **learn_kwargs)
    return pd.read_csv(tmp_path / "progress.csv")


def assert_headline_metrics_logged(table: pd.DataFrame) -> None:
    assert set(HEADLINE) <= set(table.columns)
    for column in HEADLINE:
        values = table[column].dropna()
        assert len(values) >= 1 and values.between(0, 1).all()


def test_ppo_trains_unchanged_and_logs_editing_metrics(tmp_path):
    model = PPO("MlpPolicy", compact_train_env(), n_steps=64, batch_size=32, n_epochs=2, seed=0)
    table = logged_metrics(model, 192, tmp_path)
    assert model.num_timesteps == 192 and len(table) == 3  # one dump per rollout
    assert_headline_metrics_logged(table)
    assert "edit/ppl" not in table.columns  # no probe texts here: nothing invented


def test_sac_trains_unchanged_and_logs_editing_metrics(tmp_path):
    model = SAC("MlpPolicy", compact_train_env(), learning_starts=50, batch_size=32, seed=0)
    table = logged_metrics(model, 150, tmp_path, log_interval=1)
    assert model.num_timesteps == 150
    assert len(table) >= 25  # a dump per episode of 2 steps after learning starts
    assert "train/actor_loss" in table.columns  # it really took gradient steps
    assert_headline_metrics_logged(table)


@pytest.mark.parametrize(
    "make",
    [lambda env: A2C("MlpPolicy", env, n_steps=4), lambda env: TD3("MlpPolicy", env, learning_starts=8)],
)
def test_a2c_and_td3_train_unchanged(make):
    model = make(compact_train_env()).learn(24)
    assert model.num_timesteps == 24


def test_metrics_reach_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = PPO(
        "MlpPolicy", compact_train_env(), n_steps=8, batch_size=8, n_epochs=1, tensorboard_log=str(tmp_path)
    )
    model.learn(16, callback=EditMetricsCallback(), tb_log_name="ppo")
    (run,) = tmp_path.glob("ppo_*")
    events = EventAccumulator(str(run))
    events.Reload()
    assert set(HEADLINE) <= set(events.Tags()["scalars"])
    assert len(events.Scalars("edit/eff")) == 2  # one value per dump (rollout)


def test_adapter_plays_a_benchmark_episode_like_the_model_acts():
    model = PPO("MlpPolicy", compact_train_env(), n_steps=8, batch_size=8, n_epochs=1, seed=0).learn(8)
    env = tiny_env(**EPISODE)
    agent = SB3Agent(env, model)
    obs, _ = env.reset(seed=0)
    expected, _ = model.predict(agent.wrapper.observation(obs), deterministic=True)
    action = agent.act(obs)
    reference = agent.wrapper.action(expected, obs)
    for name in env.module_names:
        torch.testing.assert_close(action["values"][name], reference["values"][name])
    result = run_episode(env, agent, seed=0)
    assert result["edits"] == 4 and {"eff", "gen", "spe"} <= set(result["metrics"])


def test_save_and_load_keep_the_model(tmp_path):
    model = SAC("MlpPolicy", compact_train_env(), learning_starts=4, batch_size=4, seed=0).learn(8)
    env = tiny_env(**EPISODE)
    agent = SB3Agent(env, model, SB3AgentConfig(projection_dim=8))
    agent.save(tmp_path / "sac.safetensors")
    loaded = SB3Agent.load(tmp_path / "sac.safetensors", env)
    assert isinstance(loaded.model, SAC) and loaded.config == agent.config
    obs, _ = env.reset(seed=2)
    compact = agent.wrapper.observation(obs)
    np.testing.assert_array_equal(
        model.predict(compact, deterministic=True)[0], loaded.model.predict(compact, deterministic=True)[0]
    )
    other = LifelongEditEnv("tinyworld-tiny", edit_modules=["model.layers.1.mlp.up_proj"], **EPISODE)
    with pytest.raises(CheckpointError, match="modules"):
        SB3Agent.load(tmp_path / "sac.safetensors", other)


def test_adapter_refuses_a_model_of_another_shape():
    model = PPO("MlpPolicy", compact_train_env(), n_steps=8, batch_size=8)
    with pytest.raises(ValueError, match="observation_space"):
        SB3Agent(tiny_env(num_batches=2, batch_size=3, probe_texts=[]), model)
    with pytest.raises(TypeError, match="stable-baselines3"):
        SB3Agent(tiny_env(**EPISODE), "PPO")
    with pytest.raises(ValueError, match="unknown stable-baselines3 algorithm 'PPO2'"):
        SB3Agent(tiny_env(**EPISODE), config=SB3AgentConfig(algorithm="PPO2"))


def test_agent_learn_trains_a_fresh_model_and_calls_back():
    class Count(Callback):
        def __init__(self):
            self.logs = []

        def on_episode_end(self, agent, episode, logs):
            self.logs.append(logs)
            return len(self.logs) < 3  # stop after three episodes

    config = SB3AgentConfig(algorithm="A2C", algorithm_kwargs={"n_steps": 2})
    agent = SB3Agent(tiny_env(**EPISODE), config=config)
    assert isinstance(agent.model, A2C)
    callback = Count()
    agent.learn(10, train_env=tiny_env(split="train", **EPISODE), callback=callback, progress_bar=False)
    assert len(callback.logs) == 3 and agent.model.num_timesteps == 6  # stopped by the callback
    assert {"return", "eff", "gen", "spe"} <= set(callback.logs[0])


def test_agent_learn_is_reproducible_from_the_seed():
    def trained(seed: int) -> list[torch.Tensor]:
        config = SB3AgentConfig(
            seed=seed, algorithm="SAC", algorithm_kwargs={"learning_starts": 4, "batch_size": 4}
        )
        agent = SB3Agent(tiny_env(**EPISODE), config=config)
        agent.learn(6, train_env=tiny_env(split="train", **EPISODE), progress_bar=False)
        return [p.detach().clone() for p in agent.model.policy.parameters()]

    first, again, other = trained(0), trained(0), trained(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_agent_learn_defaults_to_the_training_split_and_gives_the_weights_back():
    env = tiny_env(**EPISODE)
    before = model_state(env)
    agent = SB3Agent(
        env, config=SB3AgentConfig(algorithm="PPO", algorithm_kwargs={"n_steps": 4, "batch_size": 4})
    )
    agent.learn(2, progress_bar=False)
    assert agent.model.num_timesteps == 4
    assert_same_state(before, model_state(env))
