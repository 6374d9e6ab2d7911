"""Locate-then-edit in closed form: what MEMIT and AlphaEdit share.

For each batch of edits:

1. **Target vectors.** For each edit, a vector delta added to the residual stream at the lookup token
   (the last subject token, or the prompt's last token) of the *critical layer* (the last edited layer;
   added at its MLP output projection) is optimised by Adam so that the model gives the new answer: NLL
   of the answer on the edit prompt and on prefixed variants of it (general sentences of the model's
   domain in front, like MEMIT's context templates), plus a KL term that keeps the next-token
   distribution on "{subject} is a" (the subject's other facts), plus a small norm penalty; ||delta|| is
   clamped to a multiple of the hidden state's norm. The target is z = h + delta, h the residual stream.
2. **Spreading.** For each edited layer l, lowest first, at the weights updated so far: keys K (the MLP
   output projection's input at the lookup token, averaged over the prompt variants), and the residual
   R = (z - h_current) / (number of edited layers from l up). Each editor solves for the layer's update
   from K and R in its own way (``LocateThenEdit._solve``), using C = E[k k^T], the keys' second moment
   over general text (``agents.key_stats``).

The environment must be made with the MLP output projections as edit modules
(``rledit_env.presets.locate_edit_modules(config)``), since the update is written there. Records
without a subject in their prompt (FEVER has none) use the prompt's last token, and skip the KL term;
``lookup="last"`` uses the last token for every record (for models that recall facts there, such as
TinyWorld's, see docs/tinyworld-settings.md).
"""

from __future__ import annotations

import os
import random
import time
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import gymnasium as gym
import torch

from agents.auto_settings import AUTO, AutoSetting, check_positive, is_auto
from agents.base import AgentConfig, EditAgent, like_observation
from agents.key_stats import KeyStats, key_second_moments
from rledit_env.editable import stack_rows
from rledit_env.presets import architecture, locate_edit_modules, mlp_output_layer
from rledit_env.records import EditRecord
from rledit_env.tokenization import EncodedBatch, encode_batch, subject_last_token_index

LOOKUPS = ("subject_last", "last")
# the target search's pass: (delta, rewrite rows, "{subject} is a" rows) -> (rows' NLL, log-probabilities)
SearchPass = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


@dataclass
class LocateEditConfig(AgentConfig):
    """What MEMIT and AlphaEdit share: the target vectors' search and the key statistics.

    Defaults are the published ones for Llama-3-8B (AlphaEdit's code base, which runs MEMIT too), except
    the settings in ``AUTO_SETTINGS``, which are "auto": the model's tuned values
    (``rledit_env.tuned_settings``; docs/tinyworld-settings.md says why TinyWorld's differ), else the
    published ones.
    """

    AUTO_SETTINGS: ClassVar[dict[str, AutoSetting]] = {
        "z_lr": AutoSetting(0.1),
        "lookup": AutoSetting("subject_last"),
        "num_prefixes": AutoSetting(5),
    }

    z_steps: int = 25  # Adam steps on the target vectors
    z_lr: float | str = AUTO
    z_weight_decay: float = 0.5  # penalty weight_decay * ||delta|| / ||h||^2, as MEMIT
    kl_factor: float = 0.0625  # KL on "{subject} is a", keeping the subject's other facts
    clamp_norm_factor: float = 0.75  # ||delta|| <= clamp_norm_factor * ||h||
    z_stop_loss: float = 0.05  # stop once every edit's loss is below this
    # where a fact is looked up: the subject's last token (MEMIT's hypothesis), or the prompt's last
    # token ("last", ROME/MEMIT's other strategy; for models that recall facts there)
    lookup: str = AUTO
    # prefixed variants of each prompt, the prefixes drawn from the general texts (MEMIT prefixes five
    # short texts it generates)
    num_prefixes: int | str = AUTO
    stats_max_texts: int | None = 20_000  # corpus size for the key statistics (evenly spaced subset)
    stats_batch_size: int = 32
    stats_max_length: int = 256

    def __post_init__(self) -> None:
        if self.z_steps < 1:
            raise ValueError(f"z_steps must be >= 1, got {self.z_steps}")
        check_positive(self, "z_lr")
        prefixes = 0 if is_auto(self.num_prefixes) else self.num_prefixes
        if (
            not isinstance(prefixes, int)
            or min(self.z_weight_decay, self.kl_factor, self.z_stop_loss, prefixes) < 0
        ):
            raise ValueError("z_weight_decay, kl_factor, z_stop_loss and num_prefixes must be >= 0")
        if self.lookup not in (*LOOKUPS, AUTO):
            raise ValueError(f"lookup must be one of {LOOKUPS}, got {self.lookup!r}")
        if self.clamp_norm_factor <= 0:
            raise ValueError(f"clamp_norm_factor must be > 0, got {self.clamp_norm_factor}")
        if self.stats_max_texts is not None and self.stats_max_texts < 1:
            raise ValueError(f"stats_max_texts must be >= 1 or None, got {self.stats_max_texts}")


@dataclass
class EditRequests:
    """One batch of edits encoded for the target search and the key reads."""

    rewrite: EncodedBatch  # every edit's prompt variants with its new answer
    rewrite_pos: tuple[torch.Tensor, torch.Tensor]  # the lookup token of each rewrite row
    edit_index: torch.Tensor  # the edit each rewrite row belongs to
    bare: torch.Tensor  # the rewrite row of each edit's unprefixed prompt
    essence: EncodedBatch | None  # "{subject} is a" for the edits that have a subject
    essence_pos: tuple[torch.Tensor, torch.Tensor]
    essence_edit_index: torch.Tensor
    num_edits: int


class LocateThenEdit(EditAgent):
    """Base of the closed-form editors (``action_type="shift"``): target vectors and layer-by-layer
    spreading, with each editor's own per-layer solve.

    Args:
        env: a LifelongEditEnv made with ``action_type="shift"`` and
            ``edit_modules=locate_edit_modules(config)`` (MLP output projections).
        config: the editor's config (a ``LocateEditConfig``).
        stats_texts: the corpus for the key statistics; default the environment's ``stats_texts``
            (disjoint from its perplexity probe and its evaluation prompts).
        cache_dir: where statistics are cached (default ``agents.key_stats.stats_cache_dir()``).
        progress: show a progress bar while computing statistics.

    The key statistics are computed (or loaded from the cache) here, at the model's current weights:
    build the agent before editing. ``stats_time_s`` is that one-off cost, apart from editing time;
    ``stats_num_texts`` and ``stats_source`` say which corpus they were computed over. Subclasses
    implement ``_prepare`` (per-module quantities from the statistics), ``_solve`` (one layer's update)
    and, when they keep state along an episode, ``_start_episode``/``_after_batch``.
    """

    action_type = "shift"
    Config = LocateEditConfig

    def __init__(
        self,
        env: gym.Env,
        config: LocateEditConfig | None = None,
        *,
        stats_texts: Sequence[str] | None = None,
        cache_dir: str | os.PathLike | None = None,
        progress: bool = True,
    ):
        super().__init__(env, config)
        editable = self.core.editable
        model_config = editable.model.config
        layers = {mlp_output_layer(model_config, name): name for name in editable.names}
        self.module_names = [layers[i] for i in sorted(layers)]  # lowest layer first
        self.critical_module = self.module_names[-1]
        # the decoder layer whose output (the residual stream) the target vectors are for
        self.critical_index = max(layers)
        self.critical_layer = architecture(model_config).layer_path.format(i=self.critical_index)
        texts = list(stats_texts if stats_texts is not None else self.core.stats_texts)
        self.stats_source = "given" if stats_texts is not None else self.core.stats_source
        if not texts:
            raise ValueError(
                "no corpus for the key statistics: the environment has no stats_texts (no statistics split "
                "and no train split); pass stats_texts= to the environment or to the agent"
            )
        self._prefixes = self._draw_prefixes(texts)
        limit = self.config.stats_max_texts
        if limit is not None and len(texts) > limit:  # an evenly spaced subset keeps the corpus's spread
            texts = [texts[i * len(texts) // limit] for i in range(limit)]
        self.stats_num_texts = len(texts)
        start = time.perf_counter()
        self.stats: dict[str, KeyStats] = key_second_moments(
            editable,
            self.module_names,
            texts,
            batch_size=self.config.stats_batch_size,
            max_length=self.config.stats_max_length,
            cache_dir=cache_dir,
            progress=progress,
        )
        self._prepare(self.stats)
        self.stats_time_s = time.perf_counter() - start
        self.stats_from_cache = all(s.from_cache for s in self.stats.values())

    @classmethod
    def preferred_edit_modules(cls, model_config, layers: Sequence[int] | None = None) -> list[str]:
        """The edit modules the environment must be made with for this agent."""
        return locate_edit_modules(model_config, layers)

    def _draw_prefixes(self, texts: Sequence[str]) -> list[str]:
        k = self.config.num_prefixes
        if k and len(texts) < k:
            raise ValueError(
                f"num_prefixes={k} needs at least {k} general texts, the corpus has {len(texts)}"
            )
        chosen = random.Random(self.config.seed).sample(list(texts), k) if k else []
        # short contexts, as MEMIT's ten-token generated prefixes: the first ten words of each text
        return [" ".join(t.split()[:10]).rstrip(".") for t in chosen]

    # ------------------------------------------------------------------------------ acting
    def act(self, observation):
        if float(observation["step"][0]) == 0:
            self._start_episode()
        records = self.core.current_records
        # each edit's target is searched on its own, so edits are grouped to fit one forward pass
        rows_per_edit = len(self._prefixes) + 2  # its prompt variants and its "{subject} is a"
        group = max(1, self.core.editable.eval_batch_size // rows_per_edit)
        targets = torch.cat(
            [
                self._target_vectors(self._encode(records[i : i + group]))
                for i in range(0, len(records), group)
            ]
        )
        requests = self._encode(records)
        updates: dict[str, torch.Tensor] = {}
        for i, name in enumerate(self.module_names):
            keys, current = self._read(requests, name, updates)
            residual = (targets - current) / (len(self.module_names) - i)
            updates[name] = self._solve(name, keys, residual)
        self._after_batch(requests, updates)
        return like_observation(updates, observation)

    @abstractmethod
    def _prepare(self, stats: dict[str, KeyStats]) -> None:
        """Per-module quantities of the solve, once the statistics are known."""

    @abstractmethod
    def _solve(self, name: str, keys: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """The update (d_in, d_out) of module ``name`` that maps the keys K (n, d_in) towards R (n, d_out)."""

    def _start_episode(self) -> None:
        """Reset per-episode state (none unless the editor keeps some)."""

    def _after_batch(self, requests: EditRequests, updates: dict[str, torch.Tensor]) -> None:
        """Record what a batch's edits leave behind (nothing unless the editor keeps it)."""

    # ------------------------------------------------------------------------------ pieces
    def _encode(self, records: Sequence[EditRecord]) -> EditRequests:
        tok = self.core.editable.tokenizer
        prompts, answers, edit_index, lookup = [], [], [], []
        for i, r in enumerate(records):
            for prefix in ["", *self._prefixes]:
                prompt = f"{prefix}. {r.prompt}" if prefix else r.prompt
                prompts.append(prompt)
                answers.append(r.target_new)
                edit_index.append(i)
                lookup.append(self._lookup(prompt, r.subject))
        rewrite = encode_batch(tok, prompts, answers)
        edit_index_t = torch.tensor(edit_index)
        rewrite_pos = (torch.arange(len(prompts)), self._resolve_lookup(rewrite, lookup))
        bare = torch.arange(len(records)) * (1 + len(self._prefixes))
        with_subject = [i for i, r in enumerate(records) if r.subject and r.subject in r.prompt]
        essence, essence_pos = None, (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
        if with_subject:
            e_prompts = [f"{records[i].subject} is a" for i in with_subject]
            # the answer is a placeholder: only the distribution after "is a" is read
            essence = _first_answer_token(
                encode_batch(tok, e_prompts, [records[i].target_new for i in with_subject])
            )
            lookup = [
                self._lookup(p, records[i].subject) for p, i in zip(e_prompts, with_subject, strict=True)
            ]
            essence_pos = (torch.arange(len(with_subject)), self._resolve_lookup(essence, lookup))
        return EditRequests(
            rewrite,
            rewrite_pos,
            edit_index_t,
            bare,
            essence,
            essence_pos,
            torch.tensor(with_subject, dtype=torch.long),
            len(records),
        )

    def _lookup(self, prompt: str, subject: str) -> int | None:
        """The subject's last token in ``prompt``; None (the prompt's last token) without a subject."""
        if self.config.lookup == "last" or not subject or subject not in prompt:
            return None
        return subject_last_token_index(self.core.editable.tokenizer, prompt, subject)

    @staticmethod
    def _resolve_lookup(batch: EncodedBatch, lookup: list[int | None]) -> torch.Tensor:
        last_prompt_token = batch.target_positions.float().argmax(1)  # first position predicting the answer
        return torch.tensor([int(last_prompt_token[i]) if c is None else c for i, c in enumerate(lookup)])

    def _target_vectors(self, requests: EditRequests) -> torch.Tensor:
        """z = h + delta for each edit (n, d), delta found by Adam as described in the module docstring.

        Each edit's search stops on its own once its loss is below ``z_stop_loss`` (as MEMIT's, which
        optimises one edit at a time; the edits are independent: each delta reaches only its own loss,
        and Adam and the clamp act row by row). Each Adam step runs only what delta changes, for the
        edits still searching: the layers above the critical one, on each prompt's tokens from its lookup
        token on (``EditableModel.suffix_after``; the lower layers' states and the earlier tokens' keys
        and values are computed once). Architectures without a preset run the whole model at each step,
        delta added by a hook.
        """
        editable = self.core.editable
        cfg = self.config
        device = editable.device
        n = requests.num_edits
        rewrite_edits = requests.edit_index.to(device)
        essence_edits = requests.essence_edit_index.to(device)
        forward, h = self._search_pass(requests)
        h_norm = h.norm(dim=1)
        delta = torch.zeros_like(h, requires_grad=True)
        optimizer = torch.optim.Adam([delta], lr=cfg.z_lr)
        reference = None  # each "{subject} is a" row's next-token distribution before the edit
        counts = torch.bincount(rewrite_edits, minlength=n).float()
        searching = torch.ones(n, dtype=torch.bool, device=device)
        for step in range(cfg.z_steps):
            rewrite_rows = searching[rewrite_edits].nonzero().squeeze(1)
            essence_rows = searching[essence_edits].nonzero().squeeze(1)
            row_nll, logprobs = forward(delta, rewrite_rows, essence_rows)
            nll = torch.zeros(n, device=device).index_add(0, rewrite_edits[rewrite_rows], row_nll) / counts
            kl = torch.zeros(n, device=device)
            if logprobs is not None:
                if reference is None:  # the first step scores every row
                    reference = logprobs.detach()
                before = reference[essence_rows]
                row_kl = (before.exp() * (before - logprobs)).sum(-1)
                kl = kl.index_add(0, essence_edits[essence_rows], row_kl)
            loss = nll + cfg.kl_factor * kl + cfg.z_weight_decay * delta.norm(dim=1) / h_norm**2
            searching &= loss.detach() >= cfg.z_stop_loss
            if not searching.any() or step == cfg.z_steps - 1:
                break
            optimizer.zero_grad()
            loss[searching].sum().backward()  # each edit's delta only reaches its own loss
            done = delta.detach()[~searching].clone()
            optimizer.step()
            with torch.no_grad():
                delta[~searching] = done  # Adam's momentum would move the finished ones too
                limit = cfg.clamp_norm_factor * h_norm
                norm = delta.norm(dim=1)
                delta.mul_(
                    torch.where(norm > limit, limit / norm.clamp(min=1e-12), torch.ones_like(norm))[:, None]
                )
        return h + delta.detach()

    def _search_pass(self, requests: EditRequests) -> tuple[SearchPass, torch.Tensor]:
        """The target search's pass and h, the critical layer's residual stream at each bare prompt's
        lookup token (n, d). The pass maps (delta (n, d), rewrite rows, "{subject} is a" rows) to the
        rewrite rows' mean answer NLL and the other rows' next-token log-probabilities (None without
        them), delta[i] added to edit i's rows at their lookup tokens."""
        editable = self.core.editable
        device = editable.device
        rewrite_edits = requests.edit_index.to(device)
        essence_edits = requests.essence_edit_index.to(device)
        rows = len(requests.rewrite)
        batch, positions = requests.rewrite, requests.rewrite_pos
        edit_index = rewrite_edits
        if requests.essence is not None:  # one pass a step for both kinds of rows
            batch = stack_rows([requests.rewrite, requests.essence])
            positions = (
                torch.cat([positions[0], requests.essence_pos[0] + rows]),
                torch.cat([positions[1], requests.essence_pos[1]]),
            )
            edit_index = torch.cat([edit_index, essence_edits])
        start = torch.zeros(len(batch), dtype=torch.long)
        start[positions[0]] = positions[1]  # one lookup token per row
        suffix = editable.suffix_after(batch, self.critical_index, start)
        if suffix is not None:
            hidden = suffix.hidden
            h = hidden[requests.bare.to(hidden.device), 0].to(device, torch.float32)

            def cut_pass(delta, rewrite_rows, essence_rows):
                chosen = torch.cat([rewrite_rows, essence_rows + rows])
                found = editable.suffix_target_logits(suffix.select(chosen), delta[edit_index[chosen]])
                row_nll = found.nll()[: len(rewrite_rows)]
                if not len(essence_rows):
                    return row_nll, None
                # the "{subject} is a" rows hold one answer token each
                return row_nll, torch.log_softmax(found.logits[found.rows >= len(rewrite_rows)], -1)

            return cut_pass, h

        if len(batch) > editable.eval_batch_size:
            raise ValueError(
                f"{len(batch)} prompts per step exceed eval_batch_size={editable.eval_batch_size}: "
                "lower num_prefixes or the batch size, or raise eval_batch_size"
            )
        bare_pos = (requests.rewrite_pos[0][requests.bare], requests.rewrite_pos[1][requests.bare])
        h = editable.hidden_at(requests.rewrite, [self.critical_layer], bare_pos, output=True)[
            self.critical_layer
        ]

        def whole_pass(delta, rewrite_rows, essence_rows):
            with editable.add_to_output(self.critical_module, positions, delta[edit_index]):
                target = editable.target_logits(batch, enable_grad=True)
            row_nll = target.nll()
            if requests.essence is None or not len(essence_rows):
                return row_nll[rewrite_rows], None
            # the "{subject} is a" rows hold one answer token each
            logprobs = torch.log_softmax(target.logits[target.rows >= rows], -1)
            return row_nll[rewrite_rows], logprobs[essence_rows]

        return whole_pass, h

    def _read(
        self, requests: EditRequests, name: str, updates: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys of ``name`` (n, d_in), averaged over each edit's variants, and the critical layer's
        residual stream at each bare prompt (n, d), under ``updates``: one pass, up to the critical layer."""
        read = self.core.editable.hidden_at(
            requests.rewrite,
            [name],
            requests.rewrite_pos,
            updates=updates or None,
            outputs=[self.critical_layer],
        )
        keys = self._mean_keys(read[name], requests)
        out = read[self.critical_layer]
        return keys, out[requests.bare.to(out.device)]

    @staticmethod
    def _mean_keys(keys: torch.Tensor, requests: EditRequests) -> torch.Tensor:
        edit_index = requests.edit_index.to(keys.device)
        total = keys.new_zeros(requests.num_edits, keys.shape[1]).index_add(0, edit_index, keys)
        return total / torch.bincount(edit_index, minlength=requests.num_edits)[:, None].float()


def _first_answer_token(batch: EncodedBatch) -> EncodedBatch:
    """``batch`` with each row cut after its answer's first token (the only one predicted from the
    prompt alone; what follows cannot change it, attention being causal)."""
    first = batch.target_positions.float().argmax(1)  # the prompt's last token
    keep = torch.arange(batch.input_ids.shape[1])[None] <= first[:, None] + 1
    labels = torch.where(keep & (torch.arange(keep.shape[1])[None] == first[:, None] + 1), batch.labels, -100)
    length = int(first.max()) + 2
    return EncodedBatch(
        (batch.input_ids * keep)[:, :length], (batch.attention_mask * keep)[:, :length], labels[:, :length]
    )
