"""The semantic cache's index: which cached answer's question is nearest to a new one.

Two requests are compared only when everything but their last user message is the same, so the
index keeps its vectors in partitions, one per namespace and context (``"<namespace>:<sha256 of
the context>"``), and a search never leaves its partition. The vectors are unit-norm, so the cosine
is a dot product, and a search is one matrix-vector product over the partition's rows: a
partition's vectors are kept as one contiguous matrix, grown by doubling, and a removed row is
filled with the last one.

The index holds exact-cache keys, not answers: an entry points at the answer the store keeps under
its key, and is dropped when that answer goes (``discard``) or its time is up. It runs on the event
loop and is not thread-safe; only the scoring of a large partition (``rows``) may run elsewhere.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]

# Rows a new partition starts with; most partitions (one per distinct conversation context) hold a
# handful of entries, so they start small and double as they fill.
_FIRST_CAPACITY = 8


@dataclass
class _Partition:
    """The vectors of one partition as rows of one matrix; ``keys[row]`` is the entry of each row."""

    vectors: Vector
    expires_at: npt.NDArray[np.float64]
    keys: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)

    @classmethod
    def empty(cls, dim: int, capacity: int = _FIRST_CAPACITY) -> _Partition:
        return cls(np.empty((capacity, dim), dtype=np.float32), np.empty(capacity, dtype=np.float64))

    def resize(self, capacity: int) -> None:
        count = len(self.keys)
        vectors = np.empty((capacity, self.vectors.shape[1]), dtype=np.float32)
        vectors[:count] = self.vectors[:count]
        expires_at = np.empty(capacity, dtype=np.float64)
        expires_at[:count] = self.expires_at[:count]
        self.vectors, self.expires_at = vectors, expires_at


class SemanticIndex:
    """Nearest cached question per partition, by cosine; at most ``max_entries`` entries in all,
    the first added out first. ``clock`` gives the epoch seconds ``expires_at`` is compared with."""

    def __init__(self, max_entries: int = 10_000, clock: Callable[[], float] = time.time) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._clock = clock
        self._partitions: dict[str, _Partition] = {}
        # key -> its partition, in the order the entries were added: the eviction order.
        self._added: OrderedDict[str, str] = OrderedDict()
        # Every vector has the dimension of the first one (the model's); set by the first add.
        self.dim: int | None = None

    def __len__(self) -> int:
        """Entries held, counting expired ones not yet dropped."""
        return len(self._added)

    def add(self, partition: str, vector: Vector, key: str, expires_at: float) -> None:
        """Index ``vector`` (unit norm) as the question of the answer stored under ``key``, until
        ``expires_at``. A key added again replaces its entry; an entry already expired is not kept."""
        row_vector = np.asarray(vector, dtype=np.float32)
        if row_vector.ndim != 1:
            raise ValueError(f"a vector must be one-dimensional, not of shape {row_vector.shape}")
        if self.dim is None:
            self.dim = row_vector.shape[0]
        elif row_vector.shape[0] != self.dim:
            raise ValueError(f"a vector of dimension {row_vector.shape[0]} in an index of dimension {self.dim}")
        if key in self._added:
            self._remove(key)
        if expires_at <= self._clock():
            return
        entries = self._partitions.get(partition)
        if entries is None:
            entries = self._partitions[partition] = _Partition.empty(self.dim)
        row = len(entries.keys)
        if row == entries.vectors.shape[0]:
            entries.resize(2 * row)
        entries.vectors[row] = row_vector
        entries.expires_at[row] = expires_at
        entries.keys.append(key)
        entries.rows[key] = row
        self._added[key] = partition
        while len(self._added) > self.max_entries:
            self._remove(next(iter(self._added)))

    def rows(self, partition: str) -> Vector | None:
        """The vectors of ``partition``'s entries, as a view (None: no entries): what a search
        scores, for a caller that scores a large partition off the event loop (``nearest(scores=)``)."""
        entries = self._partitions.get(partition)
        return entries.vectors[: len(entries.keys)] if entries is not None else None

    def nearest(self, partition: str, vector: Vector, scores: Vector | None = None) -> tuple[str, float] | None:
        """The key of the live entry of ``partition`` nearest to ``vector``, with its cosine; None
        when the partition has none. Expired entries met on the way are dropped.

        ``scores``: ``rows(partition) @ vector``, computed elsewhere while the index may have
        changed: rows since added are scored here, and if the winner's row no longer holds the
        vector it was scored for (a removal moved another into it), the partition is scored again."""
        entries = self._partitions.get(partition)
        if entries is None:
            return None
        count = len(entries.keys)
        query = np.asarray(vector, dtype=np.float32)
        if scores is None:
            scores = entries.vectors[:count] @ query
        elif len(scores) < count:
            scores = np.concatenate([scores, entries.vectors[len(scores) : count] @ query])
        else:
            scores = scores[:count].copy()
        expired = entries.expires_at[:count] <= self._clock()
        scores[expired] = -np.inf
        best = int(scores.argmax())
        # (A tolerance, not equality: the product and one row's dot product may round differently.)
        if not expired[best] and abs(float(entries.vectors[best] @ query) - float(scores[best])) > 1e-5:
            scores = entries.vectors[:count] @ query  # stale: rows moved while they were scored
            scores[expired] = -np.inf
            best = int(scores.argmax())
        found = None if expired[best] else (entries.keys[best], float(scores[best]))
        # From the last row down, so that the rows still to drop keep their places: a drop fills
        # its row with the last row, which is then a live one.
        for row in np.flatnonzero(expired)[::-1]:
            self._remove(entries.keys[row])
        return found

    def discard(self, key: str) -> None:
        """Forget the entry of ``key`` (its answer is gone from the store), if there is one."""
        if key in self._added:
            self._remove(key)

    def purge(self, namespace: str | None = None) -> int:
        """Drop every entry (of ``namespace``'s partitions, when given); how many were dropped."""
        if namespace is None:
            dropped = len(self._added)
            self._partitions.clear()
            self._added.clear()
            return dropped
        dropped = 0
        # The namespace is what comes before the partition's last ':' (the context's hash has
        # none), so "k:ab" does not purge "k:abc"'s partitions.
        for partition in [name for name in self._partitions if name.rpartition(":")[0] == namespace]:
            for key in self._partitions.pop(partition).keys:
                del self._added[key]
                dropped += 1
        return dropped

    def _remove(self, key: str) -> None:
        partition = self._added.pop(key)
        entries = self._partitions[partition]
        row = entries.rows.pop(key)
        last = len(entries.keys) - 1
        if row != last:
            moved = entries.keys[last]
            entries.vectors[row] = entries.vectors[last]
            entries.expires_at[row] = entries.expires_at[last]
            entries.keys[row] = moved
            entries.rows[moved] = row
        entries.keys.pop()
        if not entries.keys:
            del self._partitions[partition]
        elif last <= entries.vectors.shape[0] // 4 and entries.vectors.shape[0] > _FIRST_CAPACITY:
            # Give memory back once a partition is three-quarters empty (after evictions or
            # expiries), keeping room to grow again without resizing at once.
            entries.resize(entries.vectors.shape[0] // 2)
