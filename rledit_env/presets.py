"""Which layers an editor edits, per architecture, and the ready configurations of the models we edit.

An edit module is a linear layer (``nn.Linear`` or GPT-2's ``Conv1D``) named by its path in the
model. ``_ARCHITECTURES`` is the one table of where each architecture keeps its decoder layers and
their MLP projections. Two kinds of editors read it:

- hypernetwork editors (MEND, MALMEN, RLEdit) edit the MLP *input* projections of the upper-middle
  layers, where RLEdit's paper edits (``preset_modules``; the paper's own choices are ready as named
  configurations in ``PAPER_PRESETS``);
- locate-then-edit editors (MEMIT, AlphaEdit) write into the MLP *output* projections of an
  early-middle band (``locate_edit_modules``).

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
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Architecture:
    """Where an architecture keeps its MLP projections, and what its tokenizer must do."""

    layer_path: str  # template of a decoder layer's path, with {i}
    mlp_inputs: tuple[str, ...]  # the MLP input projections (relative to the layer): hypernetwork editors
    mlp_output: str  # the MLP output projection (relative to the layer): locate-then-edit editors
    bos_required: bool = False  # the model was trained with BOS first and degrades without it
    attention: str = "self_attn"  # the attention block (relative to the layer)

    def module(self, layer: int, projection: str) -> str:
        return f"{self.layer_path.format(i=layer)}.{projection}"

    @property
    def mlp(self) -> str:
        """The MLP block's path relative to a layer (the output projection's parent)."""
        return self.mlp_output.rsplit(".", 1)[0]


_LLAMA_MLP = ("mlp.gate_proj", "mlp.up_proj")
_ARCHITECTURES: dict[str, Architecture] = {
    "gpt2": Architecture("transformer.h.{i}", ("mlp.c_fc",), "mlp.c_proj", attention="attn"),
    "llama": Architecture("model.layers.{i}", _LLAMA_MLP, "mlp.down_proj"),
    "mistral": Architecture("model.layers.{i}", _LLAMA_MLP, "mlp.down_proj"),
    "gemma": Architecture("model.layers.{i}", _LLAMA_MLP, "mlp.down_proj", bos_required=True),
    "gemma2": Architecture("model.layers.{i}", _LLAMA_MLP, "mlp.down_proj", bos_required=True),
    "qwen2": Architecture("model.layers.{i}", _LLAMA_MLP, "mlp.down_proj"),
    "qwen3": Architecture("model.layers.{i}", _LLAMA_MLP, "mlp.down_proj"),
}


def _band(first: int, last: int, projections: tuple[str, ...] = ("gate_proj", "up_proj")) -> list[str]:
    return [f"model.layers.{i}.mlp.{p}" for i in range(first, last + 1) for p in projections]


# Named edit-module configurations. Llama-3-8B's is the one the RLEdit paper's numbers were made with,
# as its authors state (github.com/zhrli324/RLEdit, issue #2, and the paper's Table 3 / Appendix A.5):
# gate_proj of layers 11-15 and up_proj of layers 18-24 of 32. The public code's yaml
# (config/model/llama-3-instruct.yaml) ships gate_proj and up_proj of 22-30, a band a user measured about
# 10 points lower; it stays as "llama3-8b-yaml". Mistral-7B has the same depth and keeps the yaml's band
# (no other statement for it); Gemma-2-9B (42 layers) the same rule, the nine layers before the last:
# 32-40. TinyWorld-large (8 layers) gets a band of three below the last layer, 4-6, as the yaml's nine of
# 32 (docs/tinyworld-settings.md).
PAPER_PRESETS: dict[str, list[str]] = {
    "llama3-8b": _band(11, 15, ("gate_proj",)) + _band(18, 24, ("up_proj",)),
    "llama3-8b-yaml": _band(22, 30),
    "mistral-7b": _band(22, 30),
    "gemma2-9b": _band(32, 40),
    "tinyworld-large": _band(4, 6),
}


@dataclass(frozen=True)
class ModelPreset:
    """A ready model configuration: where the model comes from and how the environment edits it.

    ``source`` is a registered loader name (``rledit_env.models.MODEL_LOADERS``) or a Hugging Face hub
    id (loads when the internet is there; Llama-3 and Gemma-2 are gated: accept their licence and log
    in first). ``edit_modules`` is a name in PAPER_PRESETS, or None for the architecture's default.
    TinyWorld (4 layers) edits layer 2's and SmolLM2-135M (30 layers) layers 20-28's gate/up projections.
    """

    source: str
    dtype: str
    device: str
    edit_modules: str | None


MODEL_PRESETS: dict[str, ModelPreset] = {
    "tinyworld": ModelPreset("tinyworld", "float32", "cpu", None),
    "tinyworld-large": ModelPreset("tinyworld-large", "float32", "cpu", "tinyworld-large"),
    "smollm2": ModelPreset("smollm2", "float32", "cpu", None),
    "llama3-8b": ModelPreset("meta-llama/Meta-Llama-3-8B-Instruct", "bfloat16", "cuda", "llama3-8b"),
    "gemma2-9b": ModelPreset("google/gemma-2-9b-it", "bfloat16", "cuda", "gemma2-9b"),
    "mistral-7b": ModelPreset("mistralai/Mistral-7B-Instruct-v0.3", "bfloat16", "cuda", "mistral-7b"),
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


def num_layers(config) -> int:
    """The number of decoder layers of a Hugging Face model config."""
    return getattr(config, "num_hidden_layers", None) or config.n_layer


def default_layers(num_layers: int) -> list[int]:
    """The paper's band scaled to depth: 22-30 of 32 layers is [0.69 L, L - 2]."""
    last = max(num_layers - 2, 0)
    first = min(math.floor(0.69 * num_layers), last)
    return list(range(first, last + 1))


def preset_modules(config, layers: list[int] | None = None) -> list[str]:
    """The hypernetwork editors' edit modules (MLP input projections) for a Hugging Face model config."""
    arch = architecture(config)
    chosen = default_layers(num_layers(config)) if layers is None else layers
    return [arch.module(i, p) for i in chosen for p in arch.mlp_inputs]


def locate_edit_layers(num_layers: int) -> list[int]:
    """The early-middle band where MEMIT writes facts, scaled to depth: [L/8, L/4] (layers 4-8 of
    Llama-3-8B's 32, AlphaEdit's choice), ending at least two layers before the top so that later
    layers can carry the subject's state to the answer."""
    last = max(num_layers - 2, 0)
    first = min(round(num_layers / 8), last)
    return list(range(first, min(max(round(num_layers / 4), first), last) + 1))


def locate_edit_modules(config, layers: Sequence[int] | None = None) -> list[str]:
    """The MLP output projections MEMIT/AlphaEdit edit (``locate_edit_layers`` when ``layers`` is None).

    Make their environment with them: ``LifelongEditEnv(..., edit_modules=locate_edit_modules(config),
    action_type="shift")``.
    """
    arch = architecture(config)
    depth = num_layers(config)
    chosen = locate_edit_layers(depth) if layers is None else list(layers)
    bad = [i for i in chosen if not 0 <= i < depth]
    if bad or not chosen:
        raise ValueError(f"layers must be a non-empty list within 0..{depth - 1}, got {chosen}")
    return [arch.module(i, arch.mlp_output) for i in sorted(set(chosen))]


def layer_attention(model, layer: int) -> tuple[str, str]:
    """(path of decoder layer ``layer``, its attention block's name in it); the architecture must have
    an entry here."""
    arch = architecture(model.config)
    return arch.layer_path.format(i=layer), arch.attention


def decoder_layers(model, module_names: Sequence[str]) -> tuple[Any, int] | None:
    """(the model's decoder layers, the index of the first layer holding one of ``module_names``), or
    None when the architecture has no entry here or a name is not inside a decoder layer."""
    arch = _ARCHITECTURES.get(getattr(model.config, "model_type", None))
    if arch is None:
        return None
    pattern = re.escape(arch.layer_path).replace(r"\{i\}", r"(\d+)") + r"\."
    indices = [re.match(pattern, name) for name in module_names]
    if not indices or any(m is None for m in indices):
        return None
    return model.get_submodule(arch.layer_path.rsplit(".", 1)[0]), min(int(m.group(1)) for m in indices)


def mlp_blocks(model) -> list[Any] | None:
    """The MLP block of each decoder layer, lowest first, or None for an architecture without an entry."""
    arch = _ARCHITECTURES.get(getattr(model.config, "model_type", None))
    if arch is None:
        return None
    return [
        model.get_submodule(f"{arch.layer_path.format(i=i)}.{arch.mlp}")
        for i in range(num_layers(model.config))
    ]


def mlp_output_layer(config, name: str) -> int:
    """The layer index of an MLP output projection's path; refuses any other module."""
    arch = architecture(config)
    pattern = re.escape(arch.layer_path).replace(r"\{i\}", r"(\d+)") + re.escape("." + arch.mlp_output)
    match = re.fullmatch(pattern, name)
    if match is None:
        raise ValueError(
            f"edit module {name!r} is not an MLP output projection ({arch.layer_path}.{arch.mlp_output}); "
            "make the environment with edit_modules=locate_edit_modules(model.config)"
        )
    return int(match.group(1))


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


# ---------------------------------------------------------------------------------------- UltraEdit
# UltraEdit's published edit modules (github.com/XiaojieGu/UltraEdit, run.sh, ZsRE), per model_type:
# (depth of the published model, ((projection, first layer, last layer), ...)), scaled to other depths.
_ULTRAEDIT_BANDS: dict[str, tuple[int, tuple[tuple[str, int, int], ...]]] = {
    "llama": (32, (("mlp.gate_proj", 11, 15), ("mlp.up_proj", 18, 24))),  # Llama-3-8B-Instruct
    "mistral": (32, (("mlp.down_proj", 29, 30),)),  # Mistral-7B-v0.3
    "qwen2": (28, (("mlp.gate_proj", 18, 26), ("mlp.up_proj", 18, 26))),  # Qwen2.5-7B-Instruct
    "qwen3": (28, (("mlp.gate_proj", 18, 26), ("mlp.up_proj", 18, 26))),  # Qwen2.5's, unpublished
    "gemma": (62, (("mlp.gate_proj", 52, 60), ("mlp.up_proj", 52, 60))),  # Gemma-3-27B's
    "gemma2": (62, (("mlp.gate_proj", 52, 60), ("mlp.up_proj", 52, 60))),  # Gemma-3-27B's
    "gpt2": (28, (("mlp.c_proj", 18, 26),)),  # GPT-J-6B's fc_out, GPT-2's c_proj
}
# Below this depth the bands collapse onto the same one or two layers (Llama-3's gate 11-15 and up 18-24
# become gate 1-2 and up 2-3 of TinyWorld's 4); there UltraEdit edits the MLP output projections of the
# last two layers, its Mistral-7B choice (down_proj 29-30 of 32), which did better on every metric on
# TinyWorld's train split (docs/tinyworld-settings.md).
_ULTRAEDIT_SHALLOW = 8


def default_edit_modules(model: str, config) -> list[str]:
    """The edit modules a registered ``model`` is loaded with when none are named (its preset's)."""
    preset = MODEL_PRESETS.get(model)
    return resolve_edit_modules(config, preset.edit_modules if preset is not None else None)


# Editors that write into modules of their own choosing, by the agent's name (the others edit the
# model's default modules): the harness makes their environments with these, and a tuned step size
# (rledit_env.tuned_settings) holds for these modules only.
EDITOR_MODULES: dict[str, str] = {
    "memit": "locate_edit_modules",
    "alphaedit": "locate_edit_modules",
    "ultraedit": "ultraedit_modules",
    "stableedit": "ultraedit_modules",  # UltraEdit's, see agents/stableedit.py
}


def editor_modules(agent: str, model: str, config) -> list[str]:
    """The modules agent ``agent`` edits on registered ``model`` (a benchmark's choice for it)."""
    chooser = EDITOR_MODULES.get(agent)
    return globals()[chooser](config) if chooser else default_edit_modules(model, config)


def ultraedit_modules(config) -> list[str]:
    """UltraEdit's edit modules for a Hugging Face model config: its published bands (above) scaled to
    the model's depth, layer l of a published L-layer model becoming round(l * depth / L); models under
    ``_ULTRAEDIT_SHALLOW`` layers edit the MLP output projections of their last two layers."""
    model_type = getattr(config, "model_type", None)
    if model_type not in _ULTRAEDIT_BANDS:
        raise ValueError(
            f"no UltraEdit edit modules known for model_type {model_type!r}; supported: "
            f"{sorted(_ULTRAEDIT_BANDS)}. Make the environment with edit_modules=[...]"
        )
    arch, depth = architecture(config), num_layers(config)
    if depth < _ULTRAEDIT_SHALLOW:
        return [arch.module(i, arch.mlp_output) for i in range(max(depth - 2, 0), depth)]
    published_depth, bands = _ULTRAEDIT_BANDS[model_type]

    def scaled(layer: int) -> int:
        return min(math.floor(layer * depth / published_depth + 0.5), depth - 1)  # half rounds up

    return [
        arch.module(i, projection)
        for projection, first, last in bands
        for i in range(scaled(first), scaled(last) + 1)
    ]
