"""Editors as agents of the rledit_env environment: RLEdit, its hypernetwork baselines MEND and MALMEN,
fine-tuning, a plain gradient step, no-edit and the training-free UltraEdit and StableEdit, all following
``agents.base.EditAgent``; the closed-form editors (MEMIT, AlphaEdit) and the stable-baselines3 adapter
load on first use."""

import importlib

from agents.base import (
    AgentConfig,
    Callback,
    CheckpointError,
    EditAgent,
    env_signature,
    like_observation,
    run_episode,
)
from agents.finetune import FineTune, FineTuneConfig
from agents.gradient import PlainGradient, PlainGradientConfig
from agents.hypernetwork import HyperNetwork, HyperNetworkConfig, HyperNetworkEditor
from agents.malmen import MALMEN, MALMENConfig
from agents.mend import MEND, MENDConfig
from agents.noedit import NoEdit
from agents.rledit import RLEdit, RLEditConfig
from agents.stableedit import StableEdit, StableEditConfig
from agents.ultraedit import UltraEdit, UltraEditConfig

__all__ = [
    "MALMEN",
    "MEND",
    "AgentConfig",
    "Callback",
    "CheckpointError",
    "EditAgent",
    "FineTune",
    "FineTuneConfig",
    "HyperNetwork",
    "HyperNetworkConfig",
    "HyperNetworkEditor",
    "MALMENConfig",
    "MENDConfig",
    "NoEdit",
    "PlainGradient",
    "PlainGradientConfig",
    "RLEdit",
    "RLEditConfig",
    "StableEdit",
    "StableEditConfig",
    "UltraEdit",
    "UltraEditConfig",
    "env_signature",
    "like_observation",
    "run_episode",
]

_LAZY = {
    "MEMIT": "agents.memit",
    "MEMITConfig": "agents.memit",
    "AlphaEdit": "agents.alphaedit",
    "AlphaEditConfig": "agents.alphaedit",
    "LocateThenEdit": "agents.locate_edit",
    "LocateEditConfig": "agents.locate_edit",
    "SB3Agent": "agents.sb3",
    "SB3AgentConfig": "agents.sb3",
}


def __getattr__(name: str):
    # Imported on first use: they pull in more of the stack (stable-baselines3, key statistics).
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'agents' has no attribute {name!r}")
