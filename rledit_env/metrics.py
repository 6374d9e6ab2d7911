"""Lifelong editing metrics: efficacy, generalisation and specificity over every edit made so far.

Two suites (docs/design.md, "Metrics"), both always computed when the records allow:

- token accuracy (ZsRE, FEVER; also reported for CounterFact): ``eff_acc`` and ``gen_acc`` are the
  teacher-forced share of new-answer tokens that are the model's argmax; ``spe_acc`` the share of
  ground-truth locality-answer tokens (ZsRE's ``loc_ans``) that are the argmax, as the RLEdit and
  AlphaEdit papers score it (so an unedited model's Spe is its accuracy on those prompts, not 1);
  ``spe_agree`` the share of locality tokens whose argmax is the same as the *unedited* model's.
- probability comparison (CounterFact, needs ``target_true``): ``eff_prob``/``gen_prob`` are the share
  of prompts where the new answer is likelier than the true one (mean token NLL, as ROME scores);
  ``spe_prob`` the share of neighbourhood prompts where the neighbour's answer is likelier than the
  new one.

``eff``/``gen``/``spe`` are the headline numbers: the probability suite for CounterFact records, the
token-accuracy suite otherwise. Each is first averaged over a record's prompts, then over records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rledit_env.editable import EditableModel
from rledit_env.prompt_pass import AnswerRequest, TokenScores, run_prompts
from rledit_env.records import EditRecord
from rledit_env.tokenization import EncodedBatch, encode_cached

# What each headline suite's ``spe`` compares a locality prompt's answer with (for results files).
SPE_REFERENCE = {
    "prob": "the neighbour's true answer likelier than the new one",
    "acc": "token accuracy on the ground-truth locality answers",
}


def headline_suite(records: Sequence[EditRecord]) -> str:
    """ "prob" for CounterFact-style records with true answers, else "acc" (token accuracy)."""
    records = list(records)
    has_true = bool(records) and all(r.target_true for r in records)
    return "prob" if has_true and records[0].family == "counterfact" else "acc"


@dataclass
class AnswerSet:
    """Teacher-forced requests of one kind (edit prompt -> new answer, say), in record order."""

    requests: list[AnswerRequest]
    records: torch.Tensor  # (rows,) the record each request belongs to, ascending

    @classmethod
    def build(cls, tokenizer, triples: Sequence[tuple[int, str, str]]) -> AnswerSet:
        """From (record index, prompt, answer) triples."""
        requests = [AnswerRequest.from_encoded(*encode_cached(tokenizer, p, a)) for _, p, a in triples]
        return cls(requests, torch.tensor([i for i, _, _ in triples], dtype=torch.long))

    def __len__(self) -> int:
        return len(self.requests)

    def count(self, num_records: int) -> int:
        """How many of the requests belong to the first ``num_records`` records."""
        return int((self.records < num_records).sum())


def _per_record(values: torch.Tensor, edit_index: torch.Tensor, num_records: int) -> torch.Tensor:
    """Mean of per-row values within each record; NaN for records without rows."""
    edit_index = edit_index.to(values.device)
    total = torch.zeros(num_records, device=values.device).index_add(0, edit_index, values.float())
    count = torch.bincount(edit_index, minlength=num_records).float()
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, float("nan")))


def _mean(values: torch.Tensor) -> float:
    values = values[~values.isnan()]
    return float(values.mean()) if values.numel() else float("nan")


class EpisodeEvaluator:
    """Scores the edits of one episode; records are in the order they are edited.

    The unedited model's locality predictions are recorded at construction, so build the evaluator
    before the first edit. ``evaluate`` runs the prompts itself; ``requests`` and ``metrics`` split it
    for a caller that runs them together with the generation suite's (``rledit_env.prompt_pass``).
    """

    def __init__(self, editable: EditableModel, records: Sequence[EditRecord]):
        self.editable = editable
        self.records = list(records)
        tok = editable.tokenizer
        recs = list(enumerate(self.records))
        paraphrases = [(i, p) for i, r in recs for p in r.paraphrase_prompts]
        neighbours = [
            (i, p, a) for i, r in recs for p, a in zip(r.locality_prompts, r.locality_answers, strict=True)
        ]
        self.sets: dict[str, AnswerSet] = {
            "edit_new": AnswerSet.build(tok, [(i, r.prompt, r.target_new) for i, r in recs]),
            "para_new": AnswerSet.build(tok, [(i, p, self.records[i].target_new) for i, p in paraphrases]),
            "loc": AnswerSet.build(tok, neighbours),
        }
        self.has_true = bool(self.records) and all(r.target_true for r in self.records)
        if self.has_true:
            self.sets["edit_true"] = AnswerSet.build(tok, [(i, r.prompt, r.target_true) for i, r in recs])
            self.sets["para_true"] = AnswerSet.build(
                tok, [(i, p, self.records[i].target_true) for i, p in paraphrases]
            )
            # The new answer on the neighbours' prompts: a leaking edit makes it likelier.
            self.sets["loc_new"] = AnswerSet.build(
                tok, [(i, p, self.records[i].target_new) for i, p, _ in neighbours]
            )
        loc = self.sets["loc"].requests
        self.loc_reference = run_prompts(editable, loc)[0].argmax  # the unedited model's, token by token

    def requests(self, num_records: int) -> list[AnswerRequest]:
        """Every request of the first ``num_records`` records, set after set (``metrics`` reads them
        back in this order)."""
        return [q for s in self.sets.values() for q in s.requests[: s.count(num_records)]]

    @torch.no_grad()
    def evaluate(self, num_records: int | None = None) -> dict[str, float]:
        """Metrics over the first ``num_records`` records (default: all)."""
        n = len(self.records) if num_records is None else num_records
        if n == 0:
            return {}
        return self.metrics(n, run_prompts(self.editable, self.requests(n))[0])

    def metrics(self, num_records: int, scored: TokenScores) -> dict[str, float]:
        """The metrics of the first ``num_records`` records from their requests' scores."""
        n = num_records
        if n == 0:
            return {}
        rows: dict[str, tuple[TokenScores, torch.Tensor]] = {}
        start = 0
        for name, s in self.sets.items():
            k = s.count(n)
            rows[name] = (scored.requests(start, start + k), s.records[:k])
            start += k
        if start != scored.num_rows:
            raise ValueError(f"scores for {scored.num_rows} requests, {start} requests of {n} records")

        def per_record(name: str, values: torch.Tensor) -> float:
            return _mean(_per_record(values, rows[name][1], n))

        def nll(name: str) -> torch.Tensor:
            return rows[name][0].row_nll()

        out: dict[str, float] = {"edits": float(n)}
        out["eff_acc"] = per_record("edit_new", rows["edit_new"][0].row_accuracy())
        has_para, has_loc = len(rows["para_new"][1]) > 0, len(rows["loc"][1]) > 0
        if has_para:
            out["gen_acc"] = per_record("para_new", rows["para_new"][0].row_accuracy())
        if has_loc:
            loc = rows["loc"][0]
            out["spe_acc"] = per_record("loc", loc.row_accuracy())
            same = (loc.argmax == self.loc_reference[: loc.argmax.numel()]).float()
            out["spe_agree"] = per_record("loc", loc.per_row_mean(same))
        if self.has_true:
            out["eff_prob"] = per_record("edit_new", (nll("edit_new") < nll("edit_true")).float())
            if has_para:
                out["gen_prob"] = per_record("para_new", (nll("para_new") < nll("para_true")).float())
            if has_loc:
                out["spe_prob"] = per_record("loc", (nll("loc") < nll("loc_new")).float())
        suite = headline_suite(self.records)
        for name in ("eff", "gen", "spe"):
            if f"{name}_{suite}" in out:
                out[name] = out[f"{name}_{suite}"]
        return out


@torch.no_grad()
def perplexity(editable: EditableModel, texts: Sequence[str]) -> float:
    """Perplexity of the model on plain texts (every token after the first is predicted)."""
    tok = editable.tokenizer
    rows = [tok(t, add_special_tokens=True)["input_ids"] for t in texts]
    rows = [r for r in rows if len(r) > 1]
    if not rows:
        raise ValueError("perplexity needs at least one text of two or more tokens")
    length = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    attention = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        attention[i, : len(r)] = 1
        labels[i, 1 : len(r)] = torch.tensor(r[1:])
    target = editable.target_logits(EncodedBatch(ids, attention, labels), packed=True)
    nll = torch.nn.functional.cross_entropy(target.logits, target.labels)
    return float(torch.exp(nll))
