"""Wrappers over LifelongEditEnv, one per module."""

from rledit_env.wrappers.compact import CompactConfig, CompactEditWrapper, make_compact_env

__all__ = ["CompactConfig", "CompactEditWrapper", "make_compact_env"]
