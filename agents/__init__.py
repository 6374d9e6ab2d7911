"""Editors as agents of the rledit_env environment: RLEdit, its hypernetwork baselines MEND and MALMEN,
fine-tuning and no-edit, all following ``agents.base.EditAgent``."""

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
from agents.hypernetwork import HyperNetwork, HyperNetworkConfig, HyperNetworkEditor
from agents.malmen import MALMEN, MALMENConfig
from agents.mend import MEND, MENDConfig
from agents.noedit import NoEdit
from agents.rledit import RLEdit, RLEditConfig

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
    "RLEdit",
    "RLEditConfig",
    "env_signature",
    "like_observation",
    "run_episode",
]
