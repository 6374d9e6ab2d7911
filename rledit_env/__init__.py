"""rledit_env: lifelong knowledge editing of language models as a Gymnasium environment.

``gymnasium.make("rledit_env/LifelongEdit-v0")`` gives a TinyWorld episode; see
``rledit_env.envs.LifelongEditEnv`` for the specification.
"""

from gymnasium.envs.registration import register, registry

from rledit_env.actions import InvalidActionError
from rledit_env.editable import EditableModel
from rledit_env.envs import LifelongEditEnv
from rledit_env.records import EditRecord
from rledit_env.reward import RewardConfig

__all__ = ["EditRecord", "EditableModel", "InvalidActionError", "LifelongEditEnv", "RewardConfig"]
__version__ = "0.1.0"

if "rledit_env/LifelongEdit-v0" not in registry:
    register(id="rledit_env/LifelongEdit-v0", entry_point="rledit_env.envs:LifelongEditEnv")
if "rledit_env/LifelongEditCompact-v0" not in registry:  # the Box interface for standard RL libraries
    register(id="rledit_env/LifelongEditCompact-v0", entry_point="rledit_env.wrappers:make_compact_env")
