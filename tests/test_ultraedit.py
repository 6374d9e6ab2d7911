"""UltraEdit: its value formula, its lifelong normaliser, its edits, and its edit modules per architecture."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import model_state
from single_thread import one_torch_thread  # noqa: F401  (autouse)

from agents import NoEdit, UltraEdit, UltraEditConfig, run_episode
from agents.hypernetwork import EPS
from rledit_env.editable import EditableModel
from rledit_env.envs import LifelongEditEnv
from rledit_env.models import LoadedModel, load_model
from rledit_env.presets import ultraedit_modules

# On tinyworld-tiny (UltraEdit edits its two down_proj, keys of width 256) one batch of 8 edits goes from
# Eff 0 to 1 at lr 5e-4, with Spe 0.78 (0.38 at 1e-3).
LR = 5e-4


@pytest.fixture(scope="module")
def loaded():
    """A private copy of the tiny model with UltraEdit's edit modules (other tests share theirs)."""
    plain = load_model("tinyworld-tiny")
    model, tokenizer = plain.editable.model, plain.editable.tokenizer
    editable = EditableModel(model, tokenizer, ultraedit_modules(model.config))
    return LoadedModel(editable, plain.splits, plain.probe_texts)


@pytest.fixture
def make(loaded):
    envs = []

    def make_env(**kwargs) -> LifelongEditEnv:
        env = LifelongEditEnv(loaded, **{"num_batches": 4, "batch_size": 4, **kwargs})
        envs.append(env)
        return env

    yield make_env
    for env in envs:
        env.close()  # restores the original weights


def test_one_batch_raises_efficacy_well_above_no_edit(make):
    env = make(num_batches=1, batch_size=8)
    edited = run_episode(env, UltraEdit(env, UltraEditConfig(lr=LR)), seed=0)["metrics"]
    env.close()  # the model back as it was, for the unedited run
    env = make(num_batches=1, batch_size=8, action_type="shift")
    unedited = run_episode(env, NoEdit(env), seed=0)["metrics"]
    assert unedited["eff"] <= 0.1 and edited["eff"] >= 0.8
    assert edited["gen"] > unedited["gen"] + 0.5


def test_values_follow_the_formula_on_the_first_batch_and_are_zero_on_padding(make):
    env = make(obs_backend="torch")
    agent = UltraEdit(env, UltraEditConfig(lr=LR))
    obs, _ = env.reset(seed=0)
    mask = obs["mask"].bool()
    assert not mask.all()  # the batch has padding rows
    action = agent.act(obs)
    for shape, modules in agent.groups.items():
        # the first batch is normalised by its own statistics: every real token of the shape's modules
        rows = torch.cat([torch.cat([obs["keys"][m], obs["value_grads"][m]], -1)[mask] for m in modules])
        mean, std = rows.double().mean(0), rows.double().std(0) + EPS  # RunningNorm's guard against 0
        for m in modules:
            x = (torch.cat([obs["keys"][m], obs["value_grads"][m]], -1)[mask].double() - mean) / std
            keys_hat, grads_hat = x.split(list(shape), -1)
            expected = -LR * keys_hat.pow(2).sum(-1, keepdim=True) * grads_hat
            assert torch.allclose(action["values"][m][mask].double(), expected, rtol=1e-4, atol=1e-9)
            assert torch.all(action["values"][m][~mask] == 0)
            assert action["log_lambda"][m].tolist() == [0.0]  # lambda = 1


def test_the_normaliser_accumulates_over_an_episode_and_reset_starts_it_afresh(make):
    env = make(num_batches=3, batch_size=3)
    agent = UltraEdit(env, UltraEditConfig(lr=LR))
    obs, _ = env.reset(seed=0)
    seen: dict[tuple[int, int], list[np.ndarray]] = {shape: [] for shape in agent.groups}
    done = False
    while not done:
        for shape, modules in agent.groups.items():
            real = obs["mask"].astype(bool)
            seen[shape] += [
                np.concatenate([obs["keys"][m], obs["value_grads"][m]], -1)[real] for m in modules
            ]
        obs, _, done, _, _ = env.step(agent.act(obs))
        for shape, norm in agent.norms.items():
            rows = np.concatenate(seen[shape])
            assert int(norm.count) == len(rows)  # every batch so far, never reset within the episode
            assert np.allclose(norm.mean.numpy(), rows.mean(0, dtype=np.float64), atol=1e-6)
    assert len(seen[next(iter(seen))]) == 3 * len(next(iter(agent.groups.values())))
    obs, _ = env.reset(seed=1)
    agent.act(obs)
    real = int(obs["mask"].sum())
    for shape, norm in agent.norms.items():
        assert int(norm.count) == real * len(agent.groups[shape])  # only the new episode's first batch


def test_the_same_seed_gives_bitwise_the_same_metrics_and_the_model_back(make):
    env = make(num_batches=3, batch_size=3)
    before = model_state(env)
    runs = [run_episode(env, UltraEdit(env, UltraEditConfig(lr=LR)), seed=3) for _ in range(2)]
    assert runs[0]["metrics"] == runs[1]["metrics"] and runs[0]["curve"] == runs[1]["curve"]
    env.close()
    assert all(torch.equal(before[k], v) for k, v in model_state(env).items())


def test_numpy_and_torch_observations_give_the_same_edits(make):
    metrics = {}
    for backend, array_type in (("numpy", np.ndarray), ("torch", torch.Tensor)):
        env = make(num_batches=2, batch_size=3, obs_backend=backend)
        agent = UltraEdit(env, UltraEditConfig(lr=LR))
        obs, _ = env.reset(seed=0)
        action = agent.act(obs)
        assert all(isinstance(v, array_type) for v in action["values"].values())
        assert all(isinstance(v, array_type) for v in action["log_lambda"].values())
        metrics[backend] = run_episode(env, agent, seed=0)["metrics"]
        env.close()  # the next backend starts from the unedited model
    assert metrics["numpy"] == metrics["torch"]


def test_bad_settings_and_a_shift_environment_are_refused(make):
    for bad in ({"lr": 0.0}, {"lr": -1e-6}, {"lr": float("nan")}, {"log_lambda": float("inf")}):
        with pytest.raises(ValueError, match="lr|log_lambda"):
            UltraEditConfig(**bad)
    with pytest.raises(ValueError, match="'values' interface"):
        UltraEdit(make(action_type="shift"))


def _config(model_type: str, layers: int) -> SimpleNamespace:
    return SimpleNamespace(model_type=model_type, num_hidden_layers=layers)


def _band(projection: str, first: int, last: int, path: str = "model.layers") -> list[str]:
    return [f"{path}.{i}.mlp.{projection}" for i in range(first, last + 1)]


def test_edit_modules_are_the_published_ones_scaled_to_depth():
    published = {  # github.com/XiaojieGu/UltraEdit, run.sh
        ("llama", 32): _band("gate_proj", 11, 15) + _band("up_proj", 18, 24),  # Llama-3-8B
        ("mistral", 32): _band("down_proj", 29, 30),  # Mistral-7B
        ("qwen2", 28): _band("gate_proj", 18, 26) + _band("up_proj", 18, 26),  # Qwen2.5-7B
        ("llama", 30): _band("gate_proj", 10, 14) + _band("up_proj", 17, 23),  # scaled: SmolLM2-135M
        # shallow models (TinyWorld: 4 layers, the tiny one: 2): the last two MLP output projections
        ("llama", 4): _band("down_proj", 2, 3),
        ("gpt2", 2): _band("c_proj", 0, 1, path="transformer.h"),
    }
    for (model_type, depth), modules in published.items():
        assert ultraedit_modules(_config(model_type, depth)) == modules, (model_type, depth)
    with pytest.raises(ValueError, match="no UltraEdit edit modules known for model_type 'bert'"):
        ultraedit_modules(_config("bert", 12))
