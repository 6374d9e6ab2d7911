"""Tokenizer, model, pretraining and the on-disk cache of TinyWorld models.

The model is trained on every true fact under every template until it answers each (relation,
template) group with ``config.target_accuracy`` teacher-forced top-1 accuracy, then saved as an
ordinary Hugging Face directory so every other part of the project loads it like any hub model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import pathlib
import time
from collections import defaultdict
from collections.abc import Iterator

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from tqdm.auto import tqdm
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)
from transformers.utils import logging as hf_logging

from rledit_env.atomic import atomic_path
from rledit_env.cache import cache_root, cached_build
from rledit_env.log import get_logger
from rledit_env.tinyworld.world import TinyWorld, TinyWorldConfig
from rledit_env.tokenization import IGNORE_INDEX, encode_one

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
MAX_POSITIONS = 64
META_FILE = "tinyworld.json"
CHECKPOINT_SECONDS = 120.0  # how often a build saves its progress (a large world trains for many minutes)


def build_tokenizer(world: TinyWorld) -> PreTrainedTokenizerFast:
    """A subword tokenizer trained on the world's sentences, prepending BOS like Llama's does."""
    config = world.config
    if config.tokenizer == "bpe":
        # GPT-2 style: bytes as the alphabet, so nothing is ever unknown; words carry their leading space.
        # A space is also prefixed to the first word (as SentencePiece does), so a subject tokenises the
        # same at the start of a sentence as inside it and facts transfer between templates. The decoder
        # drops that space again.
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Strip(" ", 1, 0)])
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        # SentencePiece style: spaces become "▁" glued to the next word; the first word gets one too.
        tok = Tokenizer(models.BPE(unk_token=UNK))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        alphabet = []
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        special_tokens=[PAD, BOS, EOS, UNK],
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(world.general_texts(), trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=MAX_POSITIONS,
        padding_side="right",
    )


def build_model(config: TinyWorldConfig, tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    """A freshly initialised (seeded) small causal LM of the configured architecture."""
    torch.manual_seed(config.seed)
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if config.arch == "llama":
        model_config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads,
            num_key_value_heads=config.num_heads,
            max_position_embeddings=MAX_POSITIONS,
            **ids,
        )
        return LlamaForCausalLM(model_config)
    model_config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=MAX_POSITIONS,
        n_embd=config.hidden_size,
        n_layer=config.num_layers,
        n_head=config.num_heads,
        n_inner=config.intermediate_size,
        # No dropout: the model should memorise its world exactly, and training stays deterministic.
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        **ids,
    )
    return GPT2LMHeadModel(model_config)


@dataclasses.dataclass
class _Queries:
    """Every fact under every template, tokenised once and right-padded (rows in world.facts order)."""

    input_ids: torch.Tensor  # (N, L)
    attention: torch.Tensor  # (N, L)
    answer_labels: torch.Tensor  # (N, L): answer token ids, IGNORE_INDEX elsewhere
    lengths: torch.Tensor  # (N,)
    groups: list[tuple[str, int]]  # (relation, template index) of each row

    @classmethod
    def build(cls, tokenizer, world: TinyWorld) -> _Queries:
        rows, groups = [], []
        for fact in world.facts:
            for t in range(len(world.templates[fact.relation])):
                rows.append(encode_one(tokenizer, world.prompt(fact.subject, fact.relation, t), fact.object))
                groups.append((fact.relation, t))
        n, length = len(rows), max(len(ids) for ids, _ in rows)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # masked out anyway
        input_ids = torch.full((n, length), pad, dtype=torch.long)
        labels = torch.full((n, length), IGNORE_INDEX, dtype=torch.long)
        for i, (ids, labs) in enumerate(rows):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, : len(labs)] = torch.tensor(labs)
        lengths = torch.tensor([len(ids) for ids, _ in rows])
        attention = (torch.arange(length)[None] < lengths[:, None]).long()
        return cls(input_ids, attention, labels, lengths, groups)

    def batches(
        self, order: torch.Tensor, batch_size: int, generator: torch.Generator | None = None
    ) -> list[tuple[torch.Tensor, int]]:
        """Batches of row indices of similar length (so little compute goes on padding), in random
        order when a generator is given; each comes with its trimmed width."""
        chunk = batch_size * 16
        out = []
        for part in order.split(chunk):
            part = part[torch.sort(self.lengths[part], stable=True).indices]
            out.extend(part.split(batch_size))
        if generator is not None:
            out = [out[i] for i in torch.randperm(len(out), generator=generator).tolist()]
        return [(idx, int(self.lengths[idx].max())) for idx in out]


def _answer_correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) bool: every answer token (label != IGNORE_INDEX) is predicted by argmax at the position before."""
    predicted = logits[:, :-1].argmax(-1)
    target = labels[:, 1:]
    is_answer = target != IGNORE_INDEX
    return ((predicted == target) | ~is_answer).all(-1)


@torch.no_grad()
def _correct_rows(model, queries: _Queries, batch_size: int) -> torch.Tensor:
    """(N,) bool: which queries the model answers right (every answer token the argmax)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = torch.zeros(len(queries.groups), dtype=torch.bool)
    for idx, width in queries.batches(torch.arange(len(queries.groups)), batch_size):
        logits = model(
            input_ids=queries.input_ids[idx, :width].to(device),
            attention_mask=queries.attention[idx, :width].to(device),
            use_cache=False,
        ).logits
        correct[idx] = _answer_correct(logits, queries.answer_labels[idx, :width].to(device)).cpu()
    model.train(was_training)
    return correct


def _accuracy(model, queries: _Queries, world: TinyWorld, batch_size: int) -> dict:
    return _summarise(_correct_rows(model, queries, batch_size).tolist(), queries.groups, world)


def _summarise(correct: list[bool], groups: list[tuple[str, int]], world: TinyWorld) -> dict:
    by_relation: dict[str, list[bool]] = defaultdict(list)
    by_template: dict[str, list[bool]] = defaultdict(list)
    for ok, (relation, t) in zip(correct, groups, strict=True):
        by_relation[relation].append(ok)
        by_template[world.templates[relation][t]].append(ok)

    def mean(xs: list[bool]) -> float:
        return sum(xs) / len(xs)

    per_template = {k: mean(v) for k, v in by_template.items()}
    return {
        "overall": mean(correct),
        "per_relation": {k: mean(v) for k, v in by_relation.items()},
        "per_template": per_template,
        "min_template": min(per_template.values()),
        "num_queries": len(correct),
    }


def fact_accuracy(model, tokenizer, world: TinyWorld, batch_size: int = 256) -> dict:
    """Teacher-forced top-1 accuracy on every true fact under every template.

    A query counts as correct only if every answer token is the argmax. Returns "overall",
    "per_relation", "per_template" (keyed by the template string), "min_template" and "num_queries".
    """
    return _accuracy(model, _Queries.build(tokenizer, world), world, batch_size)


def lr_factor(config: TinyWorldConfig, step: int) -> float:
    """The pretraining learning rate at ``step``, as a fraction of ``config.learning_rate``.

    Linear warmup, cosine down to 10% over schedule_steps (about when the facts are known: the decay is
    what settles the last few), then flat until the hard cap; with anneal_steps, from the later of
    schedule_steps and bf16_steps, linearly down to 1% over anneal_steps, then flat.
    """
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    anneal_start = max(config.schedule_steps, config.bf16_steps)
    if config.anneal_steps and step >= anneal_start:
        return 0.1 - 0.09 * min(1.0, (step - anneal_start) / config.anneal_steps)
    frac = min(1.0, (step - config.warmup_steps) / max(1, config.schedule_steps - config.warmup_steps))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))


log = get_logger("tinyworld")


def native_bf16() -> bool | None:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); None where torch cannot tell.
    Without it, bf16 autocast is emulated and slower than fp32 (docs/measurements.md has the figures)."""
    # private helpers of torch's CPU backend, absent in some builds
    names = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    checks = [getattr(torch.cpu, name, None) for name in names]
    if any(check is None for check in checks):
        return None
    return any(check() for check in checks)


def train_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    world: TinyWorld,
    progress: bool = True,
    *,
    resume_file: pathlib.Path | None = None,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
) -> dict:
    """Pretrain ``model`` on the world's true facts until every template is known; returns the accuracy.

    Loss is next-token prediction over whole sentences, so the model is a language model of its world
    (general-text perplexity means something), with answer tokens weighted ``answer_loss_weight`` times,
    which about halves the steps to learn the facts. Each batch's own forward pass tells which sentences
    are already answered right; the (costlier) full accuracy check runs only once those running figures
    near the target. With ``replay_fraction`` < 1 each pass over the data revisits only that share of the
    sentences already answered right (and all the others), so compute goes where facts are still
    missing. The first ``bf16_steps`` steps run under bfloat16 autocast (the large world's bulk, about
    twice as fast on CPUs with native bf16); after them a full check also runs every ``check_every``
    steps, since running figures that are stale under replay can stay below the trigger for thousands of
    steps, and with ``anneal_steps`` the learning rate falls from its 10% floor to 1% (at a constant
    rate, the newest facts keep displacing others). Raises RuntimeError if ``max_steps`` pass without
    reaching the target.

    With ``resume_file``, the training state (weights, optimiser, schedule, random generator, the pass
    in progress) is saved there every ``checkpoint_seconds``, and a build that finds the file continues
    from it: an interrupted build resumes, and ends with the same weights as an uninterrupted one.
    """
    config = world.config
    if config.bf16_steps and native_bf16() is False:
        log.warning(
            "this CPU has no native bfloat16 (AVX512-BF16 or AMX): the build's first %d steps run under "
            "emulated bf16 autocast, about 2x slower than fp32, so it takes several times its usual hour "
            "(docs/measurements.md); it resumes if interrupted",
            config.bf16_steps,
        )
    q = _Queries.build(tokenizer, world)
    n = len(q.groups)
    lm_labels = q.input_ids.masked_fill(q.attention == 0, IGNORE_INDEX)
    loss_weight = q.attention + (config.answer_loss_weight - 1) * (q.answer_labels != IGNORE_INDEX)
    group_names = sorted(set(q.groups))
    group_ids = torch.tensor([group_names.index(g) for g in q.groups])
    group_sizes = torch.bincount(group_ids, minlength=len(group_names))

    model.train()
    no_decay = [p for name, p in model.named_parameters() if p.ndim < 2 or "norm" in name or "ln_" in name]
    decay = [p for p in model.parameters() if all(p is not q for q in no_decay)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate,
        betas=(0.9, 0.98),
    )

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(config, step))
    generator = torch.Generator().manual_seed(config.seed)
    seen_correct = torch.zeros(n, dtype=torch.bool)
    pending: list[tuple[torch.Tensor, int]] = []  # the current pass's batches still to train on

    def next_batch() -> tuple[torch.Tensor, int]:
        if not pending:  # a new pass over the data
            order = torch.randperm(n, generator=generator)
            if config.replay_fraction < 1:  # revisit only a share of the rows already answered right
                revisit = torch.rand(n, generator=generator) < config.replay_fraction
                order = order[~seen_correct[order] | revisit]
            pending.extend(reversed(q.batches(order, config.batch_size, generator)))
        return pending.pop()

    result: dict | None = None
    last_check: dict[str, str] = {}  # the last full check that fell short, shown on the progress bar
    checked_at, checked = -1, None  # the step of the last full check, and its result
    history: list[tuple[int, float, float]] = []  # (step, loss, running accuracy), kept in the metadata
    first_step = 0
    state = _TrainingState(model, optimizer, scheduler, generator, seen_correct, pending, history)
    if resume_file is not None and resume_file.exists():
        first_step = state.restore(resume_file, config.progress_key())
    last_save = time.perf_counter()
    bar = tqdm(
        total=config.max_steps,
        initial=first_step,
        desc=f"TinyWorld {config.arch} pretraining",
        disable=not progress,
    )
    with bar:
        for step in range(first_step, config.max_steps):
            if resume_file is not None and time.perf_counter() - last_save >= checkpoint_seconds:
                state.save(resume_file, config.progress_key(), step)
                last_save = time.perf_counter()
            idx, width = next_batch()
            inputs = {"input_ids": q.input_ids[idx, :width], "attention_mask": q.attention[idx, :width]}
            with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=step < config.bf16_steps):
                logits = model(**inputs, use_cache=False).logits.float()
            token_loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].transpose(1, 2),
                lm_labels[idx, 1:width],
                ignore_index=IGNORE_INDEX,
                reduction="none",
            )
            weight = loss_weight[idx, 1:width]
            loss = (token_loss * weight).sum() / weight.sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            seen_correct[idx] = _answer_correct(logits.detach(), q.answer_labels[idx, :width])
            bar.update(1)
            if (step + 1) % config.eval_every:
                continue
            group_acc = (
                torch.zeros(len(group_names)).index_add_(0, group_ids, seen_correct.float()) / group_sizes
            )
            history.append((step + 1, round(loss.item(), 4), round(seen_correct.float().mean().item(), 4)))
            bar.set_postfix(loss=f"{history[-1][1]:.3f}", acc=f"{history[-1][2]:.3f}", **last_check)
            # The running figures lag (each is from the sentence's last visit), so check a little early.
            fp32_steps = step + 1 - config.bf16_steps
            scheduled = config.check_every > 0 and fp32_steps > 0 and fp32_steps % config.check_every == 0
            if scheduled or group_acc.min() >= config.target_accuracy - 0.005:
                correct = _correct_rows(model, q, batch_size=256)
                result = _summarise(correct.tolist(), q.groups, world)
                checked_at, checked = step + 1, result
                if result["min_template"] >= config.target_accuracy:
                    result.update(steps=step + 1, history=history)
                    break
                last_check = {"checked": f"{result['overall']:.4f} worst {result['min_template']:.4f}"}
                result = None
                if config.replay_fraction < 1:  # the next passes focus on what is really still wrong
                    seen_correct.copy_(correct)
    model.eval()
    if result is None:
        if resume_file is not None:  # a raised max_steps continues from here
            state.save(resume_file, config.progress_key(), config.max_steps)
        # a check taken at the cap already measured these weights
        final = checked if checked_at == config.max_steps else _accuracy(model, q, world, batch_size=256)
        raise RuntimeError(
            f"TinyWorld model did not reach {config.target_accuracy:.1%} accuracy on every template within "
            f"{config.max_steps} steps (overall {final['overall']:.2%}, worst template "
            f"{final['min_template']:.2%}); raise max_steps (the build continues from where it stopped) "
            "or the model size"
        )
    return result


@dataclasses.dataclass
class _TrainingState:
    """What ``train_model`` needs to go on exactly as it would have: saved and restored as one file."""

    model: PreTrainedModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator
    seen_correct: torch.Tensor
    pending: list[tuple[torch.Tensor, int]]  # the current pass's batches still to train on
    history: list[tuple[int, float, float]]

    def save(self, path: pathlib.Path, key: str, step: int) -> None:
        state = {
            "key": key,
            "step": step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "seen_correct": self.seen_correct,
            "pending": [(idx, torch.tensor(width)) for idx, width in self.pending],
            "history": [torch.tensor(h, dtype=torch.float64) for h in self.history],
        }
        with atomic_path(path) as tmp:  # a build killed while saving keeps the previous file
            torch.save(state, tmp)

    def restore(self, path: pathlib.Path, key: str) -> int:
        """Load ``path`` into the live objects; the step to continue from."""
        state = torch.load(path, weights_only=True)
        if state["key"] != key:
            raise RuntimeError(f"{path} holds the progress of another TinyWorld ({state['key']}); delete it")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        self.seen_correct.copy_(state["seen_correct"])
        self.pending[:] = [(idx, int(width)) for idx, width in state["pending"]]
        self.history[:] = [(int(h[0]), float(h[1]), float(h[2])) for h in state["history"]]
        return int(state["step"])


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _hf_progress(enabled: bool) -> Iterator[None]:
    """Silence transformers' own progress bars (weight loading, shard writing) when ``progress`` is off."""
    before = hf_logging.is_progress_bar_enabled()
    if not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if before:
            hf_logging.enable_progress_bar()


def build_tinyworld(
    config: TinyWorldConfig,
    folder: pathlib.Path,
    progress: bool = True,
    resume_file: pathlib.Path | None = None,
) -> dict:
    """Train the world's tokenizer and model, save them into ``folder`` and return the build record.

    With ``resume_file`` the pretraining saves its progress there as it goes and continues from it
    (``train_model``); the file is removed once the model is saved."""
    start = time.perf_counter()
    world = TinyWorld(config)
    tokenizer = build_tokenizer(world)
    model = build_model(config, tokenizer)
    with _torch_threads(config.num_threads):
        accuracy = train_model(model, tokenizer, world, progress=progress, resume_file=resume_file)
    with _hf_progress(progress):
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    if resume_file is not None:
        resume_file.unlink(missing_ok=True)
    return {
        "config": dataclasses.asdict(config),
        "key": config.key(),
        "accuracy": accuracy,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "build_seconds": round(time.perf_counter() - start, 1),
    }


def _resolve(config: TinyWorldConfig | str | None) -> TinyWorldConfig:
    if config is None:
        return TinyWorldConfig.default()
    return TinyWorldConfig.named(config) if isinstance(config, str) else config


def tinyworld_model_dir(
    config: TinyWorldConfig | str | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> pathlib.Path:
    """The cached model directory of ``config`` (built first if missing).

    Cache root: ``cache_dir``, else $RLEDIT_CACHE, else ~/.cache/rledit_env; the folder is
    ``tinyworld/<config.key()>``.
    """
    config = _resolve(config)
    target = cache_root(cache_dir) / "tinyworld" / config.key()
    # an interrupted build continues from it; named without max_steps, which a failed build may raise
    resume = target.parent / f".{config.progress_key()}.progress.pt"
    # looked up at call time, so that tests can replace build_tinyworld
    return cached_build(target, META_FILE, lambda folder: build_tinyworld(config, folder, progress, resume))


def load_tinyworld(
    config: TinyWorldConfig | str | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast, TinyWorld]:
    """(model, tokenizer, world) of a TinyWorld; builds and caches the model at first use.

    ``config`` is a TinyWorldConfig or one of "default", "tiny", "default-gpt2", "tiny-gpt2".
    The model comes back in eval mode, fp32, on ``device``.
    """
    config = _resolve(config)
    path = tinyworld_model_dir(config, cache_dir=cache_dir, progress=progress)
    with _hf_progress(progress):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer, TinyWorld(config)
