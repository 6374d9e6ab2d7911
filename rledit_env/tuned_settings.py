"""Each known model's scale-dependent agent settings: the one table every entry point reads.

An agent's step sizes depend on the model it edits: RLEdit's published initial lr of 1e-6 moves a 7-9B
model's answers and leaves TinyWorld's untouched. So the agents' config dataclasses leave those settings
at ``AUTO`` ("auto"), and an agent bound to an environment fills them in (``agents.auto_settings``):

1. a value given explicitly (a config argument, a benchmark configuration's ``agent_configs``) wins;
2. else the value in ``TUNED_SETTINGS`` for the environment's model, under the agent's registry name
   (``"rledit-published"``) and then under its class's ``name`` (``"rledit"``);
3. else (a model not in the table) settings with a search grid are calibrated on the model's train
   split, and the others take their published values.

Every value for TinyWorld, TinyWorld-large and SmolLM2 was chosen on that model's *train* split; the
sweep behind each is in docs/tinyworld-settings.md (section named in the comment). The paper's GPU
models carry the published 7-9B settings. tinyworld-tiny (the tests' world) and the GPT-2 versions of
the worlds are built like TinyWorld and use its values; tests/test_tuned_settings.py checks that every
editor edits tinyworld-tiny and tinyworld-tiny-gpt2 with them (tinyworld-gpt2 is not checked).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

AUTO = "auto"

Settings = dict[str, dict[str, Any]]  # agent name -> {setting: value}


def _published_rledit(tuned_init_lr: float) -> dict[str, float]:
    """``rledit-published`` at a model's scale. The public code's one Adam step (meta lr 1e-5 from lr 1e-6)
    moves each network weight by about 1e-5 and the step sizes by about 10x their initial value. So the
    blocks keep the published 1e-5, and the step sizes start at a tenth of the model's tuned initial lr
    with a meta lr of ten times that: a step up lands them at 1.1x the tuned value
    (docs/tinyworld-settings.md, "rledit-published")."""
    return {"init_lr": round(tuned_init_lr / 10, 12), "meta_lr": 1e-5, "step_meta_lr": tuned_init_lr}


# docs/tinyworld-settings.md: "RLEdit, MALMEN, MEND", "MEMIT and AlphaEdit", "UltraEdit" (the default world)
_TINYWORLD: Settings = {
    "rledit": {"init_lr": 3e-3, "meta_lr": 1e-4},
    "rledit-published": _published_rledit(3e-3),
    "malmen": {"init_lr": 3e-3, "meta_lr": 1e-4},
    "mend": {"init_lr": 3e-3, "meta_lr": 1e-4},
    "finetune": {"lr": 3e-3},
    "memit": {"lookup": "last", "z_lr": 0.5, "num_prefixes": 0, "mom2_weight": 10.0},
    "alphaedit": {"lookup": "last", "z_lr": 0.5, "num_prefixes": 0, "nullspace_threshold": 0.02, "l2": 0.1},
    "ultraedit": {"lr": 1.5e-3},
    "stableedit": {"lr": 2.75e-3},  # docs/tinyworld-settings.md: "StableEdit"
}

# docs/tinyworld-settings.md: "TinyWorld-large", the 20 x 20 train-split sweep table
_TINYWORLD_LARGE: Settings = {  # StableEdit was not swept here: calibrated on the train split
    "rledit": {"init_lr": 1e-3, "meta_lr": 1e-4},
    "rledit-published": _published_rledit(1e-3),
    "malmen": {"init_lr": 1e-3, "meta_lr": 1e-4},
    "mend": {"init_lr": 1e-3, "meta_lr": 1e-4},
    "finetune": {"lr": 1e-3},
    "memit": {**_TINYWORLD["memit"], "mom2_weight": 30.0},
    "alphaedit": _TINYWORLD["alphaedit"],
    "ultraedit": _TINYWORLD["ultraedit"],
}

# The published settings for 7-9B models (RLEdit, MEND, MALMEN: github.com/zhrli324/RLEdit's
# config/editor/*.yaml; MEMIT and AlphaEdit: AlphaEdit's Llama-3-8B hyperparameters; UltraEdit:
# github.com/XiaojieGu/UltraEdit's run.sh)
_PUBLISHED: Settings = {
    "rledit": {"init_lr": 1e-6, "meta_lr": 1e-5},
    "rledit-published": {"step_meta_lr": 1e-5},  # the public code's one Adam at 1e-5 over everything
    "malmen": {"init_lr": 1e-6, "meta_lr": 1e-5},
    "mend": {"init_lr": 1e-4, "meta_lr": 1e-5},  # MEND's own edit lr (MENDConfig)
    "finetune": {"lr": 1e-3},
    "memit": {"lookup": "subject_last", "z_lr": 0.1, "num_prefixes": 5, "mom2_weight": 15000.0},
    "alphaedit": {
        "lookup": "subject_last",
        "z_lr": 0.1,
        "num_prefixes": 5,
        "nullspace_threshold": 0.02,
        "l2": 10.0,
    },
    "ultraedit": {"lr": 1e-6},
    "stableedit": {"lr": 1e-6},  # github.com/MINE-USTC/StableEdit's run.sh
}

TUNED_SETTINGS: dict[str, Settings] = {
    "tinyworld": _TINYWORLD,
    "tinyworld-tiny": _TINYWORLD,
    "tinyworld-gpt2": _TINYWORLD,
    "tinyworld-tiny-gpt2": _TINYWORLD,
    "tinyworld-large": _TINYWORLD_LARGE,
    # docs/tinyworld-settings.md: "SmolLM2-135M" (CounterFact's training records, 5 x 10)
    "smollm2": {
        "rledit": {"init_lr": 1e-3, "meta_lr": 1e-4},
        "rledit-published": _published_rledit(1e-3),
        "malmen": {"init_lr": 1e-3, "meta_lr": 1e-4},
        "mend": {"init_lr": 1e-3, "meta_lr": 1e-4},
        "finetune": {"lr": 3e-3},
        "memit": {**_PUBLISHED["memit"], "num_prefixes": 0},
        "alphaedit": {**_PUBLISHED["alphaedit"], "num_prefixes": 0},
        "ultraedit": {"lr": 1e-4},
    },
    "llama3-8b": _PUBLISHED,
    "mistral-7b": _PUBLISHED,
    "gemma2-9b": _PUBLISHED,
}


def known_model(name_or_path: str | None) -> str | None:
    """The table's name for a model: a registered name, or the hub id of a paper model (a preset's
    ``source``); None for any other model."""
    if not name_or_path:
        return None
    if name_or_path in TUNED_SETTINGS:
        return name_or_path
    from rledit_env.presets import MODEL_PRESETS

    for name, preset in MODEL_PRESETS.items():
        if preset.source == name_or_path and name in TUNED_SETTINGS:
            return name
    return None


def tuned_settings(model: str, agent_names: Sequence[str]) -> dict[str, Any]:
    """The tuned settings of a known ``model`` for an agent known by ``agent_names`` (most specific
    first, e.g. ``("rledit-published", "rledit")``): each name's entry on top of the later ones'."""
    table = TUNED_SETTINGS[model]
    merged: dict[str, Any] = {}
    for name in reversed(agent_names):
        merged.update(table.get(name, {}))
    return merged
