"""Gateway key -> Principal, with a short-lived cache in front of the database.

A key lookup on every request would put the database on the hot path; instead each node trusts
a lookup for ``ttl`` seconds. Disabling or deleting a key through this node's admin API evicts it
at once; on other nodes (and after ``quotagate keys disable`` from the CLI) it stops working
within ``ttl``. Unknown keys are cached too (for a second), so a flood of bad keys costs the
database one query per distinct key per second, not one per request.

Expiry is checked against the clock on every request, never cached.

While the database does not answer, keys this node has looked up before keep working, however
old their lookup (disabling one elsewhere takes effect when the database is back); keys it has
not seen get a 503 with Retry-After, not a 401: the key may be fine. A failed lookup is not
retried for ``_OUTAGE_RETRY`` seconds, so requests during an outage do not each wait for the
lookup's deadline, and a recovering database is not met by every request at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from .._logging import EveryFewSeconds
from ..errors import AuthenticationError, ServiceUnavailableError
from ..keys import KeyRecord, KeyStore, hash_key
from ._principal import Principal

logger = logging.getLogger("quotagate.auth")

_NEGATIVE_TTL = 1.0
_MAX_ENTRIES = 100_000
_OUTAGE_RETRY = 1.0


def extract_key(authorization: str | None, x_api_key: str | None) -> str:
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        raise AuthenticationError("Invalid Authorization header: expected 'Bearer YOUR_KEY'.", code="invalid_api_key")
    if x_api_key and x_api_key.strip():
        return x_api_key.strip()
    raise AuthenticationError(
        "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY' "
        "(or in the 'x-api-key' or 'api-key' header).",
        code="missing_api_key",
    )


class Authenticator:
    def __init__(
        self,
        store: KeyStore,
        ttl: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._ttl = ttl
        self._monotonic = monotonic
        self._now = now
        # key hash -> (record or None for "no such key", its principal, monotonic time it was fetched)
        self._cache: dict[str, tuple[KeyRecord | None, Principal | None, float]] = {}
        self._inflight: dict[str, asyncio.Future[KeyRecord | None]] = {}
        # Bumped by forget(): a lookup that started before a key changed must not cache it.
        self._generation = 0
        # Until then (monotonic), the database is taken to be down: no lookup is sent.
        self._unavailable_until = 0.0
        self._log_failure = EveryFewSeconds(logger, clock=monotonic)

    async def authenticate(self, key: str) -> Principal:
        key_hash = hash_key(key)
        cached = self._cache.get(key_hash)
        if cached is not None and cached[1] is not None and self._monotonic() - cached[2] < self._ttl:
            record, principal = cached[0], cached[1]
        else:
            record = await self._lookup(key_hash)
            principal = None
        if record is None:
            raise AuthenticationError("Incorrect API key provided.", code="invalid_api_key")
        if record.disabled:
            raise AuthenticationError("This API key has been disabled.", code="key_disabled")
        if record.expires_at is not None and record.is_expired(self._now()):
            raise AuthenticationError(f"This API key expired at {record.expires_at.isoformat()}.", code="key_expired")
        if principal is None:
            principal = _principal(record)
        return principal

    async def _lookup(self, key_hash: str) -> KeyRecord | None:
        now = self._monotonic()
        cached = self._cache.get(key_hash)
        if cached is not None:
            record, _, fetched = cached
            ttl = self._ttl if record is not None else min(self._ttl, _NEGATIVE_TTL)
            if now - fetched < ttl:
                return record
        if now < self._unavailable_until:
            return _stale(cached)
        # Single flight: when a busy key's entry expires, the hundreds of requests in flight
        # with it share one database query instead of each sending its own.
        pending = self._inflight.get(key_hash)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch(key_hash, now))
            self._inflight[key_hash] = pending
            pending.add_done_callback(lambda _: self._inflight.pop(key_hash, None))
        try:
            # shield: one waiter being cancelled (its client left) must not cancel the others' query.
            return await asyncio.shield(pending)
        except ServiceUnavailableError:
            return _stale(cached)

    async def _fetch(self, key_hash: str, now: float) -> KeyRecord | None:
        generation = self._generation
        try:
            record = await self._store.find_by_hash(key_hash)
        except Exception as exc:
            # Whatever the cause (the database down, or a fault of ours), a client's key cannot be
            # checked: a 503, and the cause in the log (once per 10 s while it lasts).
            self._unavailable_until = self._monotonic() + _OUTAGE_RETRY
            self._log_failure.warning("key lookups are failing: %s: %s", type(exc).__name__, exc)
            raise _unavailable() from exc
        if generation == self._generation:
            if len(self._cache) >= _MAX_ENTRIES:
                self._cache.clear()
            # The principal is built once per lookup, not per request.
            self._cache[key_hash] = (record, _principal(record) if record is not None else None, now)
        return record

    def forget(self, key_id: str) -> None:
        """Drop a key from the cache (it was disabled, deleted or changed on this node)."""
        stale = [h for h, (rec, _, _) in list(self._cache.items()) if rec is not None and rec.id == key_id]
        for key_hash in stale:
            del self._cache[key_hash]
        self._generation += 1


def _unavailable() -> ServiceUnavailableError:
    return ServiceUnavailableError(
        "The key database is unavailable; try again shortly.",
        headers={"Retry-After": f"{_OUTAGE_RETRY:g}"},
    )


def _stale(cached: tuple[KeyRecord | None, Principal | None, float] | None) -> KeyRecord:
    """The key as this node last saw it, while the database cannot say; a 503 if it never saw it
    (or saw it as unknown: that was a second ago at most, and the key may have been made since)."""
    if cached is None or cached[0] is None:
        raise _unavailable()
    return cached[0]


def _principal(record: KeyRecord) -> Principal:
    return Principal(
        key_id=record.id,
        user=record.user,
        tier=record.tier,
        models=frozenset(record.models) if record.models is not None else None,
        limits=record.limits,
        team=record.team,
    )
