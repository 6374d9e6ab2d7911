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

import copy
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
NORMALISERS = ("fresh", "carry")


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

    ``clip_every_step``: clip the accumulated gradient after every step of a sequence, as the public
    code does (so the last steps set its direction), besides before each optimiser step.
    ``normaliser``: "fresh", the normaliser's statistics start empty at every sequence, training and
    evaluation alike (so the trained and the untrained network are normalised the same way), or
    "carry", they accumulate over every training sequence and on into lifelong use (the public code).
    ``validate_every``: every so many episodes (and before the first), run one validation sequence on
    the train split, as long as the evaluation's (seed-fixed, never an evaluation edit), and end
    training with the network that scored best on it (``agents.auto_settings.choose``: the best
    harmonic mean of Eff, Gen and Spe among states whose perplexity stays within 1.5x the unedited
    model's), the untrained network among the candidates; None: no validation, the last network.
    """

    train_num_batches: int | None = None
    update_every: int = 1
    update_unit: str = "episode"
    reward: dict[str, Any] | None = None
    clip_every_step: bool = False
    normaliser: str = "fresh"
    validate_every: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.update_unit not in UPDATE_UNITS:
            raise ValueError(f"update_unit must be one of {UPDATE_UNITS}, got {self.update_unit!r}")
        if self.update_every < 1:
            raise ValueError(f"update_every must be >= 1, got {self.update_every}")
        if self.normaliser not in NORMALISERS:
            raise ValueError(f"normaliser must be one of {NORMALISERS}, got {self.normaliser!r}")
        if self.validate_every is not None and self.validate_every < 1:
            raise ValueError(f"validate_every must be None or >= 1 episodes, got {self.validate_every}")


class RLEdit(HyperNetworkEditor):
    """RLEdit: MALMEN's hypernetwork and update rule, trained like a policy on whole edit sequences.

    Follows the paper: the MALMEN network (4 residual low-rank blocks, rank 1024 capped at the input
    size, per-module learned lr starting at 1e-6 and ridge log-lambda at 0); the reward with memory
    backtracking k = 10, decay 0.95, locality coefficient 0.6 (KL between the model before and after the
    step's update) and regularisation 1e-4 (the environment's ``RewardConfig``); the transition is
    treated as given (no gradient flows into earlier steps); gradients accumulated over the whole
    sequence, clipped at norm 1; Adam with meta learning rate 1e-5.

    The registry's ``rledit-published`` is the public code's procedure (github.com/zhrli324/RLEdit,
    c6576a1: ``editor/rledit.py``, ``nets.py``, ``config/editor/rledit.yaml``) at the model's scale: one
    training sequence as long as the evaluation's and one optimiser step; the step sizes and the network
    in separate Adam groups so that the step moves each network weight by the published 1e-5 and the
    step sizes by 10x their initial value, as the public code's one Adam at 1e-5 does from lr 1e-6
    (``rledit_env.tuned_settings._published_rledit`` gives the initial lr); the accumulated gradient
    clipped after every step (``clip_every_step``); L_gen on one paraphrase per edit and no edit prompt,
    L_loc on one neighbour, and the regulariser without a gradient (the public code computes it on an
    update made under ``no_grad``): ``RewardConfig(gen_edit_prompts=False, reg_gradient=False)``; the
    normaliser carried from training into use (``normaliser="carry"``).

    ``rledit`` (trained) departs from it to give the method every fair chance: many training sequences
    (``learn(episodes)``, one optimiser step per ``update_every`` episodes, the learning curve in
    ``training_log``, with each step's sum of squared update norms ``update_sq_norm``), separate meta
    learning rates for the blocks and the step sizes, the normaliser started afresh at every sequence
    (``normaliser="fresh"``, applied to the untrained network the same way), and, with
    ``validate_every``, the network kept that scored best on a validation sequence of the train split.
    Both differ from the public code in two ways that do not change the gradient: autograd
    differentiates through ``ridge_solve`` where the public code back-propagates through it by hand in
    two stages (to save memory), and the losses are the environment's means over answer tokens where
    the public code sums per-prompt losses.

    The paper's step sizes (initial lr 1e-6, meta lr 1e-5) are set for 7-9B models; other models take
    theirs from ``rledit_env.tuned_settings`` (docs/tinyworld-settings.md).
    """

    Config = RLEditConfig
    action_type = "values"
    name = "rledit"

    def policy(self, observation, update_stats: bool) -> dict[str, Any]:
        """MALMEN's value differences for the observed keys and value gradients (differentiable); a
        sequence's first batch starts the normaliser afresh with ``normaliser="fresh"``."""
        if self.config.normaliser == "fresh" and float(observation["step"][0]) == 0:
            for net in self.net.nets.values():
                net.norm.reset()
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
        validation = _Validation(self) if cfg.validate_every else None
        with self._session(episodes, train_env, callback, progress_bar, **settings) as (env, bar):
            if not env.unwrapped.differentiable:
                raise ValueError(
                    "RLEdit trains through the reward's gradient: train_env needs differentiable=True"
                )
            if validation is not None:
                validation.score(0)  # the untrained network is a candidate too
            for _ in bar:
                start = time.perf_counter()
                obs, _ = env.reset(seed=self._episode_seed())
                totals: dict[str, float] = defaultdict(float)
                grad_norm, steps, done = math.nan, 0, False
                while not done:
                    action = self.policy(obs, update_stats=True)  # act, keeping the action's graph
                    obs, _, terminated, truncated, info = env.step(action)  # commit theta_t, score r_t
                    info["loss"].backward()  # -r_t's gradient accumulates in the network; frees the graph
                    if cfg.clip_every_step:  # the public code clips the accumulated gradient each step
                        torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg.max_grad_norm)
                    for term, value in info["losses"].items():
                        totals[term] += value
                    steps += 1
                    done = terminated or truncated
                    if cfg.update_unit == "step" or done:
                        pending += 1
                    if pending == cfg.update_every:
                        grad_norm, pending = self._clipped_step(), 0
                logs = {"loss": totals.pop("total") / steps, **{k: v / steps for k, v in totals.items()}}
                logs["update_sq_norm"] = logs["reg"]  # mean over steps of sum_m ||dW_m||^2
                logs["grad_norm"] = grad_norm
                bar.set_postfix(loss=f"{logs['loss']:.3f}")
                keep_going = self._end_episode(logs, start, callback)
                if validation is not None and self.episodes_trained % cfg.validate_every == 0:
                    self.training_log[-1].update(validation.score(self.episodes_trained))
                if not keep_going:
                    break
            if pending:  # the last, partial accumulation
                self._clipped_step()
            if validation is not None:
                validation.keep_best()
        return self

    def _clipped_step(self) -> float:
        """Clip the accumulated gradient, take one optimiser step, clear it; the norm before clipping."""
        norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)


class _Validation:
    """RLEdit's validation: one fixed sequence of the train split, as long as the evaluation's, scored
    with the network as it is; the best state so far is kept (see ``RLEditConfig.validate_every``)."""

    def __init__(self, agent: RLEdit):
        from rledit_env.metrics import perplexity

        self.agent = agent
        core = agent.core
        self.env = agent.training_env(
            num_batches=core.num_batches,
            batch_size=core.batch_size,
            score_reward=False,
            evaluate_at_end=True,
            probe_texts=core.probe_texts,
            obs_backend=core.obs_backend,
        )
        self.unedited_ppl = perplexity(core.editable, core.probe_texts)  # the bound's reference
        self.best: tuple[dict[str, Any], dict[str, torch.Tensor]] | None = None  # (its row, its state)
        agent.validation_log = []  # one row per validation, the untrained network's first

    def score(self, episode: int) -> dict[str, float]:
        """Validate the network after ``episode`` training episodes; its figures, for the training log."""
        from agents.auto_settings import choose, selection_score
        from agents.base import run_episode

        agent = self.agent
        state = copy.deepcopy(agent.net.state_dict())
        seed = 1_000_003 * (agent.config.seed + 1) - 1  # no training episode's seed
        try:
            metrics = run_episode(self.env, agent, seed=seed)["metrics"]
        finally:
            agent.net.load_state_dict(state)  # acting folded the sequence into the normaliser
        row = {"episode": episode, "score": selection_score(metrics), "ppl": float(metrics["ppl"])}
        agent.validation_log.append(
            {"episodes_trained": episode, "valid_score": row["score"], "valid_ppl": row["ppl"]}
        )
        if self.best is None or choose([self.best[0], row], "episode", self.unedited_ppl) == episode:
            self.best = (row, state)
        return {"valid_score": row["score"], "valid_ppl": row["ppl"]}

    def keep_best(self) -> None:
        """Load the best validated network (by the calibration's rule) and close the validation env."""
        row, state = self.best
        self.agent.net.load_state_dict(state)
        self.agent.validated_episode = row["episode"]
        for logged in self.agent.validation_log:
            logged["kept"] = logged["episodes_trained"] == row["episode"]
        self.env.close()
