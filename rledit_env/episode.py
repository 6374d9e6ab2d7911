"""Tokenised views of edit records: what the environment feeds the model for each batch of edits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rledit_env.records import EditRecord
from rledit_env.tokenization import EncodedBatch, encode_batch


@dataclass
class PromptSet:
    """An encoded batch whose rows each belong to one edit (``edit_index[row]``, the record's index)."""

    batch: EncodedBatch | None  # None when no record has such prompts
    edit_index: torch.Tensor  # (rows,) long

    def __len__(self) -> int:
        return 0 if self.batch is None else len(self.batch)


def prompt_set(tokenizer, pairs: Sequence[tuple[int, str, str]]) -> PromptSet:
    """Encode (record index, prompt, answer) triples."""
    if not pairs:
        return PromptSet(None, torch.zeros(0, dtype=torch.long))
    edits, prompts, answers = zip(*pairs, strict=True)
    return PromptSet(encode_batch(tokenizer, prompts, answers), torch.tensor(edits, dtype=torch.long))


@dataclass
class EncodedEdits:
    """One batch K_t of edits, encoded for tracing (``edit``), L_gen (``gen``) and L_loc (``loc``)."""

    records: list[EditRecord]
    edit: PromptSet  # edit prompt -> target_new
    gen: PromptSet  # edit prompt and paraphrases -> target_new
    loc: PromptSet  # locality prompts -> their answers

    @classmethod
    def build(
        cls,
        tokenizer,
        records: Sequence[EditRecord],
        paraphrases: int | None = None,
        neighbours: int | None = None,
        edit_prompts: bool = True,
    ) -> EncodedEdits:
        """Encode a batch; ``paraphrases``/``neighbours`` keep only the first so many paraphrase and
        locality prompts of each record in ``gen``/``loc`` (None: all); without ``edit_prompts``,
        ``gen`` holds the paraphrases only (a record with none keeps its edit prompt)."""
        edit = [(i, r.prompt, r.target_new) for i, r in enumerate(records)]
        gen = [
            pair
            for i, r in enumerate(records)
            for pair in (
                (
                    [(i, r.prompt, r.target_new)]
                    if edit_prompts or not r.paraphrase_prompts[:paraphrases]
                    else []
                )
                + [(i, p, r.target_new) for p in r.paraphrase_prompts[:paraphrases]]
            )
        ]
        loc = [
            (i, p, a)
            for i, r in enumerate(records)
            for p, a in list(zip(r.locality_prompts, r.locality_answers, strict=True))[:neighbours]
        ]
        return cls(
            list(records), prompt_set(tokenizer, edit), prompt_set(tokenizer, gen), prompt_set(tokenizer, loc)
        )
