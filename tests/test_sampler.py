"""Episode sampling: seeded, without replacement, pinned episodes, conflict-free batches."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from helpers import data_file

from rledit_env.datasets import load_counterfact, split_records
from rledit_env.records import EditRecord
from rledit_env.sampler import EpisodeSampler


def _records(n: int) -> list[EditRecord]:
    return [
        EditRecord(prompt=f"Entity {i} lives in", target_new=f"City {i}", subject=f"Entity {i}")
        for i in range(n)
    ]


def _flat(episode: list[list[EditRecord]]) -> list[EditRecord]:
    return [r for batch in episode for r in batch]


def test_shape_and_no_replacement():
    records = _records(50)
    episode = EpisodeSampler(records, num_batches=4, batch_size=6).sample(np.random.default_rng(0))
    assert [len(b) for b in episode] == [6] * 4
    flat = _flat(episode)
    assert len({r.subject for r in flat}) == 24 and all(r in records for r in flat)


def test_same_seed_same_episode_different_seed_different():
    sampler = EpisodeSampler(_records(100), num_batches=5, batch_size=4)
    first = sampler.sample(np.random.default_rng(7))
    assert sampler.sample(np.random.default_rng(7)) == first
    assert sampler.sample(np.random.default_rng(8)) != first
    # One generator advanced twice gives two different episodes (the environment's reset loop).
    rng = np.random.default_rng(7)
    assert sampler.sample(rng) == first and sampler.sample(rng) != first


def test_whole_split_is_one_permutation():
    records = _records(12)
    episode = EpisodeSampler(records, num_batches=3, batch_size=4).sample(np.random.default_rng(1))
    assert sorted(r.subject for r in _flat(episode)) == sorted(r.subject for r in records)


def test_too_small_split_names_the_sizes():
    with pytest.raises(
        ValueError, match=r"10 batches x 8 edits needs 80 distinct records, but the split has only 79"
    ):
        EpisodeSampler(_records(79), num_batches=10, batch_size=8)
    with pytest.raises(ValueError, match="must be >= 1"):
        EpisodeSampler(_records(5), num_batches=0, batch_size=1)


def test_from_indices_pins_an_episode():
    records = _records(20)
    sampler = EpisodeSampler(records, num_batches=2, batch_size=3)
    assert sampler.from_indices([5, 0, 19, 3, 4, np.int64(7)]) == [
        [records[5], records[0], records[19]],
        [records[3], records[4], records[7]],
    ]
    indices = sampler.sample_indices(np.random.default_rng(3))
    assert sampler.from_indices([i for b in indices for i in b]) == sampler.sample(np.random.default_rng(3))
    with pytest.raises(IndexError, match=r"indices \[20, -1\] out of range for a split of 20 records"):
        sampler.from_indices([0, 1, 2, 3, 20, -1])
    with pytest.raises(ValueError, match=r"indices \[2\] repeat"):
        sampler.from_indices([2, 1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match=r"needs 2 x 3 = 6 indices, got 5"):
        sampler.from_indices([0, 1, 2, 3, 4])


def _conflicting(n_pairs: int, n_single: int) -> list[EditRecord]:
    """Pairs of records that ask for two different answers to one prompt, plus unique ones."""
    pairs = [
        EditRecord(prompt=f"The twin city of Town {i} is", target_new=answer, subject=f"Town {i}")
        for i in range(n_pairs)
        for answer in ("Lyon", "Kyiv")
    ]
    return pairs + _records(n_single)


@pytest.mark.parametrize("seed", range(20))
def test_batches_avoid_conflicting_edits(seed):
    records = _conflicting(n_pairs=10, n_single=10)
    sampler = EpisodeSampler(records, num_batches=3, batch_size=8)
    episode = sampler.sample(np.random.default_rng(seed))
    for batch in episode:
        assert len({(r.subject, r.prompt) for r in batch}) == len(batch)
    flat = _flat(episode)
    assert len(flat) == 24 and len({id(r) for r in flat}) == 24


def test_conflicts_allowed_when_unavoidable_or_switched_off():
    # Every record shares one prompt: batches must hold conflicts, and still no record twice.
    records = [EditRecord(prompt="X is in", target_new=f"City {i}", subject="X") for i in range(6)]
    episode = EpisodeSampler(records, num_batches=2, batch_size=3).sample(np.random.default_rng(0))
    assert sorted(r.target_new for r in _flat(episode)) == sorted(r.target_new for r in records)
    plain = EpisodeSampler(_conflicting(10, 10), 3, 8, avoid_conflicts=False)
    assert any(
        len({(r.subject, r.prompt) for r in b}) < len(b)
        for s in range(50)
        for b in plain.sample(np.random.default_rng(s))
    )


def test_real_counterfact_episodes_from_disjoint_splits():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the CounterFact files load without skipping anything
        records = load_counterfact(data_file("counterfact-train"))
    train, evals = split_records(records, 0.2, seed=0)
    train_ep = EpisodeSampler(train, num_batches=20, batch_size=16).sample(np.random.default_rng(0))
    eval_ep = EpisodeSampler(evals, num_batches=20, batch_size=16).sample(np.random.default_rng(0))
    train_ids = {r.case_id for r in _flat(train_ep)}
    assert len(train_ids) == 320 and not train_ids & {r.case_id for r in _flat(eval_ep)}
    # CounterFact repeats some (subject, prompt) with other answers ("twin city of ..."); never in one batch.
    for batch in train_ep + eval_ep:
        assert len({(r.subject, r.prompt) for r in batch}) == 16
