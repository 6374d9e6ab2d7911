"""The hypernetwork shared by MEND, MALMEN and RLEdit (docs/design.md, "Hypernetwork editors"), and their
common agent base.

For each answer token the network reads the concatenation x = [u, delta] of an edit module's key u
(d_in) and value gradient delta (d_out), normalises it with running mean/std statistics and passes it
through residual low-rank blocks

    x <- x + scale_m * max(x A B + b, 0) + shift_m

(A random, B zero, so the network starts as the identity), returning (u~, delta~). There is one network
per distinct (d_in, d_out) shape, shared by the modules of that shape, which it tells apart by the
per-module scale/shift embeddings. Each module also has a learned step size ``lr`` and ridge
``log_lambda``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from abc import abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import gymnasium as gym
import torch
from torch import nn
from tqdm.auto import tqdm

from agents.auto_settings import AUTO, AutoSetting, check_positive
from agents.base import AgentConfig, Callback, CheckpointError, EditAgent, like_observation
from agents.running_stats import EPS, RunningNorm  # noqa: F401  (EPS: re-exported)


class ResidualBlock(nn.Module):
    """x + scale_m * max(x A B + b, 0) + shift_m, the identity at initialisation (B = 0, b = 0)."""

    def __init__(self, size: int, rank: int, num_modules: int, generator: torch.Generator):
        super().__init__()
        self.A = nn.Parameter(torch.randn(size, rank, generator=generator))
        self.B = nn.Parameter(torch.zeros(rank, size))
        self.bias = nn.Parameter(torch.zeros(size))
        self.scale = nn.Parameter(torch.ones(num_modules, size))
        self.shift = nn.Parameter(torch.zeros(num_modules, size))

    def forward(self, x: torch.Tensor, module_index: torch.Tensor) -> torch.Tensor:
        # clamp(min=0) rather than relu: at the start x A B + b is exactly 0, where relu's gradient is 0
        # and clamp's is 1; with relu, B and b would never receive a gradient and the net would stay fixed.
        hidden = (x @ self.A @ self.B + self.bias).clamp(min=0)
        return x + self.scale[module_index] * hidden + self.shift[module_index]


class ShapeNet(nn.Module):
    """The network of all edit modules of one (d_in, d_out) shape."""

    def __init__(self, d_in: int, d_out: int, num_modules: int, rank: int, num_blocks: int, generator):
        super().__init__()
        self.sizes = [d_in, d_out]
        size = d_in + d_out
        self.norm = RunningNorm(size)
        self.blocks = nn.ModuleList(
            ResidualBlock(size, min(rank, size), num_modules, generator) for _ in range(num_blocks)
        )

    def forward(self, x: torch.Tensor, module_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.norm(x)
        for block in self.blocks:
            hidden = block(hidden, module_index)
        keys, value_grads = hidden.split(self.sizes, -1)
        return keys, value_grads


class HyperNetwork(nn.Module):
    """(u, delta) -> (u~, delta~) for every edit module, plus each module's ``lr`` and ``log_lambda``.

    Args:
        shapes: {module name: (d_in, d_out)}, as ``EditableModel.shapes``.
        rank: rank of the blocks' A B, capped at d_in + d_out (the paper uses 1024).
        num_blocks: residual blocks per network (the paper uses 4).
        init_lr: initial per-module step size (the paper uses 1e-6).
        seed: seeds the random A matrices.
        ridge: whether the editor solves MALMEN's ridge problem (then ``log_lambda`` exists, starting at 0).
    """

    def __init__(
        self,
        shapes: Mapping[str, tuple[int, int]],
        rank: int,
        num_blocks: int,
        init_lr: float,
        seed: int,
        ridge: bool = True,
    ):
        super().__init__()
        if rank < 1 or num_blocks < 0:
            raise ValueError(f"rank must be >= 1 and num_blocks >= 0, got {rank} and {num_blocks}")
        self.module_names = list(shapes)
        self.groups: dict[str, list[str]] = {}  # "d_inxd_out" -> the modules of that shape
        for name, (d_in, d_out) in shapes.items():
            self.groups.setdefault(f"{d_in}x{d_out}", []).append(name)
        generator = torch.Generator().manual_seed(seed)
        self.nets = nn.ModuleDict()
        for key, names in self.groups.items():
            d_in, d_out = shapes[names[0]]
            self.nets[key] = ShapeNet(d_in, d_out, len(names), rank, num_blocks, generator)
        self.lr = nn.Parameter(torch.full((len(shapes),), float(init_lr)))
        # MALMEN's ridge lambda, lambda = exp(log_lambda) (MEND has no ridge solve)
        self.log_lambda = nn.Parameter(torch.zeros(len(shapes))) if ridge else None
        self._position = {name: i for i, name in enumerate(self.module_names)}

    def index(self, module: str) -> int:
        """Position of ``module`` in ``lr`` and ``log_lambda``."""
        return self._position[module]

    def forward(
        self,
        keys: Mapping[str, torch.Tensor],
        value_grads: Mapping[str, torch.Tensor],
        mask: torch.Tensor,
        update_stats: bool,
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{module: (u~, delta~)} for the N tokens of each module; ``mask`` (N,) marks the real ones.

        With ``update_stats`` the real tokens are first folded into the normaliser's statistics.
        """
        out = {}
        real = mask.bool()
        for key, names in self.groups.items():
            net = self.nets[key]
            x = torch.cat([torch.cat([keys[m], value_grads[m]], -1) for m in names])
            if update_stats:
                net.norm.update(x[real.repeat(len(names))])
            n = mask.shape[0]
            module_index = torch.arange(len(names), device=x.device).repeat_interleave(n)
            pseudo_keys, pseudo_grads = net(x, module_index)
            for i, m in enumerate(names):
                out[m] = (pseudo_keys[i * n : (i + 1) * n], pseudo_grads[i * n : (i + 1) * n])
        return out


@dataclasses.dataclass
class HyperNetworkConfig(AgentConfig):
    """Hyperparameters of the hypernetwork editors (the paper's defaults; see each agent for its own).

    ``update_stats_in_use``: keep folding observed keys and value gradients into the normaliser during
    lifelong use (``act``), as the reference code does; training always updates it.
    ``train_episodes``: what ``learn()`` trains for when not told (with ``stop_when_flat``: at most).
    ``train_batch_size``: edits per training batch (None: the evaluation environment's batch size).
    ``stop_when_flat``: k episodes; training stops once the training loss's mean over the last k episodes
    is less than ``flat_tolerance`` (relative) below its mean over the k before (None: never), so the
    budget is chosen on the training split by the learning curve itself.
    ``meta_lr`` is Adam's learning rate of the network's blocks, ``step_meta_lr`` that of the per-module
    step sizes ``lr`` and ridge ``log_lambda`` (None: ``meta_lr``); two parameter groups, because one
    Adam step moves every parameter by about its group's rate, whatever the parameter's scale.
    """

    # "auto": the model's tuned value (rledit_env.tuned_settings), else init_lr is calibrated on its
    # train split; the published values (1e-6, 1e-5) are for 7-9B models
    AUTO_SETTINGS: ClassVar[dict[str, AutoSetting]] = {
        "init_lr": AutoSetting(1e-6, (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)),
        "meta_lr": AutoSetting(1e-5),
        "step_meta_lr": AutoSetting(None),  # None: meta_lr (the public code's one Adam over everything)
    }

    rank: int = 1024
    num_blocks: int = 4
    init_lr: float | str = AUTO
    meta_lr: float | str = AUTO
    step_meta_lr: float | str | None = AUTO
    max_grad_norm: float = 1.0
    update_stats_in_use: bool = True
    train_episodes: int = 100
    train_batch_size: int | None = None
    stop_when_flat: int | None = None
    flat_tolerance: float = 0.01

    def __post_init__(self) -> None:
        check_positive(self, "init_lr", "meta_lr")
        if self.step_meta_lr is not None:
            check_positive(self, "step_meta_lr")
        if self.stop_when_flat is not None and self.stop_when_flat < 1:
            raise ValueError(f"stop_when_flat must be None or >= 1 episodes, got {self.stop_when_flat}")


def learning_curve_is_flat(losses: Sequence[float], k: int, tolerance: float) -> bool:
    """Whether the mean of the last k losses is less than ``tolerance`` (relative) below the mean of
    the k before; False until there are 2k."""
    if len(losses) < 2 * k:
        return False
    recent, before = sum(losses[-k:]) / k, sum(losses[-2 * k : -k]) / k
    return before - recent < tolerance * abs(before)


@dataclasses.dataclass
class OneStepTrainingConfig(HyperNetworkConfig):
    """MEND's and MALMEN's training: one batch at a time on the unedited model, with the loss
    L_gen + ``loc_coef`` * L_loc (MALMEN's locality coefficient is 1)."""

    loc_coef: float = 1.0


def malmen_values(
    net: HyperNetwork, keys: Mapping, value_grads: Mapping, mask: torch.Tensor, update_stats: bool
) -> dict[str, Any]:
    """MALMEN's "values" action: per token i of module m, v_i = -lr_m * (u_i . u~_i) * delta~_i, with the
    hypernetwork's (u~, delta~) and the module's learned ridge log-lambda. Padding tokens get zero values."""
    values, log_lambda = {}, {}
    for m, (pseudo_keys, pseudo_grads) in net(keys, value_grads, mask, update_stats).items():
        i = net.index(m)
        coeff = -net.lr[i] * (keys[m] * pseudo_keys).sum(-1) * mask
        values[m] = coeff.unsqueeze(-1) * pseudo_grads
        log_lambda[m] = net.log_lambda[i : i + 1]
    return {"values": values, "log_lambda": log_lambda}


class HyperNetworkEditor(EditAgent):
    """Base of the hypernetwork editors: the network, acting, optimiser steps, training envs, checkpoints.

    Subclasses implement ``policy`` (observation -> differentiable action) and, when not the one-step
    training of MEND/MALMEN (``learn`` here), their own ``learn``.
    """

    Config = HyperNetworkConfig
    ridge: ClassVar[bool] = True  # whether actions go through MALMEN's ridge solve (a learned lambda)

    def __init__(self, env: gym.Env, config: HyperNetworkConfig | None = None):
        super().__init__(env, config)
        cfg = self.config
        editable = self.core.editable
        self.net = HyperNetwork(
            editable.shapes, cfg.rank, cfg.num_blocks, cfg.init_lr, cfg.seed, ridge=self.ridge
        ).to(editable.device)
        steps = {"lr", "log_lambda"}  # the step sizes: their own learning rate (config.step_meta_lr)
        named = list(self.net.named_parameters())
        self.optimizer = torch.optim.Adam(
            [
                {"params": [p for n, p in named if n not in steps], "lr": cfg.meta_lr},
                {"params": [p for n, p in named if n in steps], "lr": cfg.step_meta_lr or cfg.meta_lr},
            ]
        )
        self.training_log: list[dict[str, float]] = []
        self.episodes_trained = 0

    # ------------------------------------------------------------------------------ acting
    @abstractmethod
    def policy(self, observation, update_stats: bool) -> dict[str, Any]:
        """The action as torch tensors, differentiable in the hypernetwork's parameters."""

    def act(self, observation) -> dict[str, Any]:
        with torch.no_grad():
            action = self.policy(observation, self.config.update_stats_in_use)
        return like_observation(action, observation)

    def _inputs(self, observation) -> tuple[dict, dict, torch.Tensor]:
        """Keys, value gradients and the float mask of an observation, as fp32 tensors on the net's device."""
        device = self.net.lr.device

        def tensor(x) -> torch.Tensor:
            return torch.as_tensor(x, device=device, dtype=torch.float32)

        names = self.net.module_names
        keys = {m: tensor(observation["keys"][m]) for m in names}
        value_grads = {m: tensor(observation["value_grads"][m]) for m in names}
        return keys, value_grads, tensor(observation["mask"])

    # ------------------------------------------------------------------------------ training
    def learn(
        self,
        episodes: int | None = None,
        *,
        train_env: gym.Env | None = None,
        callback: Callback | None = None,
        progress_bar: bool = True,
    ) -> HyperNetworkEditor:
        """MEND/MALMEN training (an ``OneStepTrainingConfig``): ``episodes`` steps (default
        ``config.train_episodes``), each on one fresh batch of training edits.

        Each step edits the *unedited* model with the current hypernetwork, scores the edit with
        ``candidate_losses`` (L_gen + loc_coef * L_loc; the model is never changed) and takes one
        optimiser step. ``train_env`` defaults to one-batch episodes on the model's "train" split.
        The model's weights are as before when this returns.
        """
        episodes = self.config.train_episodes if episodes is None else episodes
        callback = callback or Callback()
        with self._session(episodes, train_env, callback, progress_bar, num_batches=1) as (env, bar):
            core = env.unwrapped
            for _ in bar:
                start = time.perf_counter()
                obs, _ = env.reset(seed=self._episode_seed())
                updates = core.updates_from_action(self.policy(obs, update_stats=True))
                terms = core.candidate_losses(updates)
                loss = terms["gen"] + self.config.loc_coef * terms["loc"]
                loss.backward()
                logs = {
                    "loss": loss.item(),
                    "gen": terms["gen"].item(),
                    "loc": terms["loc"].item(),
                    "update_sq_norm": terms["reg"].item(),  # sum over modules of ||dW||^2
                    "grad_norm": self._optimizer_step(),
                }
                bar.set_postfix(loss=f"{logs['loss']:.3f}")
                if not self._end_episode(logs, start, callback):
                    break
        return self

    def training_env(self, train_env: gym.Env | None = None, **settings) -> gym.Env:
        """The base's (``EditAgent.training_env``), with ``train_batch_size`` edits per batch and torch
        observations."""
        defaults = {
            "batch_size": self.config.train_batch_size or self.core.batch_size,
            "obs_backend": "torch",
        }
        return super().training_env(train_env, **{**defaults, **settings})

    @contextlib.contextmanager
    def _session(
        self, episodes: int, train_env: gym.Env | None, callback: Callback, progress_bar: bool, **settings
    ) -> Iterator[tuple[gym.Env, tqdm]]:
        """A training run: (training env, progress bar over episodes), with the callback's start and end
        hooks; the model's weights are given back as they were (RLEdit's episodes commit edits)."""
        snapshot = self.core.editable.snapshot()
        try:
            env = self.training_env(train_env, **settings)
            callback.on_training_start(self)
            with tqdm(range(episodes), desc=self.name, disable=not progress_bar) as bar:
                yield env, bar
            callback.on_training_end(self)
        finally:
            self.core.editable.restore(snapshot)

    def _episode_seed(self) -> int:
        return self.config.seed * 1_000_003 + self.episodes_trained

    def _optimizer_step(self) -> float:
        """Clip, step and clear the accumulated gradients; returns the norm before clipping."""
        norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def _end_episode(self, logs: dict[str, float], start: float, callback: Callback) -> bool:
        """Log a finished training episode; False when the callback asks to stop."""
        lrs = zip(self.net.module_names, self.net.lr.detach().tolist(), strict=True)
        logs = {
            "episode": self.episodes_trained,
            **logs,
            "lr": float(self.net.lr.detach().mean()),
            **{f"lr/{module}": lr for module, lr in lrs},  # each module's learned step size
            **({"log_lambda": float(self.net.log_lambda.detach().mean())} if self.ridge else {}),
            "seconds": time.perf_counter() - start,
        }
        self.training_log.append(logs)
        self.episodes_trained += 1
        if callback.on_episode_end(self, logs["episode"], logs) is False:
            return False
        k = self.config.stop_when_flat
        losses = [log["loss"] for log in self.training_log]
        return k is None or not learning_curve_is_flat(losses, k, self.config.flat_tolerance)

    # ------------------------------------------------------------------------------ checkpoints
    def episode_state(self) -> dict[str, Any]:
        return {"net": self.net.state_dict()}  # the normalisers' running statistics change along it

    def load_episode_state(self, state: dict[str, Any]) -> None:
        try:
            self.net.load_state_dict(state["net"])
        except (KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{type(self).__name__}: the episode state does not fit ({exc})") from exc

    def state_dict(self) -> dict[str, Any]:
        return {
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "training_log": list(self.training_log),
            "episodes_trained": self.episodes_trained,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            self.net.load_state_dict(state["net"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.training_log = list(state["training_log"])
            self.episodes_trained = int(state["episodes_trained"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"{type(self).__name__}: the checkpoint's state does not fit ({exc})"
            ) from exc
