"""Small shared pieces for the tests."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import torch

from agents.base import env_signature
from rledit_env import data_files
from rledit_env.envs import LifelongEditEnv
from rledit_env.models import LoadedModel, load_model

TINY_MODELS = ("tinyworld-tiny", "tinyworld-tiny-gpt2")
SHARED_DATA = (Path(__file__).parents[1] / ".." / "shared" / "data").resolve()


def data_file(name: str, folder: str = "records") -> Path:
    """A packaged data file by known name (records) or relative path (general/...): its source copy in
    ../shared/data where that exists, else the packaged one, so the tests run from any installation."""
    relative = data_files.data_file(name).file if folder == "records" else name
    shared = SHARED_DATA / relative.removesuffix(".gz")
    return shared if shared.is_file() else data_files.PACKAGED_DIR.parent / folder / relative


@functools.cache
def _loaded(name: str) -> LoadedModel:
    return load_model(name)


def save_random_llama(path: Path, num_layers: int = 4, dtype: torch.dtype = torch.float32) -> Path:
    """A random-weight Llama of TinyWorld's tiny vocabulary, saved with its tokenizer to ``path``: a
    model no registered name or settings table knows."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _loaded("tinyworld-tiny").editable.tokenizer
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).to(dtype).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_env(name: str = "tinyworld-tiny", **kwargs) -> LifelongEditEnv:
    """An environment on a tiny TinyWorld model, loaded once per test session and restored per env."""
    loaded = _loaded(name)
    loaded.editable.restore(_pristine(name))
    kwargs.setdefault("num_batches", 4)
    kwargs.setdefault("batch_size", 4)
    return LifelongEditEnv(loaded, **kwargs)


@functools.cache
def _pristine(name: str) -> dict[str, torch.Tensor]:
    return _loaded(name).editable.snapshot()


def gradient_action(env: LifelongEditEnv, obs, lr: float) -> dict:
    """One plain gradient-descent step on the edit loss: dW = -lr * U^T D (the shift interface)."""
    return {m: -lr * obs["keys"][m].T @ obs["value_grads"][m] for m in env.module_names}


def model_state(env: LifelongEditEnv) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in env.editable.model.state_dict().items()}


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"parameter {k} changed"


class Malicious:
    """Unpickling it calls open(marker, "w"): the file appearing shows that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def old_format_checkpoint(path: Path, agent, state) -> None:
    """A checkpoint as EditAgent.save wrote it before format 2: one torch.save pickle."""
    payload = {
        "format": 1,
        "agent": type(agent).__name__,
        "config": dataclasses.asdict(agent.config),
        "env": env_signature(agent.env),
        "state": state,
    }
    torch.save(payload, path)
