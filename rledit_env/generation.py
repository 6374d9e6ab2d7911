"""Evaluation by generation: the model must *say* the answer, not just rank its gold tokens first.

Teacher-forced metrics (``rledit_env.metrics``) feed the gold answer in and count argmax hits; greedy
decoding that reproduces the answer implies every one of those hits, but not the other way round (one
wrong token early on and the generation goes elsewhere). This module scores what greedy decoding gives,
judge-free, over ``EditableModel``'s public surface (its model and tokenizer; it adds nothing to it):

- ``eff_em``/``gen_em``: the share of edit/paraphrase prompts whose generation, normalised (case,
  whitespace, punctuation), begins with the new answer;
- ``spe_em``: the share of locality prompts whose generation still begins with the ground-truth answer
  of the record (ZsRE's ``loc_ans``, CounterFact/TinyWorld neighbourhood answers);
- ``spe_em_agree``: the share of locality prompts whose generation still begins with the unedited
  model's own answer: its generation (recorded when the evaluator is built, before the first edit) cut
  to the length of the locality answer in tokens, so that what a model says after its answer (which
  drifts with any change of weights, and on TinyWorld is noise) does not count.

Each is averaged over a record's prompts, then over records, as the teacher-forced suite is.

Generation is greedy, batched, with the key-value cache, each distinct prompt run once
(``rledit_env.prompt_pass``; a caller that runs both suites runs their prompts together).
Each prompt's token budget is its gold answer's length in tokens plus ``extra_tokens``; a row stops at
end of sequence, at its budget, or at the end of its first clause (a token holding ``.,;:!?`` or a
newline) once it has generated at least as many tokens as its gold answer (so "St. Louis" is not cut at
"St."). The prompt tokens are exactly those teacher forcing conditions on (``encode_one``'s prefix).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rledit_env.editable import EditableModel
from rledit_env.metrics import _mean, _per_record
from rledit_env.prompt_pass import DecodeRequest, run_prompts
from rledit_env.records import EditRecord
from rledit_env.tokenization import IGNORE_INDEX, encode_one

EXTRA_TOKENS = 3  # the budget beyond the gold answer's length
CLAUSE_END = ".,;:!?\n"
GENERATION_METRICS = ("eff_em", "gen_em", "spe_em", "spe_em_agree")
_SPACES = re.compile(r"\s+")


def normalise(text: str) -> str:
    """Lower case, punctuation turned into spaces, whitespace collapsed: what exact match compares."""
    text = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text.lower())
    return _SPACES.sub(" ", text).strip()


def begins_with(generated: str, answer: str) -> bool:
    """Whether ``generated`` begins with ``answer``, both normalised.

    A plain prefix, not a whole word: a model whose training text ends at the answer (TinyWorld) runs
    on into the next token without a space ("rabbitepul"), and that says nothing about the answer."""
    answer = normalise(answer)
    return bool(answer) and normalise(generated).startswith(answer)


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt to complete: its token ids (as teacher forcing sees them), the gold answer and its
    length in tokens, and the record it belongs to."""

    record: int
    prompt_ids: tuple[int, ...]
    answer: str
    answer_tokens: int

    def budget(self, extra_tokens: int = EXTRA_TOKENS) -> int:
        return self.answer_tokens + extra_tokens


def request(tokenizer, record: int, prompt: str, answer: str) -> GenerationRequest:
    """The prompt's tokens are ``encode_one``'s ids before the first answer token, so generation starts
    from exactly what teacher forcing conditions on."""
    ids, labels = encode_one(tokenizer, prompt, answer)
    first = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    return GenerationRequest(
        record, tuple(ids[:first]), answer, sum(label != IGNORE_INDEX for label in labels)
    )


@functools.lru_cache(maxsize=8)
def _clause_end_ids(tokenizer) -> torch.Tensor:
    """Token ids whose text holds a clause end (one decode of the vocabulary per tokenizer)."""
    pieces = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return torch.tensor(
        [i for i, p in enumerate(pieces) if any(c in p for c in CLAUSE_END)], dtype=torch.long
    )


def _eos_ids(editable: EditableModel) -> torch.Tensor:
    ids = {editable.tokenizer.eos_token_id}
    configured = getattr(getattr(editable.model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return torch.tensor(sorted(i for i in ids if i is not None), dtype=torch.long)


def greedy_generate(
    editable: EditableModel,
    prompts: Sequence[Sequence[int]],
    budgets: Sequence[int],
    min_tokens: Sequence[int] | None = None,
    *,
    stop_at_clause: bool = True,
) -> list[list[int]]:
    """Greedy continuations of token-id ``prompts``: at most ``budgets[i]`` new tokens for row i, ending
    at EOS or (``stop_at_clause``, once ``min_tokens[i]`` tokens are out) at a clause-ending token, which
    is kept. Batched with the key-value cache, each distinct prompt run once
    (``rledit_env.prompt_pass.run_prompts``)."""
    if len(prompts) != len(budgets):
        raise ValueError(f"{len(prompts)} prompts but {len(budgets)} budgets")
    least = list(min_tokens) if min_tokens is not None else [0] * len(prompts)
    requests = [DecodeRequest(tuple(p), b, m) for p, b, m in zip(prompts, budgets, least, strict=True)]
    return run_prompts(editable, decodes=requests, **_stops(editable, stop_at_clause))[1]


def _stops(editable: EditableModel, stop_at_clause: bool = True) -> dict[str, torch.Tensor]:
    """``run_prompts``'s end-of-sequence and clause-end token ids for ``editable``."""
    eos = _eos_ids(editable)
    return {"eos_ids": eos, "stop_ids": _clause_end_ids(editable.tokenizer) if stop_at_clause else eos[:0]}


def generate_texts(
    editable: EditableModel, requests: Sequence[GenerationRequest], extra_tokens: int = EXTRA_TOKENS
) -> list[str]:
    """The decoded greedy continuation of each request (special tokens dropped)."""
    if not requests:
        return []
    generated = greedy_generate(
        editable,
        [r.prompt_ids for r in requests],
        [r.budget(extra_tokens) for r in requests],
        [r.answer_tokens for r in requests],
    )
    return editable.tokenizer.batch_decode(generated, skip_special_tokens=True)


class GenerationEvaluator:
    """Scores the edits of one episode by greedy generation; records are in the order they are edited.

    The unedited model's locality generations are recorded at construction (``spe_em_agree``), so build
    the evaluator before the first edit.
    """

    def __init__(
        self, editable: EditableModel, records: Sequence[EditRecord], extra_tokens: int = EXTRA_TOKENS
    ):
        self.editable = editable
        self.records = list(records)
        self.extra_tokens = extra_tokens
        tok = editable.tokenizer
        recs = list(enumerate(self.records))
        self.edit = [request(tok, i, r.prompt, r.target_new) for i, r in recs]
        self.para = [request(tok, i, p, r.target_new) for i, r in recs for p in r.paraphrase_prompts]
        self.loc = [
            request(tok, i, p, a)
            for i, r in recs
            for p, a in zip(r.locality_prompts, r.locality_answers, strict=True)
        ]
        unedited = greedy_generate(
            editable,
            [q.prompt_ids for q in self.loc],
            [q.budget(extra_tokens) for q in self.loc],
            [q.answer_tokens for q in self.loc],
        )
        self.loc_reference = editable.tokenizer.batch_decode(
            [tokens[: q.answer_tokens] for tokens, q in zip(unedited, self.loc, strict=True)],
            skip_special_tokens=True,
        )

    def _chosen(self, num_records: int) -> list[GenerationRequest]:
        """The edit, paraphrase and locality requests of the first ``num_records`` records, in that order."""
        return [q for qs in (self.edit, self.para, self.loc) for q in qs if q.record < num_records]

    def requests(self, num_records: int) -> list[DecodeRequest]:
        """What to generate for the first ``num_records`` records (``metrics`` reads it back in order)."""
        return [
            DecodeRequest(q.prompt_ids, q.budget(self.extra_tokens), q.answer_tokens)
            for q in self._chosen(num_records)
        ]

    def stops(self) -> dict[str, torch.Tensor]:
        """The token ids that end a generation (``run_prompts``'s ``eos_ids`` and ``stop_ids``)."""
        return _stops(self.editable)

    @torch.no_grad()
    def evaluate(self, num_records: int | None = None) -> dict[str, float]:
        """``eff_em``, ``gen_em``, ``spe_em``, ``spe_em_agree`` over the first ``num_records`` records
        (default: all), from one batched generation over all their prompts."""
        n = len(self.records) if num_records is None else num_records
        if n == 0:
            return {}
        return self.metrics(n, run_prompts(self.editable, decodes=self.requests(n), **self.stops())[1])

    def metrics(self, num_records: int, generated: Sequence[Sequence[int]]) -> dict[str, float]:
        """The metrics of the first ``num_records`` records from their requests' generated token ids."""
        n = num_records
        if n == 0:
            return {}
        chosen = self._chosen(n)
        if len(generated) != len(chosen):
            raise ValueError(f"{len(generated)} generations for {len(chosen)} requests of {n} records")
        texts = self.editable.tokenizer.batch_decode(list(generated), skip_special_tokens=True)
        edit, para, loc = ([q for q in qs if q.record < n] for qs in (self.edit, self.para, self.loc))
        parts = {"edit": texts[: len(edit)], "para": texts[len(edit) : len(edit) + len(para)]}
        parts["loc"] = texts[len(edit) + len(para) :]

        def score(requests, hits) -> float:
            index = torch.tensor([q.record for q in requests], dtype=torch.long)
            return _mean(_per_record(torch.tensor(hits, dtype=torch.float32), index, n))

        out: dict[str, float] = {"edits": float(n)}
        out["eff_em"] = score(
            edit, [begins_with(t, q.answer) for t, q in zip(parts["edit"], edit, strict=True)]
        )
        if para:
            out["gen_em"] = score(
                para, [begins_with(t, q.answer) for t, q in zip(parts["para"], para, strict=True)]
            )
        if loc:
            out["spe_em"] = score(
                loc, [begins_with(t, q.answer) for t, q in zip(parts["loc"], loc, strict=True)]
            )
            same = [_agrees(t, ref) for t, ref in zip(parts["loc"], self.loc_reference, strict=False)]
            out["spe_em_agree"] = score(loc, same)
        return out


def _agrees(generated: str, reference: str) -> bool:
    """Whether ``generated`` begins with the unedited model's answer ``reference`` (when that was only
    an end of sequence, whether ``generated`` is empty too)."""
    return begins_with(generated, reference) if normalise(reference) else not normalise(generated)
