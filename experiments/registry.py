"""The agents the benchmark knows, and how to build each one's environment and train it."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class AgentSpec:
    """How the harness builds, trains and names an agent.

    ``load`` returns the agent class (imported lazily, so optional parts cost nothing unless used);
    ``env_kwargs`` are the environment settings the agent acts through; ``edit_modules`` overrides
    the model's default edit modules (closed-form editors write into MLP output projections);
    ``defaults`` are config values under a benchmark's own per-agent settings (which algorithm an
    SB3 entry runs, for instance).
    """

    load: Callable[[], type]
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    trainable: bool = False
    train: bool = True  # False: a trainable agent evaluated untrained (an ablation)
    edit_modules: Callable[[Any], list[str]] | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""


def _agent(name: str) -> Callable[[], type]:
    def load() -> type:
        import agents

        return getattr(agents, name)

    return load


def _memit_modules(config) -> list[str]:
    from agents.memit import MEMIT

    return MEMIT.preferred_edit_modules(config)


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
        description="fine-tuning: gradient steps on the edit loss",
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
        edit_modules=_memit_modules,
        description="MEMIT: closed-form least squares on MLP output projections",
    ),
    "alphaedit": AgentSpec(
        _agent("AlphaEdit"),
        {"action_type": "shift"},
        edit_modules=_memit_modules,
        description="AlphaEdit: MEMIT projected onto the null space of preserved keys",
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
        description=(cls.__doc__ or "").strip().split("\n")[0],
    )
