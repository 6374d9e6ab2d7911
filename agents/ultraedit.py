"""UltraEdit (Gu et al., "UltraEdit: Training-, Subject-, and Memory-Free Lifelong Editing in Language
Models", TMLR 2026; public code github.com/XiaojieGu/UltraEdit) as an agent of the "values" interface.

No training and no hypernetwork: per batch, for each edit module m and answer token i,

1. a *lifelong normaliser* per module shape (running mean and variance of x = [u, delta], the key
   and the value gradient concatenated) folds in the batch's real tokens of every module of that
   shape; it is carried across the whole edit sequence and starts afresh with each episode;
2. [u^, delta^] = (x - mean) / std;
3. the value difference is v_i = -lr * ||u^_i||^2 * delta^_i (still in normalised units);
4. the environment solves dW = (U^T U + lambda I)^-1 U^T V with the *raw* keys U, lambda = 1.

Where it follows the public code (``editor/ultraedit.py``): the statistics are updated with the batch
before it is normalised (so the first batch is normalised by its own statistics), one normaliser is
shared by the modules of a shape and updated with each of them, the norm is of the normalised key,
delta^ is not denormalised, and the ridge solve uses the raw keys with lambda = 1 (``log_lambda`` 0).

Where it departs: the public code keeps a set of normalisers for each of its ``editor.iters`` editing
rounds and pads token chunks with zeros that it then drops; here there is one round, one normaliser per
shape, and padding tokens never reach the statistics (``mask``). The statistics are fp64 Welford sums
(``agents.running_stats.RunningNorm``, shared with the hypernetwork editors and StableEdit). The
published lr 1e-6 is for 7-8B models; smaller models need another scale (docs/tinyworld-settings.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import torch
from torch import nn

from agents.auto_settings import AUTO, AutoSetting, check_positive
from agents.base import AgentConfig, CheckpointError, EditAgent, like_observation
from agents.running_stats import RunningNorm


@dataclass
class UltraEditConfig(AgentConfig):
    """UltraEdit's hyperparameters (published values for Llama-3-8B, Mistral-7B and Qwen2.5-7B)."""

    # published 1e-6 (7-8B models); "auto": the model's tuned value, else calibrated (agents.auto_settings)
    AUTO_SETTINGS: ClassVar[dict[str, AutoSetting]] = {
        "lr": AutoSetting(1e-6, (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3))
    }

    lr: float | str = AUTO  # step size of the value differences
    log_lambda: float = 0.0  # ridge lambda = exp(log_lambda) = 1

    def __post_init__(self) -> None:
        check_positive(self, "lr")
        if not math.isfinite(self.log_lambda):
            raise ValueError(f"log_lambda must be finite, got {self.log_lambda}")


class UltraEdit(EditAgent):
    """Training-free lifelong editor: normalised value gradients, scaled by the normalised key's squared
    norm, turned into an update by the environment's ridge solve (see the module docstring).

    ``norms`` maps each module shape (d_in, d_out) to its lifelong normaliser; it is reset when an
    episode starts (an observation with step 0). StableEdit (``agents.stableedit``) is this agent with
    another normaliser (``new_statistics``) and a warm-up (``start_step``).
    """

    Config = UltraEditConfig
    action_type = "values"
    name = "ultraedit"

    def __init__(self, env: gym.Env, config: UltraEditConfig | None = None):
        super().__init__(env, config)
        editable = self.core.editable
        self.device = editable.device
        self.groups: dict[tuple[int, int], list[str]] = {}  # shape -> the modules of that shape
        for module, shape in editable.shapes.items():
            self.groups.setdefault(tuple(shape), []).append(module)
        self.norms: dict[tuple[int, int], RunningNorm] = {}
        self.reset_statistics()

    def new_statistics(self) -> dict[tuple[int, int], nn.Module]:
        """Empty normalisers, one per module shape."""
        return {shape: RunningNorm(sum(shape)).to(self.device) for shape in self.groups}

    def reset_statistics(self) -> None:
        """Forget the normalisers' statistics (a new edit sequence)."""
        self.norms = self.new_statistics()

    def episode_state(self) -> dict[str, Any]:
        return {f"{d_in}x{d_out}": norm.state_dict() for (d_in, d_out), norm in self.norms.items()}

    def load_episode_state(self, state: dict[str, Any]) -> None:
        norms = self.new_statistics()
        try:
            for (d_in, d_out), norm in norms.items():
                norm.load_state_dict(state[f"{d_in}x{d_out}"])
        except (KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{type(self).__name__}: the episode state does not fit ({exc})") from exc
        self.norms = norms

    def start_step(self, step: int) -> None:
        """Called with each observation's step t before its batch is folded in: t = 0 starts afresh."""
        if step == 0:
            self.reset_statistics()

    def features(self, observation) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Each module's x = [u, delta] (N, d_in + d_out) and the mask (N,), as float32 torch tensors."""

        def tensor(x) -> torch.Tensor:
            return torch.as_tensor(x, device=self.device, dtype=torch.float32)

        features = {
            m: torch.cat([tensor(observation["keys"][m]), tensor(observation["value_grads"][m])], -1)
            for modules in self.groups.values()
            for m in modules
        }
        return features, tensor(observation["mask"])

    def fold_in(self, norms: dict, features: dict[str, torch.Tensor], mask: torch.Tensor) -> None:
        """Update each shape's normaliser in ``norms`` with the real tokens of its modules' features."""
        real = mask.bool()
        for shape, modules in self.groups.items():
            for m in modules:
                norms[shape].update(features[m][real])

    def act(self, observation):
        self.start_step(int(observation["step"][0]))
        features, mask = self.features(observation)
        values, log_lambda = {}, {}
        with torch.no_grad():
            self.fold_in(self.norms, features, mask)  # the whole batch, before any of it is normalised
            for shape, modules in self.groups.items():
                for m in modules:
                    keys_hat, grads_hat = self.norms[shape](features[m]).split(list(shape), -1)
                    coeff = -self.config.lr * keys_hat.pow(2).sum(-1) * mask  # padding tokens get 0
                    values[m] = coeff.unsqueeze(-1) * grads_hat
                    log_lambda[m] = torch.full((1,), self.config.log_lambda, device=self.device)
        return like_observation({"values": values, "log_lambda": log_lambda}, observation)


__all__ = ["UltraEdit", "UltraEditConfig"]
