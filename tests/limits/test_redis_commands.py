"""The gateway's acquire command, encoded once per tuple of limits, is the command in full."""

from __future__ import annotations

from datetime import UTC, datetime

from quotagate.limits import Algorithm, Calendar, Limit, RedisConnection, RedisStore, Unit
from quotagate.limits._redis import _PLAIN_HEAD
from quotagate.redis._pipelined import _pack

from ..conftest import REDIS_URL

LIMITS = (
    Limit("{k:a}:rpm", Unit.REQUESTS, 60, Algorithm.GCRA, 60.0),
    Limit("{k:a}:tpm", Unit.TOKENS, 10_000, Algorithm.SLIDING_WINDOW, 60.0),
    Limit("{k:a}:tpd", Unit.TOKENS, 1_000_000, Algorithm.CALENDAR, calendar=Calendar.DAY, timezone="Europe/Paris"),
)


def full_command(store: RedisStore, costs: list[int], now: float) -> bytes:
    keys, args = store._encoded_call(LIMITS, costs, now, _PLAIN_HEAD)
    return _pack(("EVALSHA", store._acquire_script.sha, len(keys), *keys, *args))


def test_the_cached_command_is_the_whole_command_across_a_calendar_window() -> None:
    """Costs change per request and a daily quota's window at midnight (Paris): both are in the bytes sent."""
    store = RedisStore(RedisConnection(REDIS_URL))
    before_midnight = datetime(2026, 12, 1, 22, 59, 59, tzinfo=UTC).timestamp()  # 23:59:59 in Paris
    after_midnight = before_midnight + 2
    for now, costs in (
        (before_midnight, [1, 500, 500]),
        (before_midnight + 0.5, [1, 7, 12_345]),  # from the cache: only the costs differ
        (after_midnight, [1, 500, 500]),  # a new day: the quota's window moved
        (after_midnight + 1, [1, 3, 3]),
    ):
        assert store._acquire_command(LIMITS, costs, now) == full_command(store, costs, now)
    assert len(store._commands) == 1
