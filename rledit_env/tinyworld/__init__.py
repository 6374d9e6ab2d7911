"""TinyWorld: the embedded default world and model (a synthetic world of made-up people, and a small
causal LM pretrained at first use to know every fact of it). See ``world`` and ``build``."""

from rledit_env.tinyworld.build import (
    build_model,
    build_tokenizer,
    fact_accuracy,
    load_tinyworld,
    tinyworld_model_dir,
    train_model,
)
from rledit_env.tinyworld.world import Fact, TinyWorld, TinyWorldConfig

__all__ = [
    "Fact",
    "TinyWorld",
    "TinyWorldConfig",
    "build_model",
    "build_tokenizer",
    "fact_accuracy",
    "load_tinyworld",
    "tinyworld_model_dir",
    "train_model",
]
