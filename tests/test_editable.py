"""EditableModel: layouts, tracing, functional scoring, snapshot/restore, and the ridge solve."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY_MODELS, _loaded, _pristine

from rledit_env.editable import EditableModel, ridge_solve
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
