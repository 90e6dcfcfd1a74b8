"""The semantic cache's embedder: the shipped offline model on a worker thread, batching (issue 20)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import numpy as np
import pytest

from quotagate.cache._embedder import MAX_CHARS, Encoder, LocalEmbedder, Vector

# Pairs from tests/data/semantic_pairs that the model separates with a wide margin: a light
# paraphrase (0.98 or more) and a one-word swap that asks something else (0.62 or less).
SEPARATED = [
    ("When will I get my refund?", "When do I get my refund?", "When will I get my order?"),
    ("怎么申请退货？", "退货怎么申请？", "怎么申请发票？"),  # noqa: RUF001 (Chinese question marks)
]


class RecordingModel:
    """The real model, recording each encode call's texts and thread; ``fail_on`` makes a batch
    holding that text raise."""

    def __init__(self, model: Encoder, fail_on: str | None = None) -> None:
        self.model = model
        self.fail_on = fail_on
        self.batches: list[list[str]] = []
        self.threads: set[int] = set()

    def encode(self, texts: list[str]) -> Vector:
        self.batches.append(list(texts))
        self.threads.add(threading.get_ident())
        if self.fail_on in texts:
            raise RuntimeError("the model failed")
        return np.asarray(self.model.encode(texts), dtype=np.float32)


@pytest.fixture(scope="module")
async def embedder() -> AsyncIterator[LocalEmbedder]:
    """The shipped embedder, as the gateway makes it: its start() loads the model (about a second),
    once for the module."""
    local = LocalEmbedder()
    await local.start()
    yield local
    await local.aclose()


@pytest.fixture(scope="module")
def use_model(embedder: LocalEmbedder) -> Encoder:
    """The model the shipped embedder loaded, for the tests that watch its calls."""
    assert embedder._model is not None
    return embedder._model


@pytest.mark.parametrize(("question", "paraphrase", "other_question"), SEPARATED)
async def test_a_paraphrase_scores_above_a_different_question(
    embedder: LocalEmbedder, question: str, paraphrase: str, other_question: str
) -> None:
    """English and Chinese: the same question in other words scores over 0.95, another question under."""
    asked, same, other = [await embedder.embed(text) for text in (question, paraphrase, other_question)]
    assert asked.dtype == np.float32 and asked.shape == (512,)
    assert float(np.linalg.norm(asked)) == pytest.approx(1.0, abs=1e-4)
    assert float(asked @ same) > 0.95
    assert float(asked @ other) < 0.95


async def test_concurrent_embeds_are_batched(use_model: Encoder) -> None:
    """Texts that arrive while the worker encodes wait, then go in one encode call (at most
    max_batch texts); each caller gets its own text's vector."""
    model = RecordingModel(use_model)
    embedder = LocalEmbedder(model=model, max_batch=16)
    texts = [f"Where is my order number {number}?" for number in range(40)]
    vectors = await asyncio.gather(*(embedder.embed(text) for text in texts))
    await embedder.aclose()
    assert [len(batch) for batch in model.batches] == [16, 16, 8]
    assert [text for batch in model.batches for text in batch] == texts
    alone = np.asarray(use_model.encode(texts[7:8]))[0]
    assert float(vectors[7] @ alone) == pytest.approx(1.0, abs=1e-4)


async def test_the_event_loop_keeps_running_while_embedding(use_model: Encoder) -> None:
    """Encoding happens on the worker thread: a ticker on the loop keeps ticking during every
    encode of 64 concurrent embeds."""
    ticks = 0
    ticks_during_encodes: list[int] = []

    class Watched(RecordingModel):
        def encode(self, texts: list[str]) -> Vector:
            before = ticks
            vectors = super().encode(texts)
            ticks_during_encodes.append(ticks - before)
            return vectors

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    model = Watched(use_model)
    embedder = LocalEmbedder(model=model)
    ticking = asyncio.create_task(ticker())
    texts = [
        f"Question {number}: where is my parcel, and can I change the delivery address?" * 3 for number in range(64)
    ]
    await asyncio.gather(*(embedder.embed(text) for text in texts))
    ticking.cancel()
    await embedder.aclose()
    assert [len(batch) for batch in model.batches] == [32, 32]
    assert threading.get_ident() not in model.threads
    assert all(advanced > 0 for advanced in ticks_during_encodes), ticks_during_encodes


async def test_start_warms_the_model_on_the_worker(use_model: Encoder) -> None:
    """start() runs the model once, off the loop, before any request."""
    model = RecordingModel(use_model)
    embedder = LocalEmbedder(model=model)
    await embedder.start()
    assert len(model.batches) == 1 and threading.get_ident() not in model.threads
    await embedder.embed("Do you ship internationally?")
    assert len(model.batches) == 2
    await embedder.aclose()


async def test_a_failed_encode_fails_only_its_batch(use_model: Encoder) -> None:
    """The callers of the batch that raised get the error; the next batch is embedded."""
    model = RecordingModel(use_model, fail_on="poison")
    embedder = LocalEmbedder(model=model, max_batch=2)
    first, second, third = await asyncio.gather(
        embedder.embed("poison"),
        embedder.embed("in the same batch"),
        embedder.embed("in the next batch"),
        return_exceptions=True,
    )
    await embedder.aclose()
    assert isinstance(first, RuntimeError) and isinstance(second, RuntimeError)
    assert isinstance(third, np.ndarray) and third.shape == (512,)


async def test_long_texts_are_cut(use_model: Encoder) -> None:
    """A text over max_chars is encoded as its first max_chars characters."""
    model = RecordingModel(use_model)
    embedder = LocalEmbedder(model=model)
    await embedder.embed("x" * (MAX_CHARS + 500))
    await embedder.aclose()
    assert model.batches == [["x" * MAX_CHARS]]


async def test_aclose_finishes_the_queue_then_stops_the_worker(use_model: Encoder) -> None:
    """Embeds already queued complete; then the worker thread ends and embed raises."""
    model = RecordingModel(use_model)
    embedder = LocalEmbedder(model=model)
    pending = [asyncio.ensure_future(embedder.embed(f"question {number}")) for number in range(5)]
    await asyncio.sleep(0)
    await embedder.aclose()
    vectors = await asyncio.wait_for(asyncio.gather(*pending), timeout=1)
    assert [vector.shape for vector in vectors] == [(512,)] * 5
    (worker,) = model.threads
    assert worker not in {thread.ident for thread in threading.enumerate()}
    with pytest.raises(RuntimeError, match="closed"):
        await embedder.embed("too late")


async def test_a_caller_that_gives_up_is_not_embedded(use_model: Encoder) -> None:
    """A cancelled embed still queued is left out of the next batch."""
    model = RecordingModel(use_model)
    embedder = LocalEmbedder(model=model)
    first = asyncio.ensure_future(embedder.embed("first"))
    await asyncio.sleep(0)  # the worker takes "first"
    gone = asyncio.ensure_future(embedder.embed("cancelled while queued"))
    kept = asyncio.ensure_future(embedder.embed("kept"))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.gather(first, kept)
    await embedder.aclose()
    assert model.batches == [["first"], ["kept"]]
