"""MEND (Mitchell et al., ICLR 2022): the update is a learned rank-N transform of the gradient."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from agents.auto_settings import AutoSetting
from agents.hypernetwork import HyperNetworkEditor, OneStepTrainingConfig


@dataclasses.dataclass
class MENDConfig(OneStepTrainingConfig):
    """MEND's hyperparameters. Its pseudo-gradients live in the normaliser's units (O(1) per feature),
    not the raw gradient's, so its step size starts far above MALMEN's (MEND's own edit lr is 1e-4)."""

    AUTO_SETTINGS: ClassVar[dict[str, AutoSetting]] = {
        **OneStepTrainingConfig.AUTO_SETTINGS,
        "init_lr": AutoSetting(1e-4, OneStepTrainingConfig.AUTO_SETTINGS["init_lr"].grid),
    }


class MEND(HyperNetworkEditor):
    """MEND as an agent of the "shift" interface: dW_m = -lr_m * sum_i u~_i delta~_i^T over the real tokens.

    Uses the same hypernetwork as MALMEN (docs/design.md); trained one batch at a time on the
    unedited model (``HyperNetworkEditor.learn``), then frozen and applied sequentially.
    """

    Config = MENDConfig
    action_type = "shift"
    name = "mend"
    ridge = False

    def policy(self, observation, update_stats: bool) -> dict[str, Any]:
        keys, value_grads, mask = self._inputs(observation)
        return {
            m: -self.net.lr[self.net.index(m)] * (pseudo_keys * mask.unsqueeze(-1)).T @ pseudo_grads
            for m, (pseudo_keys, pseudo_grads) in self.net(keys, value_grads, mask, update_stats).items()
        }
