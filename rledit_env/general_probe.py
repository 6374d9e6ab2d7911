"""A general-ability probe: few-shot label-word accuracy on SST-2, MRPC, RTE, CoLA, an NLI set and MMLU.

The AlphaEdit/RLEdit papers' way (their ``glue_eval``): a prompt with k labelled examples, then the
query; the model's answer is the label word (" positive"/" negative", " Yes"/" No", " True"/" False",
" A".." D") with the highest mean per-token probability after the prompt, i.e. the lowest mean answer-
token NLL, which is ``TargetLogits.nll``. Accuracy is over ``max_examples`` examples per task; the k
shots and the scored examples are drawn once by a fixed permutation, disjointly, so every call on the
same model gives the same figure. The data ships with the package (``rledit_env/data/general/``,
sources and licences in ``rledit_env/data/LICENSES.md``).

Cost: one forward pass per example when every label word is one token of the model's tokenizer (the
words then share the prompt; SmolLM2, Llama-3 ...), else one per (example, label word).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rledit_env.editable import EditableModel
from rledit_env.tokenization import IGNORE_INDEX, encode_batch, encode_one

GENERAL_DIR = Path(__file__).parent / "data" / "general"
TOKEN_BUDGET = 16384  # padded tokens per forward pass of the probe


@dataclass(frozen=True)
class Task:
    """A labelled task: its file, a label word per class, the query text and the class of a record."""

    column: str
    file: str
    words: tuple[str, ...]
    query: Callable[[dict[str, Any]], str]
    label: Callable[[dict[str, Any]], int]


def _pair(first: str, second: str) -> Callable[[dict[str, Any]], str]:
    return lambda r: (
        f"{r['sentence1'].strip()}\nQuestion: {r['sentence2'].strip()} {first} or {second}?\nAnswer:"
    )


def _mmlu(r: dict[str, Any]) -> str:
    options = "\n".join(f"{letter}. {choice}" for letter, choice in zip("ABCD", r["choices"], strict=True))
    return f"Question: {r['question'].strip()}\n{options}\nAnswer:"


TASKS: dict[str, Task] = {
    t.column.removeprefix("glue_"): t
    for t in [
        Task(
            "glue_sst2",
            "sst2.json",
            ("negative", "positive"),
            lambda r: f"Review: {r['sentence'].strip()}\nSentiment:",
            lambda r: int(r["label"]),
        ),
        Task(
            "glue_mrpc",
            "mrpc.json",
            ("No", "Yes"),  # label 1: paraphrase
            lambda r: (
                f"Sentence 1: {r['sentence1'].strip()}\nSentence 2: {r['sentence2'].strip()}\n"
                "Do both sentences mean the same thing?\nAnswer:"
            ),
            lambda r: int(r["label"]),
        ),
        Task("glue_rte", "rte.json", ("True", "False"), _pair("True", "False"), lambda r: int(r["label"])),
        Task(
            "glue_cola",
            "cola.json",
            ("No", "Yes"),  # label 1: acceptable
            lambda r: f"Sentence: {r['sentence'].strip()}\nIs this sentence grammatical?\nAnswer:",
            lambda r: int(r["label"]),
        ),
        Task(
            "glue_nli",
            "nli.json",
            ("True", "False"),
            _pair("True", "False"),
            lambda r: 0 if r["label"] == "entailment" else 1,
        ),
        Task("mmlu", "mmlu.json", ("A", "B", "C", "D"), _mmlu, lambda r: int(r["answer"])),
    ]
}
COLUMNS = [t.column for t in TASKS.values()]


@dataclass
class GeneralProbeConfig:
    """Which tasks, how many scored examples per task, and how many labelled examples in each prompt."""

    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    max_examples: int = 50
    shots: int = 3

    def __post_init__(self):
        unknown = sorted(set(self.tasks) - set(TASKS))
        if unknown:
            raise ValueError(f"general_probe: unknown tasks {unknown}; known: {sorted(TASKS)}")
        if self.max_examples < 1 or self.shots < 0:
            raise ValueError("general_probe: max_examples must be >= 1 and shots >= 0")


@cache
def _records(file: str) -> tuple[dict[str, Any], ...]:
    return tuple(json.loads((GENERAL_DIR / file).read_text(encoding="utf-8")))


def prompts(task: Task, shots: int, max_examples: int) -> tuple[list[str], list[int]]:
    """The prompts (k solved shots, then the query) and the gold classes of a task's scored examples."""
    records = _records(task.file)
    order = np.random.default_rng(0).permutation(len(records))
    if shots + 1 > len(records):
        raise ValueError(f"{task.file} has {len(records)} records, too few for {shots} shots")
    context = "".join(
        f"{task.query(records[i])} {task.words[task.label(records[i])]}\n\n" for i in order[:shots]
    )
    scored = [records[i] for i in order[shots : shots + max_examples]]
    return [context + task.query(r) for r in scored], [task.label(r) for r in scored]


def score_task(editable: EditableModel, task: Task, shots: int, max_examples: int) -> float:
    """Accuracy of the most probable label word (lowest mean token NLL) over the task's scored examples."""
    nll, gold = label_nll(editable, task, shots, max_examples)
    return float(np.mean(nll.argmin(axis=1) == np.asarray(gold)))


def label_nll(
    editable: EditableModel, task: Task, shots: int, max_examples: int
) -> tuple[np.ndarray, list[int]]:
    """Mean token NLL of each label word after each scored prompt, (examples, words), and the gold classes."""
    texts, gold = prompts(task, shots, max_examples)
    words = list(task.words)
    single = _single_tokens(editable.tokenizer, texts[0], words)
    rows = 1 if single is not None else len(words)  # rows (forward passes) per example
    lengths = [len(ids) for ids in editable.tokenizer(texts)["input_ids"]]
    nll = np.empty((len(texts), len(words)))
    for group in _groups(lengths, rows, editable.eval_batch_size):
        if single is not None:
            # One-token label words share the prompt: one pass, and their NLLs at its last position.
            batch = encode_batch(editable.tokenizer, [texts[i] for i in group], words[:1] * len(group))
            logp = torch.log_softmax(editable.target_logits(batch).logits, dim=-1)
            nll[group] = -logp[:, single].cpu().numpy()
        else:
            batch = encode_batch(
                editable.tokenizer, [texts[i] for i in group for _ in words], words * len(group)
            )
            nll[group] = editable.target_logits(batch).nll().reshape(len(group), len(words)).cpu().numpy()
    return nll, gold


def _single_tokens(tokenizer, prompt: str, words: Sequence[str]) -> list[int] | None:
    """The token id of each label word after ``prompt`` when every word is exactly one token, else None."""
    ids = []
    for word in words:
        answer = [t for t in encode_one(tokenizer, prompt, word)[1] if t != IGNORE_INDEX]
        if len(answer) != 1:
            return None
        ids.append(answer[0])
    return ids if len(set(ids)) == len(ids) else None


def _groups(lengths: Sequence[int], k: int, max_rows: int) -> list[list[int]]:
    """Examples in batches of similar length, each at most ``max_rows`` rows and TOKEN_BUDGET padded
    tokens: few-shot prompts vary several-fold in length, and one padded batch would pay for the longest."""
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        rows = (len(groups[-1]) + 1) * k if groups else 0
        if not groups or rows > max_rows or rows * lengths[i] > TOKEN_BUDGET:
            groups.append([])
        groups[-1].append(i)
    return groups


def probe_general(editable: EditableModel, config: GeneralProbeConfig | None = None) -> dict[str, float]:
    """Accuracy per task of ``config`` ({"glue_sst2": ..., "mmlu": ...}) for the model as it is now."""
    config = config or GeneralProbeConfig()
    return {
        TASKS[name].column: score_task(editable, TASKS[name], config.shots, config.max_examples)
        for name in config.tasks
    }
