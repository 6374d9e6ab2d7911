"""MEMIT and AlphaEdit as agents, and their cached key statistics, on the tiny TinyWorld model.

The tiny model (2 layers) recalls facts at the prompt's last token rather than at the subject, so the
edits here look up the last token (``lookup="last"``), as the TinyWorld configurations do for the
default model (docs/tinyworld-settings.md).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import GPT2Config, LlamaConfig

from agents.alphaedit import AlphaEdit, AlphaEditConfig
from agents.key_stats import key_second_moments
from agents.memit import MEMIT, MEMITConfig
from rledit_env.editable import EditableModel
from rledit_env.envs import LifelongEditEnv
from rledit_env.models import LoadedModel, load_model
from rledit_env.presets import locate_edit_layers, locate_edit_modules
from rledit_env.tokenization import IGNORE_INDEX, encode_batch

MODEL = "tinyworld-tiny"
# A third of the corpus is about 5000 tokens, plenty for 256 key features. No prefixed prompt variants:
# TinyWorld never saw two sentences in a row, so they slow the target search down without helping.
SHARED = {"stats_max_texts": 400, "num_prefixes": 0, "lookup": "last", "z_lr": 0.5, "z_steps": 12}
MEMIT_CONFIG = MEMITConfig(mom2_weight=10.0, **SHARED)


@pytest.fixture(scope="module")
def loaded():
    """A private copy of the tiny model with MEMIT's edit modules (other tests share theirs)."""
    plain = load_model(MODEL)
    model, tokenizer = plain.editable.model, plain.editable.tokenizer
    editable = EditableModel(model, tokenizer, MEMIT.preferred_edit_modules(model.config))
    return LoadedModel(editable, plain.splits, plain.probe_texts, plain.stats_texts)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("stats")


@pytest.fixture(scope="module")
def corpus(loaded):
    """The texts the agents' statistics cover (the evenly spaced subset ``stats_max_texts`` keeps)."""
    texts = loaded.stats_texts
    return texts if len(texts) <= 400 else [texts[i * len(texts) // 400] for i in range(400)]


@pytest.fixture(scope="module")
def alpha_config(loaded, corpus, cache_dir):
    """A null space of three quarters of the key space, wherever this model's spectrum lies."""
    name = loaded.editable.names[0]
    stats = key_second_moments(loaded.editable, [name], corpus, cache_dir=cache_dir, progress=False)[name]
    eigenvalues = torch.linalg.eigvalsh(stats.second_moment.double())
    return AlphaEditConfig(nullspace_threshold=float(eigenvalues.quantile(0.75)), l2=0.1, **SHARED)


@pytest.fixture
def make_env(loaded):
    envs = []

    def make(**kwargs) -> LifelongEditEnv:
        kwargs = {"num_batches": 1, "batch_size": 4, "action_type": "shift", **kwargs}
        env = LifelongEditEnv(loaded, **kwargs)
        envs.append(env)
        return env

    yield make
    for env in envs:
        env.close()  # restores the original weights


def _new_answer_accuracy(env: LifelongEditEnv, records) -> float:
    batch = encode_batch(env.editable.tokenizer, [r.prompt for r in records], [r.target_new for r in records])
    return float(env.editable.target_logits(batch).accuracy().mean())


def test_layers_and_modules_follow_the_architecture():
    assert locate_edit_layers(32) == [4, 5, 6, 7, 8]  # AlphaEdit's band on Llama-3-8B
    assert locate_edit_layers(4) == [0, 1]
    assert locate_edit_layers(2) == [0]
    llama = LlamaConfig(num_hidden_layers=32)
    assert locate_edit_modules(llama)[0] == "model.layers.4.mlp.down_proj"
    assert locate_edit_modules(GPT2Config(n_layer=12), [3]) == ["transformer.h.3.mlp.c_proj"]
    with pytest.raises(ValueError, match="within 0..31"):
        locate_edit_modules(llama, [40])
    with pytest.raises(ValueError, match="model_type 'bert'"):
        locate_edit_modules(SimpleNamespace(model_type="bert", num_hidden_layers=2))
    with pytest.raises(ValueError, match="lookup"):
        MEMITConfig(lookup="first")


def test_agent_refuses_an_env_without_mlp_output_projections():
    env = LifelongEditEnv(load_model(MODEL), num_batches=1, batch_size=2, action_type="shift")
    with pytest.raises(ValueError, match="locate_edit_modules"):
        MEMIT(env, MEMIT_CONFIG, progress=False)


def test_prompt_variants_look_up_the_subject_or_the_last_token(make_env, cache_dir):
    env = make_env(batch_size=3)
    env.reset(seed=0)
    records = env.unwrapped.current_records
    tok = env.editable.tokenizer
    for lookup in ("subject_last", "last"):
        config = MEMITConfig(**{**SHARED, "num_prefixes": 2, "lookup": lookup})
        agent = MEMIT(env, config, cache_dir=cache_dir, progress=False)
        requests = agent._encode(records)
        assert len(requests.rewrite) == 3 * 3 and requests.edit_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
        for row, col in zip(*requests.rewrite_pos, strict=True):
            record = records[int(requests.edit_index[row])]
            upto = tok.decode(requests.rewrite.input_ids[row, : int(col) + 1], skip_special_tokens=True)
            assert upto.endswith(record.subject if lookup == "subject_last" else record.prompt)
        assert requests.essence is not None and len(requests.essence) == 3


@pytest.mark.parametrize("agent_cls", [MEMIT, AlphaEdit])
def test_edits_succeed_in_a_plain_gymnasium_loop(make_env, cache_dir, alpha_config, agent_cls):
    env = make_env(num_batches=2, batch_size=3)
    config = MEMIT_CONFIG if agent_cls is MEMIT else alpha_config
    agent = agent_cls(env, config, cache_dir=cache_dir, progress=False)
    obs, _ = env.reset(seed=0)
    done, steps = False, 0
    while not done:
        records = env.unwrapped.current_records
        assert _new_answer_accuracy(env, records) < 0.9  # the model does not know the new answers yet
        obs, reward, terminated, truncated, info = env.step(agent.act(obs))
        assert _new_answer_accuracy(env, records) == 1.0  # every answer token is now the argmax
        done, steps = terminated or truncated, steps + 1
    assert steps == 2
    assert info["metrics"]["eff"] == 1.0  # P(new) > P(true) on every edit prompt made in the episode


def test_alphaedit_update_is_orthogonal_to_preserved_keys(make_env, cache_dir, loaded, corpus, alpha_config):
    env = make_env()
    name = env.module_names[0]
    batch = encode_batch(loaded.editable.tokenizer, corpus, ["x"] * len(corpus))
    text_tokens = ((batch.attention_mask == 1) & (batch.labels == IGNORE_INDEX)).nonzero(as_tuple=True)
    preserved = loaded.editable.hidden_at(batch, [name], text_tokens)[name]  # every corpus token's key
    cov = preserved.t().double() @ preserved.double() / len(preserved)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)
    threshold = alpha_config.nullspace_threshold
    principal = eigenvectors[:, eigenvalues >= threshold].float()  # where the preserved keys live

    def update(agent_cls, config) -> torch.Tensor:
        obs, _ = env.reset(seed=1)
        return torch.as_tensor(agent_cls(env, config, cache_dir=cache_dir, progress=False).act(obs)[name])

    alpha, memit = update(AlphaEdit, alpha_config), update(MEMIT, MEMIT_CONFIG)
    assert float((principal.t() @ alpha).norm() / alpha.norm()) < 1e-3  # numerically in the null space
    # MEMIT's is not (C^-1 steers it away from the principal directions, not out of them)
    assert float((principal.t() @ memit).norm() / memit.norm()) > 0.02
    # so the preserved keys barely see it: E||k^T dW||^2 = tr(dW^T C dW) <= threshold ||dW||^2
    leakage = (preserved @ alpha).pow(2).sum(1).mean()
    assert float(leakage) <= threshold * float(alpha.pow(2).sum()) * 1.01


def test_key_statistics_are_cached_and_reused(loaded, cache_dir, monkeypatch):
    editable = loaded.editable
    name = editable.names[0]
    texts = loaded.probe_texts[:50]
    first = key_second_moments(editable, [name], texts, cache_dir=cache_dir, progress=False)[name]
    assert not first.from_cache and first.path.exists()
    d_in = editable.shapes[name][0]
    assert first.second_moment.shape == (d_in, d_in)
    assert torch.allclose(first.second_moment, first.second_moment.t())

    def no_forward(*args, **kwargs):
        raise AssertionError("the model ran although the statistics are cached")

    with monkeypatch.context() as patch:
        patch.setattr(editable, "hidden_at", no_forward)
        again = key_second_moments(editable, [name], texts, cache_dir=cache_dir, progress=False)[name]
    assert again.from_cache and torch.equal(again.second_moment, first.second_moment)
    other = key_second_moments(editable, [name], texts[:40], cache_dir=cache_dir, progress=False)[name]
    assert not other.from_cache and other.path != first.path  # another corpus is another entry


def test_agent_reports_its_statistics_cost_and_reuses_the_cache(make_env, alpha_config, tmp_path):
    env = make_env()
    first = MEMIT(env, MEMIT_CONFIG, cache_dir=tmp_path, progress=False)
    second = AlphaEdit(env, alpha_config, cache_dir=tmp_path, progress=False)
    assert not first.stats_from_cache and second.stats_from_cache
    assert first.stats_time_s > 0
    name = env.module_names[0]
    assert torch.equal(first.stats[name].second_moment, second.stats[name].second_moment)


def test_alphaedit_preserves_earlier_edits_keys_and_forgets_them_on_reset(make_env, cache_dir, alpha_config):
    env = make_env(num_batches=2, batch_size=2)
    agent = AlphaEdit(env, alpha_config, cache_dir=cache_dir, progress=False)
    name = env.module_names[0]
    obs, _ = env.reset(seed=0)
    obs, *_ = env.step(agent.act(obs))
    after_one = agent.preserved_gram[name].clone()
    assert after_one.norm() > 0
    agent.act(obs)
    assert agent.preserved_gram[name].trace() > after_one.trace()
    obs, _ = env.reset(seed=0)
    agent.act(obs)  # the first batch of a new episode starts a fresh preserved set
    assert torch.allclose(agent.preserved_gram[name], after_one, rtol=1e-4, atol=1e-4)
