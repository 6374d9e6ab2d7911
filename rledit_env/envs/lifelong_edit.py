"""Lifelong knowledge editing of a language model, as a Gymnasium environment."""

from __future__ import annotations

import hashlib
import textwrap
import time
from collections.abc import Mapping, Sequence
from contextlib import contextmanager

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from rledit_env.actions import InvalidActionError, check_module_dict, check_norms
from rledit_env.editable import EditableModel, Trace, ridge_solve
from rledit_env.episode import EncodedEdits
from rledit_env.generation import GenerationEvaluator
from rledit_env.metrics import SPE_REFERENCE, EpisodeEvaluator, headline_suite, perplexity
from rledit_env.models import LoadedModel, load_model
from rledit_env.prompt_pass import run_prompts
from rledit_env.records import EditRecord
from rledit_env.reward import BacktrackingReward, RewardConfig
from rledit_env.sampler import EpisodeSampler
from rledit_env.tokenization import encode_one

ACTION_TYPES = ("values", "shift")
EVALUATIONS = ("teacher_forced", "generation", "both")


def resolve_evaluation(evaluation: str, model_name: str) -> str:
    """ "auto" is today's teacher-forced suite on TinyWorld models (names starting with "tinyworld") and
    both suites on real models; anything else must be one of ``EVALUATIONS``."""
    if evaluation == "auto":
        return "teacher_forced" if model_name.startswith("tinyworld") else "both"
    if evaluation not in EVALUATIONS:
        raise ValueError(f"evaluation must be 'auto' or one of {EVALUATIONS}, got {evaluation!r}")
    return evaluation


class LifelongEditEnv(gym.Env):
    """
    ## Description

    An agent edits a language model, batch after batch, in a *knowledge sequence*: T batches of n edit
    requests ("T x n"), all applied to the same model, which keeps every earlier edit. This is the MDP
    of RLEdit (Li et al., ICML 2025): the agent's action is a weight update for the edit modules (a few
    MLP projections), and its reward is the negative editing loss of the current and the last k-1
    batches (memory backtracking), with a locality term and a regulariser.

    ## Action Space

    Set by ``action_type``. Modules are named by their path (``env.unwrapped.module_names``); d_in and
    d_out are a module's input and output sizes, N = ``max_tokens``.

    | action_type | action                                                                           |
    |-------------|----------------------------------------------------------------------------------|
    | "values"    | ``{"values": {module: (N, d_out)}, "log_lambda": {module: (1,)}}``: per-token value |
    |             | differences V; the environment solves dW = argmin ||U dW - V||^2 + lambda ||dW||^2   |
    |             | with the observed keys U (MALMEN's and RLEdit's interface). ``log_lambda`` may be   |
    |             | left out (then ``ridge_lambda``); rows where ``mask`` is 0 are ignored.            |
    | "shift"     | ``{module: (d_in, d_out)}``: the update dW itself (W <- W + dW, in (d_in, d_out)    |
    |             | layout whatever the layer stores).                                                |

    numpy arrays or torch tensors (any float dtype, any device) are accepted. An action with missing or
    extra modules, a wrong shape, a non-float dtype, NaN or inf (in the action, the solved update or the
    weights it would give), or a module update whose Frobenius norm exceeds ``max_update_norm`` raises
    ``InvalidActionError`` and leaves every weight bitwise unchanged.

    ## Observation Space

    A ``Dict`` describing batch K_t at the current weights theta_{t-1}, from one forward and backward
    pass of its edit loss (cross-entropy of the new answers on the edit prompts), read at the answer
    tokens only:

    | key            | shape                         | meaning                                              |
    |----------------|-------------------------------|------------------------------------------------------|
    | "keys"         | {module: (N, d_in)} float32   | the module's input u at each answer token            |
    | "value_grads"  | {module: (N, d_out)} float32  | dLoss/d(module output) delta at each answer token    |
    | "mask"         | (N,) int8                     | 1 for real tokens, 0 for padding                     |
    | "edit_index"   | (N,) int64                    | which edit of the batch a token belongs to, -1 pad   |
    | "step"         | (1,) float32                  | t, the number of batches already edited              |
    | "edit_loss"    | (1,) float32                  | K_t's edit loss at theta_{t-1}                       |

    The plain gradient of a module's weight is ``keys.T @ value_grads``. With ``obs_backend="torch"``
    the same structure holds torch tensors on the model's device (no host copies).

    ## Rewards

        r_t = -[ sum_{j<k} decay^j (L_gen(theta_t; K_{t-j}) + loc_coef * L_loc(theta_t; K_{t-j}))
                 + reg_coef * sum_m ||dW_t^m||^2 ]

    L_gen is the mean answer-token cross-entropy of the new answers on the edit and paraphrase prompts;
    L_loc the mean KL divergence, at the locality answers' tokens, from the model before this step's
    update to the model after it. The settings (k = ``backtrack_depth``, ``decay``, ``loc_coef``,
    ``reg_coef``) are one ``rledit_env.reward.RewardConfig``, the ``reward`` argument. With
    ``differentiable=True``, ``info["loss"]`` is -r_t as a torch scalar attached to the action's graph
    (``loss.backward()`` reaches the action), the analytic policy gradient RLEdit trains with.

    Scoring the reward costs forward passes over the whole window (up to k batches of edit, paraphrase
    and locality prompts), far more than editing itself. With ``score_reward=False`` the environment
    skips it: the reward is 0.0, ``info["reward_scored"]`` is False and ``info["losses"]`` is empty;
    the weights, observations and metrics are exactly those of a run with the reward on. Use it where
    nothing reads the reward (evaluating a trained or training-free editor).

    ## Starting State

    The model's original weights (restored bitwise on every reset, from a snapshot of the edit modules)
    and a knowledge sequence of T x n records drawn without replacement from the split, seeded by
    ``reset(seed=...)``. ``options={"records": [...]}`` (T x n EditRecords) or
    ``options={"indices": [...]}`` (into the split) pins the episode. An interrupted episode goes on
    from a ``progress()`` taken between two steps: ``reset`` with the same seed and options, then
    ``resume(progress)`` (long benchmark runs save one every few minutes).

    ## Episode End

    Terminates after T steps; ``truncated`` is only set by a TimeLimit wrapper. Calling ``step`` before
    ``reset`` or after the end raises ``RuntimeError``.

    ## Info

    ``losses`` (gen, loc, backtrack, reg, total; empty with the reward off), ``reward_scored``,
    ``edits`` (edits made so far), and with ``timing=True``
    ``time``: seconds spent validating and applying the update ("update"; includes the ridge solve),
    scoring the reward ("score"), computing metrics ("metrics") and tracing the next batch ("trace").
    Editing time proper is update + trace (an editor needs the keys and value gradients).
    ``metrics`` over all edits so far at the end of the episode and every ``metrics_every`` steps,
    whose history is ``curve``: by the ``evaluation`` protocol,

    | evaluation       | metrics                                                                   |
    |------------------|---------------------------------------------------------------------------|
    | "teacher_forced" | eff/gen/spe (the headline suite), eff_acc/gen_acc/spe_acc/spe_agree (token |
    |                  | accuracy of the gold answer fed in), eff_prob/gen_prob/spe_prob (CounterFact)|
    | "generation"     | eff_em/gen_em/spe_em/spe_em_agree: greedy generation begins with the new   |
    |                  | answer / the locality answer / the unedited model's generation             |
    |                  | (``rledit_env.generation``); no eff/gen/spe                                |
    | "both"           | all of them, never mixed: the teacher-forced names keep their meaning      |

    and ppl (perplexity on the model's own text) under every protocol. ``edits`` is the number of
    edits scored. ``timing`` splits the evaluation's time into "metrics" (teacher-forced and ppl)
    and "generation"; under "both" the two suites run their prompts together, all in "metrics".

    ## Arguments

    | argument          | default       | meaning                                                            |
    |-------------------|---------------|--------------------------------------------------------------------|
    | model             | "tinyworld"   | a registered name ("tinyworld", "tinyworld-tiny", ...), a hub id,  |
    |                   |               | a local directory, an ``EditableModel`` or a ``LoadedModel``       |
    | dataset           | None          | None (the model's own records), a path or known name, or records   |
    | split             | "eval"        | which of the model's own splits to draw from                       |
    | num_batches       | 20            | T                                                                  |
    | batch_size        | 10            | n                                                                  |
    | edit_modules      | None          | module names or a preset name; None: the architecture's preset     |
    | action_type       | "values"      | "values" or "shift"                                                |
    | reward            | None          | a ``RewardConfig`` or a dict of its settings (backtrack_depth k,   |
    |                   |               | decay mu, loc_coef, reg_coef); None: the paper's defaults          |
    | score_reward      | True          | False: skip the reward's scoring (reward 0.0, metrics unchanged)   |
    | ridge_lambda      | 1.0           | lambda when the action carries no log_lambda                       |
    | max_update_norm   | None          | refuse module updates above this Frobenius norm                    |
    | differentiable    | False         | return the loss as a torch tensor in ``info["loss"]``              |
    | obs_backend       | "numpy"       | "numpy" or "torch"                                                 |
    | metrics_every     | 0             | compute metrics every this many steps (0: only at the end)         |
    | evaluate_at_end   | True          | compute metrics when the episode ends                              |
    | evaluation        | "auto"        | "teacher_forced", "generation" or "both" (see Info); "auto":       |
    |                   |               | teacher-forced on TinyWorld models, both on real ones              |
    | probe_texts       | None          | texts for the perplexity probe (default: the model's own, if any)  |
    | stats_texts       | None          | corpus of the closed-form editors' key statistics; default: the    |
    |                   |               | model's own (TinyWorld: its "stats" split), else the train split's |
    |                   |               | edit and paraphrase prompts (``stats_source`` says which)          |
    | max_tokens        | None          | N; default: n x the longest answer in the split                    |
    | device, dtype     | None          | where and in which precision to load a named model                 |
    | device_map        | None          | "auto" (or a module -> device dict): accelerate spreads the model  |
    |                   |               | over the devices; each edit module keeps its fp32 master on its own|
    | eval_batch_size   | 64            | rows per forward pass when scoring many prompts (named models)     |
    | timing            | False         | put wall times by phase in ``info["time"]``                        |
    | render_mode       | None          | "ansi": render() shows the step, its batch, the latest Eff/Spe     |
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(
        self,
        model: str | EditableModel | LoadedModel = "tinyworld",
        dataset: str | Sequence[EditRecord] | None = None,
        *,
        split: str = "eval",
        num_batches: int = 20,
        batch_size: int = 10,
        edit_modules=None,
        action_type: str = "values",
        reward: RewardConfig | Mapping | None = None,
        score_reward: bool = True,
        ridge_lambda: float = 1.0,
        max_update_norm: float | None = None,
        differentiable: bool = False,
        obs_backend: str = "numpy",
        metrics_every: int = 0,
        evaluate_at_end: bool = True,
        evaluation: str = "auto",
        probe_texts: Sequence[str] | None = None,
        stats_texts: Sequence[str] | None = None,
        max_tokens: int | None = None,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        device_map: str | dict | None = None,
        eval_batch_size: int = 64,
        timing: bool = False,
        render_mode: str | None = None,
    ):
        if action_type not in ACTION_TYPES:
            raise ValueError(f"action_type must be one of {ACTION_TYPES}, got {action_type!r}")
        if obs_backend not in ("numpy", "torch"):
            raise ValueError(f"obs_backend must be 'numpy' or 'torch', got {obs_backend!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None")
        if num_batches < 1 or batch_size < 1:
            raise ValueError("num_batches and batch_size must be >= 1")
        if differentiable and not score_reward:
            raise ValueError("differentiable=True returns the reward's gradient: it needs score_reward")
        self.reward_config = RewardConfig.coerce(reward)
        self.score_reward = score_reward
        self.num_batches, self.batch_size = num_batches, batch_size
        self.action_type, self.obs_backend = action_type, obs_backend
        self.ridge_lambda, self.max_update_norm = ridge_lambda, max_update_norm
        self.differentiable = differentiable
        self.metrics_every, self.evaluate_at_end = metrics_every, evaluate_at_end
        self.render_mode = render_mode
        self.timing = timing

        loaded = self._load(model, edit_modules, device, dtype, device_map, eval_batch_size)
        self.editable: EditableModel = loaded.editable
        config = self.editable.model.config
        # what the agents' tuned settings are looked up by (rledit_env.tuned_settings)
        self.model_name: str = loaded.name or getattr(config, "_name_or_path", "") or config.model_type
        self.evaluation = resolve_evaluation(evaluation, self.model_name)  # the protocol of the metrics
        self.records = self._resolve_records(loaded, dataset, split)
        self.splits = loaded.splits  # the model's own splits (TinyWorld), e.g. for a training env
        self.probe_texts = list(probe_texts) if probe_texts is not None else loaded.probe_texts[:256]
        self.stats_texts, self.stats_source = self._stats_corpus(loaded, stats_texts)
        self.spe_reference = SPE_REFERENCE[headline_suite(self.records)]  # what the headline spe measures
        self.sampler = EpisodeSampler(self.records, num_batches, batch_size)
        self.max_tokens = max_tokens or batch_size * self._longest_answer(self.records)
        self._initial_weights = self.editable.snapshot()

        shapes = self.editable.shapes
        self.module_names = list(shapes)
        n = self.max_tokens
        unbounded = {"low": -np.inf, "high": np.inf, "dtype": np.float32}
        self.observation_space = spaces.Dict(
            {
                "keys": spaces.Dict(
                    {m: spaces.Box(shape=(n, d_in), **unbounded) for m, (d_in, _) in shapes.items()}
                ),
                "value_grads": spaces.Dict(
                    {m: spaces.Box(shape=(n, d_out), **unbounded) for m, (_, d_out) in shapes.items()}
                ),
                "mask": spaces.MultiBinary(n),
                "edit_index": spaces.Box(low=-1, high=batch_size - 1, shape=(n,), dtype=np.int64),
                "step": spaces.Box(low=0, high=num_batches, shape=(1,), dtype=np.float32),
                "edit_loss": spaces.Box(low=0, high=np.inf, shape=(1,), dtype=np.float32),
            }
        )
        if action_type == "shift":
            self.action_space = spaces.Dict({m: spaces.Box(shape=s, **unbounded) for m, s in shapes.items()})
        else:
            self.action_space = spaces.Dict(
                {
                    "values": spaces.Dict(
                        {m: spaces.Box(shape=(n, d_out), **unbounded) for m, (_, d_out) in shapes.items()}
                    ),
                    "log_lambda": spaces.Dict(
                        {m: spaces.Box(low=-10, high=10, shape=(1,), dtype=np.float32) for m in shapes}
                    ),
                }
            )
        self._t: int | None = None  # None: not reset yet

    # ------------------------------------------------------------------------------ construction
    @staticmethod
    def _load(model, edit_modules, device, dtype, device_map, eval_batch_size) -> LoadedModel:
        if isinstance(model, LoadedModel):
            return model
        if isinstance(model, EditableModel):
            return LoadedModel(model)
        if isinstance(model, str):
            return load_model(
                model,
                edit_modules,
                device=device,
                dtype=dtype,
                eval_batch_size=eval_batch_size,
                device_map=device_map,
            )
        raise TypeError(
            f"model must be a name, a path, an EditableModel or a LoadedModel, not {type(model).__name__}"
        )

    @staticmethod
    def _resolve_records(loaded: LoadedModel, dataset, split: str) -> list[EditRecord]:
        if dataset is None:
            if not loaded.splits:
                raise ValueError(
                    "this model has no records of its own: pass dataset= (a path, a name or records)"
                )
            if split not in loaded.splits:
                raise ValueError(f"unknown split {split!r}; this model has {sorted(loaded.splits)}")
            return loaded.splits[split]
        if isinstance(dataset, str):
            from rledit_env.datasets import load_dataset

            return load_dataset(dataset)
        records = list(dataset)
        bad = [i for i, r in enumerate(records) if not isinstance(r, EditRecord)]
        if bad:
            raise TypeError(f"dataset item {bad[0]} is a {type(records[bad[0]]).__name__}, not an EditRecord")
        return records

    @staticmethod
    def _stats_corpus(loaded: LoadedModel, given: Sequence[str] | None) -> tuple[list[str], str]:
        """Key-statistics texts that share nothing with the perplexity probe or the evaluation prompts,
        and a short name of where they come from (for results files)."""
        if given is not None:
            return list(given), "given"
        if loaded.stats_texts:
            return list(loaded.stats_texts), "model's statistics split"
        train = loaded.splits.get("train", [])
        prompts = dict.fromkeys(p for r in train for p in (r.prompt, *r.paraphrase_prompts))
        return list(prompts), "train split's prompts" if prompts else "none"

    def _longest_answer(self, records: Sequence[EditRecord]) -> int:
        tok = self.editable.tokenizer
        return max(
            sum(label != -100 for label in encode_one(tok, r.prompt, r.target_new)[1]) for r in records
        )

    # ------------------------------------------------------------------------------ public surface
    @property
    def initial_weights(self) -> dict[str, torch.Tensor]:
        """The edit modules' weights every reset restores (do not modify; e.g. to build a training env)."""
        return self._initial_weights

    @property
    def current_records(self) -> list[EditRecord]:
        """The batch K_t the next action edits (closed-form editors read subjects from it)."""
        self._require_running()
        return self._batches[self._t].records

    @property
    def episode(self) -> list[list[EditRecord]]:
        """The whole knowledge sequence of the current episode."""
        self._require_running(allow_done=True)
        return [b.records for b in self._batches]

    def progress(self) -> dict:
        """The running episode between two steps, for ``resume``: the step t, the metrics' curve so far,
        the edit modules' weights (at full precision) and a fingerprint of the episode's edits."""
        self._require_running()
        return {
            "step": self._t,
            "curve": list(self._curve),
            "weights": self.editable.snapshot(full_precision=True),
            "episode": self._fingerprint,
        }

    def resume(self, progress: Mapping) -> dict:
        """Go on with the episode ``reset`` has just started (same seed and options) from a ``progress()``
        of it taken at step t; returns the observation of batch K_t. The evaluation's references are
        those ``reset`` took on the unedited model, as in an uninterrupted episode; the reward's cached
        locality references are recomputed at the restored weights. A progress of another episode, step
        or model raises ValueError and leaves every weight as it was."""
        if self._t != 0:
            raise ValueError("resume() continues an episode that reset() has just started")
        step, weights = progress.get("step"), progress.get("weights")
        if progress.get("episode") != self._fingerprint:
            raise ValueError("the progress is of another episode (other edits, seed or options)")
        if not (isinstance(step, int) and 0 < step < self.num_batches):
            raise ValueError(f"the progress's step must be 1..{self.num_batches - 1}, got {step!r}")
        current = self.editable.snapshot(full_precision=True)
        if not isinstance(weights, Mapping) or set(weights) != set(current):
            raise ValueError(f"the progress's weights must be of the edit modules {sorted(current)}")
        for name, weight in weights.items():
            fits = isinstance(weight, torch.Tensor) and weight.shape == current[name].shape
            if not fits or weight.dtype != current[name].dtype:
                raise ValueError(f"the progress's weight of {name!r} does not fit the module")
        self.editable.restore(weights)
        self._curve = [dict(point) for point in progress.get("curve", [])]
        self._t = step
        self._trace = self._trace_batch(step)
        self._last_info = {"step": step, "edits": step * self.batch_size}
        return self._observation()

    def updates_from_action(self, action) -> dict[str, torch.Tensor]:
        """Validate an action and turn it into fp32 updates dW (d_in, d_out) on the model's device."""
        self._require_running()
        device = self.editable.device
        if self.action_type == "shift":
            updates = check_module_dict(action, self.editable.shapes, "action", device)
        else:
            if not isinstance(action, Mapping) or "values" not in action:
                raise InvalidActionError(
                    "action: expected a dict with 'values' (and optionally 'log_lambda')"
                )
            extra = sorted(set(action) - {"values", "log_lambda"})
            if extra:
                raise InvalidActionError(f"action: unexpected keys {extra}")
            d_outs = {m: (self.max_tokens, d_out) for m, (_, d_out) in self.editable.shapes.items()}
            values = check_module_dict(action["values"], d_outs, "action['values']", device)
            if "log_lambda" in action:
                shapes = {m: (1,) for m in self.module_names}
                log_lam = check_module_dict(action["log_lambda"], shapes, "action['log_lambda']", device)
                lambdas = {m: log_lam[m].exp().squeeze(0) for m in self.module_names}
            else:
                lambdas = {m: self.ridge_lambda for m in self.module_names}
            count = self._trace.edit_index.numel()
            updates = {
                m: ridge_solve(self._trace.keys[m], values[m][:count], lambdas[m]) for m in self.module_names
            }
            bad = [m for m, d in updates.items() if not bool(torch.isfinite(d).all())]
            if bad:
                raise InvalidActionError(f"the ridge solve for {bad} gave NaN or inf (lambda too small?)")
        check_norms(updates, self.max_update_norm)
        self.editable.check_updates_finite(updates)
        return updates

    def candidate_losses(self, updates: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The reward's loss terms under candidate updates, without committing them.

        Differentiable in ``updates``. Agents use it to take several gradient steps (fine-tuning) or
        to evaluate a proposal; ``step`` uses it for the reward.
        """
        self._require_running()
        refs = self._reward.references(self._t)
        return self._reward.terms(self._t, updates, refs, functional=True, commit=False)

    # ------------------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.editable.restore(self._initial_weights)
        records = self._episode_records(options or {})
        self._fingerprint = _fingerprint(records)
        n = self.batch_size
        tok = self.editable.tokenizer
        cfg = self.reward_config
        self._batches = [
            EncodedEdits.build(
                tok,
                records[i : i + n],
                cfg.paraphrases_per_edit,
                cfg.neighbours_per_edit,
                cfg.gen_edit_prompts,
            )
            for i in range(0, len(records), n)
        ]
        evaluates = self.evaluate_at_end or self.metrics_every
        self._evaluator = (
            EpisodeEvaluator(self.editable, records)
            if evaluates and self.evaluation in ("teacher_forced", "both")
            else None
        )
        self._generation = (
            GenerationEvaluator(self.editable, records)
            if evaluates and self.evaluation in ("generation", "both")
            else None
        )
        self._reward = BacktrackingReward(
            self.reward_config, self.editable, self._batches, score=self.score_reward
        )
        self._curve: list[dict] = []
        self._t = 0
        start = time.perf_counter()
        self._trace = self._trace_batch(0)
        info = {"step": 0, "edits": 0}
        if self.timing:
            info["time"] = {"trace": time.perf_counter() - start}
        return self._observation(), info

    def step(self, action):
        self._require_running()
        clock = _Clock()
        t = self._t
        with clock("update"):
            updates = self.updates_from_action(action)
        terms = self._take_step(t, updates, clock)
        self._t = t + 1
        terminated = self._t == self.num_batches
        info: dict = {
            "step": self._t,
            "edits": self._t * self.batch_size,
            "reward_scored": terms is not None,
            "losses": {} if terms is None else {k: float(v.detach()) for k, v in terms.items()},
        }
        if self.differentiable:
            info["loss"] = terms["total"]
        due = self.metrics_every and self._t % self.metrics_every == 0
        if (self._evaluator or self._generation) and (due or (terminated and self.evaluate_at_end)):
            info["metrics"] = self._metrics(clock)
        if terminated:
            info["curve"] = list(self._curve)
        else:
            with clock("trace"):
                self._trace = self._trace_batch(self._t)
        if self.timing:  # off by default: wall times differ between runs, and check_env compares infos
            info["time"] = dict(clock.totals)
        self._last_info = info
        reward = 0.0 if terms is None else -float(terms["total"].detach())
        return self._observation(), reward, terminated, False, info

    def render(self) -> str | None:
        """With ``render_mode="ansi"``: the step, the last step's reward and loss terms, the batch it
        edited (before the first step: the batch to edit) as "prompt -> new answer (was: true answer)",
        and Eff/Spe over all edits so far at the latest evaluation (``metrics_every``)."""
        if self.render_mode != "ansi":
            return None
        if self._t is None:
            return "LifelongEditEnv: not reset"
        lines = [f"step {self._t}/{self.num_batches} | {self._t * self.batch_size} edits made"]
        losses = self._last_info.get("losses") if self._t else None
        if losses:  # absent when the reward is not computed
            terms = " ".join(f"{k} {v:.3f}" for k, v in losses.items() if k != "total")
            lines[0] += f" | reward {-losses['total']:.3f} ({terms})"
        lines.append(f"{'edited' if self._t else 'to edit'}: batch {max(self._t, 1)}")
        records, shown = self._batches[max(self._t - 1, 0)].records, 3
        for r in records[:shown]:
            was = f" (was: {r.target_true})" if r.target_true else ""
            lines.append(f"  {textwrap.shorten(r.prompt, 60, placeholder='...')} -> {r.target_new}{was}")
        if len(records) > shown:
            lines.append(f"  ... and {len(records) - shown} more")
        if self._curve:
            last = self._curve[-1]
            scores = [f"Eff {last['eff']:.3f} Spe {last['spe']:.3f}"] if "eff" in last else []
            if "eff_em" in last:
                scores.append(
                    f"by generation Eff {last['eff_em']:.3f} Spe {last.get('spe_em', float('nan')):.3f}"
                )
            lines.append(
                f"{'; '.join(scores)} over the first {last['edits']:.0f} edits "
                f"(evaluated after step {last['step']})"
            )
        return "\n".join(lines)

    def close(self):
        if self._t is not None:
            self.editable.restore(self._initial_weights)

    # ------------------------------------------------------------------------------ internals
    def _require_running(self, allow_done: bool = False) -> None:
        if self._t is None:
            raise RuntimeError("call reset() before step()")
        if self._t >= self.num_batches and not allow_done:
            raise RuntimeError(f"the episode ended after {self.num_batches} steps; call reset()")

    def _episode_records(self, options: dict) -> list[EditRecord]:
        if "records" in options:
            records = list(options["records"])
            expected = self.num_batches * self.batch_size
            if len(records) != expected or not all(isinstance(r, EditRecord) for r in records):
                raise ValueError(
                    f"options['records'] must be {expected} EditRecords (T x n), got {len(records)}"
                )
            for r in records:  # the observation space has room for max_tokens answer tokens per batch
                if self.batch_size * self._longest_answer([r]) > self.max_tokens:
                    raise ValueError(f"record {r.prompt!r} has an answer longer than max_tokens allows")
            return records
        if "indices" in options:
            batches = self.sampler.from_indices(options["indices"])
        else:
            batches = self.sampler.sample(self.np_random)
        return [r for batch in batches for r in batch]

    def _trace_batch(self, index: int) -> Trace:
        trace = self.editable.trace(self._batches[index].edit.batch)
        tokens = trace.edit_index.numel()
        if tokens > self.max_tokens:
            raise ValueError(f"batch {index} has {tokens} answer tokens, above max_tokens={self.max_tokens}")
        return trace

    def _observation(self) -> dict:
        n, device = self.max_tokens, self.editable.device
        done = self._t >= self.num_batches
        count = 0 if done else self._trace.edit_index.numel()

        def padded(tensor: torch.Tensor | None, width: int) -> torch.Tensor:
            out = torch.zeros(n, width, dtype=torch.float32, device=device)
            if tensor is not None:
                out[:count] = tensor
            return out

        shapes = self.editable.shapes
        edit_index = torch.full((n,), -1, dtype=torch.int64, device=device)
        if count:
            edit_index[:count] = self._trace.edit_index.to(device)
        obs = {
            "keys": {
                m: padded(None if done else self._trace.keys[m], d_in) for m, (d_in, _) in shapes.items()
            },
            "value_grads": {
                m: padded(None if done else self._trace.value_grads[m], d_out)
                for m, (_, d_out) in shapes.items()
            },
            "mask": (edit_index >= 0).to(torch.int8),
            "edit_index": edit_index,
            "step": torch.tensor([float(self._t)], device=device),
            "edit_loss": torch.tensor([0.0 if done else self._trace.loss], device=device),
        }
        if self.obs_backend == "torch":
            return obs
        return _to_numpy(obs)

    def _take_step(self, t: int, updates, clock: _Clock) -> dict[str, torch.Tensor] | None:
        """Apply ``updates`` and score the reward's terms (None with the reward off)."""
        if not self.score_reward:
            with clock("update"):
                self.editable.apply_updates(updates)
            return None
        with clock("score"):
            refs = self._reward.references(t)  # at theta_{t-1}: before the update
        if self.differentiable:  # score theta_{t-1} + dW functionally, so the loss reaches the action
            with clock("score"):
                terms = self._reward.terms(t, updates, refs, functional=True, commit=True)
            with clock("update"):
                self.editable.apply_updates(updates)
            return terms
        with clock("update"):
            self.editable.apply_updates(updates)
        with clock("score"), torch.no_grad():
            return self._reward.terms(t, updates, refs, functional=False, commit=True)

    def _metrics(self, clock: _Clock) -> dict[str, float]:
        edits = self._t * self.batch_size
        metrics: dict[str, float] = {}
        teacher, generation = self._evaluator, self._generation
        if teacher is not None and generation is not None and edits:
            # both suites from one run of their prompts (rledit_env.prompt_pass)
            with clock("metrics"):
                scored, generated = run_prompts(
                    self.editable, teacher.requests(edits), generation.requests(edits), **generation.stops()
                )
                metrics.update(teacher.metrics(edits, scored))
                metrics.update(generation.metrics(edits, generated))
            teacher = generation = None
        with clock("metrics"):
            if teacher is not None:
                metrics.update(teacher.evaluate(edits))
            if self.probe_texts:
                metrics["ppl"] = perplexity(self.editable, self.probe_texts)
        if generation is not None:
            with clock("generation"):
                metrics.update(generation.evaluate(edits))
        self._curve.append({"step": self._t, **metrics})
        return metrics


class _Clock:
    """Accumulates wall time per phase: ``with clock("name"): ...``."""

    def __init__(self):
        self.totals: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.totals[phase] = self.totals.get(phase, 0.0) + time.perf_counter() - start


def _fingerprint(records: Sequence[EditRecord]) -> str:
    """A digest of an episode's edits, in order (what ``resume`` checks a progress against)."""
    text = "\x1e".join(f"{r.prompt}\x1f{r.target_new}\x1f{r.target_true}" for r in records)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _to_numpy(obs):
    if isinstance(obs, dict):
        return {k: _to_numpy(v) for k, v in obs.items()}
    return obs.detach().cpu().numpy()
