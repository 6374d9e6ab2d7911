"""RLEdit (Li et al., "Reinforced Lifelong Editing for Language Models", ICML 2025), readable top to bottom.

The editor is MALMEN's hypernetwork (``agents.hypernetwork``) acting through the environment's "values"
interface; what makes it RLEdit is how it is trained: as a policy, on whole sequences of edits applied
to a model that really changes, by ascending the environment's reward through the action (an analytic
policy gradient). One training sequence:

    obs = env.reset()                                # the unedited model, T batches of training edits
    for t in 0..T-1:
        action = policy(obs)                         # act: value differences V_t, keeping their graph
        obs, info = env.step(action)                 # step: theta_t = theta_{t-1} + dW_t (committed,
                                                     # detached); info["loss"] = -r_t, attached to V_t
        info["loss"].backward()                      # reward: its gradient accumulates in the network
    clip_grad_norm(network, max_grad_norm)           # clip
    optimizer.step(); optimizer.zero_grad()          # one optimiser step per sequence

with the reward (``rledit_env.reward``; memory backtracking over the last k batches, locality KL,
regulariser)

    -r_t = sum_{j<k} mu^j (L_gen(theta_t; K_{t-j}) + c_loc L_loc(theta_t; K_{t-j})) + eta ||dW_t||^2.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import defaultdict
from typing import Any

import gymnasium as gym
import torch

from agents.base import Callback
from agents.hypernetwork import HyperNetworkConfig, HyperNetworkEditor, malmen_values

UPDATE_UNITS = ("episode", "step")


@dataclasses.dataclass
class RLEditConfig(HyperNetworkConfig):
    """RLEdit's hyperparameters, with the paper's defaults.

    The network and the optimiser are ``HyperNetworkConfig``'s. Training: episodes of
    ``train_num_batches`` batches (None: the evaluation env's T) of ``train_batch_size`` edits (None:
    its n); one optimiser step every ``update_every`` episodes (``update_unit="episode"``, the paper) or
    steps (``"step"``). ``reward``: settings of ``rledit_env.reward.RewardConfig`` that training uses
    *instead of* the evaluation environment's reward (None: the same reward), e.g.
    ``{"paraphrases_per_edit": 1, "neighbours_per_edit": 1}`` for the published procedure, which scores
    one paraphrase and one neighbour per edit.
    """

    train_num_batches: int | None = None
    update_every: int = 1
    update_unit: str = "episode"
    reward: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.update_unit not in UPDATE_UNITS:
            raise ValueError(f"update_unit must be one of {UPDATE_UNITS}, got {self.update_unit!r}")
        if self.update_every < 1:
            raise ValueError(f"update_every must be >= 1, got {self.update_every}")


class RLEdit(HyperNetworkEditor):
    """RLEdit: MALMEN's hypernetwork and update rule, trained like a policy on whole edit sequences.

    Follows the paper: the MALMEN network (4 residual low-rank blocks, rank 1024 capped at the input
    size, per-module learned lr starting at 1e-6 and ridge log-lambda at 0); the reward with memory
    backtracking k = 10, decay 0.95, locality coefficient 0.6 (KL between the model before and after the
    step's update) and regularisation 1e-4 (the environment's ``RewardConfig``); the transition is
    treated as given (no gradient flows into earlier steps); gradients accumulated over the whole
    sequence, clipped at norm 1; Adam with meta learning rate 1e-5.

    Differs from the public reference code (github.com/zhrli324/RLEdit):
    - The reference trains on one sequence per epoch for one epoch, so its hypernetwork takes a single
      optimiser step in total. Here ``learn(episodes)`` trains over many sequences, one step per
      ``update_every`` episodes, and logs the learning curve in ``training_log``.
    - The reference back-propagates through the ridge solve by hand in two stages (to save memory);
      here autograd differentiates through ``ridge_solve``, which gives the same gradient.
    - Losses are the environment's: mean answer-token cross-entropy over the edit and paraphrase prompts
      and mean token KL on the locality prompts, where the reference sums per-tuple losses. The
      reference scores one paraphrase and one neighbour per edit; here every one the records carry,
      unless ``reward`` says otherwise.
    - As in the reference, the normaliser keeps updating during lifelong use unless
      ``update_stats_in_use=False``.

    The paper's step sizes (initial lr 1e-6, meta lr 1e-5) are set for 7-9B models; TinyWorld's keys and
    value gradients are on another scale and its training lasts minutes, so it needs larger ones
    (docs/tinyworld-settings.md).
    """

    Config = RLEditConfig
    action_type = "values"
    name = "rledit"

    def policy(self, observation, update_stats: bool) -> dict[str, Any]:
        """MALMEN's value differences for the observed keys and value gradients (differentiable)."""
        return malmen_values(self.net, *self._inputs(observation), update_stats)

    def learn(
        self,
        episodes: int | None = None,
        *,
        train_env: gym.Env | None = None,
        callback: Callback | None = None,
        progress_bar: bool = True,
    ) -> RLEdit:
        """Train on ``episodes`` whole training sequences (default ``config.train_episodes``); the model's
        weights are as before afterwards.

        ``train_env`` must have ``differentiable=True``; by default it is built on the model's "train"
        split with the evaluation environment's reward (``config.reward`` on top).
        """
        cfg = self.config
        episodes = cfg.train_episodes if episodes is None else episodes
        callback = callback or Callback()
        settings = {
            "num_batches": cfg.train_num_batches or self.core.num_batches,
            "differentiable": True,
            "reward": self.core.reward_config.replace(cfg.reward),
        }
        pending = 0  # episodes or steps whose gradients wait for an optimiser step
        with self._session(episodes, train_env, callback, progress_bar, **settings) as (env, bar):
            if not env.unwrapped.differentiable:
                raise ValueError(
                    "RLEdit trains through the reward's gradient: train_env needs differentiable=True"
                )
            for _ in bar:
                start = time.perf_counter()
                obs, _ = env.reset(seed=self._episode_seed())
                totals: dict[str, float] = defaultdict(float)
                grad_norm, steps, done = math.nan, 0, False
                while not done:
                    action = self.policy(obs, update_stats=True)  # act, keeping the action's graph
                    obs, _, terminated, truncated, info = env.step(action)  # commit theta_t, score r_t
                    info["loss"].backward()  # -r_t's gradient accumulates in the network; frees the graph
                    for term, value in info["losses"].items():
                        totals[term] += value
                    steps += 1
                    done = terminated or truncated
                    if cfg.update_unit == "step" or done:
                        pending += 1
                    if pending == cfg.update_every:
                        grad_norm, pending = self._clipped_step(), 0
                logs = {"loss": totals.pop("total") / steps, **{k: v / steps for k, v in totals.items()}}
                logs["grad_norm"] = grad_norm
                bar.set_postfix(loss=f"{logs['loss']:.3f}")
                if not self._end_episode(logs, start, callback):
                    break
            if pending:  # the last, partial accumulation
                self._clipped_step()
        return self

    def _clipped_step(self) -> float:
        """Clip the accumulated gradient, take one optimiser step, clear it; the norm before clipping."""
        norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)
