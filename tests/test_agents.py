"""The editors as agents: Gymnasium loop, checkpoints, and that the hypernetwork editors really learn."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from helpers import model_state, tiny_env
from single_thread import one_torch_thread  # noqa: F401  (autouse)

from agents import (
    MALMEN,
    MEND,
    Callback,
    CheckpointError,
    FineTune,
    FineTuneConfig,
    MALMENConfig,
    MENDConfig,
    NoEdit,
    RLEdit,
    RLEditConfig,
    run_episode,
)
from agents.checkpoint import read_checkpoint, write_checkpoint
from agents.hypernetwork import HyperNetwork, RunningNorm, learning_curve_is_flat
from rledit_env import EditableModel, LifelongEditEnv
from rledit_env.models import LoadedModel

# Small but real: the tiny model's modules are (64, 256), so rank 32 is a true low-rank block.
SMALL = {"rank": 32, "num_blocks": 2, "init_lr": 1e-3, "meta_lr": 1e-4}
AGENTS = {
    "noedit": (NoEdit, lambda: None),
    "finetune": (FineTune, lambda: FineTuneConfig(lr=3e-3, steps=3)),
    "mend": (MEND, lambda: MENDConfig(**SMALL)),
    "malmen": (MALMEN, lambda: MALMENConfig(**SMALL)),
    "rledit": (RLEdit, lambda: RLEditConfig(**SMALL, train_num_batches=2)),
}


def make(name: str, **env_kwargs):
    cls, config = AGENTS[name]
    env = tiny_env(action_type=cls.action_type, **env_kwargs)
    return env, cls(env, config())


@pytest.mark.parametrize("name", list(AGENTS))
def test_agent_completes_an_episode_in_the_plain_gym_loop(name):
    env, agent = make(name, num_batches=3, batch_size=3)
    before = model_state(env)
    obs, info = env.reset(seed=0)
    steps, done = 0, False
    while not done:
        action = agent.act(obs)
        leaves = action["values"].values() if "values" in action else action.values()
        assert all(isinstance(a, np.ndarray) for a in leaves)  # numpy observations get numpy actions
        obs, reward, terminated, truncated, info = env.step(action)
        assert math.isfinite(reward)
        steps, done = steps + 1, terminated or truncated
    assert steps == 3 and {"eff", "gen", "spe"} <= set(info["metrics"])
    changed = any(not torch.equal(before[k], v) for k, v in model_state(env).items())
    assert changed == (name != "noedit")


@pytest.mark.parametrize("name", ["mend", "malmen", "rledit", "finetune", "noedit"])
def test_save_and_load_give_bitwise_identical_actions(name, tmp_path):
    env, agent = make(name, obs_backend="torch")
    agent.learn(1, progress_bar=False)
    path = tmp_path / f"{name}.safetensors"
    agent.save(path)
    loaded = type(agent).load(path, env)
    assert loaded.config == agent.config
    obs, _ = env.reset(seed=3)
    for _ in range(2):  # twice: the normaliser's statistics move with each act, identically in both
        a, b = agent.act(obs), loaded.act(obs)
        flat_a, flat_b = _leaves(a), _leaves(b)
        assert flat_a.keys() == flat_b.keys()
        assert all(torch.equal(flat_a[k], flat_b[k]) for k in flat_a)
        obs, *_ = env.step(a)


def test_a_checkpoint_for_other_edit_modules_or_agents_or_a_damaged_file_is_refused(tmp_path):
    env, agent = make("malmen")
    path = tmp_path / "malmen.safetensors"
    agent.save(path)
    editable = env.unwrapped.editable
    other_modules = EditableModel(editable.model, editable.tokenizer, ["model.layers.1.mlp.down_proj"])
    other = LifelongEditEnv(LoadedModel(other_modules, env.unwrapped.splits), num_batches=2, batch_size=2)
    with pytest.raises(CheckpointError, match="modules"):
        MALMEN.load(path, other)
    with pytest.raises(CheckpointError, match="MALMEN checkpoint, not RLEdit"):
        RLEdit.load(path, env)
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        MALMEN.load(damaged, env)
    payload = read_checkpoint(path)
    del payload["state"]["net"]["lr"]
    write_checkpoint(path, payload)
    with pytest.raises(CheckpointError, match="does not fit"):
        MALMEN.load(path, env)


def _leaves(action) -> dict[str, torch.Tensor]:
    if "values" in action:
        return {f"{k}/{m}": v for k in action for m, v in action[k].items()}
    return dict(action)


def _mean_return(agent, env, seeds) -> float:
    return float(np.mean([run_episode(env, agent, seed=s)["return"] for s in seeds]))


def test_rledit_training_lowers_its_training_loss():
    env, agent = make("rledit", num_batches=3, batch_size=4)
    # The training objective, measured on fixed training episodes: -return of the RLEdit reward.
    probe = tiny_env(split="train", num_batches=3, batch_size=4, evaluate_at_end=False, probe_texts=[])
    seeds = [101, 102, 103]
    before = _mean_return(agent, probe, seeds)
    agent.learn(12, progress_bar=False)
    after = _mean_return(agent, probe, seeds)
    assert len(agent.training_log) == 12 and all(math.isfinite(e["loss"]) for e in agent.training_log)
    assert -after < 0.8 * -before, (before, after)


def test_rledit_reward_gradient_reaches_every_hypernetwork_parameter():
    env, agent = make("rledit", num_batches=2, batch_size=3)
    # At the identity start B = 0, which gates the gradient of A (and of the scale, whose input is 0);
    # one optimiser step makes B non-zero, after which every parameter must get a gradient.
    agent.learn(1, progress_bar=False)
    train = agent.training_env(None, num_batches=2, differentiable=True)
    obs, _ = train.reset(seed=7)
    _, _, _, _, info = train.step(agent.policy(obs, update_stats=False))
    info["loss"].backward()
    for name, param in agent.net.named_parameters():
        assert param.grad is not None and bool(param.grad.abs().sum() > 0), name


@pytest.mark.parametrize("name", ["malmen", "mend", "rledit"])
def test_training_leaves_the_model_unchanged_and_logs_and_stops_on_request(name):
    env, agent = make(name)
    before = model_state(env)

    class StopAfterTwo(Callback):
        def on_episode_end(self, agent, episode, logs):
            return episode < 1

    agent.learn(5, callback=StopAfterTwo(), progress_bar=False)
    assert [e["episode"] for e in agent.training_log] == [0, 1]
    assert all(math.isfinite(e["loss"]) and e["grad_norm"] > 0 for e in agent.training_log)
    after = model_state(env)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_learning_curve_is_flat_when_the_last_k_losses_stopped_falling():
    assert not learning_curve_is_flat([5.0, 4.0, 3.0], k=2, tolerance=0.01)  # fewer than 2k losses
    assert not learning_curve_is_flat([5.0, 4.0, 3.0, 2.0], k=2, tolerance=0.01)  # 4.5 -> 2.5
    assert learning_curve_is_flat([3.0, 2.0, 2.6, 2.4], k=2, tolerance=0.01)  # 2.5 -> 2.5
    assert learning_curve_is_flat([3.0, 2.0, 2.0, 2.95], k=2, tolerance=0.01)  # rising: flat too
    assert not learning_curve_is_flat([3.0, 2.0, 2.0, 2.4], k=2, tolerance=0.01)  # 2.5 -> 2.2: -12%
    assert learning_curve_is_flat([3.0, 2.0, 2.0, 2.4], k=2, tolerance=0.2)  # less than 20% is flat


@pytest.mark.parametrize("name", ["malmen", "rledit"])
def test_training_stops_when_its_learning_curve_is_flat(name):
    cls, config = AGENTS[name]
    env = tiny_env(action_type=cls.action_type)
    # a tolerance no loss can fall by (-100%) makes the curve flat as soon as there are 2k episodes
    agent = cls(env, dataclasses.replace(config(), stop_when_flat=2, flat_tolerance=1.5))
    agent.learn(10, progress_bar=False)
    assert len(agent.training_log) == 4
    agent = cls(env, dataclasses.replace(config(), stop_when_flat=2, flat_tolerance=-10.0))  # never flat
    agent.learn(5, progress_bar=False)
    assert len(agent.training_log) == 5
    with pytest.raises(ValueError, match="stop_when_flat"):
        cls.Config(stop_when_flat=0)


def test_malmen_values_are_zero_on_padding_and_the_normaliser_counts_real_tokens():
    env, agent = make("malmen", obs_backend="torch")
    obs, _ = env.reset(seed=0)
    mask = obs["mask"].bool()
    assert not mask.all()  # the batch has padding rows
    action = agent.act(obs)
    for values in action["values"].values():
        assert torch.all(values[~mask] == 0) and bool(values[mask].abs().sum() > 0)
    modules_per_net = {k: len(v) for k, v in agent.net.groups.items()}
    for key, net in agent.net.nets.items():
        assert int(net.norm.count) == modules_per_net[key] * int(mask.sum())


def test_hypernetwork_starts_as_the_identity():
    shapes = {"a": (6, 10), "b": (6, 10), "c": (4, 3)}
    net = HyperNetwork(shapes, rank=8, num_blocks=3, init_lr=1e-6, seed=0)
    assert set(net.groups) == {"6x10", "4x3"} and net.groups["6x10"] == ["a", "b"]
    keys = {m: torch.randn(5, d_in) for m, (d_in, _) in shapes.items()}
    grads = {m: torch.randn(5, d_out) for m, (_, d_out) in shapes.items()}
    out = net(keys, grads, torch.ones(5), update_stats=False)
    for m in shapes:
        assert torch.equal(out[m][0], keys[m]) and torch.equal(out[m][1], grads[m])


def test_running_norm_matches_the_statistics_of_all_rows_seen():
    norm = RunningNorm(3)
    parts = [torch.randn(n, 3) * 5 + 2 for n in (1, 7, 4)]
    for part in parts:
        norm.update(part)
    rows = torch.cat(parts)
    expected = (rows - rows.mean(0)) / rows.std(0)
    assert torch.allclose(norm(rows), expected, atol=1e-5)


def test_finetune_descends_its_objective_from_the_observed_gradient_within_the_norm_bound():
    env, _ = make("finetune", obs_backend="torch")
    obs, _ = env.reset(seed=0)
    core = env.unwrapped
    objective = FineTune(env, FineTuneConfig())._objective()
    zeros = {m: torch.zeros(s, requires_grad=True) for m, s in core.editable.shapes.items()}
    grads = torch.autograd.grad(objective(zeros), list(zeros.values()))
    for m, grad in zip(zeros, grads, strict=True):
        # The observation's gradient counts the answer tokens' positions only (as MALMEN's tracer does);
        # it is nearly the whole gradient of the objective, in the same (d_in, d_out) layout.
        observed = obs["keys"][m].T @ obs["value_grads"][m]
        assert torch.nn.functional.cosine_similarity(observed.flatten(), grad.flatten(), 0) > 0.8
    lr = 1e-3
    one_step = FineTune(env, FineTuneConfig(lr=lr, steps=1)).act(obs)
    for m, delta in one_step.items():  # Adam's first step is -lr * g / (|g| + eps), g the observed gradient
        observed = obs["keys"][m].T @ obs["value_grads"][m]
        assert torch.allclose(delta, -lr * observed / (observed.abs() + 1e-8), atol=lr * 1e-4)
    with torch.no_grad():
        losses = [float(objective(FineTune(env, FineTuneConfig(lr=lr, steps=k)).act(obs))) for k in (1, 5)]
    assert losses[1] < losses[0] < float(obs["edit_loss"])
    bounded = FineTune(env, FineTuneConfig(lr=1e-1, steps=3, max_norm=0.5)).act(obs)
    assert all(float(d.norm()) <= 0.5 + 1e-6 for d in bounded.values())
    with pytest.raises(ValueError, match="objective"):
        FineTuneConfig(objective="paraphrases")


def test_training_after_an_episode_starts_from_the_unedited_model_and_gives_the_edits_back():
    env, first = make("malmen", num_batches=2, batch_size=3)
    first.learn(2, progress_bar=False)
    second = MALMEN(env, first.config)
    run_episode(env, MALMEN(env, first.config), seed=0)  # leaves the shared model edited
    edited = model_state(env)
    second.learn(2, progress_bar=False)
    # the same network on the same training episodes from the same weights: the same losses
    assert [e["loss"] for e in second.training_log] == [e["loss"] for e in first.training_log]
    after = model_state(env)
    assert all(torch.equal(edited[k], after[k]) for k in edited)
