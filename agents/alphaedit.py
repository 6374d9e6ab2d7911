"""AlphaEdit (Fang et al., "Null-Space Constrained Knowledge Editing", ICLR 2025) as an agent.

Locate-then-edit (``agents.locate_edit``: MEMIT's target vectors and layer-by-layer spreading), with the
update confined to the null space of
the preserved keys: with C = E[k k^T] over general text, P = U_hat U_hat^T projects onto the
eigenvectors of C whose eigenvalues are below ``nullspace_threshold`` (C is symmetric, so its
eigendecomposition is its SVD). Each layer solves

    dW = (P (K^T K + K_p^T K_p) + l2 I)^-1 P K^T R       ((d_in, d_out) layout, rows of K are keys)

where K_p stacks the keys of the episode's earlier edits (read after their update, reset when a new
episode starts), so new edits do not overwrite old ones. The solution lies in P's range, hence
k^T dW ~ 0 for every preserved key k: E[||k^T dW||^2] = tr(dW^T C dW) <= threshold * ||dW||^2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from agents.auto_settings import AUTO, AutoSetting, check_positive
from agents.checkpoint import CheckpointError
from agents.key_stats import KeyStats
from agents.locate_edit import EditRequests, LocateEditConfig, LocateThenEdit


@dataclass
class AlphaEditConfig(LocateEditConfig):
    # Eigenvalues of C (a mean over tokens, so in squared key units) below this span the null space.
    # AlphaEdit uses 2e-2 on Llama-3-8B.
    # l2: the ridge term of the solve (AlphaEdit's L2; 10 on Llama-3-8B). Both "auto": the model's tuned
    # values, else the published threshold and a calibrated l2 (agents.auto_settings).
    AUTO_SETTINGS: ClassVar[dict[str, AutoSetting]] = {
        **LocateEditConfig.AUTO_SETTINGS,
        "nullspace_threshold": AutoSetting(2e-2),
        "l2": AutoSetting(10.0, (0.1, 1.0, 10.0)),
    }

    nullspace_threshold: float | str = AUTO
    l2: float | str = AUTO

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "nullspace_threshold", "l2")


class AlphaEdit(LocateThenEdit):
    """AlphaEdit's null-space constrained update, one batch of edits per step (``action_type="shift"``).

    Made as ``LocateThenEdit`` says (MEMIT's edit modules and statistics). ``null_space_dim[module]`` is
    the rank of each module's projection.
    """

    Config = AlphaEditConfig
    name = "alphaedit"

    def _prepare(self, stats: dict[str, KeyStats]) -> None:
        device = self.core.editable.device
        self.projections: dict[str, torch.Tensor] = {}
        self.null_space_dim: dict[str, int] = {}
        for name, module_stats in stats.items():
            eigenvalues, eigenvectors = torch.linalg.eigh(module_stats.second_moment.double())
            kept = eigenvectors[:, eigenvalues < self.config.nullspace_threshold]
            if kept.shape[1] == 0:
                raise ValueError(
                    f"{name}: no eigenvalue of the key covariance is below nullspace_threshold="
                    f"{self.config.nullspace_threshold} (the smallest is {float(eigenvalues[0]):.3g}); "
                    "raise the threshold"
                )
            self.projections[name] = (kept @ kept.t()).float().to(device)
            self.null_space_dim[name] = kept.shape[1]
        self._start_episode()

    def _start_episode(self) -> None:
        device = self.core.editable.device
        self.preserved_gram = {
            n: torch.zeros(d_in, d_in, device=device) for n, (d_in, _) in self.core.editable.shapes.items()
        }

    def episode_state(self) -> dict[str, Any]:
        return {"preserved_gram": dict(self.preserved_gram)}

    def load_episode_state(self, state: dict[str, Any]) -> None:
        gram = state.get("preserved_gram", {})
        current = self.preserved_gram
        if set(gram) != set(current) or any(gram[n].shape != current[n].shape for n in current):
            raise CheckpointError("AlphaEdit: the episode state's preserved keys do not fit the edit modules")
        self.preserved_gram = {n: gram[n].to(current[n]) for n in current}

    def _solve(self, name: str, keys: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        p = self.projections[name]
        system = p @ (keys.t() @ keys + self.preserved_gram[name])
        system = system + self.config.l2 * torch.eye(p.shape[0], device=p.device)
        return torch.linalg.solve(system, p @ keys.t() @ residual)

    def _after_batch(self, requests: EditRequests, updates: dict[str, torch.Tensor]) -> None:
        """Add this batch's keys, read at the weights after its update, to the preserved set."""
        read = self.core.editable.hidden_at(
            requests.rewrite, self.module_names, requests.rewrite_pos, updates=updates
        )
        for name in self.module_names:
            keys = self._mean_keys(read[name], requests)
            self.preserved_gram[name] += keys.t() @ keys
