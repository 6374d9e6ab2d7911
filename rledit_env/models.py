"""Named models the environment can load, with the records and probe texts that come with them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from rledit_env.editable import EditableModel
from rledit_env.records import EditRecord


@dataclass
class LoadedModel:
    """An editable model plus, for synthetic worlds, its own edit splits and general text."""

    editable: EditableModel
    splits: dict[str, list[EditRecord]] = field(default_factory=dict)
    probe_texts: list[str] = field(default_factory=list)


ModelLoader = Callable[..., LoadedModel]
MODEL_LOADERS: dict[str, ModelLoader] = {}


def register_model(name: str) -> Callable[[ModelLoader], ModelLoader]:
    def wrap(loader: ModelLoader) -> ModelLoader:
        MODEL_LOADERS[name] = loader
        return loader

    return wrap


def _tinyworld_loader(config_name: str) -> ModelLoader:
    def load(edit_modules=None, device=None, dtype=None, eval_batch_size=64) -> LoadedModel:
        from rledit_env.tinyworld import load_tinyworld

        model, tokenizer, world = load_tinyworld(config_name, device=device or "cpu")
        if dtype is not None:
            model = model.to(dtype)
        editable = EditableModel(model, tokenizer, edit_modules, eval_batch_size=eval_batch_size)
        splits = {s: world.edit_records(s) for s in ("train", "eval")}
        return LoadedModel(editable, splits, world.general_texts())

    return load


for _name, _config in {
    "tinyworld": "default",
    "tinyworld-gpt2": "default-gpt2",
    "tinyworld-tiny": "tiny",
    "tinyworld-tiny-gpt2": "tiny-gpt2",
}.items():
    register_model(_name)(_tinyworld_loader(_config))


def load_model(
    name_or_path: str, edit_modules=None, device=None, dtype=None, eval_batch_size=64
) -> LoadedModel:
    """A registered name (``MODEL_LOADERS``), else a hub id or local directory of a causal LM."""
    if name_or_path in MODEL_LOADERS:
        return MODEL_LOADERS[name_or_path](
            edit_modules=edit_modules, device=device, dtype=dtype, eval_batch_size=eval_batch_size
        )
    editable = EditableModel.from_pretrained(
        name_or_path, edit_modules, dtype=dtype, device=device, eval_batch_size=eval_batch_size
    )
    return LoadedModel(editable)
