"""Prompt + answer tokenisation with answer-only label masks, for any fast Hugging Face tokenizer.

The answer is joined to the prompt with one space and the whole string is tokenised once, so BPE
merges and SentencePiece's word-boundary marker come out exactly as the model saw them in
pre-training. Answer tokens are found from character offsets, not by tokenising the two parts
separately (which breaks SentencePiece's leading "▁" and GPT-2's "Ġ" in different ways).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass
class EncodedBatch:
    """A right-padded batch of prompt + answer sequences.

    ``labels`` holds the token ids of answer tokens and IGNORE_INDEX elsewhere (unshifted, as
    Hugging Face causal LMs expect). ``target_positions`` marks the positions whose *output* predicts
    an answer token (position i predicts token i + 1): that is where keys and value gradients are read.
    """

    input_ids: torch.Tensor  # (B, L) long
    attention_mask: torch.Tensor  # (B, L) long
    labels: torch.Tensor  # (B, L) long

    @property
    def target_positions(self) -> torch.Tensor:
        """(B, L) bool: the positions whose next-token prediction is an answer token."""
        mask = torch.zeros_like(self.labels, dtype=torch.bool)
        mask[:, :-1] = self.labels[:, 1:] != IGNORE_INDEX
        return mask

    def to(self, device: torch.device | str) -> EncodedBatch:
        return EncodedBatch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device))

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def _pad_id(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def encode_one(tokenizer, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """Token ids of ``prompt + " " + answer`` and their labels (answer tokens only)."""
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("rledit_env needs a fast (Rust-backed) tokenizer for character offsets")
    prompt = prompt.rstrip()
    answer = answer.strip()
    text = f"{prompt} {answer}"
    enc = tokenizer(
        text, return_offsets_mapping=True, add_special_tokens=True, return_special_tokens_mask=True
    )
    ids = list(enc["input_ids"])
    labels = []
    answer_start = len(prompt)  # the joining space belongs to the answer's first token
    for token_id, (start, end), special in zip(
        ids, enc["offset_mapping"], enc["special_tokens_mask"], strict=True
    ):
        # A lone space token can have an empty span (trim_offsets): it counts by where it starts.
        is_answer = not special and (end > answer_start or start >= answer_start)
        labels.append(token_id if is_answer else IGNORE_INDEX)
    if labels[0] != IGNORE_INDEX:
        raise ValueError(f"prompt {prompt!r} tokenised to nothing: an answer needs a prompt before it")
    if all(label == IGNORE_INDEX for label in labels):
        raise ValueError(f"answer {answer!r} produced no tokens after prompt {prompt!r}")
    # Some tokenizers append EOS; it is not part of the answer.
    while ids and labels[-1] == IGNORE_INDEX and ids[-1] == tokenizer.eos_token_id and len(ids) > 1:
        ids.pop()
        labels.pop()
    return ids, labels


# Episodes draw the same records again and again (RLEdit trains on many sequences of one split), so each
# (prompt, answer) is tokenised once per tokenizer; the cache holds token ids only.
encode_cached = functools.lru_cache(maxsize=1 << 17)(encode_one)


def encode_batch(
    tokenizer, prompts: Sequence[str], answers: Sequence[str], device: torch.device | str = "cpu"
) -> EncodedBatch:
    """Encode and right-pad pairs of (prompt, answer)."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    if not prompts:
        raise ValueError("encode_batch needs at least one prompt")
    rows = [encode_cached(tokenizer, p, a) for p, a in zip(prompts, answers, strict=True)]
    length = max(len(ids) for ids, _ in rows)
    pad = _pad_id(tokenizer)
    input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), length), dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    for i, (ids, labs) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
        labels[i, : len(labs)] = torch.tensor(labs)
    return EncodedBatch(input_ids, attention, labels).to(device)


def subject_last_token_index(tokenizer, prompt: str, subject: str) -> int:
    """Index in ``encode_one``'s ids of the last token of the last ``subject`` in ``prompt``."""
    start = prompt.rfind(subject) if subject else -1
    if start < 0:
        raise ValueError(f"subject {subject!r} does not occur in prompt {prompt!r}")
    end = start + len(subject)
    enc = tokenizer(prompt.rstrip(), return_offsets_mapping=True, add_special_tokens=True)
    last = None
    for i, (s, e) in enumerate(enc["offset_mapping"]):
        if e > s and s < end:
            last = i
    if last is None:
        raise ValueError(f"subject {subject!r} covers no token of prompt {prompt!r}")
    return last
