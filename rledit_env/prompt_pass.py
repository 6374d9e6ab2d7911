"""Each prompt run once for both evaluation suites: teacher-forced answers and greedy generations.

Both suites condition on the same prompt tokens (``encode_one``'s ids before the first answer token), and
many requests share a prompt (CounterFact scores the new and the true answer on every prompt; the
generation suite completes the very prompts the teacher-forced one scores). ``run_prompts`` runs every
distinct prompt once, keeps its key-value cache, and continues from it: the answer's tokens for a
teacher-forced request (``AnswerRequest``), greedy decoding for a generation request
(``DecodeRequest``). Attention is causal, so this gives what a pass over each whole sequence gives, to
float tolerance.

Prompts are sorted by length and run in passes of at most ``EditableModel.tokens_per_pass`` tokens
(right padding); each pass's continuations and decoding run before the next pass, so only one pass's
cache is held at a time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rledit_env.editable import EditableModel
from rledit_env.tokenization import IGNORE_INDEX, _pad_id


@dataclass(frozen=True)
class AnswerRequest:
    """Teacher forcing: ``tokens`` fed in after ``prompt``, each scored against its label (``labels[j]``
    the token at ``tokens[j]``, or IGNORE_INDEX for a token fed in but not scored)."""

    prompt: tuple[int, ...]
    tokens: tuple[int, ...]
    labels: tuple[int, ...]

    @classmethod
    def from_encoded(cls, ids: Sequence[int], labels: Sequence[int]) -> AnswerRequest:
        """From ``encode_one``'s ids and labels: the prompt is what comes before the first label."""
        first = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
        return cls(tuple(ids[:first]), tuple(ids[first:]), tuple(labels[first:]))


@dataclass(frozen=True)
class DecodeRequest:
    """Greedy generation after ``prompt``: at most ``budget`` tokens, ending at EOS or, once
    ``min_tokens`` are out, at a token in the stop set (``run_prompts``'s ``stop_ids``), which is kept."""

    prompt: tuple[int, ...]
    budget: int
    min_tokens: int = 0


@dataclass
class TokenScores:
    """The scored tokens of answer requests, request after request (each request's in order): their
    labels, negative log-likelihoods, the model's argmax there, and the request each belongs to."""

    labels: torch.Tensor  # (N,)
    nll: torch.Tensor  # (N,)
    argmax: torch.Tensor  # (N,)
    rows: torch.Tensor  # (N,) ascending
    num_rows: int

    def per_row_mean(self, values: torch.Tensor) -> torch.Tensor:
        """Average a per-token quantity within each request -> (num_rows,)."""
        total = torch.zeros(self.num_rows, dtype=values.dtype).index_add(0, self.rows, values)
        return total / torch.bincount(self.rows, minlength=self.num_rows).clamp(min=1).to(values.dtype)

    def row_nll(self) -> torch.Tensor:
        return self.per_row_mean(self.nll)

    def row_accuracy(self) -> torch.Tensor:
        return self.per_row_mean((self.argmax == self.labels).float())

    def requests(self, start: int, stop: int) -> TokenScores:
        """The scores of requests ``start`` to ``stop`` (exclusive), numbered from 0."""
        first, last = (int(torch.searchsorted(self.rows, k)) for k in (start, stop))
        pick = slice(first, last)
        return TokenScores(
            self.labels[pick], self.nll[pick], self.argmax[pick], self.rows[pick] - start, stop - start
        )


@torch.no_grad()
def run_prompts(
    editable: EditableModel,
    answers: Sequence[AnswerRequest] = (),
    decodes: Sequence[DecodeRequest] = (),
    *,
    eos_ids: torch.Tensor | None = None,
    stop_ids: torch.Tensor | None = None,
) -> tuple[TokenScores, list[list[int]]]:
    """Score ``answers`` and complete ``decodes`` with the model as it is, each distinct prompt run once.

    Returns the answer requests' scored tokens and the generated token ids of each decode request, in
    their orders. ``eos_ids`` end a generation; ``stop_ids`` end it once its
    ``min_tokens`` are out (both default to none).
    """
    if any(not r.prompt for r in [*answers, *decodes]):
        raise ValueError("every request needs at least one prompt token")
    answers_of: dict[tuple[int, ...], list[int]] = defaultdict(list)
    decodes_of: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, r in enumerate(answers):
        answers_of[r.prompt].append(i)
    for i, r in enumerate(decodes):
        decodes_of[r.prompt].append(i)
    prompts = sorted({*answers_of, *decodes_of}, key=len)
    scored: list[tuple[torch.Tensor, ...]] = []  # each pass's (request, position, label, nll, argmax)
    generated: list[list[int]] = [[] for _ in decodes]
    nothing = torch.zeros(0, dtype=torch.long)
    eos_ids = nothing if eos_ids is None else eos_ids
    stop_ids = nothing if stop_ids is None else stop_ids
    start = 0
    while start < len(prompts):
        end = start + 1  # sorted by length: the pass's last prompt is its longest
        while end < len(prompts) and (end + 1 - start) * len(prompts[end]) <= editable.tokens_per_pass:
            end += 1
        chunk = prompts[start:end]
        start = end
        passed = _PromptPass(editable, chunk)
        answer_rows = [(i, row) for row, p in enumerate(chunk) for i in answers_of.get(p, ())]
        if answer_rows:
            found = passed.score([answers[i] for i, _ in answer_rows], [row for _, row in answer_rows])
            index = torch.tensor([i for i, _ in answer_rows])
            scored.append((index[found[0]], *found[1:]))
        decode_rows = [(i, row) for row, p in enumerate(chunk) for i in decodes_of.get(p, ())]
        decoded = passed.decode(
            [decodes[i] for i, _ in decode_rows], [row for _, row in decode_rows], eos_ids, stop_ids
        )
        for (i, _), tokens in zip(decode_rows, decoded, strict=True):
            generated[i] = tokens
    return _in_request_order(scored, len(answers)), generated


def _in_request_order(scored: list[tuple[torch.Tensor, ...]], num_rows: int) -> TokenScores:
    if not scored:
        empty = torch.zeros(0, dtype=torch.long)
        return TokenScores(empty, empty.float(), empty, empty, num_rows)
    request, position, labels, nll, argmax = (torch.cat(parts) for parts in zip(*scored, strict=True))
    order = torch.argsort(request * (int(position.max()) + 1) + position)
    return TokenScores(labels[order], nll[order], argmax[order], request[order], num_rows)


class _PromptPass:
    """One forward pass over prompts (right padding), keeping each layer's keys and values and the
    log-probabilities of the token after each prompt."""

    def __init__(self, editable: EditableModel, prompts: Sequence[tuple[int, ...]]):
        self.editable = editable
        device = editable.input_device()
        self.device = device
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), _pad_id(editable.tokenizer), dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for r, p in enumerate(prompts):
            ids[r, : len(p)] = torch.tensor(p)
            mask[r, : len(p)] = 1
        self.mask = mask.to(device)
        self.lengths = self.mask.sum(1)
        out = editable.model.base_model(input_ids=ids.to(device), attention_mask=self.mask, use_cache=True)
        cache = out.cache if hasattr(out, "cache") else out.past_key_values
        self.cache = [(layer.keys, layer.values) for layer in cache.layers]
        last = out.last_hidden_state[torch.arange(len(prompts), device=device), self.lengths - 1]
        self.next_logprobs = torch.log_softmax(editable._logits(last), -1)  # (prompts, V)

    def _continue(self, rows: torch.Tensor, tokens: torch.Tensor, cache=None):
        """Hidden states of ``tokens`` (R, w) fed after the prompts ``rows`` (R,), and the cache after
        them; ``cache`` continues an earlier call's (decoding)."""
        editable = self.editable
        if cache is None:
            cache = self.editable.kv_cache([(k[rows], v[rows]) for k, v in self.cache])
            mask = self.mask[rows]
        else:
            cache, mask = cache
        steps = tokens.shape[1]
        mask = torch.cat([mask, mask.new_ones(len(rows), steps)], 1)
        done = mask.shape[1] - self.mask.shape[1] - steps  # tokens already fed after the prompts
        positions = self.lengths[rows, None] + done + torch.arange(steps, device=self.device)
        out = editable.model.base_model(
            input_ids=tokens,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{editable._cache_argument(): cache},
        )
        return out.last_hidden_state, (out.cache if hasattr(out, "cache") else out.past_key_values, mask)

    def score(
        self, requests: Sequence[AnswerRequest], rows: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each request's tokens fed after its prompt (row ``rows[i]`` of this pass) and scored:
        (request, position in its tokens, label, NLL, argmax) of every scored token, as flat tensors."""
        device = self.device
        # a token at position 0 is predicted from its prompt's pass, the others from one pass over the
        # tokens before them, requests with as many such tokens together (no padding: ZsRE's answers run
        # from 1 to over 40 tokens, and a pass padded to the longest would feed mostly padding)
        by_width: dict[int, list[int]] = defaultdict(list)
        for i, r in enumerate(requests):
            if len(r.tokens) > 1:
                by_width[len(r.tokens) - 1].append(i)
        flat, start_of, offset = [], {}, 0  # every fed token's hidden state; request -> its first's
        for width, group in by_width.items():
            fed = torch.tensor([requests[i].tokens[:-1] for i in group], device=device)
            hidden, _ = self._continue(torch.tensor([rows[i] for i in group], device=device), fed)
            flat.append(hidden.reshape(len(group) * width, -1))
            for j, i in enumerate(group):
                start_of[i] = offset + j * width
            offset += len(group) * width
        firsts, laters = [], []  # (request, label) and (request, position, label) of the scored tokens
        for i, r in enumerate(requests):
            for position, label in enumerate(r.labels):
                if label == IGNORE_INDEX:
                    continue
                if position == 0:
                    firsts.append((i, label))
                else:
                    laters.append((i, position, label))
        parts = []
        if firsts:
            index, labels = torch.tensor(firsts).T
            logprobs = self.next_logprobs[torch.tensor(rows)[index].to(device)]
            parts.append((index, torch.zeros_like(index), labels, logprobs))
        if laters:
            index, position, labels = torch.tensor(laters).T
            at = torch.tensor([start_of[int(i)] for i in index]) + position - 1
            hidden = torch.cat(flat)[at.to(device)]
            parts.append((index, position, labels, torch.log_softmax(self.editable._logits(hidden), -1)))
        request, position, labels = (torch.cat([p[k] for p in parts]) for k in range(3))
        logprobs = torch.cat([p[3] for p in parts])
        nll = -logprobs.gather(1, labels.to(logprobs.device)[:, None]).squeeze(1)
        return request, position, labels, nll.float().cpu(), logprobs.argmax(-1).cpu()

    def decode(
        self,
        requests: Sequence[DecodeRequest],
        rows: Sequence[int],
        eos_ids: torch.Tensor,
        stop_ids: torch.Tensor,
    ) -> list[list[int]]:
        """Greedy continuations of the prompts ``rows`` (one request each), batched with the cache."""
        if not requests:
            return []
        device = self.device
        rows_t = torch.tensor(rows, device=device)
        budget = torch.tensor([r.budget for r in requests], device=device)
        least = torch.tensor([r.min_tokens for r in requests], device=device)
        eos, stop = eos_ids.to(device), stop_ids.to(device)
        tokens = torch.zeros((len(requests), max(int(budget.max()), 0)), dtype=torch.long, device=device)
        count = torch.zeros(len(requests), dtype=torch.long, device=device)
        alive = torch.nonzero(budget > 0).flatten()  # the requests still generating
        nxt = self.next_logprobs[rows_t[alive]].argmax(-1)
        state = None
        for step in range(tokens.shape[1]):
            tokens[alive, step] = nxt
            count[alive] += 1
            made = step + 1
            ended = torch.isin(nxt, eos) | (made >= budget[alive])
            ended |= torch.isin(nxt, stop) & (made >= least[alive])
            if bool(ended.all()):
                break
            if bool(ended.any()):  # finished rows leave the batch (and the cache)
                keep = ~ended
                alive, nxt = alive[keep], nxt[keep]
                state = None if state is None else self._keep_rows(state, keep)
            hidden, state = self._continue(rows_t[alive], nxt[:, None], state)
            nxt = self.editable._logits(hidden[:, -1]).argmax(-1)
        tokens, count = tokens.cpu(), count.cpu()
        return [tokens[r, : int(count[r])].tolist() for r in range(len(requests))]

    def _keep_rows(self, state, keep: torch.Tensor):
        """A decoding state (cache, mask) with only the rows where ``keep`` is true."""
        cache, mask = state
        kept = [(layer.keys[keep], layer.values[keep]) for layer in cache.layers]
        return self.editable.kv_cache(kept), mask[keep]
