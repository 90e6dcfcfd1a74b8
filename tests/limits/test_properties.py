"""Property tests: each algorithm against a small, independent reference model.

The references are written the obvious way (a token bucket that refills, counts per window, a
dict of leases), with exact fractions where the algorithm uses floats. Hypothesis drives both
with random arrival times and costs; every decision must agree. Each property runs on the
in-process store and on the real Redis (through the Lua script).
"""

from __future__ import annotations

import asyncio
import math
from fractions import Fraction

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from quotagate.limits import Algorithm, Calendar, InProcessStore, Limit, RedisStore, Unit

from ..conftest import REDIS_URL
from .conftest import T0, FakeClock

# Arrivals in whole milliseconds and integer ms-per-unit keep both sides exact.
steps = st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 12)), min_size=1, max_size=40)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def run_on_both(check: object) -> None:
    """Run an async property on a fresh in-process store and a fresh Redis store."""

    async def both() -> None:
        client = Redis.from_url(REDIS_URL)
        try:
            for make in (
                lambda c: InProcessStore(c),
                lambda c: RedisStore(client, clock=c, prefix="qg-prop:"),
            ):
                await client.delete(*(await client.keys("qg-prop:*")) or ["qg-prop:none"])
                clock = FakeClock()
                await check(make(clock), clock)  # type: ignore[operator]
        finally:
            await client.aclose()

    asyncio.run(both())


@SETTINGS
@given(steps=steps, interval=st.integers(1, 500), amount=st.integers(1, 10), burst=st.integers(1, 10))
def test_gcra_matches_a_token_bucket(steps: list[tuple[int, int]], interval: int, amount: int, burst: int) -> None:
    """GCRA admits exactly what a token bucket of size `burst` refilling one unit per interval admits."""

    async def check(store: object, clock: FakeClock) -> None:
        limit = Limit("p:gcra", Unit.TOKENS, amount, Algorithm.GCRA, period=interval * amount / 1000.0, burst=burst)
        tokens, last = Fraction(burst), 0
        elapsed = 0
        for gap, cost in steps:
            elapsed += gap
            clock.now = T0 + elapsed / 1000.0
            tokens = min(Fraction(burst), tokens + Fraction(elapsed - last, interval))
            last = elapsed
            expected = cost <= tokens
            if expected:
                tokens -= cost
            decision = await store.acquire([limit], [cost])  # type: ignore[attr-defined]
            assert decision.allowed == expected, (elapsed, cost, tokens)

    run_on_both(check)


@SETTINGS
@given(steps=steps, period=st.sampled_from([1000, 2000, 5000]), amount=st.integers(1, 30))
def test_sliding_window_matches_per_window_counts(steps: list[tuple[int, int]], period: int, amount: int) -> None:
    """The sliding window admits when previous-window count x unexpired share + current count fits."""

    async def check(store: object, clock: FakeClock) -> None:
        limit = Limit("p:sw", Unit.TOKENS, amount, Algorithm.SLIDING_WINDOW, period=period / 1000.0)
        counts: dict[int, int] = {}
        start = math.floor(T0 * 1000)
        elapsed = 0
        for gap, cost in steps:
            elapsed += gap
            now = start + elapsed
            clock.now = now / 1000.0
            window = now // period
            share = Fraction(period - (now - window * period), period)
            estimate = counts.get(window - 1, 0) * share + counts.get(window, 0)
            expected = cost <= amount and estimate + cost <= amount
            if expected:
                counts[window] = counts.get(window, 0) + cost
            decision = await store.acquire([limit], [cost])  # type: ignore[attr-defined]
            assert decision.allowed == expected, (elapsed, cost, estimate)

    run_on_both(check)


@SETTINGS
@given(
    steps=st.lists(st.tuples(st.integers(0, 20_000_000), st.integers(0, 40)), min_size=1, max_size=30),
    amount=st.integers(1, 100),
)
def test_calendar_quota_matches_a_counter_per_day(steps: list[tuple[int, int]], amount: int) -> None:
    """A daily quota admits while that day's total (in its time zone) stays within the amount."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    zone = ZoneInfo("America/New_York")  # with DST changes

    async def check(store: object, clock: FakeClock) -> None:
        limit = Limit(
            "p:cal",
            Unit.TOKENS,
            amount,
            Algorithm.CALENDAR,
            calendar=Calendar.DAY,
            timezone="America/New_York",
        )
        used: dict[object, int] = {}
        elapsed = 0
        for gap, cost in steps:
            elapsed += gap
            clock.now = T0 + elapsed / 1000.0
            day = datetime.fromtimestamp(clock.now, zone).date()
            expected = used.get(day, 0) + cost <= amount
            if expected:
                used[day] = used.get(day, 0) + cost
            decision = await store.acquire([limit], [cost])  # type: ignore[attr-defined]
            assert decision.allowed == expected

    run_on_both(check)


@SETTINGS
@given(
    steps=st.lists(st.tuples(st.integers(0, 5000), st.sampled_from(["acquire", "release"])), min_size=1, max_size=40),
    amount=st.integers(1, 4),
)
def test_concurrency_matches_a_lease_table(steps: list[tuple[int, str]], amount: int) -> None:
    """Concurrency admits while fewer than `amount` unexpired, unreleased leases exist."""

    async def check(store: object, clock: FakeClock) -> None:
        limit = Limit("p:conc", Unit.CONCURRENT, amount, Algorithm.CONCURRENCY, lease_seconds=10.0)
        leases: dict[str, float] = {}
        elapsed = 0
        for index, (gap, action) in enumerate(steps):
            elapsed += gap
            clock.now = T0 + elapsed / 1000.0
            now_ms = elapsed
            leases = {k: v for k, v in leases.items() if v > now_ms}
            if action == "release" and leases:
                oldest = min(leases, key=leases.__getitem__)
                del leases[oldest]
                await store.release([limit], oldest)  # type: ignore[attr-defined]
                continue
            lease = f"l{index}"
            expected = len(leases) < amount
            if expected:
                leases[lease] = now_ms + 10_000
            decision = await store.acquire([limit], [1], lease)  # type: ignore[attr-defined]
            assert decision.allowed == expected

    run_on_both(check)
