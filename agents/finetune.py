"""Fine-tuning: a few gradient steps on the edit loss per batch, the baseline that needs no training."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import ClassVar

import torch

from agents.auto_settings import AUTO, AutoSetting, check_positive
from agents.base import AgentConfig, EditAgent, like_observation
from rledit_env.tokenization import encode_batch

OBJECTIVES = ("edit", "gen")


@dataclasses.dataclass
class FineTuneConfig(AgentConfig):
    """Fine-tuning's hyperparameters.

    ``steps`` Adam steps of learning rate ``lr`` on the edit modules' update dW, each module's dW kept
    within Frobenius norm ``max_norm`` when set. ``objective``: "edit" (the edit prompts' answer
    cross-entropy, the loss the observation's gradient is of, as FT baselines do) or "gen" (the
    environment's L_gen: edit *and paraphrase* prompts, the very prompts the Gen metric scores).
    """

    AUTO_SETTINGS: ClassVar[dict[str, AutoSetting]] = {
        "lr": AutoSetting(1e-3, (1e-4, 3e-4, 1e-3, 3e-3, 1e-2))
    }

    lr: float | str = AUTO  # the model's tuned value, else calibrated (agents.auto_settings)
    steps: int = 10
    max_norm: float | None = None
    objective: str = "edit"

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        check_positive(self, "lr")
        if self.max_norm is not None and self.max_norm <= 0:
            raise ValueError(f"max_norm must be > 0, got {self.max_norm}")


class FineTune(EditAgent):
    """Constrained fine-tuning of the edit modules, batch by batch (the "shift" interface).

    The first step uses the gradient the observation already holds (keys^T @ value_grads, at dW = 0);
    later steps score theta_{t-1} + dW functionally (the model is not touched until ``env.step``).
    """

    Config = FineTuneConfig
    action_type = "shift"
    name = "finetune"
    carries_nothing = True

    def act(self, observation) -> dict:
        cfg, editable = self.config, self.core.editable
        device = editable.device
        deltas = {
            m: torch.zeros(shape, device=device, requires_grad=True) for m, shape in editable.shapes.items()
        }
        optimizer = torch.optim.Adam(deltas.values(), lr=cfg.lr)
        loss = self._objective()
        with torch.enable_grad():
            for step in range(cfg.steps):
                if step == 0:
                    grads = [
                        torch.as_tensor(observation["keys"][m], device=device).T
                        @ torch.as_tensor(observation["value_grads"][m], device=device)
                        for m in deltas
                    ]
                else:
                    grads = torch.autograd.grad(loss(deltas), list(deltas.values()))
                for delta, grad in zip(deltas.values(), grads, strict=True):
                    delta.grad = grad
                optimizer.step()
                if cfg.max_norm is not None:
                    self._project(deltas.values(), cfg.max_norm)
        return like_observation({m: d.detach() for m, d in deltas.items()}, observation)

    def _objective(self) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
        core = self.core
        if self.config.objective == "gen":
            return lambda deltas: core.candidate_losses(deltas)["gen"]
        records = core.current_records
        batch = encode_batch(
            core.editable.tokenizer, [r.prompt for r in records], [r.target_new for r in records]
        )
        # the layers below the first edited one never change: run once a batch, not once a step;
        # packed: the MLPs skip the padding (no hook here indexes the batch's rows)
        prefix = core.editable.frozen_prefix(batch)
        return lambda deltas: (
            core.editable.target_logits(batch, deltas, prefix=prefix, packed=True).nll().mean()
        )

    @staticmethod
    @torch.no_grad()
    def _project(deltas, max_norm: float) -> None:
        for delta in deltas:
            norm = torch.linalg.vector_norm(delta)
            if norm > max_norm:
                delta.mul_(max_norm / norm)
