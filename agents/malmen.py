"""MALMEN (Tan et al., ICLR 2024): hypernetwork value differences, turned into an update by a ridge solve."""

from __future__ import annotations

import dataclasses
from typing import Any

from agents.hypernetwork import HyperNetworkEditor, OneStepTrainingConfig, malmen_values


@dataclasses.dataclass
class MALMENConfig(OneStepTrainingConfig):
    """MALMEN's hyperparameters (as ``OneStepTrainingConfig``; its locality coefficient is 1)."""


class MALMEN(HyperNetworkEditor):
    """MALMEN as an agent of the "values" interface.

    Per token i of module m the hypernetwork gives (u~_i, delta~_i) and the value difference is
    v_i = -lr_m * (u_i . u~_i) * delta~_i; the environment solves the ridge problem
    dW = argmin ||U dW - V||^2 + exp(log_lambda_m) ||dW||^2 with the observed keys U. Padding tokens
    get zero values. Trained one batch at a time on the unedited model (``HyperNetworkEditor.learn``),
    then frozen and applied sequentially.
    """

    Config = MALMENConfig
    action_type = "values"
    name = "malmen"

    def policy(self, observation, update_stats: bool) -> dict[str, Any]:
        return malmen_values(self.net, *self._inputs(observation), update_stats)


__all__ = ["MALMEN", "MALMENConfig"]
