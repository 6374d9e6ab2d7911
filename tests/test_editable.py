"""EditableModel: layouts, tracing, functional scoring, snapshot/restore, and the ridge solve."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY_MODELS, _loaded, _pristine

from rledit_env.editable import EditableModel, _length_bands, ridge_solve
from rledit_env.tokenization import encode_batch


def _editable(name: str, edit_modules=None) -> EditableModel:
    loaded = _loaded(name)
    loaded.editable.restore(_pristine(name))
    return EditableModel(loaded.editable.model, loaded.editable.tokenizer, edit_modules)


def _batch(name: str, count: int = 4):
    records = _loaded(name).splits["eval"][:count]
    return encode_batch(
        _loaded(name).editable.tokenizer, [r.prompt for r in records], [r.target_new for r in records]
    )


def _last_layer_module(name: str) -> str:
    config = _loaded(name).editable.model.config
    last = config.num_hidden_layers - 1
    return (
        f"transformer.h.{last}.mlp.c_fc"
        if config.model_type == "gpt2"
        else f"model.layers.{last}.mlp.up_proj"
    )


@pytest.mark.parametrize("name", TINY_MODELS)
def test_trace_gives_the_weight_gradient_in_the_last_layer(name):
    """In the last layer only answer positions reach the loss, so sum_i u_i delta_i^T is dL/dW exactly."""
    module = _last_layer_module(name)
    editable = _editable(name, [module])
    batch = _batch(name)
    trace = editable.trace(batch)
    weight = editable.modules[module].weight
    weight.requires_grad_(True)
    loss = editable.target_logits(batch, enable_grad=True).nll().mean()
    (grad,) = torch.autograd.grad(loss, [weight])
    weight.requires_grad_(False)
    grad = grad.t() if editable.modules[module].transposed else grad  # -> (d_in, d_out)
    traced = trace.keys[module].T @ trace.value_grads[module]
    assert torch.allclose(traced, grad, rtol=1e-4, atol=1e-6)
    assert trace.loss == pytest.approx(float(loss.detach()), rel=1e-5)
    assert trace.edit_index.numel() == int(batch.target_positions.sum())


@pytest.mark.parametrize("name", TINY_MODELS)
def test_candidate_scoring_equals_scoring_after_applying(name):
    """target_logits under a candidate update = target_logits once it is applied; layouts agree."""
    editable = _editable(name)
    batch = _batch(name)
    gen = torch.Generator().manual_seed(0)
    updates = {
        n: 0.05 * torch.randn(d_in, d_out, generator=gen) for n, (d_in, d_out) in editable.shapes.items()
    }
    candidate = editable.target_logits(batch, updates).logits
    snapshot = editable.snapshot()
    assert torch.equal(editable.target_logits(batch).logits, editable.target_logits(batch).logits)
    editable.apply_updates(updates)
    applied = editable.target_logits(batch).logits
    for n, m in editable.modules.items():
        native = updates[n].t() if m.transposed else updates[n]
        assert torch.allclose(m.weight, snapshot[n] + native)
    editable.restore(snapshot)
    assert torch.allclose(candidate, applied, atol=1e-4)
    for n, m in editable.modules.items():
        assert torch.equal(m.weight, snapshot[n])


def test_candidate_scoring_is_differentiable_and_commits_nothing():
    editable = _editable("tinyworld-tiny")
    batch = _batch("tinyworld-tiny")
    before = editable.snapshot()
    updates = {
        n: torch.zeros(d_in, d_out, requires_grad=True) for n, (d_in, d_out) in editable.shapes.items()
    }
    editable.target_logits(batch, updates).nll().mean().backward()
    assert all(float(u.grad.abs().sum()) > 0 for u in updates.values())
    assert all(torch.equal(editable.modules[n].weight, w) for n, w in before.items())


def test_unknown_or_unsupported_edit_modules_are_refused():
    loaded = _loaded("tinyworld-tiny")
    with pytest.raises(ValueError, match="not in the model"):
        EditableModel(loaded.editable.model, loaded.editable.tokenizer, ["model.layers.99.mlp.up_proj"])
    with pytest.raises(ValueError, match="not a Linear"):
        EditableModel(loaded.editable.model, loaded.editable.tokenizer, ["model.layers.0.mlp"])
    with pytest.raises(ValueError, match="unknown edit-module preset"):
        EditableModel(loaded.editable.model, loaded.editable.tokenizer, "no-such-preset")


@pytest.mark.parametrize("tokens", [5, 40])
def test_ridge_solve_both_forms_match_the_normal_equations(tokens):
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(tokens, 16, generator=gen, dtype=torch.float64)
    v = torch.randn(tokens, 8, generator=gen, dtype=torch.float64)
    lam = 0.3
    expected = torch.linalg.solve(u.T @ u + lam * torch.eye(16, dtype=torch.float64), u.T @ v)
    assert torch.allclose(ridge_solve(u, v, lam).double(), expected, atol=1e-4)


def _attention_module(name: str, layer: int) -> str:
    gpt2 = _loaded(name).editable.model.config.model_type == "gpt2"
    return f"transformer.h.{layer}.attn.c_proj" if gpt2 else f"model.layers.{layer}.self_attn.o_proj"


@pytest.mark.parametrize("name", TINY_MODELS)
@pytest.mark.parametrize("where", ["mlp", "mlp+attention"])
def test_packed_scoring_from_the_frozen_prefix_gives_the_plain_logits_and_gradients(name, where):
    """Packed passes (the last layer's MLP only at answer positions) that start from frozen_prefix (the
    layers below the edit and, when no edit module is in it, the edited layer's attention) give the
    logits and update gradients of plain full passes."""
    modules = [_last_layer_module(name)] + ([_attention_module(name, 1)] if "attention" in where else [])
    editable = _editable(name, modules)
    assert editable.frozen_depth == 1
    assert (editable._frozen_attention is None) == ("attention" in where)
    batch = _batch(name, count=6)
    prefix = editable.frozen_prefix(batch)
    width = editable.model.config.hidden_size * (1 if "attention" in where else 2)
    assert prefix.shape == (*batch.input_ids.shape, width)
    gen = torch.Generator().manual_seed(0)
    updates = {
        n: (0.05 * torch.randn(d_in, d_out, generator=gen)).requires_grad_(True)
        for n, (d_in, d_out) in editable.shapes.items()
    }
    editable.tokens_per_pass = 20  # several passes, rows regrouped by length
    results = []
    for kwargs in ({}, {"packed": True}, {"packed": True, "prefix": prefix}):
        target = editable.target_logits(batch, updates, **kwargs)
        grads = torch.autograd.grad(target.nll().sum(), list(updates.values()))
        results.append((target.logits.detach(), grads))
    plain_logits, plain_grads = results[0]
    for logits, grads in results[1:]:
        assert torch.allclose(logits, plain_logits, atol=1e-5)
        for g, p in zip(grads, plain_grads, strict=True):
            assert torch.allclose(g, p, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("overhead", [0, 50, 10**6])
def test_length_bands_cover_the_rows_in_passes_within_the_budget(overhead):
    sizes = sorted([3] * 5 + [4] * 7 + [6] * 2 + [9] * 11 + [10] * 3)
    bands = _length_bands(sizes, 40, overhead)
    assert [b[0] for b in bands] == [0] + [b[1] for b in bands[:-1]] and bands[-1][1] == len(sizes)
    assert all(sizes[last - 1] <= 40 for _, last in bands)
    if overhead == 0:  # free passes: one band per distinct length, no padding at all
        assert len(bands) == len(set(sizes))
    if overhead == 10**6:  # costly passes: no more of them than one band would take (7 of 4 rows)
        passes = sum(-(-(last - first) // (40 // sizes[last - 1])) for first, last in bands)
        assert passes <= 7
        assert len(_length_bands(sizes, 10**6, overhead)) == 1  # no budget: a single pass
    assert _length_bands([], 40, overhead) == []
