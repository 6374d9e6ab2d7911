"""Vector environments: gymnasium's make_vec (sync) and SB3's DummyVecEnv, seeded per sub-environment."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from single_thread import one_torch_thread  # noqa: F401  (autouse)
from stable_baselines3.common.vec_env import DummyVecEnv

import rledit_env  # noqa: F401  (registers the environments)

COMPACT_ID = "rledit_env/LifelongEditCompact-v0"
SETUP = {"model": "tinyworld-tiny", "num_batches": 2, "batch_size": 2, "probe_texts": []}


def episode_prompts(env: gym.Env) -> list[str]:
    return [r.prompt for batch in env.unwrapped.episode for r in batch]


def single_env_prompts(seed: int) -> list[str]:
    env = gym.make(COMPACT_ID, **SETUP)
    env.reset(seed=seed)
    return episode_prompts(env)


def test_make_vec_sync_steps_and_resets_with_a_seed_per_copy():
    vec = gym.make_vec(COMPACT_ID, num_envs=2, vectorization_mode="sync", **SETUP)
    first, second = vec.envs
    assert first.unwrapped.editable.model is not second.unwrapped.editable.model  # weights mutate: one each
    obs, _ = vec.reset(seed=7)
    assert obs.shape == (2, *first.observation_space.shape) and vec.observation_space.contains(obs)
    # gymnasium seeds copy i with seed + i: each plays the episode a single env plays with that seed
    assert episode_prompts(first) == single_env_prompts(7)
    assert episode_prompts(second) == single_env_prompts(8)
    assert episode_prompts(first) != episode_prompts(second)
    assert not np.allclose(obs[0], obs[1])

    for _ in range(2):
        obs, rewards, terminated, truncated, infos = vec.step(vec.action_space.sample())
        assert rewards.shape == (2,) and np.isfinite(rewards).all() and not truncated.any()
    assert terminated.all() and infos["_metrics"].all()
    assert set(infos["metrics"]) >= {"eff", "gen", "spe"} and infos["metrics"]["eff"].shape == (2,)
    obs, rewards, *_ = vec.step(vec.action_space.sample())  # gymnasium's next-step autoreset
    assert (obs[:, -1] == 0).all() and not rewards.any()  # t / T = 0: a fresh episode in each copy

    again, _ = vec.reset(seed=7)
    np.testing.assert_array_equal(again[0], vec.reset(seed=7)[0][0])  # reproducible


def test_sb3_dummy_vec_env_seeds_each_copy():
    vec = DummyVecEnv([lambda: gym.make(COMPACT_ID, **SETUP) for _ in range(2)])
    vec.seed(3)
    obs = vec.reset()
    assert obs.shape == (2, *vec.observation_space.shape)
    assert episode_prompts(vec.envs[0]) == single_env_prompts(3)
    assert episode_prompts(vec.envs[1]) == single_env_prompts(4)
    for _ in range(2):
        obs, rewards, dones, infos = vec.step(np.stack([vec.action_space.sample() for _ in range(2)]))
    assert dones.all() and all({"eff", "gen", "spe"} <= set(info["metrics"]) for info in infos)
    assert all("terminal_observation" in info for info in infos)  # SB3 reset both copies itself
