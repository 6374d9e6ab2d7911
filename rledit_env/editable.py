"""The editable model: a causal LM whose edit modules can be traced, updated, snapshotted and restored.

All updates use one layout, (d_in, d_out), whatever the layer stores (``nn.Linear`` keeps
(d_out, d_in), GPT-2's ``Conv1D`` keeps (d_in, d_out)), so that a rank-one update is ``u delta^T``
with the key u (the layer's input) and the value gradient delta (the loss gradient at its output).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from rledit_env.presets import resolve_edit_modules
from rledit_env.tokenization import IGNORE_INDEX, EncodedBatch

Updates = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class EditModule:
    """One edited layer: its path, its weight's path relative to the base model, and its layout."""

    name: str
    module: nn.Module
    base_param: str  # parameter path inside model.base_model, for functional calls
    transposed: bool  # True for nn.Linear: the stored weight is (d_out, d_in)
    d_in: int
    d_out: int

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight

    def to_native(self, delta: torch.Tensor) -> torch.Tensor:
        """(d_in, d_out) -> the layer's own layout and dtype."""
        delta = delta.t() if self.transposed else delta
        return delta.to(self.weight.dtype)


@dataclass
class Trace:
    """Keys and value gradients of the edit loss at the answer tokens of a batch.

    ``keys[name]`` is (N, d_in), ``value_grads[name]`` (N, d_out), in fp32; token i belongs to row
    ``rows[i]`` of the batch. ``loss`` is the mean over rows of the mean answer-token NLL.
    """

    keys: dict[str, torch.Tensor]
    value_grads: dict[str, torch.Tensor]
    rows: torch.Tensor
    loss: float


@dataclass
class TargetLogits:
    """Logits (fp32) at the positions that predict answer tokens, with the answers and their rows."""

    logits: torch.Tensor  # (N, V)
    labels: torch.Tensor  # (N,)
    rows: torch.Tensor  # (N,) row of the batch each token belongs to
    num_rows: int

    def per_row_mean(self, values: torch.Tensor) -> torch.Tensor:
        """Average a per-token quantity within each row -> (num_rows,)."""
        total = torch.zeros(self.num_rows, dtype=values.dtype, device=values.device)
        total = total.index_add(0, self.rows, values)
        count = torch.bincount(self.rows, minlength=self.num_rows).clamp(min=1).to(values.dtype)
        return total / count

    def nll(self) -> torch.Tensor:
        """Mean answer-token negative log-likelihood of each row -> (num_rows,)."""
        token_nll = torch.nn.functional.cross_entropy(self.logits, self.labels, reduction="none")
        return self.per_row_mean(token_nll)

    def accuracy(self) -> torch.Tensor:
        """Share of answer tokens that are the argmax, per row -> (num_rows,)."""
        return self.per_row_mean((self.logits.argmax(-1) == self.labels).float())


class EditableModel:
    """A Hugging Face causal LM with named edit modules.

    Args:
        model: any ``AutoModelForCausalLM`` (GPT-2's Conv1D and nn.Linear layers are both handled).
        tokenizer: its fast tokenizer.
        edit_modules: module names, a preset name from ``rledit_env.presets.PAPER_PRESETS``, or None
            for the architecture's default preset.
        eval_batch_size: rows per forward pass when scoring many prompts.
    """

    def __init__(self, model, tokenizer, edit_modules=None, *, eval_batch_size: int = 64):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.eval_batch_size = eval_batch_size
        for p in self.model.parameters():
            p.requires_grad_(False)  # the environment never trains the model through autograd
        names = resolve_edit_modules(model.config, edit_modules)
        base = model.base_model
        base_names = {id(m): n for n, m in base.named_modules()}
        all_modules = dict(model.named_modules())
        self.modules: dict[str, EditModule] = {}
        for name in names:
            module = all_modules.get(name)
            if module is None:
                raise ValueError(f"edit module {name!r} is not in the model ({type(model).__name__})")
            if isinstance(module, Conv1D):
                d_in, d_out, transposed = module.weight.shape[0], module.weight.shape[1], False
            elif isinstance(module, nn.Linear):
                d_out, d_in, transposed = module.weight.shape[0], module.weight.shape[1], True
            else:
                raise ValueError(f"edit module {name!r} is a {type(module).__name__}, not a Linear or Conv1D")
            if id(module) not in base_names:
                raise ValueError(f"edit module {name!r} is outside the base model (e.g. the LM head)")
            self.modules[name] = EditModule(
                name, module, f"{base_names[id(module)]}.weight", transposed, int(d_in), int(d_out)
            )

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        edit_modules=None,
        *,
        dtype: torch.dtype | str | None = None,
        device: str | torch.device | None = None,
        device_map=None,
        eval_batch_size: int = 64,
        **kwargs,
    ) -> EditableModel:
        """Load a model and tokenizer from a hub id (needs the internet) or a local directory."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path, dtype=dtype, device_map=device_map, **kwargs
        )
        if device is not None and device_map is None:
            model = model.to(device)
        return cls(model, tokenizer, edit_modules, eval_batch_size=eval_batch_size)

    # ----------------------------------------------------------------- facts about the edit modules
    @property
    def names(self) -> list[str]:
        return list(self.modules)

    @property
    def shapes(self) -> dict[str, tuple[int, int]]:
        """(d_in, d_out) of each edit module."""
        return {n: (m.d_in, m.d_out) for n, m in self.modules.items()}

    @property
    def device(self) -> torch.device:
        return next(iter(self.modules.values())).weight.device

    def input_device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    # ------------------------------------------------------------------------- snapshot and update
    def snapshot(self) -> dict[str, torch.Tensor]:
        """Copies of the edit modules' weights (only those: memory grows with the edited layers)."""
        return {n: m.weight.detach().clone() for n, m in self.modules.items()}

    @torch.no_grad()
    def restore(self, snapshot: Mapping[str, torch.Tensor]) -> None:
        for n, m in self.modules.items():
            m.weight.copy_(snapshot[n])

    @torch.no_grad()
    def apply_updates(self, updates: Updates) -> None:
        """W <- W + dW for each module named in ``updates`` ((d_in, d_out) each)."""
        for n, delta in updates.items():
            module = self.modules[n]
            module.weight.add_(module.to_native(delta.detach().to(module.weight.device)))

    # ------------------------------------------------------------------------------------ forward
    def _hidden_states(self, batch: EncodedBatch, updates: Updates | None) -> torch.Tensor:
        base = self.model.base_model
        kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "use_cache": False}
        if not updates:
            return base(**kwargs).last_hidden_state
        params = {}
        for n, delta in updates.items():
            module = self.modules[n]
            params[module.base_param] = module.weight + module.to_native(delta.to(module.weight.device))
        return torch.func.functional_call(base, params, args=(), kwargs=kwargs).last_hidden_state

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.model.get_output_embeddings()(hidden).float()
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        if cap:  # Gemma-2 squashes its logits in the CausalLM head, which we bypass
            logits = torch.tanh(logits / cap) * cap
        return logits

    def target_logits(self, batch: EncodedBatch, updates: Updates | None = None) -> TargetLogits:
        """Logits at the answer-predicting positions, optionally under a candidate update.

        The candidate is not committed: the weights are untouched, and when ``updates`` carry
        gradients the result is differentiable with respect to them.
        """
        batch = batch.to(self.input_device())
        parts_logits, parts_labels, parts_rows = [], [], []
        grad = bool(updates) and any(u.requires_grad for u in updates.values())
        with torch.set_grad_enabled(grad):
            for start in range(0, len(batch), self.eval_batch_size):
                chunk = EncodedBatch(
                    batch.input_ids[start : start + self.eval_batch_size],
                    batch.attention_mask[start : start + self.eval_batch_size],
                    batch.labels[start : start + self.eval_batch_size],
                )
                hidden = self._hidden_states(chunk, updates)
                positions = chunk.target_positions
                rows, cols = positions.nonzero(as_tuple=True)
                parts_logits.append(self._logits(hidden[rows, cols]))
                parts_labels.append(chunk.labels[rows, cols + 1])
                parts_rows.append(rows + start)
        return TargetLogits(
            torch.cat(parts_logits), torch.cat(parts_labels), torch.cat(parts_rows), len(batch)
        )

    # -------------------------------------------------------------------------------------- trace
    def trace(self, batch: EncodedBatch) -> Trace:
        """Keys and value gradients of the edit loss at the answer-predicting tokens of ``batch``."""
        batch = batch.to(self.input_device())
        inputs: dict[str, torch.Tensor] = {}
        outputs: dict[str, torch.Tensor] = {}

        def hook(name):
            def record(_module, args, output):
                inputs[name] = args[0].detach()
                outputs[name] = output

            return record

        handles = [m.module.register_forward_hook(hook(n)) for n, m in self.modules.items()]
        weights = [m.weight for m in self.modules.values()]
        try:
            for w in weights:
                w.requires_grad_(True)  # so that the outputs are in the graph; no weight grads are formed
            with torch.enable_grad():
                hidden = self.model.base_model(
                    input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
                ).last_hidden_state
                positions = batch.target_positions
                rows, cols = positions.nonzero(as_tuple=True)
                target = TargetLogits(
                    self._logits(hidden[rows, cols]), batch.labels[rows, cols + 1], rows, len(batch)
                )
                loss = target.nll().mean()
                grads = torch.autograd.grad(loss, [outputs[n] for n in self.modules])
        finally:
            for w in weights:
                w.requires_grad_(False)
            for h in handles:
                h.remove()
        keys = {n: inputs[n][rows, cols].float() for n in self.modules}
        value_grads = {n: g[rows, cols].float() for n, g in zip(self.modules, grads, strict=True)}
        return Trace(keys, value_grads, rows, float(loss.detach()))


def ridge_solve(keys: torch.Tensor, values: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
    """dW = argmin ||U dW - V||^2 + lam ||dW||^2, as (d_in, d_out), in fp32.

    Uses U^T (U U^T + lam I)^-1 V when there are fewer tokens N than input features (O(N^2 d)), and
    (U^T U + lam I)^-1 U^T V otherwise. Differentiable in ``values`` and ``lam``.
    """
    u = keys.float()
    v = values.float()
    n, d_in = u.shape
    if n < d_in:
        gram = u @ u.t() + lam * torch.eye(n, device=u.device)
        return u.t() @ torch.linalg.solve(gram, v)
    gram = u.t() @ u + lam * torch.eye(d_in, device=u.device)
    return torch.linalg.solve(gram, u.t() @ v)


def stack_rows(batches: Sequence[EncodedBatch]) -> EncodedBatch:
    """Concatenate encoded batches into one, right-padding to their common length."""
    length = max(b.input_ids.shape[1] for b in batches)

    def pad(t: torch.Tensor, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, length - t.shape[1]), value=value)

    return EncodedBatch(
        torch.cat([pad(b.input_ids, 0) for b in batches]),  # padded slots are masked out
        torch.cat([pad(b.attention_mask, 0) for b in batches]),
        torch.cat([pad(b.labels, IGNORE_INDEX) for b in batches]),
    )
