"""Episodes of lifelong editing: T batches of n edit records drawn without replacement."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Sequence

import numpy as np

from rledit_env.records import EditRecord


class EpisodeSampler:
    """Draws the edits of one episode: ``num_batches`` batches of ``batch_size`` distinct records.

    With ``avoid_conflicts`` (the default) two records with the same (subject, prompt) are kept out of
    one batch when the split allows it: a batch that asks for two different answers to one prompt is
    an impossible edit, not a hard one. A later batch of the same episode may still hold the other.
    """

    def __init__(
        self,
        records: Sequence[EditRecord],
        num_batches: int,
        batch_size: int,
        *,
        avoid_conflicts: bool = True,
    ):
        if num_batches < 1 or batch_size < 1:
            raise ValueError(f"num_batches and batch_size must be >= 1, got {num_batches} and {batch_size}")
        needed = num_batches * batch_size
        if needed > len(records):
            raise ValueError(
                f"an episode of {num_batches} batches x {batch_size} edits needs {needed} distinct records, "
                f"but the split has only {len(records)}"
            )
        self.records = list(records)
        self.num_batches = num_batches
        self.batch_size = batch_size
        self.avoid_conflicts = avoid_conflicts
        self._keys = [(r.subject, r.prompt) for r in self.records]

    @property
    def episode_size(self) -> int:
        return self.num_batches * self.batch_size

    def sample_indices(self, rng: np.random.Generator) -> list[list[int]]:
        """The record indices of a fresh episode; the same generator state gives the same episode."""
        order = rng.permutation(len(self.records)).tolist()
        if not self.avoid_conflicts:
            return self._cut(order[: self.episode_size])
        # Walk the permutation, deferring a record whose key is already in the batch being filled to
        # the next batch. Deferred ones go first there, so few records beyond T*n are ever touched.
        source = iter(order)
        deferred: deque[int] = deque()
        batches: list[list[int]] = []
        for _ in range(self.num_batches):
            batch: list[int] = []
            keys: set[tuple[str, str]] = set()
            for _ in range(len(deferred)):
                index = deferred.popleft()
                if len(batch) < self.batch_size and self._keys[index] not in keys:
                    batch.append(index)
                    keys.add(self._keys[index])
                else:
                    deferred.append(index)
            while len(batch) < self.batch_size:
                index = next(source, None)
                if index is None:
                    break
                if self._keys[index] in keys:
                    deferred.append(index)
                else:
                    batch.append(index)
                    keys.add(self._keys[index])
            # Only when the split runs dry of compatible records: accept a conflict rather than fail.
            while len(batch) < self.batch_size:
                batch.append(deferred.popleft())
            batches.append(batch)
        return batches

    def sample(self, rng: np.random.Generator) -> list[list[EditRecord]]:
        """A fresh episode as ``num_batches`` lists of ``batch_size`` records."""
        return self._records(self.sample_indices(rng))

    def from_indices(self, indices: Sequence[int]) -> list[list[EditRecord]]:
        """A pinned episode: the records at ``indices`` (flat, in order) cut into batches."""
        indices = [int(i) for i in indices]
        if len(indices) != self.episode_size:
            raise ValueError(
                f"a pinned episode needs {self.num_batches} x {self.batch_size} = {self.episode_size} "
                f"indices, got {len(indices)}"
            )
        bad = [i for i in indices if not 0 <= i < len(self.records)]
        if bad:
            raise IndexError(f"indices {bad[:5]} out of range for a split of {len(self.records)} records")
        dup = sorted(i for i, count in Counter(indices).items() if count > 1)
        if dup:
            raise ValueError(f"an episode draws without replacement, but indices {dup[:5]} repeat")
        return self._records(self._cut(indices))

    def _cut(self, flat: list[int]) -> list[list[int]]:
        n = self.batch_size
        return [flat[t * n : (t + 1) * n] for t in range(self.num_batches)]

    def _records(self, batches: list[list[int]]) -> list[list[EditRecord]]:
        return [[self.records[i] for i in batch] for batch in batches]
