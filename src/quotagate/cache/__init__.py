"""The response cache (issue 20, in progress): the exact cache's key, its in-process store, and
the stream form of a cached answer. Not yet a stage of the request path."""

from ._key import IGNORED_FIELDS, cache_key, canonical, namespace_of
from ._memory import CacheStats, MemoryCacheStore
from ._replay import assemble_stream, replay_as_stream

__all__ = [
    "IGNORED_FIELDS",
    "CacheStats",
    "MemoryCacheStore",
    "assemble_stream",
    "cache_key",
    "canonical",
    "namespace_of",
    "replay_as_stream",
]
