"""Environments of rledit_env, one per module."""

from rledit_env.envs.lifelong_edit import LifelongEditEnv
from rledit_env.reward import RewardConfig

__all__ = ["LifelongEditEnv", "RewardConfig"]
