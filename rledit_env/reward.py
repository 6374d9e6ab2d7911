"""RLEdit's reward: the editing loss of the current batch and the last k-1 ones (memory backtracking), a
locality term and a regulariser (docs/design.md, "The MDP").

    r_t = -[ sum_{j<k} decay^j (L_gen(theta_t; K_{t-j}) + loc_coef * L_loc(theta_t; K_{t-j}))
             + reg_coef * sum_m ||dW_t^m||^2 ]

L_gen is the mean answer-token cross-entropy of the new answers on a batch's edit and paraphrase prompts;
L_loc the mean KL divergence, at the locality answers' tokens, from the model before this step's update
(or, with ``loc_reference="unedited"``, the unedited model) to the model after it. ``RewardConfig`` is
the one place these settings live: the environment takes one, and agents that train on the reward
(RLEdit) use their evaluation environment's unless told otherwise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from rledit_env.editable import EditableModel, TargetLogits, Updates, stack_prefixes, stack_rows
from rledit_env.episode import EncodedEdits

LOC_REFERENCES = ("previous", "unedited")


@dataclass(frozen=True)
class RewardConfig:
    """The reward's settings. ``backtrack_depth=1, decay=0`` is MALMEN's one-step loss.

    | setting          | default | meaning                                                        |
    |------------------|---------|----------------------------------------------------------------|
    | backtrack_depth  | 10      | k, batches scored at each step (the current one and k-1 older) |
    | decay            | 0.95    | mu, weight mu^j of the batch j steps back                      |
    | loc_coef         | 0.6     | c_loc, weight of the locality KL                               |
    | reg_coef         | 1e-4    | eta_reg, weight of sum_m ||dW_m||^2                            |
    | paraphrases_per_edit | None | paraphrase prompts of each edit in L_gen (the first so many;   |
    |                  |         | None: all the record has)                                      |
    | neighbours_per_edit | None | locality prompts of each edit in L_loc (None: all)             |
    | gen_edit_prompts | True    | L_gen scores the edit prompts too (False: paraphrases only, as |
    |                  |         | the public code's "equiv" loss; an edit without paraphrases    |
    |                  |         | keeps its edit prompt)                                         |
    | reg_gradient     | True    | the regulariser has a gradient (False: scored as a number, as  |
    |                  |         | in the public code, whose update has no graph there)           |
    | loc_reference    | "previous" | L_loc's reference: the model before this step's update (the |
    |                  |         | paper), or "unedited": the original model (a cumulative KL)    |

    RLEdit's public code scores one paraphrase and one neighbour per edit; with every one TinyWorld's
    records carry (4 and 4) a step scores three times as many prompts.
    """

    backtrack_depth: int = 10
    decay: float = 0.95
    loc_coef: float = 0.6
    reg_coef: float = 1e-4
    paraphrases_per_edit: int | None = None
    neighbours_per_edit: int | None = None
    gen_edit_prompts: bool = True
    reg_gradient: bool = True
    loc_reference: str = "previous"

    def __post_init__(self) -> None:
        if self.loc_reference not in LOC_REFERENCES:
            raise ValueError(f"loc_reference must be one of {LOC_REFERENCES}, got {self.loc_reference!r}")
        for name in ("gen_edit_prompts", "reg_gradient"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.backtrack_depth < 1:
            raise ValueError(f"backtrack_depth must be >= 1, got {self.backtrack_depth}")
        if not 0 <= self.decay <= 1:
            raise ValueError(f"decay must be in [0, 1], got {self.decay}")
        if self.loc_coef < 0 or self.reg_coef < 0:
            raise ValueError("loc_coef and reg_coef must be >= 0")
        for name in ("paraphrases_per_edit", "neighbours_per_edit"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be None or an integer >= 0, got {value!r}")

    @classmethod
    def coerce(cls, value: RewardConfig | Mapping | None) -> RewardConfig:
        """A RewardConfig from itself, a dict of its settings (unknown ones refused), or None (defaults)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise ValueError(f"reward: unknown settings {unknown}; known: {sorted(known)}")
            return cls(**value)
        raise TypeError(f"reward must be a RewardConfig, a dict or None, not {type(value).__name__}")

    def replace(self, overrides: Mapping | None) -> RewardConfig:
        """This config with ``overrides`` (a dict of settings) on top."""
        return RewardConfig.coerce({**dataclasses.asdict(self), **(overrides or {})})


class BacktrackingReward:
    """Scores the reward of each step of one episode (its encoded batches, in editing order).

    It keeps the locality log-probabilities of the window's batches at the current weights, so that
    each step scores the reference "before this step's update" with one pass over the new batch only;
    and the hidden states its prompts reach below the first edited layer (``frozen_prefix``: those
    layers never change), so that every pass runs only the layers from the first edited one up. All
    of the window's prompts (edit, paraphrase and locality, every batch) go through the model together,
    packed into as few passes as ``EditableModel.tokens_per_pass`` allows.
    """

    def __init__(
        self, config: RewardConfig, editable: EditableModel, batches: Sequence[EncodedEdits], *, score=True
    ):
        """Made at the episode's start, on the unedited model: with ``loc_reference="unedited"`` (and
        ``score``) the locality log-probs of every batch are taken there, once."""
        self.config, self.editable, self.batches = config, editable, batches
        self._loc_refs: dict[int, torch.Tensor] = {}  # batch -> locality log-probs at the current weights
        self._prefixes: dict[tuple[int, str], torch.Tensor | None] = {}  # (batch, "gen"/"loc") -> prefix
        self._unedited: dict[int, torch.Tensor] | None = None
        if config.loc_reference == "unedited" and score:
            self._unedited = {b: self._loc_logprobs(b) for b in range(len(batches)) if len(batches[b].loc)}

    def _prefix(self, b: int, kind: str) -> torch.Tensor | None:
        """The frozen layers' output for batch b's "gen" or "loc" prompts (computed once per episode)."""
        if (b, kind) not in self._prefixes:
            self._prefixes[b, kind] = self.editable.frozen_prefix(getattr(self.batches[b], kind).batch)
        return self._prefixes[b, kind]

    def window(self, t: int) -> list[int]:
        """Batches scored at step t, newest first: t, t-1, ..., t-k+1."""
        return list(range(t, max(t - self.config.backtrack_depth, -1), -1))

    @torch.no_grad()
    def references(self, t: int) -> dict[int, torch.Tensor]:
        """Locality log-probs of step t's window at the weights before its update (the current ones).

        Older batches reuse what the previous step's scoring computed after its update (the same
        weights), so when every step is scored only the new batch costs a pass here.
        """
        if self.config.loc_reference == "unedited":
            if self._unedited is None:
                raise RuntimeError("the reward was made with score=False: it has no unedited references")
            return self._unedited
        refs = dict(self._loc_refs)
        for b in self.window(t):
            if b not in refs and len(self.batches[b].loc):
                refs[b] = self._loc_logprobs(b)
        return refs

    @torch.no_grad()
    def _loc_logprobs(self, b: int) -> torch.Tensor:
        """Batch b's locality log-probs at the current weights."""
        target = self.editable.target_logits(
            self.batches[b].loc.batch, packed=True, prefix=self._prefix(b, "loc")
        )
        return torch.log_softmax(target.logits, -1)

    def terms(
        self, t: int, updates: Updates, refs: Mapping[int, torch.Tensor], *, functional: bool, commit: bool
    ) -> dict[str, torch.Tensor]:
        """The reward's loss terms (gen, loc, backtrack, reg, total) at step t.

        ``refs`` are ``references(t)``, taken before the update is applied. Scored at theta_{t-1} +
        ``updates`` when ``functional`` (differentiable in ``updates``), else at the current weights
        (which already include them). ``commit`` keeps the locality log-probs as the next step's
        references (the step is taken); a candidate that is only evaluated leaves them.
        """
        cfg = self.config
        window = self.window(t)
        with_loc = [b for b in window if len(self.batches[b].loc)]
        gen_sizes = [len(self.batches[b].gen) for b in window]
        loc_sizes = [len(self.batches[b].loc) for b in with_loc]
        stacked = stack_rows(
            [self.batches[b].gen.batch for b in window] + [self.batches[b].loc.batch for b in with_loc]
        )
        prefixes = [self._prefix(b, "gen") for b in window] + [self._prefix(b, "loc") for b in with_loc]
        prefix = None if prefixes[0] is None else stack_prefixes(prefixes, stacked.input_ids.shape[1])
        target = self.editable.target_logits(
            stacked, updates if functional else None, packed=True, prefix=prefix
        )
        # Rows are gen rows batch by batch, then loc rows batch by batch; tokens come in row order, so
        # each part is a contiguous run and every per-batch figure is one segment sum (few ops: a step's
        # autograd graph stays small).
        row_nll = target.nll()
        num_gen = sum(gen_sizes)
        gen_losses = _segment_means(row_nll[:num_gen], gen_sizes)
        loc_losses = row_nll.new_zeros(len(window))  # per window batch; 0 for a batch without loc prompts
        loc_logprobs: dict[int, torch.Tensor] = {}  # per batch with loc prompts: the next step's references
        if with_loc:
            first = int(torch.searchsorted(target.rows, num_gen))
            logprobs = torch.log_softmax(target.logits[first:], -1)
            ref = torch.cat([refs[b] for b in with_loc])
            kl = (ref.exp() * (ref - logprobs)).sum(-1)
            loc = TargetLogits(logprobs, target.labels[first:], target.rows[first:] - num_gen, sum(loc_sizes))
            positions = torch.tensor([window.index(b) for b in with_loc], device=loc_losses.device)
            loc_losses = loc_losses.index_put((positions,), _segment_means(loc.per_row_mean(kl), loc_sizes))
            tokens = _segment_sums(torch.bincount(loc.rows, minlength=loc.num_rows), loc_sizes)
            loc_logprobs = dict(zip(with_loc, logprobs.detach().split(tokens.tolist()), strict=True))
        if commit:
            self._loc_refs = loc_logprobs
            oldest = t + 2 - cfg.backtrack_depth  # the next step's window starts there
            self._prefixes = {key: p for key, p in self._prefixes.items() if key[0] >= oldest}
        per_batch = gen_losses + cfg.loc_coef * loc_losses
        weights = cfg.decay ** torch.arange(len(window), dtype=per_batch.dtype, device=per_batch.device)
        zero = row_nll.new_zeros(())
        reg = sum((d.float().pow(2).sum().to(zero.device) for d in updates.values()), zero)
        if not cfg.reg_gradient:
            reg = reg.detach()
        backtrack = (weights[1:] * per_batch[1:]).sum()
        total = per_batch[0] + backtrack + cfg.reg_coef * reg
        return {
            "gen": gen_losses[0],
            "loc": loc_losses[0],
            "backtrack": backtrack,
            "reg": reg,
            "total": total,
        }


def _segment_sums(values: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Sums of consecutive runs of ``sizes`` entries of ``values`` -> (len(sizes),)."""
    segment = torch.repeat_interleave(
        torch.arange(len(sizes), device=values.device), torch.tensor(sizes, device=values.device)
    )
    return values.new_zeros(len(sizes)).index_add(0, segment, values)


def _segment_means(values: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Means of consecutive runs of ``sizes`` entries of ``values`` -> (len(sizes),)."""
    return _segment_sums(values, sizes) / torch.tensor(sizes, dtype=values.dtype, device=values.device)
