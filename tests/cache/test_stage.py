"""The cache stage's own rules: which rule applies, what a request's controls say, when an entry
is too old, what the semantic cache compares, and that a failing store is a miss."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from quotagate.cache import (
    CacheControls,
    CacheRules,
    MemoryCacheStore,
    ResponseCache,
    operator_namespace,
    question_of,
    read_controls,
)
from quotagate.config import CacheRule, parse_config
from quotagate.errors import InvalidRequestError

BODY = {"model": "m", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]}
ANSWER = {"id": "chatcmpl-1", "object": "chat.completion", "choices": [{"index": 0, "finish_reason": "stop"}]}


def config(**data: Any) -> Any:
    models = [
        {"name": name, "deployments": [{"provider": "vllm", "base_url": "http://127.0.0.1:1/v1"}]}
        for name in ("a", "b")
    ]
    return parse_config({"models": models, **data})


def test_a_models_rule_overrides_its_tiers_field_by_field() -> None:
    rules = CacheRules(
        config(
            tiers={"paid": {"cache": {"mode": "semantic", "ttl": 60, "namespace": "user"}}, "free": {}},
            models=[
                {
                    "name": "a",
                    "deployments": [{"provider": "vllm", "base_url": "http://h/v1"}],
                    "cache": {"threshold": 0.99},
                },
                {
                    "name": "b",
                    "deployments": [{"provider": "vllm", "base_url": "http://h/v1"}],
                    "cache": {"mode": "off"},
                },
            ],
        )
    )
    tuned = rules.rule_for("paid", "a")
    assert tuned is not None
    assert (tuned.mode, tuned.ttl, tuned.namespace, tuned.threshold) == ("semantic", 60, "user", 0.99)
    assert rules.rule_for("paid", "b") is None  # the model turns it off
    assert rules.rule_for("free", "a") is None  # a threshold alone turns nothing on
    assert rules.semantic


def test_controls_from_headers_and_body() -> None:
    assert read_controls(None, None, {}) == CacheControls()
    assert read_controls("no-cache, no-store", "30", {}) == CacheControls(False, False, 30.0, None)
    assert read_controls("max-age=5", None, {"cache": {"ttl": 9, "no-store": True}}) == CacheControls(
        True, False, 9.0, 5.0
    )
    assert read_controls(None, None, {"cache": {"no-cache": True, "s-maxage": 1}}) == CacheControls(
        False, True, None, 1.0
    )
    for bad in ({"cache": "no-cache"}, {"cache": {"ttl": -1}}, {"cache": {"ttl": True}}, {"cache": {"ttl": "x"}}):
        with pytest.raises(InvalidRequestError):
            read_controls(None, None, bad)
    with pytest.raises(InvalidRequestError):
        read_controls("max-age=forever", None, {})


def test_the_semantic_cache_compares_the_last_user_message_only() -> None:
    asked = question_of(BODY)
    assert asked is not None
    question, rest = asked
    assert question == "Hi"
    assert rest["messages"][0] == BODY["messages"][0] and rest["messages"][-1]["content"] is None
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}
    assert question_of(parts) == ("a b", {"messages": [{"role": "user", "content": None}]})
    image = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}
    assert question_of(image) is None
    assert question_of({"messages": [{"role": "assistant", "content": "x"}]}) is None
    assert question_of({"messages": [{"role": "user", "content": " ?"}]}) is None


def test_operator_namespaces() -> None:
    assert operator_namespace("global") == "g"
    assert operator_namespace("user:alice:x") == "u:alice%3Ax"
    assert operator_namespace("tier:paid") == "t:paid"
    for bad in ("user:", "alice", "team:x"):
        with pytest.raises(ValueError, match="unknown cache namespace"):
            operator_namespace(bad)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_entries_expire_after_their_ttl_and_max_age_is_honoured() -> None:
    clock = Clock()
    cache = ResponseCache(MemoryCacheStore(clock=clock), clock=clock)
    rule = CacheRule(ttl=60)
    ticket = cache.ticket(rule, CacheControls(), "k1", "alice", "free", BODY, "m", semantic_kind=True)
    assert await cache.lookup(ticket) is None
    cache.keep(ticket, ANSWER, 0.25)
    await settle()
    hit = await cache.lookup(ticket)
    assert hit is not None and (hit.kind, hit.response, hit.cost_usd) == ("hit", ANSWER, 0.25)
    clock.now += 30
    picky = cache.ticket(rule, CacheControls(max_age=10), "k1", "alice", "free", BODY, "m", semantic_kind=True)
    assert await cache.lookup(picky) is None  # 30 s old, and this request takes 10 s at most
    clock.now += 31
    assert await cache.lookup(ticket) is None  # 61 s: past the rule's TTL
    other_key = cache.ticket(rule, CacheControls(), "k2", "alice", "free", BODY, "m", semantic_kind=True)
    assert other_key.key != ticket.key and other_key.namespace == "k:k2"


class BrokenStore(MemoryCacheStore):
    async def get(self, key: str) -> bytes | None:
        raise ConnectionError("Redis is down")

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        raise TimeoutError("Redis is slow")


async def test_a_failing_store_is_a_miss_and_a_write_that_fails_is_nothing(caplog: pytest.LogCaptureFixture) -> None:
    cache = ResponseCache(BrokenStore())
    ticket = cache.ticket(CacheRule(), CacheControls(), "k1", "alice", "free", BODY, "m", semantic_kind=True)
    assert await cache.lookup(ticket) is None
    assert await cache.lookup(ticket) is None
    cache.keep(ticket, ANSWER, 0.0)
    await settle()
    assert cache.counts.errors == 3 and cache.counts.misses == 2
    # Logged once per outage, not once per request.
    assert sum("served uncached" in record.message for record in caplog.records) == 1


async def test_a_request_can_shorten_the_ttl_but_not_lengthen_it() -> None:
    cache = ResponseCache(MemoryCacheStore())
    rule = CacheRule(ttl=60)
    longer = cache.ticket(rule, CacheControls(ttl=86400), "k1", "u", "t", BODY, "m", semantic_kind=False)
    shorter = cache.ticket(rule, CacheControls(ttl=5), "k1", "u", "t", BODY, "m", semantic_kind=False)
    assert (longer.ttl, shorter.ttl) == (60, 5)


async def test_an_entry_the_cache_cannot_read_is_a_miss() -> None:
    store = MemoryCacheStore()
    cache = ResponseCache(store)
    ticket = cache.ticket(CacheRule(), CacheControls(), "k1", "u", "t", BODY, "m", semantic_kind=False)
    for garbage in (b"not json", b'{"response": {}}', b"[1, 2]"):
        await store.put(ticket.key, garbage, 60)
        assert await cache.lookup(ticket) is None
    assert cache.counts.errors == 3
