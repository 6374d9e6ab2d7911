"""Which layers an editor edits, per architecture.

An edit module is a linear layer (``nn.Linear`` or GPT-2's ``Conv1D``) named by its path in the
model. A preset picks the MLP input projections of the upper-middle layers, where the editing
literature locates factual recall; the paper's own choices are ready as named configurations.
"""

from __future__ import annotations

import math

# model_type -> (layer path template, MLP projections a preset edits)
_ARCHITECTURES: dict[str, tuple[str, tuple[str, ...]]] = {
    "gpt2": ("transformer.h.{i}", ("mlp.c_fc",)),
    "llama": ("model.layers.{i}", ("mlp.gate_proj", "mlp.up_proj")),
    "mistral": ("model.layers.{i}", ("mlp.gate_proj", "mlp.up_proj")),
    "gemma": ("model.layers.{i}", ("mlp.gate_proj", "mlp.up_proj")),
    "gemma2": ("model.layers.{i}", ("mlp.gate_proj", "mlp.up_proj")),
    "qwen2": ("model.layers.{i}", ("mlp.gate_proj", "mlp.up_proj")),
    "qwen3": ("model.layers.{i}", ("mlp.gate_proj", "mlp.up_proj")),
}

# Named configurations from the RLEdit paper and its reference code.
PAPER_PRESETS: dict[str, list[str]] = {
    # Llama-3-8B: MLP gate_proj and up_proj of layers 22-30.
    "llama3-8b": [f"model.layers.{i}.mlp.{p}" for i in range(22, 31) for p in ("gate_proj", "up_proj")],
    "mistral-7b": [f"model.layers.{i}.mlp.{p}" for i in range(22, 31) for p in ("gate_proj", "up_proj")],
    "gemma2-9b": [f"model.layers.{i}.mlp.{p}" for i in range(32, 41) for p in ("gate_proj", "up_proj")],
}


def supported_architectures() -> list[str]:
    return sorted(_ARCHITECTURES)


def default_layers(num_layers: int) -> list[int]:
    """The paper's band scaled to depth: 22-30 of 32 layers is [0.69 L, L - 2]."""
    last = max(num_layers - 2, 0)
    first = min(math.floor(0.69 * num_layers), last)
    return list(range(first, last + 1))


def preset_modules(config, layers: list[int] | None = None) -> list[str]:
    """Edit-module names for a Hugging Face model config (its ``model_type`` and depth)."""
    model_type = getattr(config, "model_type", None)
    if model_type not in _ARCHITECTURES:
        raise ValueError(
            f"no edit-module preset for model_type {model_type!r}; supported: {supported_architectures()}. "
            "Pass edit_modules=[...] with the module names to edit."
        )
    layer_path, projections = _ARCHITECTURES[model_type]
    num_layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    chosen = default_layers(num_layers) if layers is None else layers
    return [f"{layer_path.format(i=i)}.{p}" for i in chosen for p in projections]


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
