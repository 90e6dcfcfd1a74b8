"""The response cache as users configure it: a tier with `cache: {mode: exact}`, the official
OpenAI SDK in front, the mock provider behind, the ledger and metrics behind that."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI, OpenAI

from ..conftest import RunningGateway, ServerThread, closed_port, gateway_config

QUESTION = [
    {"role": "system", "content": "You answer questions about our shop."},
    {"role": "user", "content": "Which courier do you ship with?"},
]


def cached_config(sqlite_url: str, upstream: str, rule: dict[str, Any] | None = None, **overrides: Any) -> Any:
    tiers = {
        "free": {"rpm": 60, "cache": rule or {"mode": "exact", "ttl": 600}},
        "paid": {"rpm": 600, "cache": {"mode": "exact", "namespace": "tier"}},
        "plain": {"rpm": 60},
    }
    return gateway_config(sqlite_url, upstream, tiers=overrides.pop("tiers", tiers), **overrides)


@pytest.fixture
def cached(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> RunningGateway:
    return start_gateway(cached_config(sqlite_url, mock_upstream.url))


def served(upstream: ServerThread) -> int:
    return int(upstream.app.state.requests_served)


def ledger(sqlite_url: str, count: int) -> list[dict[str, Any]]:
    """The ledger's rows, once ``count`` of them are written."""
    deadline = time.monotonic() + 5
    while True:
        with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as db:
            db.row_factory = sqlite3.Row
            rows = [dict(row) for row in db.execute("SELECT * FROM qg_usage ORDER BY ts")]
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def test_a_repeated_question_is_answered_from_the_cache(
    cached: RunningGateway, mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """The second identical request never reaches the provider, says `hit`, and its ledger row
    costs nothing and records what it saved."""
    key = cached.create_key(tier="free")["key"]
    client = OpenAI(base_url=cached.v1, api_key=key, max_retries=0)
    before = served(mock_upstream)
    first = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=QUESTION)  # type: ignore[arg-type]
    assert first.headers["x-quotagate-cache"] == "miss"
    # The answer is stored after it is sent: the next request may come before the write ends.
    time.sleep(0.2)
    second = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=QUESTION,  # type: ignore[arg-type]
        user="someone-else",  # who asks is not part of the question
    )
    assert second.headers["x-quotagate-cache"] == "hit"
    assert served(mock_upstream) == before + 1
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert "x-ratelimit-remaining-requests" in second.headers
    miss_row, hit_row = ledger(sqlite_url, 2)[-2:]
    assert (miss_row["cache_hit"], hit_row["cache_hit"]) == (0, 1)
    assert miss_row["cost_usd"] > 0 and hit_row["cost_usd"] == 0
    assert hit_row["cache_saved_usd"] == pytest.approx(miss_row["cost_usd"])
    assert (hit_row["prompt_tokens"], hit_row["completion_tokens"], hit_row["status"]) == (0, 0, 200)
    assert hit_row["model_served"] == "gpt-4o-mini"
    metrics = httpx.get(cached.url + "/metrics").text
    assert 'quotagate_cache_lookups_total{model="gpt-4o-mini",result="hit"} 1.0' in metrics
    assert 'quotagate_cache_lookups_total{model="gpt-4o-mini",result="miss"} 1.0' in metrics


async def test_streams_are_stored_once_complete_and_replayed_to_the_sdk(
    cached: RunningGateway, mock_upstream: ServerThread
) -> None:
    """A streamed answer is kept and replayed as a stream the async SDK reads (usage chunk
    included when asked for), and also serves the same question asked without streaming."""
    key = cached.create_key(tier="free")["key"]
    client = AsyncOpenAI(base_url=cached.v1, api_key=key, max_retries=0)
    before = served(mock_upstream)
    stream = await client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, stream=True)  # type: ignore[arg-type]
    first = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
    await asyncio.sleep(0.2)
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=QUESTION,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    assert raw.headers["x-quotagate-cache"] == "hit"
    chunks = [chunk async for chunk in raw.parse()]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == first
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    whole = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=QUESTION)  # type: ignore[arg-type]
    assert whole.headers["x-quotagate-cache"] == "hit"
    assert whole.parse().choices[0].message.content == first
    assert served(mock_upstream) == before + 1
    await client.close()


def test_a_lookup_never_returns_another_namespaces_answer(cached: RunningGateway, mock_upstream: ServerThread) -> None:
    """Under `namespace: key` (the default) two keys of one user do not share answers; under
    `namespace: tier` two users of the tier do; a tier without a rule is never cached."""
    ask = {"model": "gpt-4o-mini", "messages": QUESTION}

    def cache_header(key: str) -> str | None:
        response = httpx.post(cached.v1 + "/chat/completions", json=ask, headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200, response.text
        time.sleep(0.1)
        return response.headers.get("x-quotagate-cache")

    alice_one = cached.create_key(user="alice", tier="free")["key"]
    alice_two = cached.create_key(user="alice", tier="free")["key"]
    assert [cache_header(alice_one), cache_header(alice_one), cache_header(alice_two)] == ["miss", "hit", "miss"]
    carol = cached.create_key(user="carol", tier="paid")["key"]
    dave = cached.create_key(user="dave", tier="paid")["key"]
    assert [cache_header(carol), cache_header(dave)] == ["miss", "hit"]
    plain = cached.create_key(user="erin", tier="plain")["key"]
    before = served(mock_upstream)
    assert [cache_header(plain), cache_header(plain)] == [None, None]
    assert served(mock_upstream) == before + 2


def test_controls_no_cache_no_store_and_ttl(cached: RunningGateway, mock_upstream: ServerThread) -> None:
    """`Cache-Control: no-store` keeps nothing, `no-cache` asks the provider (and stores its
    answer), and LiteLLM's body controls do the same and never reach the provider."""
    key = cached.create_key(tier="free")["key"]
    auth = {"Authorization": f"Bearer {key}"}

    def ask(content: str, headers: dict[str, str] | None = None, **body: Any) -> httpx.Response:
        messages = [{"role": "user", "content": content}]
        response = httpx.post(
            cached.v1 + "/chat/completions",
            json={"model": "gpt-4o-mini", "messages": messages, **body},
            headers={**auth, **(headers or {})},
        )
        assert response.status_code == 200, response.text
        time.sleep(0.1)
        return response

    assert ask("one", {"Cache-Control": "no-store"}).headers["x-quotagate-cache"] == "miss"
    assert ask("one").headers["x-quotagate-cache"] == "miss"  # nothing was kept
    assert ask("one").headers["x-quotagate-cache"] == "hit"
    before = served(mock_upstream)
    assert ask("one", {"Cache-Control": "no-cache"}).headers["x-quotagate-cache"] == "miss"
    assert served(mock_upstream) == before + 1
    assert ask("two", cache={"no-store": True}).headers["x-quotagate-cache"] == "miss"
    assert mock_upstream.app.state.recorded[-1].body.get("cache") is None
    assert ask("two", cache={"ttl": 1}).headers["x-quotagate-cache"] == "miss"
    assert ask("two").headers["x-quotagate-cache"] == "hit"
    time.sleep(1.1)
    assert ask("two").headers["x-quotagate-cache"] == "miss"  # its own TTL, one second, is over
    bad = httpx.post(
        cached.v1 + "/chat/completions",
        json={"model": "gpt-4o-mini", "messages": QUESTION},
        headers={**auth, "x-quotagate-cache-ttl": "soon"},
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "cache"


def test_a_hit_counts_on_request_limits(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """A tier of 2 requests per minute gets its third request refused, hits included."""
    config = cached_config(sqlite_url, mock_upstream.url, tiers={"free": {"rpm": 2, "cache": {"mode": "exact"}}})
    gateway = start_gateway(config)
    key = gateway.create_key(tier="free")["key"]
    statuses = []
    for _ in range(3):
        response = httpx.post(
            gateway.v1 + "/chat/completions",
            json={"model": "gpt-4o-mini", "messages": QUESTION},
            headers={"Authorization": f"Bearer {key}"},
        )
        statuses.append((response.status_code, response.headers.get("x-quotagate-cache")))
        time.sleep(0.1)
    assert statuses == [(200, "miss"), (200, "hit"), (429, None)]
    # The refused request's row says it was refused, not answered from the cache.
    assert [(row["status"], row["cache_hit"]) for row in ledger(sqlite_url, 3)] == [(200, 0), (200, 1), (429, 0)]


def test_errors_and_partial_answers_are_not_stored(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """A provider error is asked again next time, and so is a request for two choices whose
    provider sent one (the mock answers n>1 with one choice)."""
    upstream = start_mock(poison="poisoned question", api_key="sk-upstream-test-key-123456")
    gateway = start_gateway(cached_config(sqlite_url, upstream.url, router={"max_attempts": 1}))
    key = gateway.create_key(tier="free")["key"]
    auth = {"Authorization": f"Bearer {key}"}
    two = {"model": "gpt-4o-mini", "messages": QUESTION, "n": 2}
    first = httpx.post(gateway.v1 + "/chat/completions", json=two, headers=auth)
    assert len(first.json()["choices"]) == 1
    time.sleep(0.1)
    again = httpx.post(gateway.v1 + "/chat/completions", json=two, headers=auth)
    assert again.headers["x-quotagate-cache"] == "miss"
    # The provider's errors last: they count towards the deployment's breaker.
    poisoned = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "a poisoned question"}]}
    for _ in range(2):
        response = httpx.post(gateway.v1 + "/chat/completions", json=poisoned, headers=auth)
        assert response.status_code >= 500 and response.headers.get("x-quotagate-cache") is None
        time.sleep(0.1)
    assert upstream.app.state.poisoned == 2


@pytest.mark.parametrize("hits_charge", ["requests", "tokens"])
def test_what_a_hit_is_charged_on_token_quotas(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str, hits_charge: str
) -> None:
    """By default a hit uses none of the daily token quota; with `hits_charge: tokens` it uses what
    its answer used when the provider gave it."""
    tiers = {"free": {"rpm": 60, "tpd": 100_000, "cache": {"mode": "exact"}}}
    gateway = start_gateway(
        cached_config(sqlite_url, mock_upstream.url, tiers=tiers, cache={"hits_charge": hits_charge})
    )
    key = gateway.create_key(tier="free")["key"]
    auth = {"Authorization": f"Bearer {key}"}

    def tokens_used() -> int:
        quota = httpx.get(gateway.v1 + "/quota", headers=auth).json()
        return int(next(entry["used"] for entry in quota["limits"] if entry["name"] == "tokens per day (TPD)"))

    ask = {"model": "gpt-4o-mini", "messages": QUESTION, "max_tokens": 10}
    first = httpx.post(gateway.v1 + "/chat/completions", json=ask, headers=auth).json()
    used = first["usage"]["prompt_tokens"] + first["usage"]["completion_tokens"]
    assert tokens_used() == used
    time.sleep(0.2)
    hit = httpx.post(gateway.v1 + "/chat/completions", json=ask, headers=auth)
    assert hit.headers["x-quotagate-cache"] == "hit"
    assert tokens_used() == (2 * used if hits_charge == "tokens" else used)


def test_a_fallback_models_answer_is_not_kept_for_the_model_asked_for(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """The asked model is down and its fallback answers: that answer is the fallback's, and the
    next request asks again rather than get it from the cache for the next hour."""
    config = cached_config(sqlite_url, mock_upstream.url)
    primary = config.models[1].model_copy(
        update={
            "name": "primary",
            "fallbacks": ["gpt-4o-mini"],
            "deployments": [
                config.models[1].deployments[0].model_copy(update={"base_url": f"http://127.0.0.1:{closed_port()}/v1"})
            ],
        }
    )
    gateway = start_gateway(config.model_copy(update={"models": [*config.models, primary]}))
    key = gateway.create_key(tier="free")["key"]
    ask = {"model": "primary", "messages": QUESTION}
    for _ in range(2):
        response = httpx.post(gateway.v1 + "/chat/completions", json=ask, headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200 and response.json()["model"] == "gpt-4o-mini"
        assert response.headers["x-quotagate-cache"] == "miss"
        time.sleep(0.2)
