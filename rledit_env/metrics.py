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

import torch

from rledit_env.editable import EditableModel
from rledit_env.episode import PromptSet, prompt_set
from rledit_env.records import EditRecord
from rledit_env.tokenization import EncodedBatch

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


def _rows(prompts: PromptSet, num_records: int) -> PromptSet:
    """The rows of ``prompts`` that belong to the first ``num_records`` records (edit_index is sorted)."""
    keep = int((prompts.edit_index < num_records).sum())
    if keep == 0 or prompts.batch is None:
        return PromptSet(None, prompts.edit_index[:0])
    b = prompts.batch
    return PromptSet(
        EncodedBatch(b.input_ids[:keep], b.attention_mask[:keep], b.labels[:keep]), prompts.edit_index[:keep]
    )


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
    before the first edit.
    """

    def __init__(self, editable: EditableModel, records: Sequence[EditRecord]):
        self.editable = editable
        self.records = list(records)
        tok = editable.tokenizer
        recs = list(enumerate(self.records))
        self.edit_new = prompt_set(tok, [(i, r.prompt, r.target_new) for i, r in recs])
        self.para_new = prompt_set(tok, [(i, p, r.target_new) for i, r in recs for p in r.paraphrase_prompts])
        self.loc = prompt_set(
            tok,
            [(i, p, a) for i, r in recs for p, a in zip(r.locality_prompts, r.locality_answers, strict=True)],
        )
        self.has_true = bool(self.records) and all(r.target_true for r in self.records)
        if self.has_true:
            self.edit_true = prompt_set(tok, [(i, r.prompt, r.target_true) for i, r in recs])
            self.para_true = prompt_set(
                tok, [(i, p, r.target_true) for i, r in recs for p in r.paraphrase_prompts]
            )
            # The new answer on the neighbours' prompts: a leaking edit makes it likelier.
            self.loc_new = prompt_set(
                tok, [(i, p, r.target_new) for i, r in recs for p in r.locality_prompts]
            )
        self.loc_reference = self._argmax(self.loc) if len(self.loc) else None

    @torch.no_grad()
    def _argmax(self, prompts: PromptSet) -> torch.Tensor:
        return self.editable.target_logits(prompts.batch, packed=True).logits.argmax(-1)

    @torch.no_grad()
    def _score(self, prompts: PromptSet, num_records: int) -> tuple[torch.Tensor, torch.Tensor, object]:
        """Per-row NLL and accuracy of the first ``num_records`` records' rows."""
        part = _rows(prompts, num_records)
        target = self.editable.target_logits(part.batch, packed=True)
        return target.nll(), target.accuracy(), target

    @torch.no_grad()
    def evaluate(self, num_records: int | None = None) -> dict[str, float]:
        """Metrics over the first ``num_records`` records (default: all)."""
        n = len(self.records) if num_records is None else num_records
        if n == 0:
            return {}
        out: dict[str, float] = {"edits": float(n)}
        nll_new, acc_new, _ = self._score(self.edit_new, n)
        out["eff_acc"] = _mean(_per_record(acc_new, self.edit_new.edit_index[:n], n))
        para = _rows(self.para_new, n)
        if len(para):
            para_nll_new, para_acc, _ = self._score(self.para_new, n)
            out["gen_acc"] = _mean(_per_record(para_acc, para.edit_index, n))
        loc = _rows(self.loc, n)
        if len(loc):
            loc_nll_true, loc_acc, target = self._score(self.loc, n)
            out["spe_acc"] = _mean(_per_record(loc_acc, loc.edit_index, n))
            same = (target.logits.argmax(-1) == self.loc_reference[: target.labels.numel()]).float()
            out["spe_agree"] = _mean(_per_record(target.per_row_mean(same), loc.edit_index, n))
        if self.has_true:
            nll_true, _, _ = self._score(self.edit_true, n)
            edits = self.edit_new.edit_index[:n]
            out["eff_prob"] = _mean(_per_record((nll_new < nll_true).float(), edits, n))
            if len(para):
                para_nll_true, _, _ = self._score(self.para_true, n)
                para_new_wins = (para_nll_new < para_nll_true).float()
                out["gen_prob"] = _mean(_per_record(para_new_wins, para.edit_index, n))
            if len(loc):
                loc_nll_new, _, _ = self._score(self.loc_new, n)
                out["spe_prob"] = _mean(_per_record((loc_nll_true < loc_nll_new).float(), loc.edit_index, n))
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
