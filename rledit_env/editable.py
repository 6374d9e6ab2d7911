"""The editable model: a causal LM whose edit modules can be traced, updated, snapshotted and restored.

All updates use one layout, (d_in, d_out), whatever the layer stores (``nn.Linear`` keeps
(d_out, d_in), GPT-2's ``Conv1D`` keeps (d_in, d_out)), so that a rank-one update is ``u delta^T``
with the key u (the layer's input) and the value gradient delta (the loss gradient at its output).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from rledit_env.actions import InvalidActionError
from rledit_env.presets import (
    check_tokenizer,
    decoder_layers,
    layer_attention,
    mlp_blocks,
    resolve_edit_modules,
)
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

    def layout(self, delta: torch.Tensor) -> torch.Tensor:
        """(d_in, d_out) -> the layer's own layout, on its device, dtype unchanged."""
        delta = delta.t() if self.transposed else delta
        return delta.to(self.weight.device)

    def to_native(self, delta: torch.Tensor) -> torch.Tensor:
        """(d_in, d_out) -> the layer's own layout, device and dtype."""
        return self.layout(delta).to(self.weight.dtype)


@dataclass
class Trace:
    """Keys and value gradients of the edit loss at the answer tokens of a batch.

    ``keys[name]`` is (N, d_in), ``value_grads[name]`` (N, d_out), in fp32; token i belongs to edit
    ``edit_index[i]`` (the batch's row i: one row per edit). ``loss`` is the mean over edits of the mean
    answer-token NLL.
    """

    keys: dict[str, torch.Tensor]
    value_grads: dict[str, torch.Tensor]
    edit_index: torch.Tensor
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
        eval_batch_size: rows per forward pass when scoring prompts in their own order.
        tokens_per_pass: the memory bound of packed scoring (``target_logits(..., packed=True)``): rows x
            longest row of one forward pass.
        pass_overhead_tokens: what one more forward pass costs, in padded tokens; packed scoring splits
            rows into bands of similar length while a split saves more padding than this (256: a
            CPU's fixed cost of a pass of a small model; a GPU's is worth more).
    """

    def __init__(
        self,
        model,
        tokenizer,
        edit_modules=None,
        *,
        eval_batch_size: int = 64,
        tokens_per_pass: int = 4096,
        pass_overhead_tokens: int = 256,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.eval_batch_size = eval_batch_size
        self.tokens_per_pass = tokens_per_pass
        self.pass_overhead_tokens = pass_overhead_tokens
        for p in self.model.parameters():
            p.requires_grad_(False)  # the environment never trains the model through autograd
        check_tokenizer(model.config, tokenizer)
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
            if module.weight.device.type == "meta":
                raise ValueError(
                    f"edit module {name!r} is offloaded (its weight is on the meta device): edit modules "
                    "must live on a GPU or the CPU; keep them out of device_map's 'disk'/'cpu' offload"
                )
            self.modules[name] = EditModule(
                name, module, f"{base_names[id(module)]}.weight", transposed, int(d_in), int(d_out)
            )
        self._layers, self.frozen_depth = self._frozen_layers()
        self._frozen_attention = self._find_frozen_attention()
        self._mlps = mlp_blocks(model)
        # bf16/fp16 weights keep 8/11 bits of mantissa, so small updates added to them one by one would
        # round away. Updates accumulate in an fp32 master copy of the edit modules (only those) instead,
        # and the model's weight is that master rounded once.
        self._master: dict[str, torch.Tensor] = {
            n: m.weight.detach().float()
            for n, m in self.modules.items()
            if m.weight.dtype in (torch.float16, torch.bfloat16)
        }

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

    def _frozen_layers(self) -> tuple[nn.ModuleList | None, int]:
        """The decoder layers and how many of them come before the first edit module.

        Those layers never change (only edit modules do), so what they compute for a prompt can be
        computed once (``frozen_prefix``). 0 when unknown: an architecture without a preset, edit
        modules outside the decoder layers, or a model spread over devices (its hooks move tensors).
        """
        found = decoder_layers(self.model, self.names)
        if found is None or getattr(self.model, "hf_device_map", None):
            return None, 0
        return found

    def _find_frozen_attention(self) -> str | None:
        """The name of the first edited layer's attention block when no edit module is inside it (then
        its output is as frozen as the layers below, and ``frozen_prefix`` keeps it too), else None."""
        if not self.frozen_depth:
            return None
        layer_path, name = layer_attention(self.model, self.frozen_depth)
        inside = f"{layer_path}.{name}."
        if any(n.startswith(inside) for n in self.names):
            return None
        return name if hasattr(self._layers[self.frozen_depth], name) else None

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
    def snapshot(self, full_precision: bool = False) -> dict[str, torch.Tensor]:
        """Copies of the edit modules' weights (only those: memory grows with the edited layers); with
        ``full_precision``, the fp32 master of a bf16/fp16 layer (what edits accumulate in)."""
        return {
            n: (self._master[n] if full_precision and n in self._master else m.weight).detach().clone()
            for n, m in self.modules.items()
        }

    @torch.no_grad()
    def restore(self, snapshot: Mapping[str, torch.Tensor]) -> None:
        for n, m in self.modules.items():
            m.weight.copy_(snapshot[n])
            if n in self._master:
                self._master[n].copy_(snapshot[n])

    @torch.no_grad()
    def apply_updates(self, updates: Updates) -> None:
        """W <- W + dW for each module named in ``updates`` ((d_in, d_out) each, any device)."""
        for n, delta in updates.items():
            module = self.modules[n]
            master = self._master.get(n)
            if master is None:
                module.weight.add_(module.to_native(delta.detach()))
            else:
                master.add_(module.layout(delta.detach()).float())
                module.weight.copy_(master)

    @torch.no_grad()
    def check_updates_finite(self, updates: Updates) -> None:
        """Refuse updates whose application would leave a weight NaN or inf (a finite but huge dW can
        overflow the weight's dtype: fp32 near 3.4e38, fp16 at 65504), before any weight changes."""
        for n, delta in updates.items():
            if not bool(torch.isfinite(self.updated_weight(n, delta.detach())).all()):
                raise InvalidActionError(
                    f"update of {n!r} would make its weight NaN or inf in {self.modules[n].weight.dtype}"
                )

    def updated_weight(self, name: str, delta: torch.Tensor) -> torch.Tensor:
        """The weight ``apply_updates({name: delta})`` would give, in the layer's layout and dtype.

        Differentiable in ``delta``; the model is untouched.
        """
        module = self.modules[name]
        master = self._master.get(name)
        if master is None:
            return module.weight + module.to_native(delta)
        return (master + module.layout(delta).float()).to(module.weight.dtype)

    # ------------------------------------------------------------------------------------ forward
    def _hidden_states(
        self, batch: EncodedBatch, updates: Updates | None, prefix: torch.Tensor | None = None
    ) -> torch.Tensor:
        base = self.model.base_model
        kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "use_cache": False}
        with self._from_frozen_prefix(prefix):
            if not updates:
                return base(**kwargs).last_hidden_state
            params = {self.modules[n].base_param: self.updated_weight(n, d) for n, d in updates.items()}
            return torch.func.functional_call(base, params, args=(), kwargs=kwargs).last_hidden_state

    @contextmanager
    def _from_frozen_prefix(self, prefix: torch.Tensor | None) -> Iterator[None]:
        """Inside the block, forward passes skip the frozen layers and start from ``prefix`` (the hidden
        states entering the first layer with an edit module, and its attention block's output when that
        is frozen too); None: the whole model runs."""
        if prefix is None:
            yield
            return
        attention = self._frozen_attention
        hidden, attention_out = prefix.tensor_split(2, dim=-1) if attention else (prefix, None)
        with self._start_at(self.frozen_depth, hidden, attention, attention_out):
            yield

    @contextmanager
    def _start_at(
        self,
        depth: int,
        hidden: torch.Tensor,
        attention: str | None = None,
        attention_out: torch.Tensor | None = None,
    ) -> Iterator[None]:
        """Inside the block, forward passes skip decoder layers below ``depth`` and feed ``hidden`` to
        layer ``depth`` (and ``attention_out`` as the output of its attention block ``attention``)."""
        layers = self._layers
        skipped = [layers[i] for i in range(depth)]

        def start_here(_module, args, kwargs):
            if args:
                return (hidden, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        for i, layer in enumerate(skipped):
            layers[i] = _PassThrough(layer)
        handle = layers[depth].register_forward_pre_hook(start_here, with_kwargs=True)
        if attention:
            original = getattr(layers[depth], attention)
            setattr(layers[depth], attention, _Constant(attention_out))
        try:
            yield
        finally:
            handle.remove()
            if attention:
                setattr(layers[depth], attention, original)
            for i, layer in enumerate(skipped):
                layers[i] = layer

    @contextmanager
    def _mlps_at(self, real: torch.Tensor, targets: torch.Tensor) -> Iterator[None]:
        """Inside the block each layer's MLP runs only where its output is read, for the logits at
        ``targets`` ((B, L) bool) of a batch whose tokens are ``real`` (its attention mask): at the real
        tokens (padding is read by no one), the last layer's only at the targets; it adds nothing
        elsewhere. Exact, as an MLP acts on each position alone, and saves its cost at the other
        positions. (No-op for an architecture without a preset.)"""
        if self._mlps is None:
            yield
            return
        handles = []
        for i, mlp in enumerate(self._mlps):
            where = targets if i == len(self._mlps) - 1 else real
            shape: list[torch.Size] = []

            def gather(_module, args, kwargs, where=where, shape=shape):
                x = args[0] if args else kwargs["hidden_states"]
                shape.append(x.shape)
                picked = x[where.to(x.device)].unsqueeze(0)
                return ((picked, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": picked})

            def scatter(_module, _args, _kwargs, out, where=where, shape=shape):
                return out.new_zeros(shape.pop()).masked_scatter(where.to(out.device).unsqueeze(-1), out[0])

            handles.append(mlp.register_forward_pre_hook(gather, with_kwargs=True))
            handles.append(mlp.register_forward_hook(scatter, with_kwargs=True))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @torch.no_grad()
    def frozen_prefix(self, batch: EncodedBatch) -> torch.Tensor | None:
        """The hidden states (B, L, d) entering the first layer that holds an edit module, for every row
        of ``batch``, and, when no edit module is in that layer's attention block, that block's output
        too ((B, L, 2d), concatenated); None when ``frozen_depth`` is 0.

        They depend only on parts the environment never edits, so they hold for the whole episode:
        ``target_logits(..., prefix=...)`` then runs only the layers from there up.
        """
        if not self.frozen_depth:
            return None
        batch = batch.to(self.input_device())
        layer = self._layers[self.frozen_depth]
        found: dict[str, torch.Tensor] = {}

        def capture_input(_module, args, kwargs):
            found["hidden"] = args[0] if args else kwargs["hidden_states"]
            if not self._frozen_attention:
                raise _StopForward

        def capture_attention(_module, _args, output):
            found["attention"] = output[0]
            raise _StopForward

        out = None
        handles = [layer.register_forward_pre_hook(capture_input, with_kwargs=True)]
        if self._frozen_attention:
            handles.append(getattr(layer, self._frozen_attention).register_forward_hook(capture_attention))
        try:
            for rows, chunk in self._chunks(batch, packed=True):
                with suppress(_StopForward):
                    self.model.base_model(
                        input_ids=chunk.input_ids, attention_mask=chunk.attention_mask, use_cache=False
                    )
                hidden = found["hidden"]
                if self._frozen_attention:
                    hidden = torch.cat([hidden, found["attention"]], -1)
                if out is None:  # padded slots stay zero: they are masked out wherever they are read
                    out = hidden.new_zeros(*batch.input_ids.shape, hidden.shape[-1])
                out[rows.to(out.device), : hidden.shape[1]] = hidden
        finally:
            for handle in handles:
                handle.remove()
        return out

    def _read_targets(self, hidden: torch.Tensor, batch: EncodedBatch) -> TargetLogits:
        """Logits and labels at ``batch``'s answer-predicting positions of the final hidden states.

        With a device_map, the hidden states, the LM head and the batch may sit on different devices.
        """
        rows, cols = batch.target_positions.to(hidden.device).nonzero(as_tuple=True)
        logits = self._logits(hidden[rows, cols])
        labels = batch.labels.to(hidden.device)[rows, cols + 1]
        return TargetLogits(logits, labels.to(logits.device), rows.to(logits.device), len(batch))

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.model.get_output_embeddings()(hidden).float()
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        if cap:  # Gemma-2 squashes its logits in the CausalLM head, which we bypass
            logits = torch.tanh(logits / cap) * cap
        return logits

    def target_logits(
        self,
        batch: EncodedBatch,
        updates: Updates | None = None,
        *,
        enable_grad: bool = False,
        packed: bool = False,
        prefix: torch.Tensor | None = None,
    ) -> TargetLogits:
        """Logits at the answer-predicting positions, optionally under a candidate update.

        The candidate is not committed: the weights are untouched, and when ``updates`` carry
        gradients the result is differentiable with respect to them. ``enable_grad=True`` builds the
        graph anyway, e.g. to differentiate through vectors added by ``add_to_output``.

        By default rows go through in their own order, ``eval_batch_size`` per pass (what hooks that
        index a pass's rows, such as ``add_to_output``, need). ``packed=True`` is for scoring many
        prompts: rows of similar length share a pass of at most ``tokens_per_pass`` tokens, each pass
        trimmed to its longest row, so there are few passes and little padding, and the MLPs run only on
        the real tokens, the last layer's only where logits are read. Either way the tokens come back in
        the batch's order (by row, then position). ``prefix`` (``frozen_prefix(batch)``) starts the
        passes at the first layer with an edit module.
        """
        batch = batch.to(self.input_device())
        grad = enable_grad or (bool(updates) and any(u.requires_grad for u in updates.values()))
        parts: list[TargetLogits] = []
        with torch.set_grad_enabled(grad):
            for rows, chunk in self._chunks(batch, packed):
                chunk_prefix = (
                    None if prefix is None else prefix[rows.to(prefix.device), : chunk.input_ids.shape[1]]
                )
                real = chunk.attention_mask.bool()
                with self._mlps_at(real, chunk.target_positions) if packed else nullcontext():
                    hidden = self._hidden_states(chunk, updates, chunk_prefix)
                part = self._read_targets(hidden, chunk)
                part.rows = rows.to(part.rows.device)[part.rows]
                parts.append(part)
        logits, labels, rows = (
            torch.cat([getattr(p, f) for p in parts]) for f in ("logits", "labels", "rows")
        )
        if packed:  # back to the batch's order; stable, so each row's tokens stay in position order
            order = torch.argsort(rows, stable=True)
            logits, labels, rows = logits[order], labels[order], rows[order]
        return TargetLogits(logits, labels, rows, len(batch))

    def _chunks(self, batch: EncodedBatch, packed: bool) -> Iterator[tuple[torch.Tensor, EncodedBatch]]:
        """(row indices, those rows) of each forward pass; packed passes are trimmed to their longest row."""
        for rows in self._passes(batch, packed):
            longest = int(batch.attention_mask[rows].sum(1).max()) if packed else batch.input_ids.shape[1]
            yield (
                rows,
                EncodedBatch(
                    batch.input_ids[rows, :longest],
                    batch.attention_mask[rows, :longest],
                    batch.labels[rows, :longest],
                ),
            )

    def _passes(self, batch: EncodedBatch, packed: bool) -> list[torch.Tensor]:
        """The row indices of each forward pass (see ``target_logits``)."""
        n = len(batch)
        if not packed:
            return [
                torch.arange(s, min(s + self.eval_batch_size, n)) for s in range(0, n, self.eval_batch_size)
            ]
        lengths = batch.attention_mask.sum(1).cpu()
        order = torch.argsort(lengths, stable=True)
        sizes = lengths[order].tolist()
        passes = []
        for first, last in _length_bands(sizes, self.tokens_per_pass, self.pass_overhead_tokens):
            rows_per_pass = max(self.tokens_per_pass // sizes[last - 1], 1)
            passes += [order[s : min(s + rows_per_pass, last)] for s in range(first, last, rows_per_pass)]
        return passes

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
                loss = self._read_targets(hidden, batch).nll().mean()
                grads = torch.autograd.grad(loss, [outputs[n] for n in self.modules])
        finally:
            for w in weights:
                w.requires_grad_(False)
            for h in handles:
                h.remove()
        rows, cols = batch.target_positions.nonzero(as_tuple=True)
        device = self.device  # with a device_map, gather every module's tokens on one device

        def at_targets(t: torch.Tensor) -> torch.Tensor:
            return t[rows.to(t.device), cols.to(t.device)].to(device=device, dtype=torch.float32)

        keys = {n: at_targets(inputs[n]) for n in self.modules}
        value_grads = {n: at_targets(g) for n, g in zip(self.modules, grads, strict=True)}
        return Trace(keys, value_grads, rows.to(device), float(loss.detach()))

    # ------------------------------------------------------- activations, for closed-form editors
    def _named_module(self, name: str) -> nn.Module:
        module = dict(self.model.named_modules()).get(name)
        if module is None:
            raise ValueError(f"module {name!r} is not in the model ({type(self.model).__name__})")
        return module

    @torch.no_grad()
    def hidden_at(
        self,
        batch: EncodedBatch,
        module_names: Sequence[str],
        positions: tuple[torch.Tensor, torch.Tensor] | None = None,
        *,
        output: bool = False,
        updates: Updates | None = None,
        outputs: Sequence[str] = (),
    ) -> dict[str, torch.Tensor]:
        """What named modules read (their input) or, with ``output=True``, write at ``positions``.

        Any module can be named: an edit module's input is its key, a decoder layer's output the
        residual stream after it. ``positions`` is (rows, cols) into ``batch``; None reads every
        attended token. One forward pass without gradients, at the current weights or at the
        candidate ``updates`` (not committed), stopped once every named module has run. ``outputs``:
        more modules whose output the same pass reads (under their own names). Returns {name: (P, d)}
        fp32 tensors on ``self.device``.
        """
        batch = batch.to(self.input_device())
        if positions is None:
            positions = batch.attention_mask.nonzero(as_tuple=True)
        rows, cols = positions
        found: dict[str, torch.Tensor] = {}
        reads = {n: output for n in module_names} | {n: True for n in outputs}
        wanted = set(reads)

        def hook(name):
            def record(_module, args, kwargs, out):
                value = out if reads[name] else (args[0] if args else kwargs["hidden_states"])
                value = value[0] if isinstance(value, tuple) else value
                found[name] = value[rows.to(value.device), cols.to(value.device)]
                if wanted <= found.keys():  # nothing above is read: the rest of the pass is skipped
                    raise _StopForward

            return record

        handles = [self._named_module(n).register_forward_hook(hook(n), with_kwargs=True) for n in reads]
        try:
            with suppress(_StopForward):
                self._hidden_states(batch, updates)
        finally:
            for h in handles:
                h.remove()
        return {n: found[n].to(device=self.device, dtype=torch.float32) for n in reads}

    @contextmanager
    def add_to_output(
        self, module_name: str, positions: tuple[torch.Tensor, torch.Tensor], vectors: torch.Tensor
    ) -> Iterator[None]:
        """Inside the block, every forward pass adds ``vectors[i]`` to the module's output at
        ``positions[i]`` = (rows[i], cols[i]).

        Adding to an MLP's output projection shifts the residual stream at that layer (how MEMIT finds
        its target vectors); the addition is differentiable in ``vectors``. Rows index each forward
        pass's batch, so a batch read inside must fit one pass (``eval_batch_size`` rows).
        """
        rows, cols = positions

        def add(_module, _args, out):
            hidden = out[0] if isinstance(out, tuple) else out
            if int(rows.max()) >= hidden.shape[0]:
                raise ValueError(
                    f"add_to_output: row {int(rows.max())} is outside this forward pass's "
                    f"{hidden.shape[0]} rows (keep the batch within eval_batch_size={self.eval_batch_size})"
                )
            index = (rows.to(hidden.device), cols.to(hidden.device))
            hidden = hidden.index_put(index, vectors.to(hidden.device, hidden.dtype), accumulate=True)
            return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

        handle = self._named_module(module_name).register_forward_hook(add)
        try:
            yield
        finally:
            handle.remove()

    # ----------------------------------------------- resuming above a layer, for target-vector searches
    @torch.no_grad()
    def suffix_after(self, batch: EncodedBatch, layer: int, start: torch.Tensor) -> Suffix | None:
        """What passes that only add vectors to the residual stream after decoder layer ``layer``, at
        token ``start[i]`` of each row i, need to run from there: each row's tokens from ``start[i]`` on,
        the residual stream after ``layer`` there, and every layer's keys and values of the tokens before
        (which such additions never reach: attention is causal). One forward pass of the whole batch.

        ``start[i]`` must be at or before row i's first answer-predicting position. None when the
        decoder layers are unknown (an architecture without a preset, a model spread over devices) or
        ``layer`` is the last one: then run the whole model (``add_to_output``).
        """
        layers = self._layers
        if layers is None or not 0 <= layer < len(layers) - 1:
            return None
        batch = batch.to(self.input_device())
        start = start.to(batch.input_ids.device)
        found: dict[str, torch.Tensor] = {}

        def capture(_module, _args, out):
            found["hidden"] = out[0] if isinstance(out, tuple) else out

        handle = layers[layer].register_forward_hook(capture)
        try:
            out = self.model.base_model(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=True
            )
        finally:
            handle.remove()
        rows = torch.arange(len(batch), device=start.device)
        target_rows, target_cols = batch.target_positions.nonzero(as_tuple=True)
        labels = batch.labels[target_rows, target_cols + 1]
        # the tokens a row's logits need: from its start to its last answer-predicting position
        ends = torch.zeros_like(start).scatter_reduce(0, target_rows, target_cols + 1, "amax")
        width = int((ends - start).max())
        cols = start[:, None] + torch.arange(width, device=start.device)  # (B, width)
        inside = cols < ends[:, None]
        cols = torch.where(inside, cols, 0)
        take = (rows[:, None], cols)
        prefix_length = int(start.max())
        prefix_mask = (torch.arange(prefix_length, device=start.device) < start[:, None]).long()
        cache = None
        if prefix_length:
            keep = prefix_mask[:, None, :, None].bool()
            cache = [
                tuple(
                    torch.where(keep, t[:, :, :prefix_length], 0)
                    for t in (cache_layer.keys, cache_layer.values)
                )
                for cache_layer in (out.cache if hasattr(out, "cache") else out.past_key_values).layers
            ]
        return Suffix(
            input_ids=torch.where(inside, batch.input_ids[take], 0),
            hidden=found["hidden"][take] * inside[..., None],
            attention_mask=torch.cat([prefix_mask, inside.long()], 1),
            position_ids=cols,
            targets=(target_rows, target_cols - start[target_rows]),
            labels=labels,
            num_rows=len(batch),
            cache=cache,
            layer=layer,
        )

    def kv_cache(self, layers: list[tuple[torch.Tensor, torch.Tensor]]):
        """A transformers key-value cache holding each decoder layer's (keys, values)."""
        from transformers import DynamicCache

        return DynamicCache(ddp_cache_data=layers, config=self.model.config)

    def _cache_argument(self) -> str:
        """The base model's name for a key-value cache (``cache`` since transformers 5.25)."""
        parameters = inspect.signature(self.model.base_model.forward).parameters
        return "cache" if "cache" in parameters else "past_key_values"

    def suffix_target_logits(self, suffix: Suffix, added: torch.Tensor) -> TargetLogits:
        """``target_logits`` of the batch ``suffix`` was cut from, with ``added[i]`` (B, d) added to the
        residual stream after its layer at row i's first suffix token; differentiable in ``added``.

        Runs only the layers above ``suffix.layer``, only on the suffix tokens (the tokens before read
        from the cache), their MLPs only on the real tokens (not the padding), and the last layer's MLP
        only where logits are read.
        """
        first = suffix.hidden[:, :1] + added[:, None].to(suffix.hidden.dtype)
        hidden = torch.cat([first, suffix.hidden[:, 1:]], 1)
        cache = None
        if suffix.cache is not None:
            cache = self.kv_cache(suffix.cache)
        at_targets = torch.zeros_like(suffix.input_ids, dtype=torch.bool)
        at_targets[suffix.targets] = True
        real = suffix.attention_mask[:, -suffix.input_ids.shape[1] :].bool()
        with torch.enable_grad():
            with self._start_at(suffix.layer + 1, hidden), self._mlps_at(real, at_targets):
                out = self.model.base_model(
                    input_ids=suffix.input_ids,
                    attention_mask=suffix.attention_mask,
                    position_ids=suffix.position_ids,
                    **{self._cache_argument(): cache},
                    use_cache=cache is not None,
                ).last_hidden_state
            logits = self._logits(out[suffix.targets])
        return TargetLogits(
            logits,
            suffix.labels.to(logits.device),
            suffix.targets[0].to(logits.device),
            suffix.num_rows,
        )


@dataclass
class Suffix:
    """A batch cut at a token of each row, to resume above a decoder layer (``suffix_after``)."""

    input_ids: torch.Tensor  # (B, width): each row's tokens from its start to its last logit read
    hidden: torch.Tensor  # (B, width, d): the residual stream after ``layer`` at those tokens
    attention_mask: torch.Tensor  # (B, P + width): the tokens before each start (P the most), then these
    position_ids: torch.Tensor  # (B, width): the tokens' positions in their whole rows
    targets: tuple[torch.Tensor, torch.Tensor]  # (rows, cols) of the answer-predicting positions
    labels: torch.Tensor  # (N,) the answer token each of them predicts
    num_rows: int
    cache: list[tuple[torch.Tensor, torch.Tensor]] | None  # each layer's keys and values of the P tokens
    layer: int

    def select(self, rows: torch.Tensor) -> Suffix:
        """The suffix of the rows ``rows`` (ascending) alone, cut to their own longest prefix and suffix
        (a row's tokens and its cached prefix are left-aligned, padding after them)."""
        if len(rows) == self.num_rows:
            return self
        device = self.input_ids.device
        rows = rows.to(device)
        prefix = self.attention_mask.shape[1] - self.input_ids.shape[1]
        mask = self.attention_mask[rows]
        kept_prefix = int(mask[:, :prefix].sum(1).max()) if prefix else 0
        width = int(mask[:, prefix:].sum(1).max())
        renumber = torch.full((self.num_rows,), -1, dtype=torch.long, device=device)
        renumber[rows] = torch.arange(len(rows), device=device)
        target_rows, target_cols = self.targets
        keep = renumber[target_rows] >= 0
        cache = None
        if self.cache is not None and kept_prefix:
            cache = [(k[rows, :, :kept_prefix], v[rows, :, :kept_prefix]) for k, v in self.cache]
        return Suffix(
            input_ids=self.input_ids[rows, :width],
            hidden=self.hidden[rows, :width],
            attention_mask=torch.cat([mask[:, :kept_prefix], mask[:, prefix : prefix + width]], 1),
            position_ids=self.position_ids[rows, :width],
            targets=(renumber[target_rows[keep]], target_cols[keep]),
            labels=self.labels[keep],
            num_rows=len(rows),
            cache=cache,
            layer=self.layer,
        )


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


def _length_bands(sizes: Sequence[int], budget: int, overhead: int) -> list[tuple[int, int]]:
    """Split rows sorted by length (``sizes``) into bands [first, last) that minimise the padded tokens
    plus ``overhead`` per forward pass, each band then taking as many passes of at most ``budget``
    tokens as it needs. A dynamic programme over the distinct lengths (a few dozen)."""
    n = len(sizes)
    if not n:
        return []
    starts = [0] + [i for i in range(1, n) if sizes[i] != sizes[i - 1]]
    bounds = [*starts, n]
    best = [0.0] + [math.inf] * (len(bounds) - 1)
    cut = [0] * len(bounds)
    for j in range(1, len(bounds)):
        longest = sizes[bounds[j] - 1]
        for i in range(j):
            rows = bounds[j] - bounds[i]
            passes = -(-rows // max(budget // longest, 1))
            cost = best[i] + rows * longest + overhead * passes
            if cost < best[j]:
                best[j], cut[j] = cost, i
    bands, j = [], len(bounds) - 1
    while j > 0:
        bands.append((bounds[cut[j]], bounds[j]))
        j = cut[j]
    return bands[::-1]


def stack_prefixes(prefixes: Sequence[torch.Tensor], length: int) -> torch.Tensor:
    """Concatenate hidden states (B_i, L_i, d) of batches that ``stack_rows`` stacked, zero-padded to
    its common ``length`` (padded slots are masked out)."""
    return torch.cat([torch.nn.functional.pad(p, (0, 0, 0, length - p.shape[1])) for p in prefixes])


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


class _StopForward(Exception):
    """Ends a forward pass early, once the hidden states ``frozen_prefix`` or ``hidden_at`` read are
    there."""


class _Constant(nn.Module):
    """Stands in for a frozen attention block: returns its output, computed once (``frozen_prefix``),
    in the (output, attention weights) form decoder layers unpack."""

    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.value = value

    def forward(self, *args, **kwargs):
        return self.value, None


class _PassThrough(nn.Module):
    """Stands in for a frozen decoder layer: returns the hidden states it is given (the real ones are
    injected at the first edited layer), keeping the attributes the model's loop reads."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        for attribute in ("attention_type", "layer_idx"):
            if hasattr(layer, attribute):
                setattr(self, attribute, getattr(layer, attribute))

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states
