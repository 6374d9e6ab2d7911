"""Environments of rledit_env, one per module."""

from rledit_env.envs.lifelong_edit import LifelongEditEnv, RewardConfig

__all__ = ["LifelongEditEnv", "RewardConfig"]
