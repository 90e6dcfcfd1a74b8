"""The embedded cache store: in the process, bounded by entries and by bytes, least recently used
out first, each entry kept for its own TTL."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass
class CacheStats:
    entries: int = 0
    bytes: int = 0
    evicted: int = 0
    expired: int = 0


class MemoryCacheStore:
    """``get``/``put``/``purge``/``stats`` on answers kept in this process; ``clock`` for tests."""

    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        max_bytes: int = 256 * 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._clock = clock
        # key -> (expires at, value); oldest use first.
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self.counts = CacheStats()

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if self._clock() >= expires:
            self._drop(key, value)
            self.counts.expired += 1
            return None
        self._entries.move_to_end(key)
        return value

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        """Keep ``value`` for ``ttl`` seconds; one larger than the whole store is not kept."""
        if ttl <= 0 or len(value) > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.counts.entries -= 1
            self.counts.bytes -= len(old[1])
        self._entries[key] = (self._clock() + ttl, value)
        self.counts.entries += 1
        self.counts.bytes += len(value)
        while self.counts.entries > self.max_entries or self.counts.bytes > self.max_bytes:
            oldest, (_, dropped) = next(iter(self._entries.items()))
            self._drop(oldest, dropped)
            self.counts.evicted += 1

    async def purge(self, namespace: str | None = None) -> int:
        """Drop every entry (of ``namespace``, when given); how many were dropped."""
        prefix = None if namespace is None else namespace + ":"
        doomed = [key for key in self._entries if prefix is None or key.startswith(prefix)]
        for key in doomed:
            self._drop(key, self._entries[key][1])
        return len(doomed)

    async def stats(self) -> dict[str, int]:
        return asdict(self.counts)

    def _drop(self, key: str, value: bytes) -> None:
        del self._entries[key]
        self.counts.entries -= 1
        self.counts.bytes -= len(value)
