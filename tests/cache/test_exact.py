"""The exact cache's key and its in-process store (issue 20, first part)."""

from __future__ import annotations

from dataclasses import dataclass

from quotagate.cache._key import cache_key, canonical, namespace_of
from quotagate.cache._memory import MemoryCacheStore

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Which courier do you use?"}]}


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def test_what_does_not_change_the_answer_does_not_change_the_key() -> None:
    """Who asks, request ids, streaming and the cache's own controls leave the key as it is."""
    plain = cache_key("g", CHAT, "gpt-4o-mini")
    decorated = {
        **CHAT,
        "user": "alice",
        "stream": True,
        "stream_options": {"include_usage": True},
        "cache": {"ttl": 5},
    }
    assert cache_key("g", decorated, "gpt-4o-mini") == plain
    assert cache_key("g", dict(reversed(list(CHAT.items()))), "gpt-4o-mini") == plain  # key order


def test_what_changes_the_answer_changes_the_key() -> None:
    """Another message, a sampling parameter, tools, or another served model: another key."""
    plain = cache_key("g", CHAT, "gpt-4o-mini")
    other_question = {**CHAT, "messages": [{"role": "user", "content": "How do returns work?"}]}
    assert cache_key("g", other_question, "gpt-4o-mini") != plain
    assert cache_key("g", {**CHAT, "temperature": 0.2}, "gpt-4o-mini") != plain
    assert cache_key("g", {**CHAT, "tools": [{"type": "function", "function": {"name": "f"}}]}, "gpt-4o-mini") != plain
    assert cache_key("g", CHAT, "gpt-4.1") != plain
    assert b'"model":"gpt-4.1"' in canonical(CHAT, "gpt-4.1")  # the model as served, not as asked


def test_namespaces_never_share_an_entry() -> None:
    """The same question in two namespaces is two keys."""
    alice = namespace_of("user", "k1", "alice", "paid")
    bob = namespace_of("user", "k2", "bob", "paid")
    assert alice != bob and cache_key(alice, CHAT, "m") != cache_key(bob, CHAT, "m")
    assert namespace_of("tier", "k1", "alice", "paid") == namespace_of("tier", "k2", "bob", "paid")
    assert namespace_of("global", "k1", "alice", "paid") == "g"


async def test_an_entry_lives_for_its_ttl() -> None:
    """Found until its TTL ends, gone after (with an injected clock)."""
    clock = Clock()
    store = MemoryCacheStore(clock=clock)
    await store.put("g:a", b"answer", ttl=60)
    clock.now += 59.9
    assert await store.get("g:a") == b"answer"
    clock.now += 0.2
    assert await store.get("g:a") is None
    assert store.counts.expired == 1 and store.counts.entries == 0 and store.counts.bytes == 0


async def test_the_least_recently_used_go_first_when_full() -> None:
    """Bounded by entries and by bytes; a lookup makes an entry recent."""
    store = MemoryCacheStore(max_entries=2, max_bytes=100)
    await store.put("g:a", b"a", 60)
    await store.put("g:b", b"b", 60)
    assert await store.get("g:a") == b"a"
    await store.put("g:c", b"c", 60)  # b is the least recently used
    assert await store.get("g:b") is None and await store.get("g:a") == b"a"
    await store.put("g:big", b"x" * 99, 60)  # over 100 bytes with the others: they go
    assert store.counts.bytes <= 100 and await store.get("g:big") == b"x" * 99
    await store.put("g:huge", b"x" * 101, 60)  # larger than the whole store: not kept
    assert await store.get("g:huge") is None


async def test_purge_drops_one_namespace_or_all() -> None:
    """A purge of one namespace leaves the others."""
    store = MemoryCacheStore()
    for key in ("u:alice:1", "u:alice:2", "u:bob:1"):
        await store.put(key, b"v", 60)
    assert await store.purge("u:alice") == 2
    assert await store.get("u:bob:1") == b"v"
    assert await store.purge() == 1 and store.counts.entries == 0
