"""The semantic cache's index: nearest cached question per partition (issue 20)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from quotagate.cache._semantic import SemanticIndex, Vector

DIM = 16
FAR_FUTURE = 10_000.0


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def unit(*weights: float) -> Vector:
    """A unit vector of DIM dimensions with ``weights`` as its first components."""
    vector = np.zeros(DIM, dtype=np.float32)
    vector[: len(weights)] = weights
    return vector / np.linalg.norm(vector)


def random_units(count: int, seed: int = 0) -> Vector:
    vectors = np.random.default_rng(seed).standard_normal((count, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_nearest_picks_the_highest_cosine() -> None:
    """Of several entries, the one whose vector is closest to the question, with its cosine."""
    index = SemanticIndex(clock=Clock())
    index.add("g:ctx", unit(1, 0), "g:a", FAR_FUTURE)
    index.add("g:ctx", unit(1, 1), "g:b", FAR_FUTURE)
    index.add("g:ctx", unit(0, 1), "g:c", FAR_FUTURE)
    found = index.nearest("g:ctx", unit(1, 0.8))
    assert found is not None
    key, score = found
    assert key == "g:b"
    assert score == pytest.approx(float(unit(1, 1) @ unit(1, 0.8)), abs=1e-6)
    assert index.nearest("g:ctx", unit(0, 1)) == ("g:c", pytest.approx(1.0, abs=1e-6))


def test_nearest_matches_brute_force_over_many_entries() -> None:
    """Across growth (doubling) and removals (the last row moved into the hole), every search
    finds what comparing with every live entry finds."""
    index = SemanticIndex(clock=Clock())
    vectors = random_units(300)
    for number, vector in enumerate(vectors):
        index.add("g:ctx", vector, f"g:{number}", FAR_FUTURE)
    removed = set(range(0, 300, 3))
    for number in removed:
        index.discard(f"g:{number}")
    live = [number for number in range(300) if number not in removed]
    for question in random_units(50, seed=1):
        scores = {number: float(vectors[number] @ question) for number in live}
        expected = max(scores, key=scores.__getitem__)
        assert index.nearest("g:ctx", question) == (f"g:{expected}", pytest.approx(scores[expected], abs=1e-5))
    assert len(index) == len(live)


def test_a_search_never_leaves_its_partition() -> None:
    """The very same vector cached in another partition (another namespace or another context)
    is not found."""
    index = SemanticIndex(clock=Clock())
    index.add("k:alice:ctx1", unit(1, 0), "k:alice:x", FAR_FUTURE)
    index.add("k:bob:ctx1", unit(0, 1), "k:bob:y", FAR_FUTURE)
    assert index.nearest("k:bob:ctx1", unit(1, 0)) == ("k:bob:y", pytest.approx(0.0, abs=1e-6))
    assert index.nearest("k:alice:ctx2", unit(1, 0)) is None


def test_expired_entries_are_never_returned_and_are_dropped() -> None:
    """Past its expiry an entry is not found, even when it is the nearest, and the search drops it."""
    clock = Clock()
    index = SemanticIndex(clock=clock)
    index.add("g:ctx", unit(1, 0), "g:soon", clock.now + 10)
    index.add("g:ctx", unit(1, 1), "g:later", clock.now + 100)
    index.add("g:ctx", unit(0, 1), "g:soon-too", clock.now + 10)
    assert index.nearest("g:ctx", unit(1, 0)) == ("g:soon", pytest.approx(1.0))
    clock.now += 10
    found = index.nearest("g:ctx", unit(1, 0))
    assert found is not None and found[0] == "g:later"
    assert len(index) == 1
    clock.now += 90
    assert index.nearest("g:ctx", unit(1, 0)) is None
    assert len(index) == 0


def test_an_entry_added_already_expired_is_not_kept() -> None:
    """``expires_at`` at or before now: nothing to index (and an older entry of the key goes)."""
    clock = Clock()
    index = SemanticIndex(clock=clock)
    index.add("g:ctx", unit(1, 0), "g:a", clock.now + 5)
    index.add("g:ctx", unit(1, 0), "g:a", clock.now)
    assert len(index) == 0 and index.nearest("g:ctx", unit(1, 0)) is None


def test_adding_a_key_again_replaces_its_entry() -> None:
    """The new vector and expiry count; the old vector is not found any more."""
    clock = Clock()
    index = SemanticIndex(clock=clock)
    index.add("g:ctx", unit(1, 0), "g:a", clock.now + 10)
    index.add("g:ctx", unit(0, 1), "g:b", FAR_FUTURE)
    index.add("g:ctx", unit(0, 0, 1), "g:a", clock.now + 100)
    assert len(index) == 2
    assert index.nearest("g:ctx", unit(1, 0.1)) == ("g:b", pytest.approx(float(unit(0, 1) @ unit(1, 0.1))))
    clock.now += 50
    assert index.nearest("g:ctx", unit(0, 0, 1)) == ("g:a", pytest.approx(1.0))


def test_over_max_entries_the_first_added_go_first() -> None:
    """At the cap, each add evicts the entry added longest ago, whatever its partition; a re-added
    key counts as added anew."""
    index = SemanticIndex(max_entries=3, clock=Clock())
    index.add("g:one", unit(1, 0), "g:a", FAR_FUTURE)
    index.add("g:two", unit(1, 0), "g:b", FAR_FUTURE)
    index.add("g:one", unit(0, 1), "g:c", FAR_FUTURE)
    index.add("g:one", unit(1, 0), "g:a", FAR_FUTURE)  # now the newest
    index.add("g:two", unit(0, 1), "g:d", FAR_FUTURE)  # evicts g:b, not g:a
    assert len(index) == 3
    assert index.nearest("g:two", unit(1, 0)) == ("g:d", pytest.approx(0.0, abs=1e-6))
    index.add("g:two", unit(1, 1), "g:e", FAR_FUTURE)  # evicts g:c
    assert index.nearest("g:one", unit(0, 1)) == ("g:a", pytest.approx(0.0, abs=1e-6))


def test_discard_forgets_one_entry() -> None:
    """A discarded key is not found; the other entries of its partition are; unknown keys are fine."""
    index = SemanticIndex(clock=Clock())
    index.add("g:ctx", unit(1, 0), "g:a", FAR_FUTURE)
    index.add("g:ctx", unit(0, 1), "g:b", FAR_FUTURE)
    index.discard("g:a")
    index.discard("g:never-added")
    assert len(index) == 1
    assert index.nearest("g:ctx", unit(1, 0)) == ("g:b", pytest.approx(0.0, abs=1e-6))
    index.discard("g:b")
    assert index.nearest("g:ctx", unit(1, 0)) is None


def test_purge_drops_one_namespace_only() -> None:
    """Purging a namespace drops all of its partitions and leaves the others, including a namespace
    of which it is a prefix ("k:ab" and "k:abc")."""
    index = SemanticIndex(clock=Clock())
    index.add("k:ab:ctx1", unit(1, 0), "k:ab:1", FAR_FUTURE)
    index.add("k:ab:ctx2", unit(1, 0), "k:ab:2", FAR_FUTURE)
    index.add("k:ab:ctx2", unit(0, 1), "k:ab:3", FAR_FUTURE)
    index.add("k:abc:ctx1", unit(1, 0), "k:abc:1", FAR_FUTURE)
    index.add("g:ctx1", unit(1, 0), "g:1", FAR_FUTURE)
    assert index.purge("k:ab") == 3
    assert index.nearest("k:ab:ctx1", unit(1, 0)) is None
    assert index.nearest("k:ab:ctx2", unit(1, 0)) is None
    assert index.nearest("k:abc:ctx1", unit(1, 0)) == ("k:abc:1", pytest.approx(1.0))
    assert index.nearest("g:ctx1", unit(1, 0)) == ("g:1", pytest.approx(1.0))
    assert len(index) == 2
    index.add("k:ab:ctx1", unit(1, 0), "k:ab:1", FAR_FUTURE)  # a purged key can come back
    assert index.purge() == 3
    assert len(index) == 0 and index.nearest("g:ctx1", unit(1, 0)) is None


def test_vectors_of_another_dimension_are_refused() -> None:
    """The first vector sets the dimension; another one is an error, not a wrong answer."""
    index = SemanticIndex(clock=Clock())
    index.add("g:ctx", unit(1, 0), "g:a", FAR_FUTURE)
    assert index.dim == DIM
    with pytest.raises(ValueError, match="dimension"):
        index.add("g:ctx", np.ones(DIM + 1, dtype=np.float32), "g:b", FAR_FUTURE)
    with pytest.raises(ValueError, match="one-dimensional"):
        index.add("g:ctx", np.ones((1, DIM), dtype=np.float32), "g:b", FAR_FUTURE)


def test_scores_made_before_the_index_changed_still_give_an_exact_answer() -> None:
    """A large partition is scored off the loop while the loop adds and removes entries: rows
    added since are scored too, and the winner's cosine is its own row's, even if its row moved."""
    index = SemanticIndex(clock=Clock())
    for number, weights in enumerate([(1, 0), (0, 1), (1, 1)]):
        index.add("g:ctx", unit(*weights), f"g:{number}", FAR_FUTURE)
    question = unit(1, 0.9)
    rows = index.rows("g:ctx")
    assert rows is not None
    scores = rows @ question
    index.discard("g:0")  # the last row (g:2, the nearest) moves into row 0
    index.add("g:ctx", unit(0.2, 1), "g:3", FAR_FUTURE)
    assert index.nearest("g:ctx", question, scores) == ("g:2", pytest.approx(float(unit(1, 1) @ question), abs=1e-6))
    index.add("g:ctx", question, "g:4", FAR_FUTURE)  # added after the scoring: scored here
    assert index.nearest("g:ctx", question, scores) == ("g:4", pytest.approx(1.0, abs=1e-6))
    assert index.rows("g:none") is None
