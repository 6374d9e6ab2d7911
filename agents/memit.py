"""MEMIT (Meng et al., "Mass-Editing Memory in a Transformer", ICLR 2023) as an agent.

Locate-then-edit (``agents.locate_edit``: target vectors at the critical layer, spread over the edited
layers) with MEMIT's per-layer solve: the update minimises ||K dW - R||^2 + mom2_weight * tr(dW^T C dW),
C = E[k k^T] over general text, i.e.

    dW = (mom2_weight * C + K^T K)^-1 K^T R     ((d_in, d_out) layout, rows of K are keys).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from agents.auto_settings import AUTO, AutoSetting, check_positive
from agents.key_stats import KeyStats
from agents.locate_edit import LocateEditConfig, LocateThenEdit


@dataclass
class MEMITConfig(LocateEditConfig):
    # weight of the key covariance against the new keys (15000 on Llama-3-8B, whose down_proj reads
    # 14336 features: a typical key k has k^T C^-1 k ~ d_in, so the weight scales with the layer's width)
    # (15000 published; "auto": the model's tuned value, else calibrated, agents.auto_settings)
    AUTO_SETTINGS: ClassVar[dict[str, AutoSetting]] = {
        **LocateEditConfig.AUTO_SETTINGS,
        "mom2_weight": AutoSetting(15000.0, (10.0, 100.0, 1000.0, 10000.0)),
    }

    mom2_weight: float | str = AUTO

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "mom2_weight")


class MEMIT(LocateThenEdit):
    """MEMIT's closed-form multi-layer update, one batch of edits per step (``action_type="shift"``);
    made as ``LocateThenEdit`` says."""

    Config = MEMITConfig
    name = "memit"
    carries_nothing = True

    def _prepare(self, stats: dict[str, KeyStats]) -> None:
        device = self.core.editable.device
        self._cov = {n: s.second_moment.to(device) for n, s in stats.items()}

    def _solve(self, name: str, keys: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """dW = (mom2_weight * C + K^T K)^-1 K^T R, (d_in, d_out)."""
        gram = self.config.mom2_weight * self._cov[name] + keys.t() @ keys
        return torch.linalg.solve(gram, keys.t() @ residual)
