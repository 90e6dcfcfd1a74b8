"""The route planner's use of the embedding model: examples embedded once, shared across a reload,
and one load at a time while the model is failing."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import numpy as np
import pytest

from quotagate.auth import Principal
from quotagate.config import Config, parse_config
from quotagate.tiering import RoutePlanner

ASKER = Principal(key_id="k1", user="alice", tier="default", models=None)


class CountingEmbedder:
    """A stand-in for the embedding model that counts its calls and fails while ``down``: the
    planner's bookkeeping is under test here, not what the vectors mean (test_routed_model.py
    classifies with the shipped model)."""

    def __init__(self) -> None:
        self.calls = 0
        self.down = False

    async def embed(self, text: str) -> Any:
        self.calls += 1
        await asyncio.sleep(0)
        if self.down:
            raise ConnectionError("the embeddings model is down")
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")
        vector = np.random.default_rng(seed).standard_normal(16).astype(np.float32)
        return vector / np.linalg.norm(vector)


def config(examples: dict[str, list[str]]) -> Config:
    return parse_config(
        {
            "models": [
                *[
                    {"name": name, "deployments": [{"provider": "openai-compatible", "base_url": "http://127.0.0.1:9"}]}
                    for name in examples
                ],
                {
                    "name": "auto",
                    "route": {
                        "classes": [
                            {"name": name, "model": name, "examples": texts} for name, texts in examples.items()
                        ]
                    },
                },
            ]
        }
    )


def ask(planner: RoutePlanner, text: str) -> Any:
    return planner.plan("auto", {"model": "auto", "messages": [{"role": "user", "content": text}]}, ASKER)


async def test_a_reload_embeds_only_the_examples_it_adds() -> None:
    """The planner of a reloaded configuration reuses the vectors of the examples it keeps."""
    embedder = CountingEmbedder()
    first = RoutePlanner(config({"cheap": ["a", "b"], "strong": ["c"]}), embedder)
    await first.start()
    assert embedder.calls == 3
    second = RoutePlanner(config({"cheap": ["a", "b", "d"], "strong": ["c"]}), embedder, first)
    await second.start()
    assert embedder.calls == 4


async def test_while_the_model_is_down_requests_get_the_default_and_share_one_retry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Examples that could not be embedded leave requests to the default class; once the model is
    back, concurrent requests share one load of the examples instead of one each."""
    embedder = CountingEmbedder()
    embedder.down = True
    planner = RoutePlanner(config({"cheap": ["a", "b"], "strong": ["c", "d"]}), embedder)
    await planner.start()
    plan = await ask(planner, "anything")
    assert (plan.route_class, plan.reason) == ("strong", "default")
    embedder.down, embedder.calls = False, 0
    monkeypatch.setattr(planner, "_next_load", 0.0)  # the retry's pause is over
    plans = await asyncio.gather(*(ask(planner, f"question {n}") for n in range(20)))
    assert all(plan.reason.startswith(("semantic", "default, semantic")) for plan in plans)
    assert embedder.calls == 4 + 20  # the examples once, and each question
