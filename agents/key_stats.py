"""Second-moment statistics of edit-module keys over general text, computed once and cached on disk.

Locate-then-edit editors (MEMIT, AlphaEdit) need C = E[k k^T], the uncentred covariance of what a
layer reads (its input "key" k) over text the model knows, to keep an update from disturbing the
layer's outputs on that text. The expectation runs over every token of a corpus that shares no text
with the perplexity probe or the evaluation prompts (``LifelongEditEnv.stats_texts``): TinyWorld's
"stats" split (sentences about subjects no evaluation record mentions), else the train split's
prompts.

Cache: ``$RLEDIT_CACHE/stats`` (default ``~/.cache/rledit_env/stats``), one file per module under a
folder named by the model's name and a fingerprint of its weights, the file named by the module and a
hash of the corpus, so another model, edited weights or another corpus never reuse stale statistics.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from rledit_env.atomic import atomic_path
from rledit_env.cache import cache_root
from rledit_env.editable import EditableModel
from rledit_env.tokenization import EncodedBatch


@dataclass
class KeyStats:
    """C = E[k k^T] of one module's input over a corpus."""

    module: str
    second_moment: torch.Tensor  # (d_in, d_in) fp32, on the CPU
    count: int  # tokens averaged over
    from_cache: bool
    path: pathlib.Path


def stats_cache_dir(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """``cache_dir``, else $RLEDIT_CACHE/stats, else ~/.cache/rledit_env/stats."""
    return pathlib.Path(cache_dir) if cache_dir is not None else cache_root() / "stats"


@torch.no_grad()
def model_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of every parameter's name, shape, sum and norm (cheap: two reductions each)."""
    digest = hashlib.sha256()
    for name, p in model.named_parameters():
        total = float(p.sum(dtype=torch.float64))
        norm = float(torch.linalg.vector_norm(p, dtype=torch.float64))
        digest.update(f"{name}:{tuple(p.shape)}:{total:.10e}:{norm:.10e};".encode())
    return digest.hexdigest()[:12]


def corpus_hash(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for t in texts:
        digest.update(t.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:12]


def _model_folder(editable: EditableModel) -> str:
    config = editable.model.config
    name = pathlib.PurePath(getattr(config, "_name_or_path", "") or config.model_type).name
    return f"{name or config.model_type}-{model_fingerprint(editable.model)}"


def _encode_texts(tokenizer, texts: Sequence[str], max_length: int) -> EncodedBatch:
    rows = [
        tokenizer(t, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]
        for t in texts
    ]
    length = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)  # padded slots are masked out
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return EncodedBatch(ids, mask, torch.full_like(ids, -100))


def key_second_moments(
    editable: EditableModel,
    module_names: Sequence[str],
    texts: Sequence[str],
    *,
    batch_size: int = 32,
    max_length: int = 256,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, KeyStats]:
    """C = E[k k^T] of each module's input over every token of ``texts`` (truncated to ``max_length``).

    Loads what the cache has; computes the rest in one pass over the corpus (all modules per forward),
    with a progress bar, at the model's current weights, and caches it.
    """
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("key statistics need a non-empty text corpus (the environment's stats_texts)")
    if batch_size < 1 or max_length < 2:
        raise ValueError(f"batch_size must be >= 1 and max_length >= 2, got {batch_size}, {max_length}")
    folder = stats_cache_dir(cache_dir) / _model_folder(editable)
    corpus = corpus_hash([f"{max_length}"] + texts)
    paths = {n: folder / f"{n}-{corpus}.pt" for n in module_names}
    result: dict[str, KeyStats] = {}
    for name, path in paths.items():
        if path.exists():
            saved = torch.load(path, map_location="cpu", weights_only=True)
            result[name] = KeyStats(name, saved["second_moment"], int(saved["count"]), True, path)
    missing = [n for n in module_names if n not in result]
    if not missing:
        return result

    start = time.perf_counter()
    sums: dict[str, torch.Tensor] = {}
    count = 0
    chunks = range(0, len(texts), batch_size)
    for i in tqdm(chunks, desc=f"key statistics ({len(missing)} modules)", disable=not progress):
        batch = _encode_texts(editable.tokenizer, texts[i : i + batch_size], max_length)
        keys = editable.hidden_at(batch, missing)
        for name, k in keys.items():
            sums[name] = sums[name] + k.t() @ k if name in sums else k.t() @ k
        count += int(batch.attention_mask.sum())
    seconds = time.perf_counter() - start
    folder.mkdir(parents=True, exist_ok=True)
    for name in missing:
        moment = (sums[name] / count).cpu()
        payload = {"second_moment": moment, "count": count, "module": name, "seconds": seconds}
        with atomic_path(paths[name]) as tmp:  # a concurrent reader sees the whole file or none
            torch.save(payload, tmp)
        result[name] = KeyStats(name, moment, count, False, paths[name])
    return {n: result[n] for n in module_names}
