"""The semantic classifier: a request gets the class whose examples its question is nearest to, by
the embedding model the semantic cache uses (the same ``Embedder``, so a request that both
classify and look up in the cache is embedded once).

A class is scored by its centroid, the mean of its examples' vectors: on the labelled support
prompts (tests/data/route_prompts) that classified 94.7 % of the held-out prompts right, the
nearest single example 79.7 % (its nearest example is often one of the same topic in another
class: "how do I check my gift card balance" against "why is my gift card showing a zero
balance?"; bench/NOTES.md, "Model tiering quality"). Examples are few (a handful to a few
hundred per routed model), so the search is one small matrix product: well under a millisecond.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import numpy.typing as npt

from ..cache import normalized

if TYPE_CHECKING:
    from ..cache._embedder import Embedder, Vector


class Nearest(NamedTuple):
    route_class: str
    similarity: float  # to the class's centroid
    example: str  # the class's example nearest to the question (what explains the choice to people)


class ExampleIndex:
    """The examples of a routed model's classes, embedded once (``load``), searched per request."""

    def __init__(self, examples: list[tuple[str, str]]) -> None:
        # (class, example) pairs, in the order of the configuration.
        self.examples = examples
        self.classes = list(dict.fromkeys(route_class for route_class, _ in examples))
        self._vectors: Vector | None = None
        self._centroids: Vector | None = None
        self._members: list[npt.NDArray[np.intp]] = []  # each class's rows of _vectors

    @property
    def loaded(self) -> bool:
        return self._centroids is not None

    async def load(self, embedder: Embedder, known: dict[str, Vector]) -> None:
        """Embed every example, as a request's question is embedded (normalized), but those in
        ``known`` (the vectors of an earlier configuration's examples: a reload embeds only what
        it adds), which gets the new ones. The local model takes those asked together as a batch."""
        texts = [normalized(text) for _, text in self.examples]
        missing = [text for text in dict.fromkeys(texts) if text not in known]
        for text, vector in zip(missing, await asyncio.gather(*map(embedder.embed, missing)), strict=True):
            known[text] = vector
        vectors = np.vstack([known[text] for text in texts])
        labels = np.array([self.classes.index(route_class) for route_class, _ in self.examples])
        self._members = [np.flatnonzero(labels == number) for number in range(len(self.classes))]
        centroids = np.vstack([vectors[members].mean(axis=0) for members in self._members])
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
        self._vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self._centroids = np.ascontiguousarray(centroids, dtype=np.float32)

    def nearest(self, vector: Vector) -> Nearest:
        """The class whose centroid is most similar to ``vector`` (cosine: unit-norm vectors)."""
        assert self._centroids is not None and self._vectors is not None
        scores = self._centroids @ vector
        best = int(np.argmax(scores))
        members = self._members[best]
        closest = members[int(np.argmax(self._vectors[members] @ vector))]
        return Nearest(self.classes[best], float(scores[best]), self.examples[closest][1])
