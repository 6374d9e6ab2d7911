"""The agents the benchmark knows, and the one way to build, train or load each of them
(``build_agent`` and ``train_or_load``, used by the harness and the command line alike)."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class AgentSpec:
    """How the harness builds, trains and names an agent.

    ``load`` returns the agent class (imported lazily, so optional parts cost nothing unless used);
    ``env_kwargs`` are the environment settings the agent acts through; ``edit_modules`` overrides
    the model's default edit modules (closed-form editors write into MLP output projections);
    ``defaults`` are config values under a benchmark's own per-agent settings (which algorithm an
    SB3 entry runs, for instance). ``needs_reward``: the agent reads the environment's reward or its
    loss terms while editing (not only in training); the harness turns the reward off for the others.
    """

    load: Callable[[], type]
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    trainable: bool = False
    train: bool = True  # False: a trainable agent evaluated untrained (an ablation)
    edit_modules: Callable[[Any], list[str]] | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    needs_reward: bool = False
    fixed_training: bool = False  # the procedure fixes its training budget: --train-episodes leaves it
    description: str = ""


def _agent(name: str) -> Callable[[], type]:
    def load() -> type:
        import agents

        return getattr(agents, name)

    return load


def _own_modules(agent: str) -> Callable[[Any], list[str]]:
    """The edit modules ``agent`` chooses for itself (``rledit_env.presets.EDITOR_MODULES``)."""

    def modules(config) -> list[str]:
        from rledit_env import presets

        return getattr(presets, presets.EDITOR_MODULES[agent])(config)

    return modules


# Rollouts and replay that start short enough for a few hundred environment steps to train.
_SB3_SMALL_BUDGET = {
    "PPO": {"n_steps": 100, "batch_size": 50, "n_epochs": 10},
    "SAC": {"learning_starts": 100, "batch_size": 64},
}

AGENTS: dict[str, AgentSpec] = {
    "rledit": AgentSpec(
        _agent("RLEdit"),
        {"action_type": "values"},
        trainable=True,
        description="RLEdit: hypernetwork trained on whole edit sequences through the reward",
    ),
    "rledit-published": AgentSpec(
        _agent("RLEdit"),
        {"action_type": "values"},
        trainable=True,
        defaults={
            "train_episodes": 1,
            "clip_every_step": True,
            "normaliser": "carry",
            "reward": {  # one paraphrase (no edit prompt) and one neighbour; the regulariser has no gradient
                "paraphrases_per_edit": 1,
                "neighbours_per_edit": 1,
                "gen_edit_prompts": False,
                "reg_gradient": False,
            },
        },
        fixed_training=True,
        description=(
            "RLEdit as published: one sequence as long as the evaluation's, one optimiser step moving each "
            "network weight by the published 1e-5 and the step sizes by 10x their initial value"
        ),
    ),
    "rledit-untrained": AgentSpec(
        _agent("RLEdit"),
        {"action_type": "values"},
        trainable=True,
        train=False,
        description="RLEdit's hypernetwork before training (ablation: what training buys)",
    ),
    "malmen": AgentSpec(
        _agent("MALMEN"),
        {"action_type": "values"},
        trainable=True,
        description="MALMEN: hypernetwork + ridge solve, trained on the unedited model",
    ),
    "mend": AgentSpec(
        _agent("MEND"),
        {"action_type": "shift"},
        trainable=True,
        description="MEND: hypernetwork on rank-one gradients, trained on the unedited model",
    ),
    "finetune": AgentSpec(
        _agent("FineTune"),
        {"action_type": "shift"},
        needs_reward=True,  # its "gen" objective re-scores candidates with the reward's terms
        description="fine-tuning: gradient steps on the edit loss",
    ),
    "gradient": AgentSpec(
        _agent("PlainGradient"),
        {"action_type": "shift"},
        description="a plain gradient step on the edit loss, dW = -lr U^T D (naive sequential editing)",
    ),
    "noedit": AgentSpec(_agent("NoEdit"), {"action_type": "shift"}, description="no edit (reference)"),
    "ppo": AgentSpec(
        _agent("SB3Agent"),
        {"action_type": "values"},
        trainable=True,
        defaults={"algorithm": "PPO", "algorithm_kwargs": _SB3_SMALL_BUDGET["PPO"]},
        description="stable-baselines3 PPO on the compact interface (per-edit step sizes + ridge lambda)",
    ),
    "sac": AgentSpec(
        _agent("SB3Agent"),
        {"action_type": "values"},
        trainable=True,
        defaults={"algorithm": "SAC", "algorithm_kwargs": _SB3_SMALL_BUDGET["SAC"]},
        description="stable-baselines3 SAC on the compact interface (per-edit step sizes + ridge lambda)",
    ),
    "memit": AgentSpec(
        _agent("MEMIT"),
        {"action_type": "shift"},
        edit_modules=_own_modules("memit"),
        description="MEMIT: closed-form least squares on MLP output projections",
    ),
    "alphaedit": AgentSpec(
        _agent("AlphaEdit"),
        {"action_type": "shift"},
        edit_modules=_own_modules("alphaedit"),
        description="AlphaEdit: MEMIT projected onto the null space of preserved keys",
    ),
    "ultraedit": AgentSpec(
        _agent("UltraEdit"),
        {"action_type": "values"},
        edit_modules=_own_modules("ultraedit"),
        description="UltraEdit: training-free, lifelong-normalised value gradients + ridge solve",
    ),
    "stableedit": AgentSpec(
        _agent("StableEdit"),
        {"action_type": "values"},
        edit_modules=_own_modules("stableedit"),  # UltraEdit's: see agents/stableedit.py
        description=(
            "StableEdit: UltraEdit with whitened value gradients and statistics warmed up on training edits"
        ),
    ),
}


def agent_spec(name: str) -> AgentSpec:
    """The registered agent ``name``, or any ``EditAgent`` subclass named ``"package.module:Class"``
    (how a new algorithm joins a benchmark without being registered here)."""
    if name in AGENTS:
        return AGENTS[name]
    if ":" in name:
        return _imported_spec(name)
    raise ValueError(
        f"unknown agent {name!r}; known agents: {', '.join(AGENTS)}, or 'package.module:Class' for your own"
    )


def _imported_spec(path: str) -> AgentSpec:
    from agents.base import EditAgent

    module_name, _, class_name = path.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"agent {path!r}: cannot import it ({exc})") from exc
    if not (isinstance(cls, type) and issubclass(cls, EditAgent)):
        raise ValueError(f"agent {path!r} is not a subclass of agents.EditAgent")
    return AgentSpec(
        lambda: cls,
        {"action_type": cls.action_type},
        trainable=cls.learn is not EditAgent.learn,
        needs_reward=True,  # unknown: keep the reward on
        description=(cls.__doc__ or "").strip().split("\n")[0],
    )


def agent_settings(name: str, spec: AgentSpec, overrides: dict[str, Any]) -> dict[str, Any]:
    """The config values of agent ``name``: its registry defaults, then ``overrides`` (a benchmark's
    per-agent settings); a setting its config does not have is an error (a typo would otherwise pass
    unnoticed)."""
    config_cls = spec.load().Config
    settings = {**spec.defaults, **overrides}
    unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(config_cls)})
    if unknown:
        raise ValueError(f"agent_configs[{name!r}]: {config_cls.__name__} has no settings {unknown}")
    return settings


def build_agent(
    name: str, env, overrides: dict[str, Any] | None = None, seed: int = 0, *, progress: bool = True
):
    """Agent ``name`` (registered, or ``"package.module:Class"``) bound to ``env``, with its registry
    defaults, ``overrides`` on top and ``seed``, and its settings left at "auto" filled in for the
    model (``agents.auto_settings``; ``agent.settings_sources`` says from where); ``progress`` reaches
    agents whose construction shows a progress bar (key statistics, a calibration)."""
    from agents.auto_settings import resolve_settings

    spec = agent_spec(name)
    cls = spec.load()
    config = cls.Config(**{**agent_settings(name, spec, overrides or {}), "seed": seed})
    # "auto" settings from the model's table under the registry name first ("rledit-published")
    resolved = resolve_settings(cls, config, env, (name,), progress=progress)
    if "progress" in inspect.signature(cls).parameters:
        agent = cls(env, resolved.config, progress=progress)
    else:
        agent = cls(env, resolved.config)
    agent.settings_sources = resolved.sources
    return agent


def train_or_load(
    agent,
    checkpoint: str | Path | None,
    *,
    episodes: int | None = None,
    reuse: bool = True,
    progress: bool = True,
    callback=None,
) -> tuple[Any, float]:
    """The trained ``agent`` and the seconds its training took (0.0 when loaded).

    With ``reuse`` and an existing ``checkpoint``, the agent saved there is loaded for ``agent``'s
    environment; otherwise ``agent`` trains (``episodes``, or its config's default) and is saved to
    ``checkpoint`` when one is given. ``callback`` (an ``agents.base.Callback``, e.g. the TensorBoard
    ``experiments.tracking.CurveLogger``) sees the training episodes.
    """
    cls = type(agent)
    if reuse and checkpoint is not None and Path(checkpoint).exists():
        return cls.load(checkpoint, agent.env), 0.0
    start = time.perf_counter()
    kwargs: dict[str, Any] = {"progress_bar": progress}
    if callback is not None:  # a custom agent's learn may take no callback
        kwargs["callback"] = callback
    if episodes is None:  # the agent's own default (a custom agent's may not accept None)
        agent.learn(**kwargs)
    else:
        agent.learn(episodes, **kwargs)
    seconds = time.perf_counter() - start
    if checkpoint is not None:
        Path(checkpoint).parent.mkdir(parents=True, exist_ok=True)
        agent.save(checkpoint)
    return agent, seconds
