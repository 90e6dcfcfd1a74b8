"""Every algorithm's semantics, run on the in-process store and on the real Redis alike."""

from __future__ import annotations

import bisect
import math
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis

from quotagate.limits import Algorithm, Calendar, Limit, RedisConnection, RedisStore, Unit

from .conftest import T0, FakeClock, StoreFactory


def rpm(amount: int, key: str = "{k:a}:rpm", **kw: object) -> Limit:
    return Limit(key, Unit.REQUESTS, amount, Algorithm.GCRA, 60.0, **kw)  # type: ignore[arg-type]


def tpm(amount: int, key: str = "{k:a}:tpm", **kw: object) -> Limit:
    return Limit(key, Unit.TOKENS, amount, Algorithm.SLIDING_WINDOW, 60.0, **kw)  # type: ignore[arg-type]


async def test_gcra_bursts_then_refills_evenly(make_store: StoreFactory, clock: FakeClock) -> None:
    """A GCRA limit admits its burst at once, then one unit per period/amount."""
    store = make_store(clock)
    limit = rpm(10)
    admitted = [(await store.acquire([limit], [1])).allowed for _ in range(12)]
    assert admitted == [True] * 10 + [False] * 2
    denied = await store.acquire([limit], [1])
    assert denied.retry_after == pytest.approx(6.0)
    assert (denied.denied_by.used, denied.denied_by.remaining) == (10, 0)  # type: ignore[union-attr]
    clock.advance(5.9)
    assert not (await store.acquire([limit], [1])).allowed
    clock.advance(0.1)
    assert (await store.acquire([limit], [1])).allowed
    assert not (await store.acquire([limit], [1])).allowed


async def test_gcra_burst_is_configurable(make_store: StoreFactory, clock: FakeClock) -> None:
    """burst=3 on 60/min admits 3 at once, then one a second."""
    store = make_store(clock)
    limit = rpm(60, burst=3)
    assert [(await store.acquire([limit], [1])).allowed for _ in range(4)] == [True, True, True, False]
    clock.advance(1.0)
    assert (await store.acquire([limit], [1])).allowed


async def test_sliding_window_weights_the_previous_window(make_store: StoreFactory, clock: FakeClock) -> None:
    """Halfway into the next window, half of the previous window's count still counts."""
    store = make_store(clock)
    clock.now = 60.0 * math.floor(clock.now / 60.0)  # at a window boundary
    limit = tpm(100)
    assert (await store.acquire([limit], [100])).allowed
    assert not (await store.acquire([limit], [1])).allowed
    clock.advance(90.0)  # 30 s into the next window: 50 of the 100 still count
    assert (await store.acquire([limit], [50])).allowed
    refused = await store.acquire([limit], [1])
    assert not refused.allowed
    # The old window's share fades at 100/60 per second: 1 token frees after 0.6 s.
    assert refused.retry_after == pytest.approx(0.6)


async def test_calendar_quota_resets_at_midnight_in_its_time_zone(make_store: StoreFactory, clock: FakeClock) -> None:
    """A daily quota in Asia/Shanghai resets at 16:00 UTC, and says so."""
    store = make_store(clock)
    clock.now = datetime(2026, 11, 23, 15, 0, tzinfo=UTC).timestamp()  # 23:00 in Shanghai
    quota = Limit("{k:a}:tpd", Unit.TOKENS, 1000, Algorithm.CALENDAR, calendar=Calendar.DAY, timezone="Asia/Shanghai")
    assert (await store.acquire([quota], [900])).allowed
    refused = await store.acquire([quota], [200])
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(3600.0)  # until Shanghai midnight
    assert (refused.denied_by.used, refused.denied_by.remaining) == (900, 100)  # type: ignore[union-attr]
    clock.advance(3600.0)
    fresh = await store.acquire([quota], [200])
    assert fresh.allowed and fresh.statuses[0].used == 200
    assert fresh.statuses[0].window == datetime(2026, 11, 23, 16, 0, tzinfo=UTC).timestamp()


async def test_monthly_quota(make_store: StoreFactory, clock: FakeClock) -> None:
    """A monthly quota holds across days and resets on the 1st."""
    store = make_store(clock)
    clock.now = datetime(2026, 2, 27, 12, 0, tzinfo=UTC).timestamp()
    quota = Limit("{k:a}:rpmonth", Unit.REQUESTS, 2, Algorithm.CALENDAR, calendar=Calendar.MONTH)
    assert (await store.acquire([quota], [1])).allowed
    clock.advance(86400.0)
    assert (await store.acquire([quota], [1])).allowed
    refused = await store.acquire([quota], [1])
    assert not refused.allowed and refused.retry_after == pytest.approx(12 * 3600.0)
    clock.advance(12 * 3600.0)
    assert (await store.acquire([quota], [1])).allowed


async def test_concurrency_leases(make_store: StoreFactory, clock: FakeClock) -> None:
    """Leases count in flight; release frees a slot; a lease that is never released expires."""
    store = make_store(clock)
    limit = Limit("{k:a}:conc", Unit.CONCURRENT, 2, Algorithm.CONCURRENCY, lease_seconds=30.0)
    assert (await store.acquire([limit], [1], "a")).allowed
    assert (await store.acquire([limit], [1], "b")).allowed
    assert not (await store.acquire([limit], [1], "c")).allowed
    await store.release([limit], "a")
    assert (await store.acquire([limit], [1], "c")).allowed
    clock.advance(20.0)
    await store.renew([limit], "c")  # c is renewed; b is not
    clock.advance(15.0)  # b (35 s old) has expired: its node died
    status = (await store.status([limit]))[0]
    assert (status.used, status.remaining) == (1, 1)
    assert (await store.acquire([limit], [1], "d")).allowed


async def test_a_denial_consumes_nothing(make_store: StoreFactory, clock: FakeClock) -> None:
    """A request refused by its TPM takes nothing from its RPM (or its concurrency)."""
    store = make_store(clock)
    limits = [rpm(5), tpm(100), Limit("{k:a}:conc", Unit.CONCURRENT, 5, Algorithm.CONCURRENCY)]
    assert (await store.acquire(limits, [1, 90, 1], "l1")).allowed
    refused = await store.acquire(limits, [1, 20, 1], "l2")
    assert not refused.allowed and refused.denied_by.limit.key == "{k:a}:tpm"  # type: ignore[union-attr]
    # The refusal reports the other limits as they stand, uncharged.
    assert [s.remaining for s in refused.statuses] == [4, 10, 4]
    assert [s.remaining for s in await store.status(limits)] == [4, 10, 4]


async def test_a_request_bigger_than_the_limit_never_fits(make_store: StoreFactory, clock: FakeClock) -> None:
    """Asking for more than a limit's whole capacity is refused for good, not 'try later'."""
    store = make_store(clock)
    refused = await store.acquire([rpm(10), tpm(100)], [1, 101])
    assert refused.never_fits and math.isinf(refused.retry_after)
    assert (await store.acquire([tpm(100)], [100])).allowed


async def test_settle_refunds_and_charges_into_debt(make_store: StoreFactory, clock: FakeClock) -> None:
    """Settling returns what an estimate over-charged and charges what it missed, even past the limit."""
    store = make_store(clock)
    gcra_tpm = Limit("{k:a}:tpm-g", Unit.TOKENS, 600, Algorithm.GCRA, 60.0)
    window_tpm = tpm(600)
    limits = [gcra_tpm, window_tpm]
    decision = await store.acquire(limits, [500, 500])
    await store.settle(limits, [-300, -300], [s.window for s in decision.statuses])
    assert [s.remaining for s in await store.status(limits)] == [400, 400]
    await store.settle(limits, [700, 700], [0.0, 0.0])  # the response used far more than estimated
    refused = await store.acquire(limits, [1, 1])
    assert not refused.allowed
    assert refused.retry_after > 29.0  # 300 tokens of debt at 10 tokens/s (GCRA)


async def test_settle_a_quota_across_midnight(make_store: StoreFactory, clock: FakeClock) -> None:
    """A refund for yesterday's window is dropped; extra usage found after midnight counts today."""
    store = make_store(clock)
    clock.now = datetime(2026, 11, 23, 23, 59, 50, tzinfo=UTC).timestamp()
    quota = Limit("{k:a}:tpd", Unit.TOKENS, 1000, Algorithm.CALENDAR, calendar=Calendar.DAY)
    first = await store.acquire([quota], [500])
    clock.advance(20.0)  # past midnight while the request ran
    await store.settle([quota], [-100], [first.statuses[0].window])
    assert (await store.status([quota]))[0].used == 0
    assert (await store.acquire([quota], [10])).allowed
    # A late correction for yesterday's request that used more than its estimate: counted today.
    await store.settle([quota], [40], [first.statuses[0].window])
    assert (await store.status([quota]))[0].used == 50


async def test_status_does_not_consume(make_store: StoreFactory, clock: FakeClock) -> None:
    """Reading a limit's state charges nothing."""
    store = make_store(clock)
    limit = rpm(3)
    for _ in range(5):
        status = (await store.status([limit]))[0]
    assert (status.used, status.remaining) == (0, 3)


@pytest.fixture(params=["redis-py", "pipelined"])
def store_client(request: pytest.FixtureRequest, redis_client: Redis) -> Redis | RedisConnection:
    """What a RedisStore talks through: a redis-py client, or the gateway's pipelined connection."""
    if request.param == "redis-py":
        return redis_client
    return request.getfixturevalue("redis_connection")  # type: ignore[no-any-return]


async def test_redis_keys_expire_when_idle(
    redis_client: Redis, store_client: Redis | RedisConnection, clock: FakeClock
) -> None:
    """Every key the script writes has a TTL, so idle limits vanish from Redis."""
    store = RedisStore(store_client, clock=clock)
    limits = [
        rpm(10),
        tpm(100),
        Limit("{k:a}:tpd", Unit.TOKENS, 10, Algorithm.CALENDAR, calendar=Calendar.DAY),
        Limit("{k:a}:c", Unit.CONCURRENT, 1, Algorithm.CONCURRENCY),
    ]
    assert (await store.acquire(limits, [1, 1, 1, 1], "l")).allowed
    keys = await redis_client.keys("qg:*")
    assert len(keys) == 4
    for key in keys:
        assert await redis_client.pttl(key) > 0


async def test_redis_script_flush_mid_run(
    redis_client: Redis, store_client: Redis | RedisConnection, clock: FakeClock
) -> None:
    """After SCRIPT FLUSH (as after a restart or failover) decisions go on, nothing counted twice."""
    store = RedisStore(store_client, clock=clock)
    limit = rpm(5)
    results = []
    for index in range(8):
        if index in (2, 5):
            await redis_client.script_flush()
        results.append((await store.acquire([limit], [1])).allowed)
    assert results == [True] * 5 + [False] * 3


async def test_split_by_slot_refunds_earlier_groups(redis_client: Redis, clock: FakeClock) -> None:
    """In per-slot mode (Redis Cluster), a later group's refusal refunds the shared limits it passed."""
    store = RedisStore(redis_client, clock=clock, split_by_slot=True)
    shared = Limit("{global}:rpm", Unit.REQUESTS, 100, Algorithm.GCRA, 60.0, scope="global")
    mine = Limit("{k:a}:rpm", Unit.REQUESTS, 1, Algorithm.GCRA, 60.0, scope="key")
    assert (await store.acquire([shared, mine], [1, 1])).allowed
    refused = await store.acquire([shared, mine], [1, 1])
    assert not refused.allowed and refused.denied_by.limit is mine  # type: ignore[union-attr]
    assert (await store.status([shared]))[0].remaining == 99


async def test_exact_period_never_holds_more_than_the_amount_in_any_window(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    """A paced RPM (600, burst 10, exact_period) under constant pressure: at most 10 at once, 600 in any 60 s."""
    store = make_store(clock)
    limit = rpm(600, burst=10, exact_period=True)
    admitted: list[float] = []
    for _ in range(3 * 60 * 100):  # three minutes, asking every 10 ms
        while (await store.acquire([limit], [1])).allowed:
            admitted.append(clock.now)
        clock.advance(0.01)
    assert admitted.count(T0) == 10  # one second's share at once
    times = sorted(admitted)
    for window, most in ((60.0, 600), (1.0, 10 + 10)):
        assert max(bisect.bisect_left(times, t + window) - i for i, t in enumerate(times)) <= most
    assert len(admitted) >= 3 * 600 - 30  # and it still serves (nearly) its whole rate


@pytest.mark.parametrize("amount", [60_001, 1_000_000, 10_000_000])
async def test_rates_above_one_per_millisecond_admit(make_store: StoreFactory, clock: FakeClock, amount: int) -> None:
    """A GCRA whose interval is below a millisecond, burst 1, admits a request on an epoch-ms clock."""
    store = make_store(clock)
    clock.now = 1_795_000_000.123457  # epoch ms of this size hold floats spaced 2.4e-4 ms apart
    limit = rpm(amount, burst=1)
    assert (await store.acquire([limit], [1])).allowed
    clock.advance(60.0 / amount)
    assert (await store.acquire([limit], [1])).allowed


@pytest.mark.parametrize(("amount", "unit_cost"), [(1_000_000, 1), (10_000_000, 1000)])
async def test_a_huge_bucket_admits_its_burst_and_no_more(
    make_store: StoreFactory, clock: FakeClock, amount: int, unit_cost: int
) -> None:
    """1,000,000 RPM paced (burst 16,667) and a 10,000,000-token bucket: at once, exactly the burst, within a request."""
    store = make_store(clock)
    clock.now = 1_795_000_000.123457
    if unit_cost == 1:
        limit = rpm(amount, burst=16_667, exact_period=True)
    else:
        limit = Limit("{k:a}:tpm", Unit.TOKENS, amount, Algorithm.GCRA, 60.0)
    admitted = 0
    while (await store.acquire([limit], [unit_cost])).allowed:
        admitted += unit_cost
    burst = limit.capacity * (unit_cost if limit.unit is Unit.REQUESTS else 1)
    assert burst - 100 * unit_cost <= admitted <= burst
