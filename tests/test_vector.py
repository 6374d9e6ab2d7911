"""Vector environments: gymnasium's make_vec (sync and async, next-step autoreset) and SB3's DummyVecEnv,
seeded per sub-environment."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
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


CORE_ID = "rledit_env/LifelongEdit-v0"


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("env_id", [CORE_ID, COMPACT_ID])
def test_make_vec_autoresets_on_the_next_step_in_both_modes(env_id, mode):
    # the documented behaviour (docs/environment.md): gymnasium's next-step autoreset, in both modes
    vec = gym.make_vec(env_id, num_envs=2, vectorization_mode=mode, **SETUP)
    try:
        assert vec.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
        vec.reset(seed=0)
        for _ in range(SETUP["num_batches"]):
            obs, rewards, terminated, truncated, infos = vec.step(_zero_actions(vec))
        assert terminated.all() and not truncated.any() and infos["_metrics"].all()
        # the step after the last one resets each copy: its action is ignored, reward 0, t = 0 again
        obs, rewards, terminated, truncated, infos = vec.step(_zero_actions(vec))
        assert not rewards.any() and not terminated.any() and "metrics" not in infos
        assert (_steps(env_id, obs) == 0).all()
        obs, *_ = vec.step(_zero_actions(vec))  # then the new episode goes on
        assert (_steps(env_id, obs) == 1).all()
    finally:
        vec.close()


def _zero_actions(vec):
    """Actions that leave the weights as they are (a sampled one may exceed the core env's bounds)."""
    return zeros_like_space(vec.action_space)


def zeros_like_space(space):
    if isinstance(space, gym.spaces.Dict):
        return {key: zeros_like_space(sub) for key, sub in space.spaces.items()}
    return np.zeros(space.shape, dtype=space.dtype)


def _steps(env_id: str, obs) -> np.ndarray:
    """t, the number of batches already edited in each copy, from a batched observation."""
    if env_id == CORE_ID:
        return obs["step"][:, 0]
    return obs[:, -1] * SETUP["num_batches"]  # the compact observation ends with t / T
