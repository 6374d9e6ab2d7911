"""The agents the benchmark knows, and how to build each one's environment and train it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class AgentSpec:
    """How the harness builds, trains and names an agent.

    ``load`` returns the agent class (imported lazily, so optional parts cost nothing unless used);
    ``env_kwargs`` are the environment settings the agent acts through; ``edit_modules`` overrides
    the model's default edit modules (closed-form editors write into MLP output projections).
    """

    load: Callable[[], type]
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    trainable: bool = False
    train: bool = True  # False: a trainable agent evaluated untrained (an ablation)
    edit_modules: Callable[[Any], list[str]] | None = None
    description: str = ""


def _agent(name: str) -> Callable[[], type]:
    def load() -> type:
        import agents

        return getattr(agents, name)

    return load


def _memit_modules(config) -> list[str]:
    from agents.memit import MEMIT

    return MEMIT.preferred_edit_modules(config)


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
    if name not in AGENTS:
        raise ValueError(f"unknown agent {name!r}; known agents: {', '.join(AGENTS)}")
    return AGENTS[name]
