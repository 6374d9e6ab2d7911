"""Each prompt run once (rledit_env.prompt_pass) gives what whole-sequence passes give: the teacher-forced
scores of ``EditableModel.target_logits``, the greedy generations of transformers' ``generate``, and the
same metrics whether the two suites run their prompts together or apart."""

from __future__ import annotations

import pytest
import torch
from helpers import gradient_action, tiny_env
from single_thread import one_torch_thread  # noqa: F401  (autouse)

from rledit_env.generation import EXTRA_TOKENS, GenerationEvaluator, _clause_end_ids, _eos_ids, request
from rledit_env.metrics import EpisodeEvaluator
from rledit_env.prompt_pass import AnswerRequest, DecodeRequest, run_prompts
from rledit_env.tokenization import encode_batch, encode_one


def _edited_env(name: str = "tinyworld-tiny", **kwargs):
    """An environment whose model has taken three batches of plain gradient edits (SmolLM2: CounterFact's)."""
    if not name.startswith("tinyworld"):
        kwargs.setdefault("dataset", "counterfact-edit-1k")
    env = tiny_env(name, num_batches=3, batch_size=4, action_type="shift", score_reward=False, **kwargs)
    obs, _ = env.reset(seed=3)
    for _ in range(3):
        obs, *_ = env.step(gradient_action(env, obs, 0.5 if name.startswith("tinyworld") else 0.1))
    return env


def _pairs(env):
    """(prompt, answer) pairs that share prompts: every record's prompts with the new and true answers."""
    records = [r for batch in env.episode for r in batch]
    prompts = [p for r in records for p in (r.prompt, *r.paraphrase_prompts, *r.locality_prompts)]
    answers = [a for r in records for a in (r.target_new, r.target_true or r.target_new)]
    return [(p, a) for p in prompts[:40] for a in answers[:2]] + [(r.prompt, r.target_new) for r in records]


def _greedy_one(editable, q: DecodeRequest) -> list[int]:
    """transformers' greedy ``generate`` on one prompt, ``q.budget`` new tokens, no stop token."""
    out = editable.model.generate(
        input_ids=torch.tensor([q.prompt]),
        max_new_tokens=q.budget,
        do_sample=False,
        pad_token_id=editable.tokenizer.pad_token_id,
        eos_token_id=None,
    )
    return out[0, len(q.prompt) :].tolist()


MODELS = ["tinyworld-tiny", pytest.param("smollm2", marks=pytest.mark.slow)]


@pytest.mark.parametrize("name", MODELS)
def test_teacher_forced_scores_match_whole_sequence_passes(name):
    env = _edited_env(name)
    try:
        editable = env.editable
        editable.tokens_per_pass = 64  # several passes, each with its own cache
        pairs = _pairs(env)
        requests = [AnswerRequest.from_encoded(*encode_one(editable.tokenizer, p, a)) for p, a in pairs]
        assert len({r.prompt for r in requests}) < len(requests)  # prompts are shared
        scored, _ = run_prompts(editable, requests)
        whole = editable.target_logits(
            encode_batch(editable.tokenizer, *zip(*pairs, strict=True)), packed=True
        )
        token_nll = torch.nn.functional.cross_entropy(whole.logits, whole.labels, reduction="none")
        assert torch.equal(scored.labels, whole.labels) and torch.equal(scored.rows, whole.rows)
        assert torch.allclose(scored.nll, token_nll, atol=1e-4, rtol=1e-4)
        assert torch.equal(scored.argmax, whole.logits.argmax(-1))
    finally:
        env.close()


@pytest.mark.parametrize("name", MODELS)
def test_generations_match_transformers_generate_one_prompt_at_a_time(name):
    env = _edited_env(name)
    try:
        editable = env.editable
        editable.tokens_per_pass = 64
        tok = editable.tokenizer
        records = [r for batch in env.episode for r in batch]
        asks = [
            request(tok, i, p, r.target_new)
            for i, r in enumerate(records)
            for p in (r.prompt, *r.paraphrase_prompts)
        ]
        decodes = [DecodeRequest(q.prompt_ids, q.budget(), q.answer_tokens) for q in asks]
        eos, clause = _eos_ids(editable), _clause_end_ids(tok)
        _, generated = run_prompts(editable, decodes=decodes, eos_ids=eos, stop_ids=clause)
        for q, tokens in zip(decodes, generated, strict=True):
            out = _greedy_one(editable, q)
            expected = []
            for made, token in enumerate(out, start=1):  # the stop rules, applied afterwards
                expected.append(token)
                if token in eos.tolist() or (token in clause.tolist() and made >= q.min_tokens):
                    break
            assert tokens == expected
    finally:
        env.close()


@pytest.mark.parametrize("name", MODELS)
def test_both_suites_together_give_the_metrics_each_gives_alone(name):
    env = _edited_env(name)
    try:
        records = [r for batch in env.episode for r in batch]
        teacher = EpisodeEvaluator(env.editable, records)
        generation = GenerationEvaluator(env.editable, records, EXTRA_TOKENS)
        n = len(records) - 2  # not every record: the requests of the first n
        scored, generated = run_prompts(
            env.editable, teacher.requests(n), generation.requests(n), **generation.stops()
        )
        together = {**teacher.metrics(n, scored), **generation.metrics(n, generated)}
        apart = {**teacher.evaluate(n), **generation.evaluate(n)}
        assert together.keys() == apart.keys() and {"spe_em_agree", "spe_agree", "eff_prob"} <= set(together)
        for key, value in apart.items():
            assert together[key] == pytest.approx(value, abs=1e-6), key
        with pytest.raises(ValueError, match="scores for"):
            teacher.metrics(n - 1, scored)
    finally:
        env.close()


def test_answers_and_budgets_of_many_lengths_match_whole_sequence_passes():
    """Answers of 1 to 8 words and budgets of 1 to 9 tokens in one pass: requests of each length are fed
    together and finished generations leave the batch, with the same results as one at a time."""
    env = _edited_env()
    try:
        editable = env.editable
        tok = editable.tokenizer
        records = [r for batch in env.episode for r in batch]
        words = [r.target_new for r in records]
        pairs = [(r.prompt, " ".join(words[: 1 + i % 8])) for i, r in enumerate(records)]
        requests = [AnswerRequest.from_encoded(*encode_one(tok, p, a)) for p, a in pairs]
        assert len({len(r.tokens) for r in requests}) >= 6
        scored, _ = run_prompts(editable, requests)
        whole = editable.target_logits(encode_batch(tok, *zip(*pairs, strict=True)), packed=True)
        token_nll = torch.nn.functional.cross_entropy(whole.logits, whole.labels, reduction="none")
        assert torch.equal(scored.rows, whole.rows)
        assert torch.allclose(scored.nll, token_nll, atol=1e-4, rtol=1e-4)
        assert torch.equal(scored.argmax, whole.logits.argmax(-1))

        decodes = [DecodeRequest(q.prompt, 1 + i % 9) for i, q in enumerate(requests)]
        _, generated = run_prompts(editable, decodes=decodes)
        assert [len(t) for t in generated] == [q.budget for q in decodes]  # no stop tokens given
        for q, tokens in zip(decodes, generated, strict=True):
            out = _greedy_one(editable, q)
            assert tokens == out
    finally:
        env.close()


def test_requests_without_a_prompt_are_refused():
    env = tiny_env()
    try:
        with pytest.raises(ValueError, match="prompt token"):
            run_prompts(env.editable, decodes=[DecodeRequest((), 3)])
    finally:
        env.close()
