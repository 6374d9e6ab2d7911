"""stable-baselines3 on lifelong editing: a callback that logs the editing metrics, and an adapter that
lets an SB3 model, trained on the compact interface, edit in the benchmark like any other agent.

Training is SB3's own::

    env = gymnasium.make("rledit_env/LifelongEditCompact-v0", model="tinyworld", split="train")
    model = PPO("MlpPolicy", env, tensorboard_log="runs").learn(20_000, callback=EditMetricsCallback())
    agent = SB3Agent(eval_env, model)  # eval_env: LifelongEditEnv(action_type="values", split="eval")
    run_episode(eval_env, agent, seed=0)
    agent.save("ppo.safetensors"); SB3Agent.load("ppo.safetensors", eval_env)

The compact settings (``SB3AgentConfig``'s projection_dim, base_step, ...) must be those the model was
trained with, or its observations mean something else.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import io
import json
import math
import zipfile
from typing import Any

import gymnasium as gym
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList

from agents.base import AgentConfig, Callback, CheckpointError, EditAgent
from rledit_env.wrappers.compact import CompactConfig, CompactEditWrapper


class EditMetricsCallback(BaseCallback):
    """Records the editing metrics of every finished episode (``info["metrics"]``: eff, gen, spe, their
    variants, ppl) in SB3's logger as ``edit/<name>``, averaged over the episodes between two dumps, so
    they reach every output the logger writes (stdout, CSV, TensorBoard with ``tensorboard_log``)."""

    def __init__(self, prefix: str = "edit/", verbose: int = 0):
        super().__init__(verbose)
        self.prefix = prefix

    def _on_step(self) -> bool:
        for info, done in zip(self.locals["infos"], self.locals["dones"], strict=True):
            if not done:
                continue
            for name, value in info.get("metrics", {}).items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.logger.record_mean(self.prefix + name, float(value))
        return True


class _AgentCallback(BaseCallback):
    """Calls an ``agents.base.Callback`` at each finished episode, with its return and metrics."""

    def __init__(self, agent: SB3Agent, callback: Callback):
        super().__init__()
        self.agent, self.callback, self.episodes = agent, callback, 0

    def _on_step(self) -> bool:
        keep_going = True
        for info, done in zip(self.locals["infos"], self.locals["dones"], strict=True):
            if done:
                logs = {"return": info.get("episode", {}).get("r", math.nan), **info.get("metrics", {})}
                keep_going &= self.callback.on_episode_end(self.agent, self.episodes, logs) is not False
                self.episodes += 1
        return keep_going


@dataclasses.dataclass
class SB3AgentConfig(CompactConfig, AgentConfig):
    """The compact interface's settings (``CompactConfig``), plus how to build a fresh model when none is
    given: ``algorithm`` (a class of ``stable_baselines3``), ``policy`` and ``algorithm_kwargs``;
    ``deterministic`` acting; ``train_num_batches``, the T of the default training episodes (None: the
    evaluation env's T); ``train_episodes``, what ``learn()`` trains for when not told."""

    algorithm: str = "PPO"
    policy: str = "MlpPolicy"
    algorithm_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    deterministic: bool = True
    train_num_batches: int | None = None
    train_episodes: int = 100


class SB3Agent(EditAgent):
    """A stable-baselines3 model acting through the compact interface on a core ``LifelongEditEnv``.

    ``act(obs) = wrapper.action(model.predict(wrapper.observation(obs)), obs)``, where ``wrapper`` is a
    ``CompactEditWrapper`` with this config's settings. Without ``model`` a fresh one is built
    (``config.algorithm``), for ``learn``. ``save`` stores the model with SB3's own ``save`` (its zip,
    inside the agent checkpoint, with the class it was made with); ``load`` rebuilds it through SB3's
    ``load`` without unpickling (see ``load_state_dict``).
    """

    Config = SB3AgentConfig
    action_type = "values"
    name = "sb3"

    def __init__(
        self, env: gym.Env, model: BaseAlgorithm | None = None, config: SB3AgentConfig | None = None
    ):
        if isinstance(model, AgentConfig):  # EditAgent.load passes the config second
            model, config = None, model
        super().__init__(env, config)
        self.wrapper = CompactEditWrapper(env, self.config)
        if model is None:
            algorithm = getattr(importlib.import_module("stable_baselines3"), self.config.algorithm, None)
            if not (isinstance(algorithm, type) and issubclass(algorithm, BaseAlgorithm)):
                raise ValueError(
                    f"unknown stable-baselines3 algorithm {self.config.algorithm!r} (e.g. PPO, A2C, SAC, TD3)"
                )
            model = self._fresh_model(algorithm)
        self.model = self._checked(model)

    def _fresh_model(self, algorithm: type[BaseAlgorithm]) -> BaseAlgorithm:
        """An untrained ``algorithm`` model on this agent's compact interface, with its config's settings."""
        return algorithm(
            self.config.policy, self.wrapper, seed=self.config.seed, **self.config.algorithm_kwargs
        )

    def _checked(self, model: BaseAlgorithm) -> BaseAlgorithm:
        if not isinstance(model, BaseAlgorithm):
            raise TypeError(f"model must be a stable-baselines3 algorithm, got {type(model).__name__}")
        for what in ("observation_space", "action_space"):
            ours, theirs = getattr(self.wrapper, what), getattr(model, what)
            if getattr(theirs, "shape", None) != ours.shape:
                raise ValueError(
                    f"the model's {what} is {theirs}, but this environment's compact {what} is {ours} "
                    "(another batch size, model or projection_dim?)"
                )
        return model

    def act(self, observation) -> dict:
        action, _ = self.model.predict(
            self.wrapper.observation(observation), deterministic=self.config.deterministic
        )
        return self.wrapper.action(action, observation)

    def learn(
        self,
        episodes: int | None = None,
        *,
        train_env: gym.Env | None = None,
        callback: Callback | None = None,
        progress_bar: bool = True,
    ) -> SB3Agent:
        """SB3's ``learn`` for ``episodes`` episodes (default ``config.train_episodes``) of ``train_env``,
        logging the editing metrics with ``EditMetricsCallback``. ``train_env`` (a core env with
        action_type "values") defaults to one on the model's "train" split with this env's schedule and
        reward, sharing the model, whose edit modules are given back as they were."""
        episodes = self.config.train_episodes if episodes is None else episodes
        if episodes <= 0:
            return self
        own_env = train_env is None
        cfg = self.config
        env = self.training_env(
            train_env, num_batches=cfg.train_num_batches or self.core.num_batches, evaluate_at_end=True
        )
        wrapper = CompactEditWrapper(env, self.config)
        self.model.set_env(wrapper)
        # the episodes, like the model's own randomness, follow the seed (unseeded envs draw from the OS)
        self.model.env.seed(self.config.seed + self.model.num_timesteps)
        callbacks: list[BaseCallback] = [EditMetricsCallback()]
        if callback is not None:
            callback.on_training_start(self)
            callbacks.append(_AgentCallback(self, callback))
        try:
            self.model.learn(
                episodes * wrapper.num_batches,
                callback=CallbackList(callbacks),
                progress_bar=progress_bar,
                reset_num_timesteps=False,
            )
        finally:
            if own_env:
                env.close()  # restores the weights it snapshotted: the ones before training
        if callback is not None:
            callback.on_training_end(self)
        return self

    def state_dict(self) -> dict[str, Any]:
        buffer = io.BytesIO()
        self.model.save(buffer)
        cls = type(self.model)
        return {"algorithm": f"{cls.__module__}:{cls.__qualname__}", "model_zip": buffer.getvalue()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Rebuild the model with SB3's ``load``, without unpickling anything: SB3's zip keeps the policy
        class, spaces and schedules as cloudpickle blobs, which could run code; they are taken instead
        from a model built from this agent's config (the weights themselves load as plain tensors)."""
        try:
            algorithm = _algorithm_class(state["algorithm"])
            model_zip = state["model_zip"]
            template = self.model if type(self.model) is algorithm else self._fresh_model(algorithm)
            pickled = _pickled_entries(model_zip)
            custom = {key: copy.copy(getattr(template, key, None)) for key in pickled}
            model = algorithm.load(io.BytesIO(model_zip), device=self.model.device, custom_objects=custom)
        except (KeyError, TypeError, AttributeError, ValueError, RuntimeError, zipfile.BadZipFile) as exc:
            raise CheckpointError(f"SB3Agent: the checkpoint's model does not load ({exc})") from exc
        self.model = self._checked(model)


def _algorithm_class(spec: str) -> type[BaseAlgorithm]:
    """The algorithm class ``module:name`` of a checkpoint, from stable-baselines3 only: a file must not
    choose which module gets imported."""
    module, _, name = spec.partition(":")
    if module.split(".")[0] != "stable_baselines3":
        raise ValueError(f"the algorithm {spec!r} is not one of stable-baselines3")
    algorithm = getattr(importlib.import_module(module), name, None)
    if not (isinstance(algorithm, type) and issubclass(algorithm, BaseAlgorithm)):
        raise ValueError(f"{spec!r} is not a stable-baselines3 algorithm")
    return algorithm


def _pickled_entries(model_zip: bytes) -> list[str]:
    """The entries of an SB3 zip's "data" that SB3's loader would unpickle (cloudpickle)."""
    with zipfile.ZipFile(io.BytesIO(model_zip)) as archive:
        data = json.loads(archive.read("data"))
    return [key for key, value in data.items() if isinstance(value, dict) and ":serialized:" in value]
