"""A plain gradient step: the simplest editor, and the naive sequential editing that lifelong editing
improves on."""

from __future__ import annotations

import dataclasses

import torch

from agents.base import AgentConfig, EditAgent, like_observation


@dataclasses.dataclass
class PlainGradientConfig(AgentConfig):
    lr: float = 0.1


class PlainGradient(EditAgent):
    """dW = -lr * keys^T @ value_grads: one plain gradient step on the batch's edit loss ("shift").

    The observation holds everything it needs (the gradient of each edit module's weight is
    keys^T @ value_grads); unlike ``FineTune`` there is no optimiser and no re-scoring.
    """

    Config = PlainGradientConfig
    action_type = "shift"
    name = "gradient"
    carries_nothing = True

    def act(self, observation) -> dict:
        keys, grads = observation["keys"], observation["value_grads"]
        update = {m: -self.config.lr * torch.as_tensor(keys[m]).T @ torch.as_tensor(grads[m]) for m in keys}
        return like_observation(update, observation)
