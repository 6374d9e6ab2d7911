"""LifelongEditEnv: the Gymnasium contract, the MDP, and refusal of bad actions."""

from __future__ import annotations

import dataclasses
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from helpers import TINY_MODELS, assert_same_state, gradient_action, model_state, tiny_env

import rledit_env  # noqa: F401  (registers the environments)
from rledit_env import EditableModel, InvalidActionError, LifelongEditEnv, RewardConfig
from rledit_env.models import LoadedModel


@pytest.mark.parametrize("score_reward", [True, False])
@pytest.mark.parametrize("action_type", ["values", "shift"])
def test_check_env_passes(action_type, score_reward):
    env = tiny_env(action_type=action_type, num_batches=3, batch_size=3, score_reward=score_reward)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unbounded Boxes are intended: updates have no natural range
        check_env(env, skip_render_check=True)


@pytest.mark.slow
def test_make_with_no_arguments_gives_a_tinyworld_episode():
    env = gym.make("rledit_env/LifelongEdit-v0")
    obs, info = env.reset(seed=0)
    assert env.unwrapped.num_batches == 20 and env.unwrapped.batch_size == 10
    assert all(r.case_id.startswith("tinyworld-eval") for r in env.unwrapped.current_records)
    assert obs["mask"].sum() > 0


def test_make_forwards_arguments():
    env = gym.make("rledit_env/LifelongEdit-v0", model="tinyworld-tiny", num_batches=2, batch_size=3)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert env.unwrapped.num_batches == 2


@pytest.mark.parametrize("name", TINY_MODELS)
def test_gradient_action_raises_efficacy_and_reward(name):
    """A hand-written gradient step (from the observed keys and value gradients) beats doing nothing."""
    results = {}
    for lr in (0.0, 1.0):
        env = tiny_env(name, action_type="shift", num_batches=3, batch_size=4)
        obs, _ = env.reset(seed=3)
        rewards = []
        done = False
        while not done:
            obs, reward, done, _, info = env.step(gradient_action(env, obs, lr))
            rewards.append(reward)
        results[lr] = (info["metrics"], rewards)
    (m0, r0), (m1, r1) = results[0.0], results[1.0]
    assert m1["eff"] > m0["eff"] + 0.2  # P(new) > P(true) for a fifth more of the edits
    # Token accuracy needs every answer token to become the argmax, which one plain step need not
    # achieve (P(new) can pass P(true) while a third answer stays on top): it must not fall.
    assert m1["eff_acc"] >= m0["eff_acc"]
    assert r1[0] > r0[0]  # the first step's reward: gen loss falls
    assert sum(r1) > sum(r0)


def test_values_interface_solves_the_ridge_problem():
    """Value differences pointing down the value gradient lower the edit loss through the env's solve."""
    env = tiny_env(action_type="values", num_batches=2, batch_size=4)
    obs, _ = env.reset(seed=1)
    zero = {"values": {m: np.zeros_like(obs["value_grads"][m]) for m in env.module_names}}
    loss_zero = float(env.candidate_losses(env.updates_from_action(zero))["gen"])
    action = {"values": {m: -5.0 * obs["value_grads"][m] * obs["mask"][:, None] for m in env.module_names}}
    loss_edit = float(env.candidate_losses(env.updates_from_action(action))["gen"])
    assert loss_edit < loss_zero - 1e-3
    # log_lambda takes effect: a huge ridge penalty gives an almost-zero update
    action["log_lambda"] = {m: np.array([9.0], dtype=np.float32) for m in env.module_names}
    tiny = env.updates_from_action(action)
    assert all(float(d.norm()) < 1e-2 for d in tiny.values())


def test_reset_after_50_steps_restores_weights_bitwise():
    env = tiny_env(
        action_type="shift",
        num_batches=50,
        batch_size=1,
        evaluate_at_end=False,
        reward={"backtrack_depth": 2},
    )
    before = model_state(env)
    obs, _ = env.reset(seed=0)
    for _ in range(50):
        obs, *_ = env.step(gradient_action(env, obs, 1.0))
    changed = any(not torch.equal(before[k], v) for k, v in env.editable.model.state_dict().items())
    assert changed
    env.reset(seed=1)
    assert_same_state(before, model_state(env))


def test_same_seed_same_episode_and_metrics():
    runs = []
    for _ in range(2):
        env = tiny_env(action_type="shift", num_batches=3, batch_size=3, metrics_every=1)
        obs, _ = env.reset(seed=7)
        episode = [[r.case_id for r in b] for b in env.episode]
        done = False
        while not done:
            obs, reward, done, _, info = env.step(gradient_action(env, obs, 1.0))
        runs.append((episode, info["curve"], reward))
    assert runs[0] == runs[1]
    other = tiny_env(num_batches=3, batch_size=3)
    other.reset(seed=8)
    assert [[r.case_id for r in b] for b in other.episode] != runs[0][0]


def test_reward_off_gives_the_same_weights_observations_and_metrics():
    runs = []
    for score_reward in (True, False):
        env = tiny_env(
            action_type="shift", num_batches=3, batch_size=3, metrics_every=1, score_reward=score_reward
        )
        obs, _ = env.reset(seed=3)
        observations, rewards, done = [obs], [], False
        while not done:
            obs, reward, done, _, info = env.step(gradient_action(env, obs, 1.0))
            observations.append(obs)
            rewards.append(reward)
        runs.append((observations, rewards, info, model_state(env)))
    (obs_on, rewards_on, info_on, state_on), (obs_off, rewards_off, info_off, state_off) = runs
    assert info_on["curve"] == info_off["curve"]  # every metric, bit for bit
    assert_same_state(state_on, state_off)
    for a, b in zip(obs_on, obs_off, strict=True):
        for m in a["keys"]:
            assert np.array_equal(a["keys"][m], b["keys"][m])
            assert np.array_equal(a["value_grads"][m], b["value_grads"][m])
    assert info_on["reward_scored"] and not info_off["reward_scored"]
    assert info_off["losses"] == {} and rewards_off == [0.0, 0.0, 0.0]
    assert all(r < 0 for r in rewards_on)
    with pytest.raises(ValueError, match="score_reward"):
        tiny_env(differentiable=True, score_reward=False)


def test_resume_from_progress_goes_on_to_the_uninterrupted_episode_and_refuses_another():
    env = tiny_env(action_type="shift", num_batches=4, batch_size=2, metrics_every=1)
    obs, _ = env.reset(seed=5)
    for _ in range(2):
        obs, *_ = env.step(gradient_action(env, obs, 1.0))
    progress = env.progress()
    while True:
        obs, _, done, _, info = env.step(gradient_action(env, obs, 1.0))
        if done:
            break
    whole, final_state = info["curve"], model_state(env)

    env.reset(seed=5)
    obs = env.resume(progress)
    assert progress["step"] == 2 and len(progress["curve"]) == 2
    for _ in range(2):
        obs, _, done, _, info = env.step(gradient_action(env, obs, 1.0))
    assert done and info["curve"] == whole  # bit for bit
    assert_same_state(final_state, model_state(env))

    env.reset(seed=6)
    unedited = model_state(env)
    with pytest.raises(ValueError, match="another episode"):
        env.resume(progress)
    env.reset(seed=5)
    bad = {**progress, "weights": {m: w[:1] for m, w in progress["weights"].items()}}
    with pytest.raises(ValueError, match="does not fit"):
        env.resume(bad)
    with pytest.raises(ValueError, match="step"):
        env.resume({**progress, "step": 4})
    assert_same_state(unedited, model_state(env))  # a refused progress changes no weight


def test_metrics_curve_every_k_steps_and_at_the_end():
    env = tiny_env(action_type="shift", num_batches=4, batch_size=2, metrics_every=2)
    obs, _ = env.reset(seed=0)
    infos = []
    for _ in range(4):
        obs, _, done, _, info = env.step(gradient_action(env, obs, 1.0))
        infos.append(info)
    assert ["metrics" in i for i in infos] == [False, True, False, True]
    curve = infos[-1]["curve"]
    assert [c["step"] for c in curve] == [2, 4] and [c["edits"] for c in curve] == [4, 8]
    for key in (
        "eff",
        "gen",
        "spe",
        "eff_acc",
        "gen_acc",
        "spe_acc",
        "eff_prob",
        "gen_prob",
        "spe_prob",
        "ppl",
    ):
        assert key in curve[-1]
    assert all(0 <= curve[-1][k] <= 1 for k in ("eff", "gen", "spe", "spe_acc"))


def test_unedited_model_has_perfect_token_specificity():
    env = tiny_env(action_type="shift", num_batches=2, batch_size=3)
    obs, _ = env.reset(seed=0)
    for _ in range(2):
        obs, _, done, _, info = env.step(gradient_action(env, obs, 0.0))
    assert info["metrics"]["spe_agree"] == 1.0
    assert info["metrics"]["spe_acc"] > 0.9  # against the true answers, which the model knows
    assert info["metrics"]["eff_prob"] < 0.5  # TinyWorld's model knows the true answers


def _bad_shift_actions(env, obs):
    good = gradient_action(env, obs, 1.0)
    first = env.module_names[0]
    nan = dict(good)
    nan[first] = good[first].copy()
    nan[first][0, 0] = np.nan
    inf = dict(good)
    inf[first] = good[first].copy()
    inf[first][1, 1] = np.inf
    return {
        "missing module": {k: v for k, v in good.items() if k != first},
        "extra module": {**good, "model.lm_head": good[first]},
        "wrong shape": {**good, first: good[first].T},
        "integer dtype": {**good, first: good[first].astype(np.int64)},
        "not an array": {**good, first: good[first].tolist()},
        "NaN": nan,
        "inf": inf,
        "over the norm bound": {**good, first: good[first] * 0 + 1e3},
        "not a dict": [good[first]],
        "None": None,
        "None for a module": {**good, first: None},
        "complex": {**good, first: good[first].astype(np.complex64)},
        "float64 beyond float32": {**good, first: good[first].astype(np.float64) * 0 + 1e300},
    }


@pytest.mark.parametrize(
    "kind",
    [
        "missing module",
        "extra module",
        "wrong shape",
        "integer dtype",
        "not an array",
        "NaN",
        "inf",
        "over the norm bound",
        "not a dict",
        "None",
        "None for a module",
        "complex",
        "float64 beyond float32",
    ],
)
def test_bad_shift_action_is_refused_with_weights_unchanged(kind):
    env = tiny_env(action_type="shift", max_update_norm=100.0)
    obs, _ = env.reset(seed=0)
    before = model_state(env)
    with pytest.raises(InvalidActionError):
        env.step(_bad_shift_actions(env, obs)[kind])
    assert_same_state(before, model_state(env))
    env.step(gradient_action(env, obs, 0.1))  # the episode goes on after a refusal


def test_bad_values_action_is_refused_with_weights_unchanged():
    env = tiny_env(action_type="values")
    obs, _ = env.reset(seed=0)
    before = model_state(env)
    values = {m: np.zeros_like(v) for m, v in obs["value_grads"].items()}
    first = env.module_names[0]
    bad = [
        values,  # not wrapped in {"values": ...}
        {"values": values, "extra": 1},
        {"values": {**values, first: values[first][:-1]}},
        {"values": values, "log_lambda": {m: np.array([np.nan], dtype=np.float32) for m in values}},
        {"values": values, "log_lambda": {first: np.zeros(1, dtype=np.float32)}},
        {"values": values, "log_lambda": {m: np.array([np.inf], dtype=np.float32) for m in values}},
        {"values": None},
        {"values": {**values, first: values[first].tolist()}},
        {"values": {**values, first: values[first].astype(np.complex64)}},
        None,
    ]
    for action in bad:
        with pytest.raises(InvalidActionError):
            env.step(action)
    assert_same_state(before, model_state(env))


def test_finite_actions_whose_update_or_weights_overflow_are_refused_with_weights_unchanged():
    env = tiny_env(action_type="shift", max_update_norm=None)
    obs, _ = env.reset(seed=0)
    first = env.module_names[0]
    zeros = {m: np.zeros(shape, dtype=np.float32) for m, shape in env.editable.shapes.items()}
    before = model_state(env)
    beyond_fp32 = {**zeros, first: np.full(env.editable.shapes[first], 1e300)}  # finite float64
    with pytest.raises(InvalidActionError, match="float32's range"):
        env.step(beyond_fp32)
    assert_same_state(before, model_state(env))
    huge = {**zeros, first: np.full(env.editable.shapes[first], 3e38, dtype=np.float32)}
    env.step(huge)  # finite weights of huge magnitude: accepted
    before = model_state(env)
    with pytest.raises(InvalidActionError, match=f"update of '{first}' would make its weight NaN or inf"):
        env.step(huge)  # 3e38 + 3e38 overflows float32
    assert_same_state(before, model_state(env))

    values_env = tiny_env(action_type="values", max_update_norm=None)
    obs, _ = values_env.reset(seed=0)
    before = model_state(values_env)
    values = {m: np.full_like(v, 3e38) for m, v in obs["value_grads"].items()}
    with pytest.raises(InvalidActionError, match="ridge solve"):
        values_env.step({"values": values})  # finite values, but U^T V overflows in the solve
    assert_same_state(before, model_state(values_env))


def test_step_before_reset_and_after_end_raise():
    env = tiny_env(action_type="shift", num_batches=1, batch_size=2)
    with pytest.raises(RuntimeError, match="reset"):
        env.step({})
    obs, _ = env.reset(seed=0)
    env.step(gradient_action(env, obs, 0.0))
    with pytest.raises(RuntimeError, match="ended"):
        env.step(gradient_action(env, obs, 0.0))


def test_differentiable_loss_matches_finite_differences():
    env = tiny_env(
        action_type="shift", differentiable=True, num_batches=3, batch_size=3, reward={"backtrack_depth": 2}
    )
    obs, _ = env.reset(seed=0)
    obs, *_ = env.step(gradient_action(env, obs, 1.0))  # so that backtracking has an earlier batch
    base = {m: torch.tensor(v) for m, v in gradient_action(env, obs, 0.5).items()}
    direction = {
        m: torch.randn_like(v, generator=torch.Generator().manual_seed(0)) * 0.05 for m, v in base.items()
    }

    def total(eps: float) -> float:
        with torch.no_grad():
            return float(env.candidate_losses({m: base[m] + eps * direction[m] for m in base})["total"])

    eps = 1e-2
    numeric = (total(eps) - total(-eps)) / (2 * eps)
    action = {m: v.clone().requires_grad_(True) for m, v in base.items()}
    _, reward, _, _, info = env.step(action)
    info["loss"].backward()
    analytic = sum(float((action[m].grad * direction[m]).sum()) for m in base)
    assert info["loss"].requires_grad and reward == pytest.approx(-float(info["loss"].detach()))
    assert analytic == pytest.approx(numeric, rel=2e-2, abs=1e-4)
    assert abs(analytic) > 1e-3  # the check is not vacuous


def test_reward_terms_follow_the_formula():
    env = tiny_env(
        action_type="shift",
        num_batches=3,
        batch_size=2,
        reward=RewardConfig(backtrack_depth=2, decay=0.5, loc_coef=0.6),
    )
    obs, _ = env.reset(seed=0)
    obs, r1, *_, info1 = env.step(gradient_action(env, obs, 1.0))
    losses = info1["losses"]
    assert losses["backtrack"] == 0.0  # nothing to look back on at the first step
    expected = losses["gen"] + 0.6 * losses["loc"] + 1e-4 * losses["reg"]
    assert -r1 == pytest.approx(expected, rel=1e-5)
    obs, r2, *_, info2 = env.step(gradient_action(env, obs, 1.0))
    assert info2["losses"]["backtrack"] > 0.0
    assert -r2 == pytest.approx(
        info2["losses"]["gen"]
        + 0.6 * info2["losses"]["loc"]
        + info2["losses"]["backtrack"]
        + 1e-4 * info2["losses"]["reg"],
        rel=1e-5,
    )


def test_torch_observations_stay_on_the_model_device():
    env = tiny_env(obs_backend="torch")
    obs, _ = env.reset(seed=0)
    assert isinstance(obs["keys"][env.module_names[0]], torch.Tensor)
    assert obs["mask"].device == env.editable.device


def test_pinned_episode_by_indices_and_records():
    env = tiny_env(num_batches=2, batch_size=2)
    env.reset(options={"indices": [3, 1, 4, 0]})
    assert [r for b in env.episode for r in b] == [env.records[i] for i in (3, 1, 4, 0)]
    records = env.records[5:9]
    env.reset(options={"records": records})
    assert [r for b in env.episode for r in b] == records
    with pytest.raises(ValueError, match="T x n"):
        env.reset(options={"records": records[:3]})


def _tiny_splits():
    from helpers import _loaded

    return _loaded("tinyworld-tiny").splits


def _naive_terms(env: LifelongEditEnv, t: int, refs: dict) -> tuple[float, float, float]:
    """gen, loc and backtrack of step t scored one pass per batch and prompt kind, in row order (the
    reference for the packed window), at the current weights."""
    cfg = env.reward_config
    per_batch = {}
    with torch.no_grad():
        for b in range(t, max(t - cfg.backtrack_depth, -1), -1):
            batch = env._batches[b]
            gen = float(env.editable.target_logits(batch.gen.batch).nll().mean())
            if not len(batch.loc):  # a batch without locality prompts has no locality term
                per_batch[b] = (gen, 0.0)
                continue
            target = env.editable.target_logits(batch.loc.batch)
            logprobs = torch.log_softmax(target.logits, -1)
            kl = (refs[b].exp() * (refs[b] - logprobs)).sum(-1)
            loc = float(target.per_row_mean(kl).mean())
            per_batch[b] = (gen, loc)
    backtrack = sum(
        cfg.decay ** (t - b) * (gen + cfg.loc_coef * loc) for b, (gen, loc) in per_batch.items() if b != t
    )
    return per_batch[t][0], per_batch[t][1], backtrack


@pytest.mark.parametrize("edit_layer", [0, 1])
@pytest.mark.parametrize("differentiable", [False, True])
@pytest.mark.parametrize("without_loc", [(), (1,)])
def test_packed_window_scoring_gives_the_losses_of_one_pass_per_batch_and_kind(
    differentiable, edit_layer, without_loc
):
    # edit_layer 1: the reward's passes start at layer 1 from layer 0's cached output (frozen_prefix)
    loaded = tiny_env().editable  # the shared tiny model, restored
    modules = [f"model.layers.{edit_layer}.mlp.gate_proj", f"model.layers.{edit_layer}.mlp.up_proj"]
    editable = EditableModel(loaded.model, loaded.tokenizer, modules)
    assert editable.frozen_depth == edit_layer
    env = LifelongEditEnv(
        LoadedModel(editable, _tiny_splits()),
        action_type="shift",
        num_batches=4,
        batch_size=3,
        differentiable=differentiable,
    )
    env.editable.tokens_per_pass = 40  # several packed passes, rows regrouped by length
    records = [  # batches listed in without_loc carry no locality prompts
        dataclasses.replace(r, locality_prompts=(), locality_answers=()) if i // 3 in without_loc else r
        for i, r in enumerate(env.records[:12])
    ]
    obs, _ = env.reset(options={"records": records})
    assert [len(b.loc) == 0 for b in env._batches] == [b in without_loc for b in range(4)]
    for t in range(4):
        with torch.no_grad():
            refs = env._reward.references(t)  # at theta_{t-1}, before the step
        obs, _, _, _, info = env.step(gradient_action(env, obs, 1.0))
        gen, loc, backtrack = _naive_terms(env, t, refs)  # at theta_t, after it
        assert info["losses"]["gen"] == pytest.approx(gen, rel=1e-4, abs=1e-6)
        assert info["losses"]["loc"] == pytest.approx(loc, rel=1e-3, abs=1e-6)
        assert info["losses"]["backtrack"] == pytest.approx(backtrack, rel=1e-4, abs=1e-6)
    assert backtrack > 0 and loc > 0  # not vacuous
