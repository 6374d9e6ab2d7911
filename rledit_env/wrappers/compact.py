"""The compact interface: a fixed-size Box observation and a small Box action over LifelongEditEnv, so
that standard RL libraries (stable-baselines3's PPO, A2C, SAC, TD3) plug in unchanged."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from rledit_env.actions import InvalidActionError

OBS_BOUND = 10.0  # every observation feature is clipped to [-OBS_BOUND, OBS_BOUND]
LOG_FLOOR = 1e-10  # norms are observed as log10(max(norm, LOG_FLOOR)), so >= -10
CORE_LOG_LAMBDA = 10.0  # the core environment's bound on log(lambda)


@dataclass
class CompactConfig:
    """Settings of the compact interface (see ``CompactEditWrapper``)."""

    projection_dim: int = 8
    projection_seed: int = 0
    base_step: float = 10.0
    step_range: float = math.log(100.0)
    lambda_range: float = math.log(100.0)
    reward_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.projection_dim < 1:
            raise ValueError(f"projection_dim must be >= 1, got {self.projection_dim}")
        for name in ("base_step", "reward_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("step_range", "lambda_range"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


class CompactEditWrapper(gym.Wrapper):
    """
    ## Description

    Lifelong knowledge editing (``LifelongEditEnv``) seen through a small, fixed-size interface that
    any RL algorithm handles. At each step the agent chooses, for each of the n edits of the batch, how
    far to move the edit modules' outputs along the edit loss's value gradients, and how strongly the
    least-squares solve that turns those moves into a weight update is regularised. It is MALMEN's and
    RLEdit's update rule with the hypernetwork replaced by n + 1 numbers. Works on any model the core
    environment loads: every size below comes from the core environment's shapes.

    The core environment must use ``action_type="values"``.

    ## Action Space

    ``Box(-1, 1, (n + 1,), float32)``, n = ``batch_size``. For edit i (a_i, i < n) and each module,
    every answer token of the edit gets the value difference

        v = -alpha_i * delta / rms_i,   alpha_i = base_step * exp(step_range * a_i)

    where delta is the token's value gradient and rms_i the root-mean-square norm of the edit's value
    gradients in that module (so alpha_i is the RMS change of the module's output asked for edit i,
    whatever the size of the gradients). The default range, alpha in [0.1, 1000], spans four decades
    because the best step depends on the model and on how firmly it holds its facts: the constant step
    with the best return was alpha ~ 2 on TinyWorld-tiny (10 x 5 edits; module outputs of RMS ~9) and
    ~160 on the default TinyWorld (10 x 10; RMS ~14, new answers at ~11 nats before editing).

    The last entry sets the ridge penalty, ``log(lambda) = log(ridge_lambda) + lambda_range * a_n``
    (clipped to the core's [-10, 10]), and the core environment solves
    ``dW = argmin ||U dW - V||^2 + lambda ||dW||^2`` per module. Out-of-range
    entries are clipped to [-1, 1]; a wrong shape, NaN or inf raises ``InvalidActionError``.

    ## Observation Space

    ``Box(-10, 10, (M * (2p + 2 + n) + 2,), float32)``, M edit modules, p = ``projection_dim``. For each
    module, in ``module_names`` order:

    | features | meaning                                                                              |
    |----------|--------------------------------------------------------------------------------------|
    | p        | the direction of the mean key over the batch's answer tokens, through a fixed random |
    |          | Gaussian projection (p x d_in, seeded by ``projection_seed``, drawn at construction)  |
    | p        | the same for the mean value gradient (p x d_out)                                     |
    | 1        | log10 of the RMS key norm                                                            |
    | 1        | log10 of the RMS value-gradient norm                                                 |
    | n        | log10 of the Frobenius norm of each edit's gradient, ``sum_tokens u delta^T``         |

    then the batch's edit loss (nats, clipped to [0, 10]) and t / T. Norms are floored at 1e-10; all
    features are clipped to [-10, 10]. The observation after the last step has no tokens: its
    projections are 0 and its norms at the floor (-10).

    ## Rewards

    The core environment's reward times ``reward_scale`` (default 1: RLEdit's reward, so returns compare
    with every other agent's). ``info`` is the core's, including ``metrics`` at the episode's end.

    ## Starting State

    As the core environment: original weights, a knowledge sequence drawn by ``reset(seed=...)``.

    ## Episode End

    After T steps (``terminated``), as the core environment.

    ## Arguments

    | argument         | default     | meaning                                                       |
    |------------------|-------------|---------------------------------------------------------------|
    | env              |             | a ``LifelongEditEnv`` (possibly wrapped), action_type "values" |
    | projection_dim   | 8           | p                                                             |
    | projection_seed  | 0           | seed of the random projections                                |
    | base_step        | 10.0        | alpha at a_i = 0 (in the module's output units)               |
    | step_range       | ln 100      | a_i = +-1 multiplies alpha by 100 or divides it by 100        |
    | lambda_range     | ln 100      | a_n = +-1 multiplies lambda by 100 or divides it by 100       |
    | reward_scale     | 1.0         | reward multiplier                                             |

    ``observation(core_obs)`` and ``action(action, core_obs)`` are the two mappings, usable without
    stepping this wrapper: they let a policy trained here act on a bare core environment
    (``agents.sb3.SB3Agent``).
    """

    def __init__(self, env: gym.Env, config: CompactConfig | None = None, **overrides):
        super().__init__(env)
        config = config if config is not None else CompactConfig()
        self.config = dataclasses.replace(config, **overrides) if overrides else config
        core = env.unwrapped
        if getattr(core, "action_type", None) != "values":
            raise ValueError(
                "CompactEditWrapper needs a LifelongEditEnv with action_type='values', got "
                f"{type(core).__name__} with action_type={getattr(core, 'action_type', None)!r}"
            )
        self.module_names: list[str] = list(core.module_names)
        self.batch_size, self.num_batches = core.batch_size, core.num_batches
        self.ridge_lambda = core.ridge_lambda
        if not self.ridge_lambda > 0:  # the action sets lambda relative to it, on a log scale
            raise ValueError(f"the compact interface needs ridge_lambda > 0, got {self.ridge_lambda}")
        p, device = self.config.projection_dim, core.editable.device
        rng = np.random.default_rng(self.config.projection_seed)
        self._projections = {}  # module -> (keys projection (p, d_in), value-gradient projection (p, d_out))
        for name, (d_in, d_out) in core.editable.shapes.items():
            pk, pv = rng.standard_normal((p, d_in)), rng.standard_normal((p, d_out))
            self._projections[name] = tuple(
                torch.as_tensor(x, dtype=torch.float32, device=device) for x in (pk, pv)
            )
        size = len(self.module_names) * (2 * p + 2 + self.batch_size) + 2
        self.observation_space = spaces.Box(-OBS_BOUND, OBS_BOUND, shape=(size,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(self.batch_size + 1,), dtype=np.float32)
        self._core_obs = None

    # ------------------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self._core_obs, info = self.env.reset(seed=seed, options=options)
        return self.observation(self._core_obs), info

    def step(self, action):
        if self._core_obs is None:
            raise RuntimeError("call reset() before step()")
        core_obs, reward, terminated, truncated, info = self.env.step(self.action(action))
        self._core_obs = core_obs
        return self.observation(core_obs), reward * self.config.reward_scale, terminated, truncated, info

    # ------------------------------------------------------------------------------ mappings
    @torch.no_grad()
    def observation(self, core_obs: dict) -> np.ndarray:
        """The compact observation of a core observation (numpy or torch backend)."""
        mask, edits = _real_tokens(core_obs)
        features: list[torch.Tensor] = []
        for name in self.module_names:
            keys = torch.as_tensor(core_obs["keys"][name])[mask].float()
            grads = torch.as_tensor(core_obs["value_grads"][name])[mask].float()
            key_proj, grad_proj = self._projections[name]
            features += [
                _projected_direction(keys, key_proj),
                _projected_direction(grads, grad_proj),
                _log10(_rms_norm(keys).reshape(1)),
                _log10(_rms_norm(grads).reshape(1)),
                _log10(_per_edit_gradient_norms(keys, grads, edits, self.batch_size)),
            ]
        loss, step = _scalar(core_obs["edit_loss"]), _scalar(core_obs["step"])
        out = torch.cat([f.cpu() for f in features]).numpy()
        out = np.concatenate([out, [min(loss, OBS_BOUND), step / self.num_batches]])
        return np.clip(out, -OBS_BOUND, OBS_BOUND).astype(np.float32)

    @torch.no_grad()
    def action(self, action, core_obs: dict | None = None) -> dict:
        """The core action ("values" interface) for a compact action, at ``core_obs`` (default: the
        last observation this wrapper returned)."""
        core_obs = self._core_obs if core_obs is None else core_obs
        if core_obs is None:
            raise RuntimeError("no core observation yet: call reset() or pass core_obs")
        a = np.asarray(action, dtype=np.float32)
        if a.shape != self.action_space.shape:
            raise InvalidActionError(f"compact action: shape {a.shape}, expected {self.action_space.shape}")
        if not np.isfinite(a).all():
            raise InvalidActionError("compact action: contains NaN or inf")
        a = np.clip(a, -1.0, 1.0)
        cfg = self.config
        alpha = cfg.base_step * np.exp(cfg.step_range * a[: self.batch_size])
        log_lambda = np.clip(
            math.log(self.ridge_lambda) + cfg.lambda_range * a[-1], -CORE_LOG_LAMBDA, CORE_LOG_LAMBDA
        )
        mask, edits = _real_tokens(core_obs)
        values, log_lambdas = {}, {}
        for name in self.module_names:
            grads = torch.as_tensor(core_obs["value_grads"][name]).float()
            alpha_t = torch.as_tensor(alpha, device=grads.device)
            rms = _per_edit_rms(grads[mask], edits, self.batch_size)
            scale = torch.zeros(grads.shape[0], device=grads.device)
            scale[mask] = alpha_t[edits] / rms[edits].clamp(min=LOG_FLOOR)
            values[name] = -scale[:, None] * grads
            log_lambdas[name] = torch.tensor([log_lambda], dtype=torch.float32, device=grads.device)
        return {"values": values, "log_lambda": log_lambdas}


def _real_tokens(core_obs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The mask of real answer tokens and the edit each of them belongs to."""
    mask = torch.as_tensor(core_obs["mask"]).bool()
    edits = torch.as_tensor(core_obs["edit_index"])[mask].long()
    return mask, edits


def _scalar(x) -> float:
    return float(torch.as_tensor(x).reshape(-1)[0])


def _log10(x: torch.Tensor) -> torch.Tensor:
    return torch.log10(x.clamp(min=LOG_FLOOR))


def _rms_norm(rows: torch.Tensor) -> torch.Tensor:
    return rows.pow(2).sum(-1).mean().sqrt() if len(rows) else rows.new_zeros(())


def _projected_direction(rows: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """The unit direction of the rows' mean, projected: each entry ~ N(0, 1) for a random direction."""
    if not len(rows):
        return projection.new_zeros(projection.shape[0])
    mean = rows.mean(0)
    return projection @ (mean / mean.norm().clamp(min=LOG_FLOOR))


def _per_edit_rms(grads: torch.Tensor, edits: torch.Tensor, n: int) -> torch.Tensor:
    """RMS norm of each edit's value gradients -> (n,)."""
    total = grads.new_zeros(n).index_add(0, edits, grads.pow(2).sum(-1))
    count = torch.bincount(edits, minlength=n).clamp(min=1).to(grads.dtype)
    return (total / count).sqrt()


def _per_edit_gradient_norms(keys: torch.Tensor, grads: torch.Tensor, edits: torch.Tensor, n: int):
    """||sum_{tokens of edit i} u delta^T||_F for each edit, from token Gram matrices (never d_in x d_out):
    ||U_i^T D_i||_F^2 = sum_ab (U_i U_i^T)_ab (D_i D_i^T)_ab."""
    same_edit = edits[:, None] == edits[None, :]
    products = (keys @ keys.t()) * (grads @ grads.t()) * same_edit
    squared = keys.new_zeros(n).index_add(0, edits, products.sum(1))
    return squared.clamp(min=0).sqrt()


def make_compact_env(**kwargs) -> CompactEditWrapper:
    """``LifelongEditEnv(**env_kwargs)`` wrapped in ``CompactEditWrapper``; keyword arguments named like
    ``CompactConfig``'s fields go to the wrapper, the rest to the core environment (the entry point of
    ``rledit_env/LifelongEditCompact-v0``)."""
    from rledit_env.envs import LifelongEditEnv

    names = {f.name for f in dataclasses.fields(CompactConfig)}
    compact = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
    if kwargs.setdefault("action_type", "values") != "values":
        raise ValueError(f"the compact interface needs action_type='values', got {kwargs['action_type']!r}")
    return CompactEditWrapper(LifelongEditEnv(**kwargs), CompactConfig(**compact))
