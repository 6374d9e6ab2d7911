"""StableEdit (Ma et al., "More Edits, More Stable: Understanding the Lifelong Normalization in Sequential
Model Editing", ICML 2026, arXiv 2605.11836; public code github.com/MINE-USTC/StableEdit) as an agent of
the "values" interface.

StableEdit is UltraEdit (``agents.ultraedit``) with two changes to its lifelong normaliser. Per batch,
for each edit module m and answer token i:

1. a lifelong normaliser per module shape folds in the batch's real tokens x = [u, delta] of every
   module of that shape, carried across the whole edit sequence: the running per-feature mean and
   variance of x (UltraEdit's) and the running full covariance C of the value gradients delta;
2. the keys are standardised per feature, u^ = (u - mean_u) / std_u, and the value gradients are
   *whitened*, delta^ = (delta - mean_delta) C^-1/2, with C's eigenvalues clamped to ``eig_floor``,
   once more than d_out + 1 rows have been seen (before that, per-feature standardisation, as UltraEdit);
3. v_i = -lr * ||u^_i||^2 * delta^_i, and the environment solves dW = (U^T U + alpha I)^-1 U^T V with
   the raw keys U and alpha = 10 (``log_lambda`` = log 10);
4. **warm-up** ("preheat"): before the first edit the statistics are filled from ``warmup_batches``
   batches of the *training* split (never from the edits being evaluated). Each episode (observation
   step 0) starts from this warm-up state again, not from empty statistics.

Where it follows the public code (``editor/stableedit.py``, ``nets.py``'s ``RunningMeanStd`` in its
"stable" mode, ``editor/base.py``'s ``sequential_valid``, ``run.sh``): one normaliser per module shape,
updated with every module of that shape, with the whole batch before any of it is normalised; the
covariance estimate C = m2 / (n - d_out - 1) and whitening only once n > d_out + 1 rows; eigenvalues
clamped at 1e-6; the norm taken of the standardised key; delta^ not denormalised; the ridge solve with
the raw keys; alpha 10, lr 1e-6 and 20 warm-up batches as in ``run.sh``; the warm-up positions start,
q1, middle, q3, end (folded in before the edit of step 0, T/4, T/2, 3T/4, T-1) and none.

Where it departs:

- **The warm-up edits nothing.** The public code's preheat (``editor/base.py``) *applies* each training
  batch's edit to the model (``edit_model`` after ``predict_param_shifts(mode="train")``), so its
  evaluated sequence starts from a model already edited 20 times with training facts. Here the warm-up
  only traces the training batches (keys and value gradients, on the weights the agent finds, i.e. the
  unedited model) and folds them into the statistics; the weights are left bitwise unchanged. Reasons:
  the environment measures an editor on the edits it is given from the unedited model (every other
  agent is scored that way; hidden extra edits would change what Spe and perplexity mean), and a
  warm-up that only reads keeps the statistics the one thing the warm-up contributes, which is the
  paper's claim (statistics, not the edits, make the normalisation stable).
- Because nothing is edited, the warm-up statistics are computed once, when the agent is built, and a
  later warm-up position (q1 ... end) folds these same statistics in at that step; the public code
  traces its training batches on the model edited so far at that step.
- All of a batch's tokens are normalised at once (the public code: in chunks of ``editor.batch_size``
  tokens padded with zeros, the padding dropped afterwards; the same values), and padding tokens never
  reach the statistics (``mask``), as in the public code.
- The statistics are fp64 (``agents.running_stats``, shared with UltraEdit and the hypernetwork
  editors); the whitening matrix is computed in fp64 and applied in fp32.
- The warm-up batches are ``batch_size`` edits each, the environment's, drawn without replacement from
  the training split with the agent's seed (the public code: its training loader's first batches).
- Edit modules: UltraEdit's (``rledit_env.presets.ultraedit_modules``; on TinyWorld the MLP output
  projections of the last two layers, StableEdit's own choice of module type on Mistral-7B).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from agents.running_stats import RunningCovariance, RunningNorm
from agents.ultraedit import UltraEdit, UltraEditConfig
from rledit_env.records import EditRecord
from rledit_env.sampler import EpisodeSampler

# where the warm-up statistics are folded in, as a function of the episode length T (public code's names)
WARMUP_POSITIONS = {
    "start": lambda T: 0,
    "q1": lambda T: T // 4,
    "middle": lambda T: T // 2,
    "q3": lambda T: 3 * T // 4,
    "end": lambda T: T - 1,
    "none": lambda T: None,
}


@dataclass
class StableEditConfig(UltraEditConfig):
    """StableEdit's hyperparameters (published values for Mistral-7B, Llama-3-8B, ``run.sh``)."""

    # lr (UltraEditConfig's "auto"): the model's tuned value, else calibrated; published 1e-6 (7-8B)
    log_lambda: float = math.log(10.0)  # ridge alpha = exp(log_lambda) = 10
    warmup_batches: int = 20  # training batches folded into the statistics before the first edit
    warmup_position: str = "start"  # start|q1|middle|q3|end|none: the step the warm-up is folded in at
    whiten: bool = True  # False: per-feature standardisation of the value gradients (UltraEdit's)
    eig_floor: float = 1e-6  # the covariance's eigenvalues are clamped to at least this
    whiten_min_rows: int | None = None  # whiten from this many rows on; None (and the least): d_out + 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.warmup_batches, bool) or not (
            isinstance(self.warmup_batches, int) and self.warmup_batches >= 0
        ):
            raise ValueError(f"warmup_batches must be an integer >= 0, got {self.warmup_batches!r}")
        if self.warmup_position not in WARMUP_POSITIONS:
            raise ValueError(
                f"warmup_position must be one of {list(WARMUP_POSITIONS)}, got {self.warmup_position!r}"
            )
        if not isinstance(self.whiten, bool):
            raise ValueError(f"whiten must be true or false, got {self.whiten!r}")
        if not (math.isfinite(self.eig_floor) and self.eig_floor > 0):
            raise ValueError(f"eig_floor must be a finite number > 0, got {self.eig_floor}")
        if self.whiten_min_rows is not None and not (
            isinstance(self.whiten_min_rows, int) and self.whiten_min_rows >= 0
        ):
            raise ValueError(f"whiten_min_rows must be None or an integer >= 0, got {self.whiten_min_rows!r}")


class StableNorm(nn.Module):
    """StableEdit's lifelong normaliser of one module shape (d_in, d_out): x = [u, delta] ->
    [standardised u, whitened delta] (per-feature standardised delta until whitening starts)."""

    def __init__(self, d_in: int, d_out: int, config: StableEditConfig):
        super().__init__()
        self.sizes = [d_in, d_out]
        self.norm = RunningNorm(d_in + d_out)
        self.cov = RunningCovariance(d_out) if config.whiten else None
        self.min_rows = max(config.whiten_min_rows or 0, d_out + 2)  # C = m2 / (n - d_out - 1) needs them
        self.eig_floor = config.eig_floor
        self._whitener: tuple[float, torch.Tensor] | None = None  # (rows seen, C^-1/2) of the last call

    def update(self, x: torch.Tensor) -> None:
        self.norm.update(x)
        if self.cov is not None:
            self.cov.update(x[:, self.sizes[0] :])

    def merge(self, other: StableNorm) -> None:
        self.norm.merge(other.norm)
        if self.cov is not None:
            self.cov.merge(other.cov)

    @property
    def whitening(self) -> bool:
        return self.cov is not None and int(self.cov.count) >= self.min_rows

    def whitener(self) -> torch.Tensor:
        """C^-1/2 (fp64), recomputed only when rows have been added since the last call."""
        rows = float(self.cov.count)
        if self._whitener is None or self._whitener[0] != rows:
            self._whitener = (rows, self.cov.inverse_sqrt(ddof=self.sizes[1] + 1, floor=self.eig_floor))
        return self._whitener[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        standardised = self.norm(x)
        if not self.whitening:
            return standardised
        grads = x[..., self.sizes[0] :] - self.cov.mean.to(x.dtype)
        whitened = grads @ self.whitener().to(x.dtype)
        return torch.cat([standardised[..., : self.sizes[0]], whitened], -1)


class StableEdit(UltraEdit):
    """Training-free lifelong editor: UltraEdit with whitened value gradients and statistics warmed up
    on training edits (see the module docstring).

    ``norms`` maps each module shape to its ``StableNorm``; ``warmup`` to the statistics of the warm-up
    batches (``warmup_records``), computed when the agent is built (``train_env``: an environment over
    training edits with ``num_batches=1``; default: ``training_env()``, the model's "train" split).
    Build the agent before the episode it edits: the warm-up traces the current weights (and puts them
    back bitwise).
    """

    Config = StableEditConfig
    name = "stableedit"

    def __init__(
        self, env: gym.Env, config: StableEditConfig | None = None, *, train_env: gym.Env | None = None
    ):
        self.warmup: dict[tuple[int, int], StableNorm] = {}
        self.warmup_step: int | None = None  # the step the warm-up is folded in at (None: never)
        self.warmup_records: list[list[EditRecord]] = []  # the training edits of the warm-up batches
        super().__init__(env, config)
        step = WARMUP_POSITIONS[self.config.warmup_position](self.core.num_batches)
        if self.config.warmup_batches > 0 and step is not None:
            self.warmup = self.warm_up(train_env)
            self.warmup_step = step
        self.reset_statistics()

    def new_statistics(self) -> dict[tuple[int, int], StableNorm]:
        """Empty statistics; ``start_step`` folds the warm-up in (at step 0 with warmup_position "start")."""
        return {shape: StableNorm(*shape, self.config).to(self.device) for shape in self.groups}

    def start_step(self, step: int) -> None:
        super().start_step(step)  # step 0: a new episode, reset_statistics
        if step == self.warmup_step:
            for shape, norm in self.norms.items():
                norm.merge(self.warmup[shape])

    def warm_up(self, train_env: gym.Env | None = None) -> dict[tuple[int, int], StableNorm]:
        """The statistics of ``warmup_batches`` batches of training edits, traced and never applied."""
        editable = self.core.editable
        weights = editable.snapshot()  # training_env() and its resets restore the initial weights
        env = self.training_env(
            train_env,
            num_batches=1,
            obs_backend="torch",
            score_reward=False,
            evaluate_at_end=False,
            metrics_every=0,
            max_tokens=None,  # room for the training split's longest answers
        )
        try:
            core = env.unwrapped
            if core.num_batches != 1:
                raise ValueError(f"StableEdit's warm-up env must have num_batches=1, got {core.num_batches}")
            try:
                sampler = EpisodeSampler(core.records, self.config.warmup_batches, core.batch_size)
            except ValueError as exc:
                raise ValueError(
                    f"StableEdit's warm-up on the training split: {exc}; lower warmup_batches"
                ) from exc
            stats = self.new_statistics()
            self.warmup_records = sampler.sample(np.random.default_rng(self.config.seed))
            with torch.no_grad():
                for records in self.warmup_records:
                    observation, _ = env.reset(options={"records": records})  # traces, edits nothing
                    self.fold_in(stats, *self.features(observation))
        finally:
            if train_env is None:
                env.close()
            editable.restore(weights)
        return stats


__all__ = ["StableEdit", "StableEditConfig", "StableNorm"]
