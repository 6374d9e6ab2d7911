"""MEMIT (Meng et al., "Mass-Editing Memory in a Transformer", ICLR 2023) as an agent.

Locate-then-edit, in closed form, for each batch of edits:

1. **Target vectors.** For each edit, a vector delta added to the residual stream at the last subject
   token of the *critical layer* (the last edited layer; added at its MLP output projection) is
   optimised by Adam so that the model gives the new answer: NLL of the answer on the edit prompt and
   on prefixed variants of it (general sentences of the model's domain in front, like MEMIT's
   context templates), plus a KL term that keeps the next-token distribution on "{subject} is a"
   (the subject's other facts), plus a small norm penalty; ||delta|| is clamped to a multiple of the
   hidden state's norm. The target is z = h + delta, h the residual stream there.
2. **Spreading.** For each edited layer l, lowest first, at the weights updated so far: keys K (the
   MLP output projection's input at the subject token, averaged over the prompt variants), and the
   residual R = (z - h_current) / (number of edited layers from l up). The update solves
   min ||K dW - R||^2 + mom2_weight * tr(dW^T C dW), C = E[k k^T] over general text:
       dW = (mom2_weight * C + K^T K)^-1 K^T R     ((d_in, d_out) layout, rows of K are keys).

The environment must be made with the MLP output projections as edit modules
(``MEMIT.preferred_edit_modules(config)``), since the update is written there. Records without a
subject in their prompt (FEVER has none) use the prompt's last token, and skip the KL term;
``lookup="last"`` uses the last token for every record (for models that recall facts there, such as
TinyWorld's, see docs/tinyworld-settings.md).
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import gymnasium as gym
import torch

from agents.base import AgentConfig, EditAgent, like_observation
from agents.key_stats import KeyStats, key_second_moments
from rledit_env.editable import stack_rows
from rledit_env.records import EditRecord
from rledit_env.tokenization import EncodedBatch, encode_batch, subject_last_token_index

# model_type -> (decoder layer path with {i}, the MLP output projection inside it)
MLP_OUTPUT: dict[str, tuple[str, str]] = {
    "gpt2": ("transformer.h.{i}", "mlp.c_proj"),
    **{
        t: ("model.layers.{i}", "mlp.down_proj")
        for t in ("llama", "mistral", "gemma", "gemma2", "qwen2", "qwen3")
    },
}


LOOKUPS = ("subject_last", "last")


def _architecture(model_config) -> tuple[str, str]:
    model_type = getattr(model_config, "model_type", None)
    if model_type not in MLP_OUTPUT:
        raise ValueError(
            f"no MLP output projection known for model_type {model_type!r}; supported: {sorted(MLP_OUTPUT)}"
        )
    return MLP_OUTPUT[model_type]


def memit_layers(num_layers: int) -> list[int]:
    """The early-middle band where MEMIT writes facts, scaled to depth: [L/8, L/4] (layers 4-8 of
    Llama-3-8B's 32, AlphaEdit's choice), ending at least two layers before the top so that later
    layers can carry the subject's state to the answer."""
    last = max(num_layers - 2, 0)
    first = min(round(num_layers / 8), last)
    return list(range(first, min(max(round(num_layers / 4), first), last) + 1))


def memit_edit_modules(model_config, layers: Sequence[int] | None = None) -> list[str]:
    """The MLP output projections MEMIT/AlphaEdit edit (``memit_layers`` when ``layers`` is None).

    Make the environment with them: ``LifelongEditEnv(..., edit_modules=memit_edit_modules(config),
    action_type="shift")``.
    """
    layer_path, projection = _architecture(model_config)
    num_layers = getattr(model_config, "num_hidden_layers", None) or model_config.n_layer
    chosen = memit_layers(num_layers) if layers is None else list(layers)
    bad = [i for i in chosen if not 0 <= i < num_layers]
    if bad or not chosen:
        raise ValueError(f"layers must be a non-empty list within 0..{num_layers - 1}, got {chosen}")
    return [f"{layer_path.format(i=i)}.{projection}" for i in sorted(set(chosen))]


@dataclass
class LocateEditConfig(AgentConfig):
    """What MEMIT and AlphaEdit share: the target vectors' search and the key statistics.

    Defaults are the published ones for Llama-3-8B (AlphaEdit's code base, which runs MEMIT too);
    docs/tinyworld-settings.md gives TinyWorld's and why.
    """

    z_steps: int = 25  # Adam steps on the target vectors
    z_lr: float = 0.1
    z_weight_decay: float = 0.5  # penalty weight_decay * ||delta|| / ||h||^2, as MEMIT
    kl_factor: float = 0.0625  # KL on "{subject} is a", keeping the subject's other facts
    clamp_norm_factor: float = 0.75  # ||delta|| <= clamp_norm_factor * ||h||
    z_stop_loss: float = 0.05  # stop once every edit's loss is below this
    # where a fact is looked up: the subject's last token (MEMIT's hypothesis), or the prompt's last
    # token ("last", ROME/MEMIT's other strategy; for models that recall facts there)
    lookup: str = "subject_last"
    # prefixed variants of each prompt, the prefixes drawn from the general texts (MEMIT prefixes five
    # short texts it generates)
    num_prefixes: int = 5
    stats_max_texts: int | None = 20_000  # corpus size for the key statistics (evenly spaced subset)
    stats_batch_size: int = 32
    stats_max_length: int = 256

    def __post_init__(self) -> None:
        if self.z_steps < 1 or self.z_lr <= 0:
            raise ValueError(f"z_steps must be >= 1 and z_lr > 0, got {self.z_steps}, {self.z_lr}")
        if min(self.z_weight_decay, self.kl_factor, self.z_stop_loss, self.num_prefixes) < 0:
            raise ValueError("z_weight_decay, kl_factor, z_stop_loss and num_prefixes must be >= 0")
        if self.lookup not in LOOKUPS:
            raise ValueError(f"lookup must be one of {LOOKUPS}, got {self.lookup!r}")
        if self.clamp_norm_factor <= 0:
            raise ValueError(f"clamp_norm_factor must be > 0, got {self.clamp_norm_factor}")
        if self.stats_max_texts is not None and self.stats_max_texts < 1:
            raise ValueError(f"stats_max_texts must be >= 1 or None, got {self.stats_max_texts}")


@dataclass
class MEMITConfig(LocateEditConfig):
    # weight of the key covariance against the new keys (15000 on Llama-3-8B, whose down_proj reads
    # 14336 features: a typical key k has k^T C^-1 k ~ d_in, so the weight scales with the layer's width)
    mom2_weight: float = 15000.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mom2_weight <= 0:
            raise ValueError(f"mom2_weight must be > 0, got {self.mom2_weight}")


@dataclass
class EditRequests:
    """One batch of edits encoded for the target search and the key reads."""

    rewrite: EncodedBatch  # every edit's prompt variants with its new answer
    rewrite_pos: tuple[torch.Tensor, torch.Tensor]  # the lookup token of each rewrite row
    owner: torch.Tensor  # the edit each rewrite row belongs to
    bare: torch.Tensor  # the rewrite row of each edit's unprefixed prompt
    essence: EncodedBatch | None  # "{subject} is a" for the edits that have a subject
    essence_pos: tuple[torch.Tensor, torch.Tensor]
    essence_owner: torch.Tensor
    num_edits: int


class MEMIT(EditAgent):
    """MEMIT's closed-form multi-layer update, one batch of edits per step (``action_type="shift"``).

    Args:
        env: a LifelongEditEnv made with ``action_type="shift"`` and
            ``edit_modules=MEMIT.preferred_edit_modules(config)`` (MLP output projections).
        config: a MEMITConfig.
        stats_texts: the corpus for the key statistics; default the environment's ``general_texts``.
        cache_dir: where statistics are cached (default ``agents.key_stats.stats_cache_dir()``).
        progress: show a progress bar while computing statistics.

    The key statistics are computed (or loaded from the cache) here, at the model's current weights:
    build the agent before editing. ``stats_time_s`` is that one-off cost, apart from editing time.
    """

    Config = MEMITConfig
    action_type = "shift"
    name = "memit"

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
        layers = self._edited_layers(editable.model.config, editable.names)
        self.module_names = [layers[i] for i in sorted(layers)]  # lowest layer first
        self.critical_module = self.module_names[-1]
        # the decoder layer whose output (the residual stream) the target vectors are for
        self.critical_layer = _architecture(editable.model.config)[0].format(i=max(layers))
        texts = list(stats_texts if stats_texts is not None else self.core.general_texts)
        self._prefixes = self._draw_prefixes(texts)
        limit = self.config.stats_max_texts
        if limit is not None and len(texts) > limit:  # an evenly spaced subset keeps the corpus's spread
            texts = [texts[i * len(texts) // limit] for i in range(limit)]
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
        self._prepare()
        self.stats_time_s = time.perf_counter() - start
        self.stats_from_cache = all(s.from_cache for s in self.stats.values())

    @classmethod
    def preferred_edit_modules(cls, model_config, layers: Sequence[int] | None = None) -> list[str]:
        """The edit modules the environment must be made with for this agent."""
        return memit_edit_modules(model_config, layers)

    @staticmethod
    def _edited_layers(model_config, names: Sequence[str]) -> dict[int, str]:
        """{layer index: module name}; refuses modules that are not MLP output projections."""
        layer_path, projection = _architecture(model_config)
        pattern = re.compile(re.escape(layer_path).replace(r"\{i\}", r"(\d+)") + re.escape("." + projection))
        layers = {}
        for name in names:
            match = pattern.fullmatch(name)
            if match is None:
                raise ValueError(
                    f"edit module {name!r} is not an MLP output projection ({layer_path}.{projection}); "
                    "make the environment with edit_modules=MEMIT.preferred_edit_modules(model.config)"
                )
            layers[int(match.group(1))] = name
        return layers

    def _draw_prefixes(self, texts: Sequence[str]) -> list[str]:
        k = self.config.num_prefixes
        if k and len(texts) < k:
            raise ValueError(
                f"num_prefixes={k} needs at least {k} general texts, the corpus has {len(texts)}"
            )
        chosen = random.Random(self.config.seed).sample(list(texts), k) if k else []
        # short contexts, as MEMIT's ten-token generated prefixes: the first ten words of each text
        return [" ".join(t.split()[:10]).rstrip(".") for t in chosen]

    def _prepare(self) -> None:
        """Per-module quantities of the solve, once the statistics are known."""
        device = self.core.editable.device
        self._cov = {n: s.second_moment.to(device) for n, s in self.stats.items()}

    # ------------------------------------------------------------------------------ acting
    def act(self, observation):
        if float(observation["step"][0]) == 0:
            self._on_episode_start()
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

    def _on_episode_start(self) -> None:
        """Reset per-episode state (MEMIT has none)."""

    def _after_batch(self, requests: EditRequests, updates: dict[str, torch.Tensor]) -> None:
        """Record what the batch's edits leave behind (MEMIT keeps nothing)."""

    def _solve(self, name: str, keys: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """dW = (mom2_weight * C + K^T K)^-1 K^T R, (d_in, d_out)."""
        gram = self.config.mom2_weight * self._cov[name] + keys.t() @ keys
        return torch.linalg.solve(gram, keys.t() @ residual)

    # ------------------------------------------------------------------------------ pieces
    def _encode(self, records: Sequence[EditRecord]) -> EditRequests:
        tok = self.core.editable.tokenizer
        prompts, answers, owner, lookup = [], [], [], []
        for i, r in enumerate(records):
            for prefix in ["", *self._prefixes]:
                prompt = f"{prefix}. {r.prompt}" if prefix else r.prompt
                prompts.append(prompt)
                answers.append(r.target_new)
                owner.append(i)
                lookup.append(self._lookup(prompt, r.subject))
        rewrite = encode_batch(tok, prompts, answers)
        owner_t = torch.tensor(owner)
        rewrite_pos = (torch.arange(len(prompts)), self._resolve_lookup(rewrite, lookup))
        bare = torch.arange(len(records)) * (1 + len(self._prefixes))
        with_subject = [i for i, r in enumerate(records) if r.subject and r.subject in r.prompt]
        essence, essence_pos = None, (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
        if with_subject:
            e_prompts = [f"{records[i].subject} is a" for i in with_subject]
            # the answer is a placeholder: only the distribution after "is a" is read
            essence = encode_batch(tok, e_prompts, [records[i].target_new for i in with_subject])
            lookup = [
                self._lookup(p, records[i].subject) for p, i in zip(e_prompts, with_subject, strict=True)
            ]
            essence_pos = (torch.arange(len(with_subject)), self._resolve_lookup(essence, lookup))
        return EditRequests(
            rewrite,
            rewrite_pos,
            owner_t,
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
        """z = h + delta for each edit (n, d), delta found by Adam as described in the module docstring."""
        editable = self.core.editable
        cfg = self.config
        bare_pos = (requests.rewrite_pos[0][requests.bare], requests.rewrite_pos[1][requests.bare])
        h = editable.hidden_at(requests.rewrite, [self.critical_layer], bare_pos, output=True)[
            self.critical_layer
        ]
        n = requests.num_edits
        rows = len(requests.rewrite)
        batch, positions, owners = requests.rewrite, requests.rewrite_pos, requests.owner
        if requests.essence is not None:
            batch = stack_rows([requests.rewrite, requests.essence])
            positions = (
                torch.cat([positions[0], requests.essence_pos[0] + rows]),
                torch.cat([positions[1], requests.essence_pos[1]]),
            )
            owners = torch.cat([owners, requests.essence_owner])
        if len(batch) > editable.eval_batch_size:
            raise ValueError(
                f"{len(batch)} prompts per step exceed eval_batch_size={editable.eval_batch_size}: "
                "lower num_prefixes or the batch size, or raise eval_batch_size"
            )
        device = editable.device
        owners = owners.to(device)
        h_norm = h.norm(dim=1)
        delta = torch.zeros_like(h, requires_grad=True)
        optimizer = torch.optim.Adam([delta], lr=cfg.z_lr)
        reference = None
        counts = torch.bincount(requests.owner, minlength=n).to(device).float()
        for step in range(cfg.z_steps):
            with editable.add_to_output(self.critical_module, positions, delta[owners]):
                target = editable.target_logits(batch, enable_grad=True)
            row_nll = target.nll()
            nll = (
                torch.zeros(n, device=device).index_add(0, requests.owner.to(device), row_nll[:rows]) / counts
            )
            kl = torch.zeros(n, device=device)
            if requests.essence is not None:
                essence_tok = target.rows >= rows
                first = essence_tok & torch.cat(
                    [essence_tok.new_ones(1), target.rows[1:] != target.rows[:-1]]
                )
                logprobs = torch.log_softmax(target.logits[first], -1)
                if reference is None:
                    reference = logprobs.detach()
                row_kl = (reference.exp() * (reference - logprobs)).sum(-1)
                kl = kl.index_add(0, requests.essence_owner.to(device), row_kl)
            loss = nll + cfg.kl_factor * kl + cfg.z_weight_decay * delta.norm(dim=1) / h_norm**2
            if float(loss.detach().max()) < cfg.z_stop_loss or step == cfg.z_steps - 1:
                break
            optimizer.zero_grad()
            loss.sum().backward()  # each edit's delta only reaches its own loss
            optimizer.step()
            with torch.no_grad():
                limit = cfg.clamp_norm_factor * h_norm
                norm = delta.norm(dim=1)
                delta.mul_(
                    torch.where(norm > limit, limit / norm.clamp(min=1e-12), torch.ones_like(norm))[:, None]
                )
        return h + delta.detach()

    def _read(
        self, requests: EditRequests, name: str, updates: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys of ``name`` (n, d_in), averaged over each edit's variants, and the critical layer's
        residual stream at each bare prompt (n, d), under ``updates``."""
        editable = self.core.editable
        read = editable.hidden_at(requests.rewrite, [name], requests.rewrite_pos, updates=updates or None)
        keys = self._mean_keys(read[name], requests)
        out = editable.hidden_at(  # a second pass: hidden_at reads either inputs or outputs
            requests.rewrite,
            [self.critical_layer],
            requests.rewrite_pos,
            output=True,
            updates=updates or None,
        )[self.critical_layer]
        return keys, out[requests.bare.to(out.device)]

    @staticmethod
    def _mean_keys(keys: torch.Tensor, requests: EditRequests) -> torch.Tensor:
        owner = requests.owner.to(keys.device)
        total = torch.zeros(requests.num_edits, keys.shape[1], device=keys.device).index_add(0, owner, keys)
        return total / torch.bincount(owner, minlength=requests.num_edits)[:, None].float()
