"""The cache stage: a request answered from an earlier answer, without calling a provider.

The proxy asks ``CacheRules`` which rule applies to the request's tier and model; with one, it
makes the request's ``CacheTicket`` (its exact key, and for the semantic cache its question and
the partition of requests that differ from it only in that question), looks it up before the
tenant's limits are charged, and after a provider's answer has gone to the client hands the
answer to ``keep``, which stores it in the background.

    exact      the same canonical request (see _key) in the same namespace
    semantic   first the exact key; then the nearest earlier question of the same partition (the
               same namespace, model, system prompt, earlier turns, tools and parameters), if its
               embedding's cosine similarity reaches the rule's threshold

The cache is an optimisation: a store or an embedding model that fails makes a lookup a miss and
a write nothing, never a failed request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import orjson

from ..config import CacheRule, Config
from ..errors import ServiceUnavailableError
from ..redis import RedisReplyError
from ._controls import CacheControls
from ._key import Namespace, cache_key, namespace_of

if TYPE_CHECKING:
    import numpy as np

    from ._embedder import Embedder
    from ._semantic import SemanticIndex
    from ._shared_index import SharedSemanticIndex

logger = logging.getLogger("quotagate.cache")

# Partitions from this many questions up are searched off the event loop: 2,000 512-dimensional
# rows take ~0.2 ms, 10,000 ~1 ms, and a batch of embeddings finishing at once would have the loop
# run their searches back to back (a 55 ms p99 of /health at 64 connections; bench/NOTES.md).
OFF_LOOP_ROWS = 2048

# What a failing store or embedding model raises: Redis's errors (ConnectionError and TimeoutError
# are OSErrors), and the model's own.
_STORE_ERRORS = (OSError, RedisReplyError)


class CacheStore(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes, ttl: float) -> None: ...

    async def purge(self, namespace: str | None = None) -> int: ...

    async def stats(self) -> dict[str, int]: ...


class CacheRules:
    """The cache rule of each tier and model of a configuration (None: not cached)."""

    def __init__(self, config: Config) -> None:
        self._tiers = {name: tier.cache for name, tier in config.tiers.items()}
        self._models = {model.name: model.cache for model in config.models}
        self._made: dict[tuple[str | None, str], CacheRule | None] = {}
        rules = [rule for rule in (*self._tiers.values(), *self._models.values()) if rule is not None]
        self.semantic = any(rule.mode == "semantic" for rule in rules)

    def rule_for(self, tier: str | None, model: str) -> CacheRule | None:
        try:
            return self._made[(tier, model)]
        except KeyError:
            made = self._made[(tier, model)] = self._merge(self._tiers.get(tier or ""), self._models.get(model))
            return made

    @staticmethod
    def _merge(tier: CacheRule | None, model: CacheRule | None) -> CacheRule | None:
        rule = tier
        if model is not None:
            if tier is not None:
                # Only the fields the model sets override the tier's: its threshold alone tunes
                # the tier's semantic cache for that model.
                rule = tier.model_copy(update=model.model_dump(exclude_unset=True))
            elif "mode" in model.model_fields_set:
                # A model's rule caches for tiers without one only when it says so: a threshold
                # alone is a tuning, not a cache turned on for every tier.
                rule = model
        return rule if rule is not None and rule.mode != "off" else None


@dataclass(slots=True)
class CacheTicket:
    """One request's place in the cache: where its answer is looked up and kept."""

    rule: CacheRule
    controls: CacheControls
    namespace: str
    key: str
    # The semantic cache's: the question and its partition (None: the request has no question
    # that can be compared, e.g. an image in the last message, and is cached exactly only).
    question: str | None = None
    partition: str | None = None
    vector: np.ndarray | None = None

    @property
    def ttl(self) -> float:
        """The rule's TTL, or the request's where it is shorter (a request cannot keep an answer
        that others share for longer than the operator allows)."""
        return min(self.controls.ttl, self.rule.ttl) if self.controls.ttl is not None else self.rule.ttl


@dataclass(frozen=True, slots=True)
class CacheHit:
    kind: Literal["hit", "semantic-hit"]
    response: dict[str, Any]
    cost_usd: float  # what the answer cost when a provider gave it: what this hit saved
    similarity: float | None = None


@dataclass
class CacheCounts:
    """This node's lookups since it started."""

    hits: int = 0
    semantic_hits: int = 0
    misses: int = 0
    stored: int = 0
    errors: int = 0


def question_of(body: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """A chat request's question (its last message, when that is a user's text) and the request
    without it: what the semantic cache compares, and what must be the same for an answer to fit."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        return None
    last = messages[-1]
    if last.get("role") != "user":
        return None
    content = last.get("content")
    if isinstance(content, list):
        if not all(isinstance(part, dict) and part.get("type") == "text" for part in content):
            return None  # an image or audio part: no text says what it asks
        content = "\n".join(str(part.get("text", "")) for part in content)
    if not isinstance(content, str):
        return None
    question = normalized(content)
    if not question or _width(question) > MAX_QUESTION_WIDTH:
        return None
    rest = {**body, "messages": [*messages[:-1], {**last, "content": None}]}
    return question, rest


# The longest question the semantic cache compares, in columns (a Chinese character is two). The
# model averages over the whole message: in a longer one a changed question moves the vector so
# little that different questions score over the threshold (behind a shared lead-in, from about 86
# English and 61 Chinese characters; bench/NOTES.md). Longer messages are cached exactly only.
MAX_QUESTION_WIDTH = 64


def _width(text: str) -> int:
    return len(text) + sum(1 for char in text if char >= "\u2e80")  # CJK and full-width: two columns


# Marks at the end of a question that change nothing it asks.
_TRAILING = "?!.\u3002\uff1f\uff01 \t\n"  # and the full stop, question and exclamation marks of Chinese text


def normalized(question: str) -> str:
    """``question`` without what only its typing changes: runs of white space, closing marks.
    The embedding model scores "Which courier do you ship with?" and the same without its
    question mark at 0.92, under any threshold that keeps false hits out (bench/NOTES.md)."""
    return " ".join(question.split()).rstrip(_TRAILING)


def operator_namespace(name: str) -> str:
    """The namespace an operator names (``key:ID``, ``user:NAME``, ``tier:NAME``, ``global``) as the
    cache keys it; ValueError for anything else."""
    scope, _, value = name.partition(":")
    scopes: dict[str, Namespace] = {"key": "key", "user": "user", "tier": "tier"}
    if name == "global":
        return namespace_of("global", None, None, None)
    if scope in scopes and value:
        return namespace_of(scopes[scope], value, value, value)
    raise ValueError(f"unknown cache namespace {name!r}: use key:ID, user:NAME, tier:NAME or global")


class ResponseCache:
    """Lookups and writes of answers, in ``store``. For the semantic cache, the gateway gives it
    ``index`` (fed through ``shared`` where every node shares it) and ``embedder`` once a rule is
    semantic; until then they are None and lookups are exact."""

    def __init__(
        self, store: CacheStore, *, store_kind: str = "memory", clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.store_kind = store_kind
        self.index: SemanticIndex | None = None
        self.shared: SharedSemanticIndex | None = None
        self.embedder: Embedder | None = None
        self._clock = clock
        self.counts = CacheCounts()
        # Writes in flight: kept so that they are not collected half-done, and awaited at close.
        self._writes: set[asyncio.Task[object]] = set()
        self._failing = False

    def ticket(
        self,
        rule: CacheRule,
        controls: CacheControls,
        key_id: str | None,
        user: str | None,
        tier: str | None,
        body: dict[str, Any],
        model: str,
        semantic_kind: bool,
    ) -> CacheTicket:
        """Where ``body``, asked of ``model`` by this tenant, is looked up and kept;
        ``semantic_kind``: whether the endpoint's requests have a question to compare (chat)."""
        namespace = namespace_of(rule.namespace, key_id, user, tier)
        ticket = CacheTicket(rule, controls, namespace, cache_key(namespace, body, model))
        if rule.mode == "semantic" and semantic_kind and self.index is not None and self.embedder is not None:
            asked = question_of(body)
            if asked is not None:
                ticket.question = asked[0]
                # The key of the request without its question: what a semantic match must share.
                ticket.partition = cache_key(namespace, asked[1], model)
        return ticket

    async def lookup(self, ticket: CacheTicket) -> CacheHit | None:
        """The answer for ``ticket`` if the cache has one (None: a miss)."""
        if not ticket.controls.lookup:
            self.counts.misses += 1
            return None
        entry = await self._get(ticket.key, ticket.controls.max_age)
        if entry is not None:
            self.counts.hits += 1
            return CacheHit("hit", entry["response"], entry["cost"])
        if ticket.question is not None and ticket.partition is not None:
            hit = await self._nearest(ticket)
            if hit is not None:
                self.counts.semantic_hits += 1
                return hit
        self.counts.misses += 1
        return None

    async def _nearest(self, ticket: CacheTicket) -> CacheHit | None:
        assert self.index is not None and ticket.partition is not None
        if self.index.rows(ticket.partition) is None:
            return None  # nothing to compare with: the question is embedded when its answer is kept
        vector = await self._embed(ticket)
        if vector is None:
            return None
        try:
            rows = self.index.rows(ticket.partition)
            if rows is not None and len(rows) >= OFF_LOOP_ROWS:
                # numpy lets go of the GIL for the product: the loop serves other requests meanwhile.
                scores = await asyncio.to_thread(rows.__matmul__, vector)
                found = self.index.nearest(ticket.partition, vector, scores)
            else:
                found = self.index.nearest(ticket.partition, vector)
        except ValueError as exc:  # a vector of another length: an embeddings model that changed
            self._failed("semantic index", exc)
            return None
        if found is None or found[1] < ticket.rule.threshold:
            return None
        key, similarity = found
        entry = await self._get(key, ticket.controls.max_age)
        if entry is None:
            # Expired or purged in the store (on another node, perhaps): the index forgets it.
            self.index.discard(key)
            return None
        left = entry["at"] + ticket.ttl - self._clock()
        if ticket.controls.store and left > 0:
            # Under this wording's own key too, for what is left of its time: asked again, it is
            # an exact hit, with no embedding.
            self._in_background(self._put(ticket.key, orjson.dumps(entry), left))
        return CacheHit("semantic-hit", entry["response"], entry["cost"], similarity)

    async def _embed(self, ticket: CacheTicket) -> np.ndarray | None:
        if ticket.vector is None and ticket.question is not None and self.embedder is not None:
            try:
                ticket.vector = await self.embedder.embed(ticket.question)
            except Exception as exc:  # the model's failure is the cache's, never the request's
                self._failed("embedding", exc)
        return ticket.vector

    async def _get(self, key: str, max_age: float | None) -> dict[str, Any] | None:
        """The stored entry: ``at`` (when it was stored), ``cost`` and ``response``."""
        try:
            value = await self.store.get(key)
        except _STORE_ERRORS as exc:
            self._failed("store", exc)
            return None
        self._recovered()
        if value is None:
            return None
        try:
            entry: dict[str, Any] = orjson.loads(value)
            stored_at, _, _ = entry["at"], entry["cost"], entry["response"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            self._failed("store (an entry it cannot read)", exc)
            return None
        if max_age is not None and self._clock() - stored_at > max_age:
            return None
        return entry

    def keep(self, ticket: CacheTicket, response: dict[str, Any], cost_usd: float) -> None:
        """Store ``response`` (which cost ``cost_usd``) as ``ticket``'s answer, in the background:
        the client has it already, and a write must not hold anything up."""
        if ticket.controls.store and ticket.ttl > 0:
            self._in_background(self._keep(ticket, response, cost_usd))

    def _in_background(self, write: Coroutine[Any, Any, object]) -> None:
        task = asyncio.get_running_loop().create_task(write)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _put(self, key: str, value: bytes, ttl: float) -> bool:
        try:
            await self.store.put(key, value, ttl)
        except _STORE_ERRORS as exc:
            self._failed("store", exc)
            return False
        self.counts.stored += 1
        return True

    async def _keep(self, ticket: CacheTicket, response: dict[str, Any], cost_usd: float) -> None:
        now = self._clock()
        value = orjson.dumps({"at": now, "cost": cost_usd, "response": response})
        if not await self._put(ticket.key, value, ticket.ttl):
            return
        if ticket.partition is None or self.index is None:
            return
        vector = await self._embed(ticket)
        if vector is None:
            return
        try:
            if self.shared is not None:
                await self.shared.add(ticket.partition, vector, ticket.key, now + ticket.ttl)
            else:
                self.index.add(ticket.partition, vector, ticket.key, now + ticket.ttl)
        except (ValueError, *_STORE_ERRORS) as exc:
            self._failed("semantic index", exc)

    def _failed(self, what: str, exc: BaseException) -> None:
        self.counts.errors += 1
        if not self._failing:
            # Once per outage: a down Redis would otherwise log on every request.
            logger.warning(
                "the response cache's %s failed (%s: %s): requests are served uncached", what, type(exc).__name__, exc
            )
            self._failing = True

    def _recovered(self) -> None:
        if self._failing:
            logger.info("the response cache's store answers again")
            self._failing = False

    async def purge(self, namespace: str | None = None) -> int:
        """Drop the answers of ``namespace`` (as an operator names it: ``user:alice``), or all:
        how many the store dropped."""
        internal = operator_namespace(namespace) if namespace is not None else None
        try:
            dropped = await self.store.purge(internal)
            if self.shared is not None:
                await self.shared.purge(internal)
            elif self.index is not None:
                self.index.purge(internal)
        except _STORE_ERRORS as exc:
            raise ServiceUnavailableError(
                f"The response cache's store is unavailable ({type(exc).__name__}): "
                "the purge may be incomplete. Try again.",
                code="cache_store_unavailable",
            ) from None
        return dropped

    async def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = {"store": self.store_kind}
        try:
            stats.update(await self.store.stats())
        except _STORE_ERRORS as exc:
            stats["store_error"] = f"{type(exc).__name__}: {exc}"
        if self.index is not None:
            stats["semantic_entries"] = len(self.index)
        lookups = self.counts.hits + self.counts.semantic_hits + self.counts.misses
        stats["node"] = {
            **asdict(self.counts),
            "hit_rate": round((self.counts.hits + self.counts.semantic_hits) / lookups, 4) if lookups else 0.0,
        }
        return stats

    async def start(self) -> None:
        """Start feeding the shared index (once: it keeps following the stream). The embedding
        model is the gateway's (the route classifier shares it), started and closed by it."""
        if self.shared is not None:
            await self.shared.start()

    async def aclose(self) -> None:
        if self._writes:
            await asyncio.wait(list(self._writes), timeout=5.0)
        if self.shared is not None:
            await self.shared.aclose()
