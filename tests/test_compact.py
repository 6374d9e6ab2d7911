"""The compact interface: a Box observation and a Box action over LifelongEditEnv."""

from __future__ import annotations

import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from helpers import assert_same_state, model_state, tiny_env
from single_thread import one_torch_thread  # noqa: F401  (autouse)
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import rledit_env  # noqa: F401  (registers the environments)
from rledit_env import InvalidActionError
from rledit_env.wrappers import CompactConfig, CompactEditWrapper

COMPACT_ID = "rledit_env/LifelongEditCompact-v0"
TINY = {"model": "tinyworld-tiny", "probe_texts": []}


def compact_env(config: CompactConfig | None = None, **kwargs) -> CompactEditWrapper:
    kwargs = {"num_batches": 2, "batch_size": 3, "probe_texts": [], **kwargs}
    return CompactEditWrapper(tiny_env(**kwargs), config)


def test_gymnasium_check_env_passes_on_the_registered_env():
    env = gym.make(COMPACT_ID, num_batches=2, batch_size=3, **TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "different from the unwrapped version": it is a wrapper
        gym_check_env(env, skip_render_check=True)


def test_sb3_check_env_passes_on_the_registered_env():
    env = gym.make(COMPACT_ID, num_batches=2, batch_size=3, **TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # SB3's checker warns about anything it would not train well on
        sb3_check_env(env, warn=True)


@pytest.mark.slow
def test_make_with_no_arguments_gives_the_compact_tinyworld_env():
    env = gym.make(COMPACT_ID)
    core = env.unwrapped
    assert (core.num_batches, core.batch_size, core.action_type) == (20, 10, "values")
    assert env.action_space.shape == (11,)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert all(r.case_id.startswith("tinyworld-eval") for r in core.current_records)


def test_make_forwards_core_and_compact_arguments():
    env = gym.make(COMPACT_ID, num_batches=3, batch_size=4, projection_dim=5, **TINY)
    core = env.unwrapped
    assert (core.num_batches, core.batch_size, core.action_type) == (3, 4, "values")
    modules = len(core.module_names)
    assert env.observation_space.shape == (modules * (2 * 5 + 2 + 4) + 2,)
    assert env.action_space.shape == (5,)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)


def test_refuses_the_shift_interface():
    with pytest.raises(ValueError, match="action_type='values'"):
        CompactEditWrapper(tiny_env(action_type="shift"))
    with pytest.raises(ValueError, match="action_type='values'"):
        gym.make(COMPACT_ID, action_type="shift", **TINY)


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="projection_dim"):
        CompactConfig(projection_dim=0)
    with pytest.raises(ValueError, match="base_step"):
        CompactConfig(base_step=-1.0)
    with pytest.raises(ValueError, match="ridge_lambda > 0"):
        CompactEditWrapper(tiny_env(ridge_lambda=0.0))


def core_and_wrapper(config: CompactConfig | None = None, seed: int = 0):
    """A reset core env's observation and a wrapper over that env, to use the mappings directly."""
    core = tiny_env(num_batches=2, batch_size=3, probe_texts=[])
    core_obs, _ = core.reset(seed=seed)
    return core_obs, CompactEditWrapper(core, config)


def test_per_edit_gradient_norms_are_those_of_the_edits_gradients():
    core_obs, env = core_and_wrapper(seed=1)
    obs = env.observation(core_obs)
    n, p = env.batch_size, env.config.projection_dim
    mask = core_obs["mask"].astype(bool)
    edits = core_obs["edit_index"][mask]
    for j, name in enumerate(env.module_names):
        keys, grads = core_obs["keys"][name][mask], core_obs["value_grads"][name][mask]
        start = j * (2 * p + 2 + n) + 2 * p
        rms_key, rms_grad = obs[start], obs[start + 1]
        np.testing.assert_allclose(rms_key, np.log10(np.sqrt((keys**2).sum(1).mean())), rtol=1e-4)
        np.testing.assert_allclose(rms_grad, np.log10(np.sqrt((grads**2).sum(1).mean())), rtol=1e-4)
        for i in range(n):
            gradient = keys[edits == i].T.astype(np.float64) @ grads[edits == i]
            np.testing.assert_allclose(obs[start + 2 + i], np.log10(np.linalg.norm(gradient)), rtol=1e-4)
    assert obs[-1] == 0.0  # t / T at the start
    np.testing.assert_allclose(obs[-2], core_obs["edit_loss"][0], rtol=1e-6)


def test_torch_observations_give_the_same_features_and_values():
    numpy_obs, numpy_env = core_and_wrapper(seed=2)
    core = tiny_env(num_batches=2, batch_size=3, probe_texts=[], obs_backend="torch")
    torch_obs, _ = core.reset(seed=2)
    torch_env = CompactEditWrapper(core)
    np.testing.assert_allclose(torch_env.observation(torch_obs), numpy_env.observation(numpy_obs), rtol=1e-5)
    a = np.linspace(-1, 1, 4, dtype=np.float32)
    for name in torch_env.module_names:
        torch.testing.assert_close(
            torch_env.action(a, torch_obs)["values"][name], numpy_env.action(a, numpy_obs)["values"][name]
        )


def test_projections_are_fixed_by_their_seed():
    first, second = compact_env(), compact_env()
    other = compact_env(CompactConfig(projection_seed=1))
    a, b, c = (env.reset(seed=2)[0] for env in (first, second, other))
    np.testing.assert_array_equal(a, b)
    p, n = first.config.projection_dim, first.batch_size
    block = np.arange(len(a) - 2) % (2 * p + 2 + n)  # position inside each module's features
    projected = np.concatenate([block < 2 * p, [False, False]])
    assert not np.allclose(a[projected], c[projected])  # other projections
    np.testing.assert_allclose(a[~projected], c[~projected], rtol=1e-6)  # same norms, loss and step


def test_action_asks_each_edit_for_its_rms_output_change_along_its_gradient():
    core_obs, env = core_and_wrapper(CompactConfig(base_step=2.0))
    a = np.array([-1.0, 0.0, 0.5, -0.25], dtype=np.float32)
    action = env.action(a, core_obs)
    mask = core_obs["mask"].astype(bool)
    edits = core_obs["edit_index"]
    for name in env.module_names:
        values = action["values"][name].numpy()
        grads = core_obs["value_grads"][name]
        assert not values[~mask].any()  # padding rows stay zero
        for i in range(3):
            rows = edits == i
            rms = np.sqrt((values[rows] ** 2).sum(1).mean())
            np.testing.assert_allclose(rms, 2.0 * math.exp(math.log(100) * a[i]), rtol=1e-5)
            cosine = (values[rows] * grads[rows]).sum() / (
                np.linalg.norm(values[rows]) * np.linalg.norm(grads[rows])
            )
            np.testing.assert_allclose(cosine, -1.0, rtol=1e-5)
        log_lambda = float(action["log_lambda"][name])
        np.testing.assert_allclose(log_lambda, math.log(env.ridge_lambda) - 0.25 * math.log(100), rtol=1e-5)


def test_out_of_range_actions_are_clipped():
    core_obs, env = core_and_wrapper()
    big = env.action(np.full(4, 7.0, dtype=np.float32), core_obs)
    one = env.action(np.ones(4, dtype=np.float32), core_obs)
    for name in env.module_names:
        torch.testing.assert_close(big["values"][name], one["values"][name])


@pytest.mark.parametrize("bad", [np.zeros(3, np.float32), np.array([0, np.nan, 0, 0], np.float32)])
def test_bad_actions_are_refused_with_weights_unchanged(bad):
    env = compact_env()
    env.reset(seed=0)
    before = model_state(env.unwrapped)
    with pytest.raises(InvalidActionError, match="compact action"):
        env.step(bad)
    assert_same_state(before, model_state(env.unwrapped))


def test_bigger_steps_lower_the_edit_loss_more():
    losses = {}
    for step in (-1.0, 0.0):
        env = compact_env(num_batches=1, batch_size=4)
        env.reset(seed=5)
        _, _, terminated, _, info = env.step(np.array([step] * 4 + [0.0], dtype=np.float32))
        assert terminated
        losses[step] = info["losses"]["gen"]
    assert losses[0.0] < losses[-1.0] - 0.1


def test_reward_is_the_core_reward_times_reward_scale():
    rewards = []
    for scale in (1.0, 0.1):
        env = compact_env(CompactConfig(reward_scale=scale))
        env.reset(seed=4)
        rewards.append(env.step(np.zeros(4, dtype=np.float32))[1])
    np.testing.assert_allclose(rewards[1], 0.1 * rewards[0], rtol=1e-5)


def test_episode_runs_to_the_end_inside_the_space_with_metrics():
    env = compact_env()
    obs, _ = env.reset(seed=3)
    done, steps = False, 0
    while not done:
        obs, reward, done, truncated, info = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs) and np.isfinite(reward) and not truncated
        steps += 1
    assert steps == 2 and obs[-1] == 1.0
    assert {"eff", "gen", "spe"} <= set(info["metrics"])
