"""Architecture presets and big-model hygiene, on tiny random-weight models built from local configs."""

import json
import pathlib

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from rledit_env.editable import EditableModel, ridge_solve
from rledit_env.models import as_dtype
from rledit_env.presets import (
    PAPER_PRESETS,
    check_tokenizer,
    model_table,
    preset_modules,
    supported_architectures,
)
from rledit_env.tokenization import encode_batch

WORDS = [
    *("the", "capital", "of", "france", "is", "paris", "rome", "berlin"),
    *("city", "river", "speaks", "language", "english", "french", "a", "an"),
]
PROMPTS = ["the capital of france is", "a city river is", "an english language is"]
ANSWERS = ["paris", "rome berlin", "french"]


def make_tokenizer(bos: bool) -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<unk>", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos:
        backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def tiny_config(model_type: str, num_layers: int = 4):
    shared = {"vocab_size": 4 + len(WORDS), "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    if model_type == "gpt2":
        return GPT2Config(n_embd=16, n_layer=num_layers, n_head=2, n_positions=32, **shared)
    sizes = {
        "hidden_size": 16,
        "intermediate_size": 24,
        "num_hidden_layers": num_layers,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 32,
        **shared,
    }
    if model_type == "gemma2":
        return Gemma2Config(head_dim=8, final_logit_softcapping=2.0, query_pre_attn_scalar=8, **sizes)
    return {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}[model_type](**sizes)


def tiny_model(model_type: str, num_layers: int = 4, dtype=torch.float32):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, num_layers)).to(dtype)
    return model, make_tokenizer(bos=model_type == "gemma2")


ARCHITECTURES = ["gpt2", "llama", "mistral", "gemma2", "qwen2"]


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_preset_modules_exist_and_trace_matches_autograd(model_type):
    model, tok = tiny_model(model_type)
    names = preset_modules(model.config)
    assert names and set(names) <= dict(model.named_modules()).keys()
    assert EditableModel(model, tok).names == names
    # In the last layer an MLP output reaches the loss only at its own position, so there the answer
    # tokens' keys^T @ value_grads is exactly dLoss/dW (earlier layers also feed later positions).
    last = preset_modules(model.config, layers=[model.config.num_hidden_layers - 1])
    editable = EditableModel(model, tok, last)
    batch = encode_batch(tok, PROMPTS, ANSWERS)
    trace = editable.trace(batch)
    n_tokens = int(batch.target_positions.sum())
    # The plain gradient keys^T @ value_grads must be dLoss/dW in (d_in, d_out) layout whatever the layer
    # stores: compare with autograd through a zero candidate update in that layout.
    zeros = {n: torch.zeros(d_in, d_out, requires_grad=True) for n, (d_in, d_out) in editable.shapes.items()}
    loss = editable.target_logits(batch, zeros).nll().mean()
    grads = torch.autograd.grad(loss, list(zeros.values()))
    assert trace.loss == pytest.approx(loss.item(), rel=1e-5)
    for name, grad in zip(last, grads, strict=True):
        d_in, d_out = editable.shapes[name]
        assert trace.keys[name].shape == (n_tokens, d_in)
        assert trace.value_grads[name].shape == (n_tokens, d_out)
        assert grad.abs().max() > 0
        torch.testing.assert_close(trace.keys[name].T @ trace.value_grads[name], grad, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_candidate_scoring_matches_committed_update_and_restore(model_type):
    model, tok = tiny_model(model_type)
    editable = EditableModel(model, tok)
    batch = encode_batch(tok, PROMPTS, ANSWERS)
    snapshot = editable.snapshot()
    before = editable.target_logits(batch).logits
    gen = torch.Generator().manual_seed(1)
    updates = {
        n: 0.5 * torch.randn(d_in, d_out, generator=gen) for n, (d_in, d_out) in editable.shapes.items()
    }
    candidate = editable.target_logits(batch, updates).logits
    torch.testing.assert_close(editable.target_logits(batch).logits, before, atol=0, rtol=0)  # untouched
    assert not torch.allclose(candidate, before)
    editable.apply_updates(updates)
    torch.testing.assert_close(editable.target_logits(batch).logits, candidate, atol=1e-5, rtol=1e-5)
    editable.restore(snapshot)
    for name, weight in snapshot.items():
        assert torch.equal(editable.modules[name].weight, weight)


def test_gemma2_logit_softcapping_matches_the_model():
    model, tok = tiny_model("gemma2")
    with torch.no_grad():  # large logits, so that the cap (2.0) really bends them
        model.get_output_embeddings().weight.mul_(50)
    editable = EditableModel(model, tok)
    batch = encode_batch(tok, PROMPTS, ANSWERS)
    ours = editable.target_logits(batch).logits
    with torch.no_grad():
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        rows, cols = batch.target_positions.nonzero(as_tuple=True)
        reference = out.logits[rows, cols].float()
        hidden = model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        uncapped = model.lm_head(hidden[rows, cols])
    assert uncapped.abs().max() > 4.0  # without the cap the logits would differ
    assert reference.abs().max() <= 2.0 + 1e-5
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("preset", sorted(PAPER_PRESETS))
def test_paper_presets_exist_in_a_model_of_that_depth(preset):
    model_type, depth = {
        "llama3-8b": ("llama", 32),
        "llama3-8b-yaml": ("llama", 32),
        "mistral-7b": ("mistral", 32),
        "gemma2-9b": ("gemma2", 42),
        "tinyworld-large": ("llama", 8),
    }[preset]
    model, tok = tiny_model(model_type, num_layers=depth)
    editable = EditableModel(model, tok, preset)
    assert editable.names == PAPER_PRESETS[preset]
    # gate_proj and up_proj of nine layers (three in TinyWorld-large's 8); Llama-3-8B's as its authors
    # state: gate_proj of 11-15 and up_proj of 18-24
    assert len(editable.names) == {"tinyworld-large": 6, "llama3-8b": 12}.get(preset, 18)


def test_default_band_is_the_public_yamls_for_llama3_and_20_to_28_for_smollm2():
    llama3 = LlamaConfig(num_hidden_layers=32)
    assert preset_modules(llama3) == PAPER_PRESETS["llama3-8b-yaml"]  # the depth rule's origin
    assert PAPER_PRESETS["llama3-8b"][0] == "model.layers.11.mlp.gate_proj"  # the paper's, by its authors
    assert PAPER_PRESETS["llama3-8b"][-1] == "model.layers.24.mlp.up_proj"
    smollm2 = LlamaConfig(num_hidden_layers=30)  # SmolLM2-135M's depth
    names = preset_modules(smollm2)
    assert names[0] == "model.layers.20.mlp.gate_proj" and names[-1] == "model.layers.28.mlp.up_proj"
    assert len(names) == 18


def test_unknown_architecture_names_the_supported_ones():
    with pytest.raises(ValueError, match="no edit-module preset for model_type 'bert'"):
        preset_modules(type("Config", (), {"model_type": "bert", "num_hidden_layers": 4})())
    assert {"gpt2", "llama", "mistral", "gemma2", "qwen2"} <= set(supported_architectures())


def test_gemma_needs_a_tokenizer_that_adds_bos():
    config = tiny_config("gemma2")
    check_tokenizer(config, make_tokenizer(bos=True))
    with pytest.raises(ValueError, match="gemma2 models need the BOS token first"):
        check_tokenizer(config, make_tokenizer(bos=False))
    check_tokenizer(tiny_config("llama"), make_tokenizer(bos=False))  # optional for Llama


def test_bf16_updates_accumulate_in_fp32():
    model, tok = tiny_model("llama", dtype=torch.bfloat16)
    name = preset_modules(model.config)[0]
    weight = dict(model.named_modules())[name].weight
    with torch.no_grad():
        weight.fill_(1.0)  # bf16 spacing at 1.0 is 2**-7
    editable = EditableModel(model, tok)
    start = weight.detach().float().clone()
    # Each step is below half that spacing: added to the bf16 weight one by one, all would round away.
    delta = torch.full(editable.shapes[name], 1e-3)
    assert torch.equal(weight + delta.t().to(torch.bfloat16), weight)
    snapshot = editable.snapshot()
    for _ in range(200):
        editable.apply_updates({name: delta})
    expected = (start + 200 * delta.t()).to(torch.bfloat16)
    assert torch.equal(weight, expected)
    editable.restore(snapshot)
    assert torch.equal(weight, snapshot[name])
    editable.apply_updates({name: 200 * delta})  # the master was restored too
    assert torch.equal(weight, expected)


def test_bf16_candidate_scoring_equals_committed_and_traces_are_fp32():
    model, tok = tiny_model("qwen2", dtype=torch.bfloat16)
    editable = EditableModel(model, tok)
    batch = encode_batch(tok, PROMPTS, ANSWERS)
    trace = editable.trace(batch)
    assert all(k.dtype == torch.float32 for k in trace.keys.values())
    assert all(g.dtype == torch.float32 for g in trace.value_grads.values())
    updates = {n: ridge_solve(trace.keys[n], -0.5 * trace.value_grads[n], 1e-3) for n in editable.names}
    assert all(u.dtype == torch.float32 for u in updates.values())
    candidate = editable.target_logits(batch, updates)
    editable.apply_updates(updates)
    committed = editable.target_logits(batch)
    assert torch.equal(candidate.logits, committed.logits)
    assert committed.nll().mean() < trace.loss


def test_as_dtype_accepts_names_and_refuses_others():
    assert as_dtype("bfloat16") is torch.bfloat16
    assert as_dtype(torch.float16) is torch.float16
    assert as_dtype(None) is None
    with pytest.raises(ValueError, match="'int8' is not a torch floating-point dtype"):
        as_dtype("int8")


def test_models_json_lists_the_model_presets():
    path = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "configs" / "models.json"
    assert json.loads(path.read_text()) == model_table(), (
        "experiments/configs/models.json is out of date: regenerate it with "
        "python -c 'import json; from rledit_env.presets import model_table; "
        "print(json.dumps(model_table(), indent=2))' > experiments/configs/models.json"
    )
    assert {"tinyworld", "smollm2", "llama3-8b", "gemma2-9b", "mistral-7b"} <= model_table().keys()
