"""The agent API every editor follows.

An agent is bound to an environment (as in stable-baselines3) because some editors need more than
the observation (fine-tuning re-scores candidate updates, closed-form editors read the batch's
subjects), and always through the environment's public surface. It works in a plain Gymnasium loop::

    obs, info = env.reset(seed=0)
    done = False
    while not done:
        obs, reward, done, truncated, info = env.step(agent.act(obs))
"""

from __future__ import annotations

import dataclasses
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch

from agents.auto_settings import resolve_settings
from agents.checkpoint import CheckpointError, read_checkpoint, write_checkpoint


@dataclasses.dataclass
class AgentConfig:
    """Hyperparameters shared by all agents; each agent extends it with its own."""

    seed: int = 0


class Callback:
    """Hooks into ``learn`` (stable-baselines3 style). Return False from a hook to stop training."""

    def on_training_start(self, agent: EditAgent) -> None:
        pass

    def on_episode_end(self, agent: EditAgent, episode: int, logs: dict[str, float]) -> bool:
        return True

    def on_training_end(self, agent: EditAgent) -> None:
        pass


def env_signature(env: gym.Env) -> dict[str, Any]:
    """What a trained editor is tied to: the model and the edit modules' shapes."""
    core = env.unwrapped
    config = core.editable.model.config
    return {
        "model": getattr(config, "_name_or_path", "") or config.model_type,
        "model_type": config.model_type,
        "modules": {name: list(shape) for name, shape in core.editable.shapes.items()},
        "action_type": core.action_type,
    }


class EditAgent(ABC):
    """Base class of editors. Subclasses set ``Config`` and ``action_type`` and implement ``act``.

    Trainable agents also implement ``learn``, ``state_dict`` and ``load_state_dict``. Agents that
    carry state from one batch of an episode to the next say what it is in ``episode_state`` (so that
    an interrupted episode can go on, ``run_episode(resume=...)``); ``carries_nothing`` marks those
    whose every action depends on the observation and the environment alone.
    """

    Config: ClassVar[type[AgentConfig]] = AgentConfig
    action_type: ClassVar[str] = "values"
    name: ClassVar[str] = "agent"
    carries_nothing: ClassVar[bool] = False

    def __init__(self, env: gym.Env, config: AgentConfig | None = None):
        core = env.unwrapped
        if core.action_type != self.action_type:
            raise ValueError(
                f"{type(self).__name__} acts through the {self.action_type!r} interface, but the environment "
                f"was made with action_type={core.action_type!r}"
            )
        self.env = env
        config = config if config is not None else self.Config()
        if not isinstance(config, self.Config):
            raise TypeError(
                f"{type(self).__name__} needs a {self.Config.__name__}, got {type(config).__name__}"
            )
        # scale-dependent settings left at "auto" get the values that fit this environment's model
        resolved = resolve_settings(type(self), config, env)
        self.config = resolved.config
        self.settings_sources: dict[str, str] = resolved.sources  # setting -> where its value came from

    @property
    def core(self):
        """The unwrapped LifelongEditEnv."""
        return self.env.unwrapped

    @abstractmethod
    def act(self, observation) -> Any:
        """The action for the current batch of edits."""

    def learn(
        self,
        episodes: int = 0,
        *,
        train_env: gym.Env | None = None,
        callback: Callback | None = None,
        progress_bar: bool = True,
    ) -> EditAgent:
        """Train (no-op for editors that need no training). Returns self."""
        return self

    def training_env(self, train_env: gym.Env | None = None, **settings) -> gym.Env:
        """Where ``learn`` trains: ``train_env`` if given (checked), else an environment on the model's
        "train" split with this environment's schedule, reward (``reward_config``) and ridge lambda, and
        ``settings`` on top.

        The default shares the model with ``self.env``: it first puts the edit modules back to
        ``self.env``'s initial weights, which the new env then restores on every reset (``close`` it to
        give the model back as it was when it was made).
        """
        from rledit_env.envs import LifelongEditEnv
        from rledit_env.models import LoadedModel

        core = self.core
        if train_env is not None:
            other = train_env.unwrapped
            if other.action_type != self.action_type or other.editable.shapes != core.editable.shapes:
                raise ValueError(
                    f"train_env must edit the same modules through action_type={self.action_type!r}"
                )
            return train_env
        if "train" not in core.splits:
            raise ValueError(
                "this environment's model has no 'train' split of its own: pass train_env= (an environment "
                "over training edits)"
            )
        settings = {
            "num_batches": core.num_batches,
            "batch_size": core.batch_size,
            "ridge_lambda": core.ridge_lambda,
            "max_update_norm": core.max_update_norm,
            "max_tokens": core.max_tokens,
            "evaluate_at_end": False,
            "evaluation": "teacher_forced",  # what training reads (SB3's episode metrics), at today's cost
            "probe_texts": [],
            "reward": core.reward_config,
            **settings,
        }
        core.editable.restore(core.initial_weights)  # train from the unedited model, whatever ran before
        return LifelongEditEnv(
            LoadedModel(core.editable, core.splits, name=core.model_name),
            split="train",
            action_type=self.action_type,
            **settings,
        )

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise CheckpointError(
                f"{type(self).__name__} has no trainable state, but the checkpoint has some"
            )

    def episode_state(self) -> dict[str, Any]:
        """What the agent carries along the running episode (tensors and JSON values), e.g. running
        statistics; raises NotImplementedError for an agent that does not say (it cannot resume)."""
        if self.carries_nothing:
            return {}
        raise NotImplementedError(f"{type(self).__name__} does not say what it carries along an episode")

    def load_episode_state(self, state: dict[str, Any]) -> None:
        """Take up an ``episode_state`` saved at the same step of the same episode."""
        if not self.carries_nothing:
            raise NotImplementedError(f"{type(self).__name__} does not say what it carries along an episode")
        if state:
            raise CheckpointError(
                f"{type(self).__name__} carries nothing along an episode, but got {sorted(state)}"
            )

    # ------------------------------------------------------------------------------ checkpoints
    def save(self, path: str | os.PathLike) -> None:
        """Save the agent as a safetensors checkpoint (``agents.checkpoint``: loading it runs no code)."""
        write_checkpoint(
            path,
            {
                "agent": type(self).__name__,
                "config": dataclasses.asdict(self.config),
                "env": env_signature(self.env),
                "state": self.state_dict(),
            },
        )

    @classmethod
    def load(cls, path: str | os.PathLike, env: gym.Env) -> EditAgent:
        """Rebuild a saved agent for ``env``; refuses another agent, model or edit-module set, and old
        pickle-format files (see ``agents.checkpoint.convert_checkpoint``)."""
        payload = read_checkpoint(path)
        if payload.get("agent") != cls.__name__:
            raise CheckpointError(f"{path}: a {payload.get('agent')} checkpoint, not {cls.__name__}")
        expected, found = env_signature(env), payload.get("env", {})
        for key in ("model_type", "modules"):
            if found.get(key) != expected[key]:
                raise CheckpointError(
                    f"{path}: made for {key} {found.get(key)!r}, but the environment has {expected[key]!r}"
                )
        try:
            config = cls.Config(**payload["config"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(
                f"{path}: the checkpoint's config does not fit {cls.Config.__name__} ({exc})"
            ) from exc
        agent = cls(env, config)
        agent.load_state_dict(payload.get("state", {}))
        return agent


def like_observation(action, observation):
    """``action`` (torch tensors, in nested dicts) as numpy arrays when ``observation`` holds numpy arrays.

    Agents compute in torch and answer in the backend of the environment's observations.
    """
    if not isinstance(observation["mask"], np.ndarray):
        return action

    def convert(value):
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        return value.detach().cpu().numpy()

    return convert(action)


@dataclasses.dataclass
class EpisodeProgress:
    """An episode interrupted between two steps: what ``run_episode`` needs to go on from there."""

    env: dict[str, Any]  # LifelongEditEnv.progress()
    agent: dict[str, Any]  # EditAgent.episode_state()
    edit_time_s: float  # editing time of the steps done
    total_reward: float
    rng: torch.Tensor  # torch's generator state, so that an agent that draws goes on as it would have


def run_episode(
    env: gym.Env,
    agent: EditAgent,
    *,
    seed: int | None = None,
    options: dict | None = None,
    on_step: Callable[[dict], None] | None = None,
    resume: EpisodeProgress | None = None,
    save_progress: Callable[[EpisodeProgress], None] | None = None,
    save_every_s: float = 300.0,
) -> dict[str, Any]:
    """Run one lifelong-editing episode; returns the final metrics, the curve and the editing time.

    ``edit_time_s`` counts what editing costs: the agent's ``act``, the environment's update (ridge
    solve and apply) and the tracing of keys and value gradients; not the reward's scoring or metrics.
    With ``save_progress``, an ``EpisodeProgress`` is handed to it after a step at most every
    ``save_every_s`` seconds (not after the last); ``resume`` goes on from one, with the same seed and
    options (the environment must be the bare ``LifelongEditEnv``: wrappers would miss the restore).
    """
    core = env.unwrapped
    core.timing = True  # the editing time below needs the environment's phase timings
    obs, info = env.reset(seed=seed, options=options)
    edit_time = info["time"]["trace"]
    done, steps, total_reward = False, 0, 0.0
    if resume is not None:
        if env is not core:
            raise ValueError("resume needs the bare LifelongEditEnv (a wrapper would miss the restore)")
        obs = core.resume(resume.env)
        agent.load_episode_state(resume.agent)
        torch.set_rng_state(resume.rng)
        steps, edit_time, total_reward = resume.env["step"], resume.edit_time_s, resume.total_reward
    last_save = time.perf_counter()
    while not done:
        start = time.perf_counter()
        action = agent.act(obs)
        edit_time += time.perf_counter() - start
        obs, reward, terminated, truncated, info = env.step(action)
        # editing = the agent's own work + applying its update + tracing the next batch; not scoring
        edit_time += info["time"]["update"] + info["time"].get("trace", 0.0)
        steps += 1
        total_reward += reward
        done = terminated or truncated
        if save_progress is not None and not done and time.perf_counter() - last_save >= save_every_s:
            state = EpisodeProgress(
                core.progress(), agent.episode_state(), edit_time, total_reward, torch.get_rng_state()
            )
            save_progress(state)
            last_save = time.perf_counter()
        if on_step is not None:
            on_step(info)
    edits = steps * core.batch_size
    return {
        "metrics": info.get("metrics", {}),
        "curve": info.get("curve", []),
        "edits": edits,
        "edit_time_s": edit_time,
        "time_per_edit_s": edit_time / max(edits, 1),
        "return": total_reward,
    }
