"""The semantic cache through the gateway: a reworded question gets the earlier answer, only in
the same conversation, and the shipped local model embeds it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from openai import OpenAI

from quotagate.config import CacheRule

from ..conftest import RunningGateway, ServerThread
from .test_gateway_cache import cached_config, ledger, served

SYSTEM = {"role": "system", "content": "You answer questions about our shop."}


def ask(
    gateway: RunningGateway, key: str, question: str, system: dict[str, str] = SYSTEM, **body: Any
) -> httpx.Response:
    response = httpx.post(
        gateway.v1 + "/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [system, {"role": "user", "content": question}], **body},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    time.sleep(0.2)  # the answer is stored after it is sent
    return response


def test_a_reworded_question_gets_the_earlier_answer_in_the_same_conversation_only(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    config = cached_config(
        sqlite_url, mock_upstream.url, tiers={"free": {"rpm": 600, "cache": {"mode": "semantic", "namespace": "user"}}}
    )
    gateway = start_gateway(config)
    key = gateway.create_key(user="alice", tier="free")["key"]
    before = served(mock_upstream)
    first = ask(gateway, key, "How do I reset my password?")
    assert first.headers["x-quotagate-cache"] == "miss"
    reworded = ask(gateway, key, "How can I reset my password?")
    assert reworded.headers["x-quotagate-cache"] == "semantic-hit"
    assert float(reworded.headers["x-quotagate-cache-similarity"]) >= 0.96
    assert reworded.json()["choices"] == first.json()["choices"]
    assert served(mock_upstream) == before + 1
    # The reworded question now has the answer under its own key: an exact hit, no embedding.
    assert ask(gateway, key, "How can I reset my password?").headers["x-quotagate-cache"] == "hit"
    # Typing alone (a closing mark, spaces) makes the same question: an exact match of its meaning.
    assert ask(gateway, key, "  How do I reset  my password ").headers["x-quotagate-cache"] == "semantic-hit"
    # A different question of the same topic, and the same question in another conversation, miss.
    assert ask(gateway, key, "How do I change my password?").headers["x-quotagate-cache"] == "miss"
    other = {"role": "system", "content": "You answer questions about our bank."}
    assert ask(gateway, key, "How can I reset my password?", system=other).headers["x-quotagate-cache"] == "miss"
    assert ask(gateway, key, "How can I reset my password?", temperature=0.2).headers["x-quotagate-cache"] == "miss"
    # A long message is compared exactly only: a changed question in it would hardly move its vector.
    story = "I bought a blue jacket last week and it arrived today, but it does not fit me at all. "
    assert ask(gateway, key, story + "How do I reset my password?").headers["x-quotagate-cache"] == "miss"
    assert ask(gateway, key, story + "How can I reset my password?").headers["x-quotagate-cache"] == "miss"
    # Chinese, the same way.
    assert ask(gateway, key, "我怎么退货？").headers["x-quotagate-cache"] == "miss"  # noqa: RUF001
    assert ask(gateway, key, "我该怎么退货？").headers["x-quotagate-cache"] == "semantic-hit"  # noqa: RUF001
    rows = ledger(sqlite_url, 12)
    assert sum(row["cache_hit"] for row in rows) == 4
    metrics = httpx.get(gateway.url + "/metrics").text
    assert 'quotagate_cache_lookups_total{model="gpt-4o-mini",result="semantic_hit"} 3.0' in metrics


def test_the_sdk_reads_a_semantic_hit_and_a_per_model_threshold_applies(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """A model's own rule sets its threshold over the tier's: at 0.99 the reworded question misses."""
    config = cached_config(
        sqlite_url,
        mock_upstream.url,
        tiers={"free": {"rpm": 600, "cache": {"mode": "semantic"}}},
    )
    models = [
        model.model_copy(update={"cache": CacheRule(threshold=0.99)}) if model.name == "house-model" else model
        for model in config.models
    ]
    gateway = start_gateway(config.model_copy(update={"models": models}))
    key = gateway.create_key(tier="free")["key"]
    client = OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)
    for model, expected in (("gpt-4o-mini", "semantic-hit"), ("house-model", "miss")):
        client.chat.completions.create(
            model=model, messages=[SYSTEM, {"role": "user", "content": "How do I reset my password?"}]
        )  # type: ignore[list-item]
        time.sleep(0.2)
        raw = client.chat.completions.with_raw_response.create(
            model=model,
            messages=[SYSTEM, {"role": "user", "content": "How can I reset my password?"}],  # type: ignore[list-item]
        )
        assert raw.headers["x-quotagate-cache"] == expected
        assert raw.parse().choices[0].message.content


def test_an_embeddings_model_of_the_configuration_embeds_through_the_gateway(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """`cache.embedding: text-embedding-3-small`: questions are embedded by that model's deployment
    (the mock's vectors are equal for equal texts only), and each embedding has its ledger row
    under the user quotagate-cache."""
    config = cached_config(
        sqlite_url,
        mock_upstream.url,
        tiers={"free": {"rpm": 600, "cache": {"mode": "semantic"}}},
        cache={"embedding": "text-embedding-3-small"},
    )
    gateway = start_gateway(config)
    key = gateway.create_key(user="alice", tier="free")["key"]
    embeddings_before = sum(1 for r in mock_upstream.app.state.recorded if r.path.endswith("/embeddings"))
    assert ask(gateway, key, "How do I return an item?").headers["x-quotagate-cache"] == "miss"
    # Another request (its exact key differs) asking the same question once typing is set aside.
    hit = ask(gateway, key, "How do I return an item")
    assert hit.headers["x-quotagate-cache"] == "semantic-hit"
    assert float(hit.headers["x-quotagate-cache-similarity"]) == pytest.approx(1.0, abs=1e-4)
    assert ask(gateway, key, "Where is my parcel?").headers["x-quotagate-cache"] == "miss"
    embedded = [r for r in mock_upstream.app.state.recorded if r.path.endswith("/embeddings")][embeddings_before:]
    assert [r.body["input"] for r in embedded] == [
        "How do I return an item",
        "How do I return an item",
        "Where is my parcel",
    ]
    rows = ledger(sqlite_url, 6)
    cache_rows = [row for row in rows if row["user_id"] == "quotagate-cache"]
    assert len(cache_rows) == 3
    assert all(row["model_requested"] == "text-embedding-3-small" and row["status"] == 200 for row in cache_rows)
    assert all(row["prompt_tokens"] > 0 for row in cache_rows)
