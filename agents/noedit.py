"""No edit: the zero update, the baseline that shows what the unedited model scores."""

from __future__ import annotations

import torch

from agents.base import EditAgent, like_observation


class NoEdit(EditAgent):
    """Always dW = 0 (the "shift" interface)."""

    action_type = "shift"
    name = "noedit"
    carries_nothing = True

    def act(self, observation) -> dict:
        device = self.core.editable.device
        zeros = {m: torch.zeros(shape, device=device) for m, shape in self.core.editable.shapes.items()}
        return like_observation(zeros, observation)
