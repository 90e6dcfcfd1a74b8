"""The response cache: answers kept by a request's canonical form (exact) or by the meaning of
its question (semantic), per namespace, in this process or in Redis (see _cache for the stage).

The semantic parts (``_semantic.SemanticIndex``, ``_shared_index.SharedSemanticIndex``,
``_embedder.LocalEmbedder``) are imported where a semantic rule needs them: they bring numpy."""

from ._cache import (
    CacheCounts,
    CacheHit,
    CacheRules,
    CacheStore,
    CacheTicket,
    ResponseCache,
    normalized,
    operator_namespace,
    question_of,
)
from ._controls import CacheControls, read_controls
from ._key import IGNORED_FIELDS, cache_key, canonical, namespace_of
from ._memory import CacheStats, MemoryCacheStore
from ._redis_store import RedisCacheStore
from ._replay import assemble_stream, replay_as_stream, replayable

__all__ = [
    "IGNORED_FIELDS",
    "CacheControls",
    "CacheCounts",
    "CacheHit",
    "CacheRules",
    "CacheStats",
    "CacheStore",
    "CacheTicket",
    "MemoryCacheStore",
    "RedisCacheStore",
    "ResponseCache",
    "assemble_stream",
    "cache_key",
    "canonical",
    "namespace_of",
    "normalized",
    "operator_namespace",
    "question_of",
    "read_controls",
    "replay_as_stream",
    "replayable",
]
