"""StableEdit: its whitening, its warm-up on training edits, its edits, and its settings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import model_state
from single_thread import one_torch_thread  # noqa: F401  (autouse)

from agents import NoEdit, StableEdit, StableEditConfig, UltraEdit, UltraEditConfig, run_episode
from agents.running_stats import RunningCovariance
from agents.stableedit import StableNorm
from rledit_env.editable import EditableModel
from rledit_env.envs import LifelongEditEnv
from rledit_env.models import LoadedModel, load_model
from rledit_env.presets import ultraedit_modules
from rledit_env.tuned_settings import tuned_settings

# On tinyworld-tiny (down_proj of both layers, keys 256 wide) one batch of 8 edits goes from Eff 0 to 1
# at lr 3e-3 with alpha 10 (Spe 0.44; 1e-3: Eff 0.62, Spe 0.84). The split has 96 training edits.
LR = 3e-3


def config(**kwargs) -> StableEditConfig:
    return StableEditConfig(**{"lr": LR, "warmup_batches": 5, **kwargs})


@pytest.fixture(scope="module")
def loaded():
    """A private copy of the tiny model with StableEdit's (UltraEdit's) edit modules."""
    plain = load_model("tinyworld-tiny")
    model, tokenizer = plain.editable.model, plain.editable.tokenizer
    editable = EditableModel(model, tokenizer, ultraedit_modules(model.config))
    return LoadedModel(editable, plain.splits, plain.probe_texts)


@pytest.fixture
def make(loaded):
    envs = []

    def make_env(**kwargs) -> LifelongEditEnv:
        env = LifelongEditEnv(loaded, **{"num_batches": 4, "batch_size": 4, "score_reward": False, **kwargs})
        envs.append(env)
        return env

    yield make_env
    for env in envs:
        env.close()  # restores the original weights


def test_one_batch_raises_efficacy_well_above_no_edit(make):
    env = make(num_batches=1, batch_size=8)
    edited = run_episode(env, StableEdit(env, config(warmup_batches=10)), seed=0)["metrics"]
    env.close()
    env = make(num_batches=1, batch_size=8, action_type="shift")
    unedited = run_episode(env, NoEdit(env), seed=0)["metrics"]
    assert unedited["eff"] <= 0.1 and edited["eff"] >= 0.8
    assert edited["gen"] > unedited["gen"] + 0.5


# ------------------------------------------------------------------------------ whitening
def _gaussian_rows(rows: int, size: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(size, size, generator=generator, dtype=torch.float64)
    mean = torch.randn(size, generator=generator, dtype=torch.float64)
    return torch.randn(rows, size, generator=generator, dtype=torch.float64) @ mixing * 0.1 + mean


def test_the_running_covariance_and_its_whitening_match_a_hand_computation():
    d_in, d_out, rows = 3, 5, 40
    x = _gaussian_rows(rows, d_in + d_out)
    norm = StableNorm(d_in, d_out, config(eig_floor=1e-12))
    for chunk in x.split([7, 1, 20, 12]):  # batch after batch, as over an edit sequence
        norm.update(chunk)
    grads = x[:, d_in:].numpy()
    centred = grads - grads.mean(0)
    assert np.allclose(norm.cov.m2.numpy(), centred.T @ centred)
    # the public code's estimate C = m2 / (n - d_out - 1), whitened by its inverse square root
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / (rows - d_out - 1))
    by_hand = eigenvectors @ np.diag(eigenvalues**-0.5) @ eigenvectors.T
    assert norm.whitening and np.allclose(norm.whitener().numpy(), by_hand)
    out = norm(x.float()).double()
    keys_hat, grads_hat = out[:, :d_in].numpy(), out[:, d_in:].numpy()
    assert np.allclose(
        keys_hat,
        (x[:, :d_in].numpy() - x[:, :d_in].numpy().mean(0)) / x[:, :d_in].numpy().std(0, ddof=1),
        atol=1e-5,
    )
    assert np.allclose(grads_hat, centred @ by_hand, atol=1e-4)
    # on the rows it was estimated from, the whitened value gradients' covariance is the identity
    assert np.allclose(grads_hat.T @ grads_hat / (rows - d_out - 1), np.eye(d_out), atol=1e-4)


def test_whitening_waits_for_enough_rows_and_clamps_small_eigenvalues():
    d_in, d_out = 2, 4
    norm = StableNorm(d_in, d_out, config())
    x = _gaussian_rows(d_out + 1, d_in + d_out)
    norm.update(x)  # d_out + 1 rows: C = m2 / (n - d_out - 1) is not defined yet
    assert not norm.whitening
    assert torch.equal(norm(x.float()), norm.norm(x.float()))  # per-feature standardisation until then
    flat = x.clone()
    flat[:, d_in:] = flat[:, d_in : d_in + 1]  # value gradients of rank 1: three eigenvalues are 0
    norm = StableNorm(d_in, d_out, config(eig_floor=1e-2))
    norm.update(torch.cat([flat, flat + 1]))
    eigenvalues = torch.linalg.eigvalsh(norm.whitener())
    assert torch.isfinite(eigenvalues).all() and eigenvalues.max() <= 1e-2**-0.5 + 1e-9
    with_more = StableNorm(d_in, d_out, config(whiten_min_rows=50))
    with_more.update(x.repeat(4, 1))
    assert not with_more.whitening  # 20 rows < 50


def test_merging_statistics_is_folding_in_their_rows():
    x = _gaussian_rows(30, 6)
    whole, first, second = RunningCovariance(6), RunningCovariance(6), RunningCovariance(6)
    whole.update(x)
    first.update(x[:11])
    second.update(x[11:])
    first.merge(second)
    assert torch.allclose(first.m2, whole.m2) and torch.allclose(first.mean, whole.mean)
    assert first.count == whole.count == 30
    empty = StableNorm(2, 4, config())
    empty.merge(norm := _filled(StableNorm(2, 4, config()), x))
    assert torch.equal(empty.norm.mean, norm.norm.mean) and torch.equal(empty.cov.m2, norm.cov.m2)


def _filled(norm: StableNorm, x: torch.Tensor) -> StableNorm:
    norm.update(x)
    return norm


# ------------------------------------------------------------------------------ warm-up
def _records_key(records) -> set[tuple[str, str]]:
    return {(r.prompt, r.target_new) for r in records}


def test_the_warm_up_fills_the_statistics_from_training_edits_only_and_edits_nothing(make, loaded):
    env = make(num_batches=3, batch_size=4)
    before = model_state(env)
    agent = StableEdit(env, config(warmup_batches=6))
    assert all(torch.equal(before[k], v) for k, v in model_state(env).items())  # traced, nothing applied
    # the warm-up's statistics are exactly those of six batches of four training edits, traced unedited
    sampled = [r for batch in agent.warmup_records for r in batch]
    assert len(sampled) == 24 and _records_key(sampled) <= _records_key(loaded.splits["train"])
    assert not _records_key(sampled) & _records_key(loaded.splits["eval"])
    rows: dict[tuple[int, int], list[torch.Tensor]] = {shape: [] for shape in agent.groups}
    probe = LifelongEditEnv(loaded, split="train", num_batches=1, batch_size=4, score_reward=False)
    for batch in agent.warmup_records:
        obs, _ = probe.reset(options={"records": batch})
        real = obs["mask"].astype(bool)
        for shape, modules in agent.groups.items():
            rows[shape] += [
                torch.from_numpy(np.concatenate([obs["keys"][m], obs["value_grads"][m]], -1)[real])
                for m in modules
            ]
    for shape, stats in agent.warmup.items():
        expected = torch.cat(rows[shape]).double()
        assert int(stats.norm.count) == len(expected) == int(stats.cov.count)
        assert torch.allclose(stats.norm.mean, expected.mean(0))
        grads = expected[:, shape[0] :]
        assert torch.allclose(stats.cov.m2, (grads - grads.mean(0)).T @ (grads - grads.mean(0)))
    # folded in before the first edit; the evaluation's edits never reach the warm-up statistics
    warm = {shape: int(stats.norm.count) for shape, stats in agent.warmup.items()}
    obs, _ = env.reset(seed=0)
    agent.act(obs)
    real = int(obs["mask"].sum())
    for shape, norm in agent.norms.items():
        assert int(norm.norm.count) == warm[shape] + real * len(agent.groups[shape])
        assert norm.whitening  # the warm-up's rows are enough to whiten from the first edit on
    run_episode(env, agent, seed=1)
    assert {shape: int(stats.norm.count) for shape, stats in agent.warmup.items()} == warm


def test_reset_restores_the_warm_up_state_not_empty_statistics(make):
    env = make(num_batches=3, batch_size=3)
    agent = StableEdit(env, config())
    run_episode(env, agent, seed=0)
    agent.start_step(0)  # what act does first with an observation of a new episode
    for shape, norm in agent.norms.items():
        warm = agent.warmup[shape]
        assert torch.equal(norm.norm.count, warm.norm.count) and int(warm.norm.count) > 0
        assert torch.equal(norm.norm.mean, warm.norm.mean) and torch.equal(norm.norm.m2, warm.norm.m2)
        assert torch.equal(norm.cov.mean, warm.cov.mean) and torch.equal(norm.cov.m2, warm.cov.m2)
    # a second episode edits exactly as the first one did
    again = run_episode(env, agent, seed=0)["metrics"]
    fresh = run_episode(env, StableEdit(env, config()), seed=0)["metrics"]
    assert again == fresh


@pytest.mark.parametrize("position, step", [("middle", 2), ("end", 3), ("q1", 1), ("none", None)])
def test_a_later_warm_up_position_folds_the_warm_up_in_at_that_step(make, position, step):
    env = make(num_batches=4, batch_size=3)
    agent = StableEdit(env, config(warmup_position=position))
    assert agent.warmup_step == step and (step is None) == (not agent.warmup)
    obs, _ = env.reset(seed=0)
    for t in range(4):
        before = {shape: int(norm.norm.count) for shape, norm in agent.norms.items()} if t else {}
        action = agent.act(obs)
        for shape, norm in agent.norms.items():
            batch = int(obs["mask"].sum()) * len(agent.groups[shape])
            warm = int(agent.warmup[shape].norm.count) if t == step else 0
            assert int(norm.norm.count) - before.get(shape, 0) == batch + warm, (t, shape)
        obs, _, _, _, _ = env.step(action)


def test_without_warm_up_and_whitening_and_with_lambda_1_it_is_ultraedit_bitwise(make):
    env = make(num_batches=3, batch_size=3, obs_backend="torch")
    plain = config(warmup_position="none", whiten=False, log_lambda=0.0)
    stable, ultra = StableEdit(env, plain), UltraEdit(env, UltraEditConfig(lr=LR))
    obs, _ = env.reset(seed=2)
    done = False
    while not done:
        a, b = stable.act(obs), ultra.act(obs)
        assert all(torch.equal(a["values"][m], b["values"][m]) for m in a["values"])
        obs, _, done, _, _ = env.step(a)


# ------------------------------------------------------------------------------ runs and settings
def test_the_same_seed_gives_bitwise_the_same_metrics_and_the_model_back(make):
    env = make(num_batches=3, batch_size=3)
    before = model_state(env)
    runs = [run_episode(env, StableEdit(env, config(seed=4)), seed=3) for _ in range(2)]
    assert runs[0]["metrics"] == runs[1]["metrics"] and runs[0]["curve"] == runs[1]["curve"]
    env.close()
    assert all(torch.equal(before[k], v) for k, v in model_state(env).items())


def test_the_published_defaults():
    cfg = StableEditConfig()
    assert (cfg.lr, cfg.warmup_batches, cfg.warmup_position, cfg.whiten) == ("auto", 20, "start", True)
    assert StableEditConfig.AUTO_SETTINGS["lr"].published == 1e-6  # the paper models' lr (tuned_settings)
    assert tuned_settings("mistral-7b", ("stableedit",))["lr"] == 1e-6
    assert math.isclose(math.exp(cfg.log_lambda), 10.0) and cfg.eig_floor == 1e-6
    assert cfg.whiten_min_rows is None


def test_bad_settings_a_too_small_training_split_and_a_shift_environment_are_refused(make):
    bad_settings = [
        ({"lr": 0.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"log_lambda": float("inf")}, "log_lambda"),
        ({"warmup_batches": -1}, "warmup_batches"),
        ({"warmup_batches": 2.5}, "warmup_batches"),
        ({"warmup_position": "later"}, "warmup_position"),
        ({"whiten": "yes"}, "whiten"),
        ({"eig_floor": 0.0}, "eig_floor"),
        ({"eig_floor": float("inf")}, "eig_floor"),
        ({"whiten_min_rows": -3}, "whiten_min_rows"),
    ]
    for bad, field in bad_settings:
        with pytest.raises(ValueError, match=field):
            StableEditConfig(**bad)
    env = make(num_batches=1, batch_size=8)
    with pytest.raises(ValueError, match="warm-up on the training split.*lower warmup_batches"):
        StableEdit(env, config(warmup_batches=20))  # 160 training edits; the tiny world has 96
    with pytest.raises(ValueError, match="'values' interface"):
        StableEdit(make(action_type="shift"))
