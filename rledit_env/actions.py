"""Validation of actions, before anything touches the weights.

Every check runs on the whole action first; only a fully valid action is converted and applied, so
a refused action leaves the model bitwise as it was.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch


class InvalidActionError(ValueError):
    """An action that the environment refuses; the model is unchanged."""


def _as_tensor(value, where: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        tensor = value
    elif isinstance(value, np.ndarray):
        if not np.issubdtype(value.dtype, np.floating):
            raise InvalidActionError(f"{where}: dtype {value.dtype} is not floating point")
        tensor = torch.from_numpy(value)
    else:
        raise InvalidActionError(
            f"{where}: expected a numpy array or torch tensor, got {type(value).__name__}"
        )
    if not tensor.is_floating_point():
        raise InvalidActionError(f"{where}: dtype {tensor.dtype} is not floating point")
    return tensor


def check_module_dict(
    action, expected: Mapping[str, tuple[int, ...]], where: str, device: torch.device
) -> dict[str, torch.Tensor]:
    """A dict {module name: array} with exactly the expected names and shapes, all finite."""
    if not isinstance(action, Mapping):
        raise InvalidActionError(
            f"{where}: expected a dict keyed by edit-module name, got {type(action).__name__}"
        )
    missing = sorted(set(expected) - set(action))
    extra = sorted(set(action) - set(expected))
    if missing or extra:
        raise InvalidActionError(f"{where}: missing modules {missing}, unexpected modules {extra}")
    out = {}
    for name, shape in expected.items():
        tensor = _as_tensor(action[name], f"{where}[{name!r}]")
        if tuple(tensor.shape) != tuple(shape):
            raise InvalidActionError(
                f"{where}[{name!r}]: shape {tuple(tensor.shape)}, expected {tuple(shape)}"
            )
        if not bool(torch.isfinite(tensor).all()):
            raise InvalidActionError(f"{where}[{name!r}]: contains NaN or inf")
        out[name] = (
            tensor.to(device=device, dtype=torch.float32)
            if tensor.dtype != torch.float32 or tensor.device != device
            else tensor
        )
        if not bool(torch.isfinite(out[name]).all()):  # float64 beyond fp32's range becomes inf
            raise InvalidActionError(f"{where}[{name!r}]: values beyond float32's range (about 3.4e38)")
    return out


def check_norms(updates: Mapping[str, torch.Tensor], bound: float | None) -> None:
    """Refuse any module update whose Frobenius norm exceeds ``bound``."""
    if bound is None:
        return
    for name, delta in updates.items():
        norm = float(torch.linalg.vector_norm(delta.detach()))
        if norm > bound:
            raise InvalidActionError(
                f"update of {name!r} has norm {norm:.4g}, above max_update_norm={bound:.4g}"
            )
