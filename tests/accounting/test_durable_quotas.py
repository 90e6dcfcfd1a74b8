"""Calendar quotas and budgets kept in the database by the ledger's writer, taken back by the next
process: on a SQLite file and on PostgreSQL, with an injected clock."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa

from quotagate.accounting import Ledger, SqlWriter
from quotagate.accounting._quotas import DurableQuotas, quota_state_table
from quotagate.keys import KeyStore
from quotagate.limits import Algorithm, Calendar, InProcessStore, Limit, Unit

from ..limits.conftest import FakeClock

HOUR = 3600.0


@pytest.fixture(params=["sqlite", "postgresql"])
async def keys(request: pytest.FixtureRequest, sqlite_url: str) -> AsyncIterator[KeyStore]:
    """The gateway's database, with its schema: a SQLite file, or a PostgreSQL database."""
    url = sqlite_url if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    store = KeyStore.from_url(url)
    await store.create_schema()
    yield store
    await store.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()  # 2023-11-14 22:13:20 UTC


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own: the PostgreSQL database is shared by the session."""
    return "{k:" + uuid.uuid4().hex[:8] + "}"


def quota(key: str, amount: int, calendar: Calendar = Calendar.DAY, unit: Unit = Unit.TOKENS) -> Limit:
    return Limit(key, unit, amount, Algorithm.CALENDAR, calendar=calendar)


async def saved_keys(keys: KeyStore, prefix: str) -> list[str]:
    def read(conn: sa.Connection) -> list[str]:
        table = quota_state_table
        rows = conn.execute(sa.select(table.c.limit_key).where(table.c.limit_key.startswith(prefix)))
        return sorted(row.limit_key for row in rows)

    return await keys.database.run(read)


async def restarted(keys: KeyStore, clock: FakeClock) -> InProcessStore:
    """The store of the next process, after it loaded what the last one kept."""
    store = InProcessStore(clock, durable_quotas=True)
    await DurableQuotas(store, clock).load(keys.database)
    return store


async def test_quotas_and_budgets_outlive_the_store_and_rates_do_not(
    keys: KeyStore, prefix: str, clock: FakeClock
) -> None:
    """A day quota and a month budget, settled, come back in the next store as they were; a rate does not."""
    store = InProcessStore(clock, durable_quotas=True)
    ledger = Ledger(SqlWriter(keys.database, DurableQuotas(store, clock)))
    tpd = quota(f"{prefix}:tpd", 100)
    budget = quota(f"{prefix}:usd_per_month", 5_000_000, Calendar.MONTH, Unit.SPEND)
    rpm = Limit(f"{prefix}:rpm:2/60", Unit.REQUESTS, 2)
    limits = [tpd, budget, rpm]
    decision = await store.acquire(limits, [60, 2_000_000, 1])
    assert decision.allowed
    await store.settle(limits, [-10, 500_000, 0], [s.window for s in decision.statuses])
    await ledger.flush()  # no usage rows: the quotas' changes are written all the same
    await ledger.writer.aclose()
    assert await saved_keys(keys, prefix) == sorted([tpd.key, budget.key])

    clock.advance(HOUR)
    after = await restarted(keys, clock)
    assert [s.used for s in await after.status(limits)] == [50, 2_500_000, 0]
    assert not (await after.acquire([tpd], [51])).allowed
    assert (await after.acquire([tpd], [50])).allowed


async def test_the_state_of_a_window_gone_by_is_not_restored(keys: KeyStore, prefix: str, clock: FakeClock) -> None:
    """Yesterday's day quota starts afresh today (the month's goes on), and its row goes once moot."""
    clock.now = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
    store = InProcessStore(clock, durable_quotas=True)
    writer = SqlWriter(keys.database, DurableQuotas(store, clock))
    tpd, monthly = quota(f"{prefix}:tpd", 100), quota(f"{prefix}:tokens_per_month", 1000, Calendar.MONTH)
    assert (await store.acquire([tpd, monthly], [100, 100])).allowed
    await writer.write([])
    await writer.aclose()

    clock.now = 1_700_008_200.0  # 2023-11-15 00:30 UTC: the next day, the same month
    today = await restarted(keys, clock)
    assert [s.used for s in await today.status([tpd, monthly])] == [0, 100]
    assert (await today.acquire([tpd], [100])).allowed

    clock.now = 1_700_015_400.0  # 02:30: an hour past the day's end, yesterday's row is moot
    await restarted(keys, clock)
    assert await saved_keys(keys, prefix) == [monthly.key]


async def test_a_quota_that_now_counts_something_else_starts_afresh(
    keys: KeyStore, prefix: str, clock: FakeClock
) -> None:
    """Under the same key, a quota whose unit changed starts from zero; one whose amount changed keeps its count."""
    store = InProcessStore(clock, durable_quotas=True)
    writer = SqlWriter(keys.database, DurableQuotas(store, clock))
    daily, other = quota(f"{prefix}:x:daily", 100), quota(f"{prefix}:x:other", 100)
    assert (await store.acquire([daily, other], [40, 40])).allowed
    await writer.write([])
    await writer.aclose()

    after = await restarted(keys, clock)
    requests = quota(daily.key, 100, unit=Unit.REQUESTS)
    larger = quota(other.key, 500)
    assert [s.used for s in await after.status([requests, larger])] == [0, 40]


async def test_changes_a_failed_write_missed_go_with_the_next_one(sqlite_url: str, clock: FakeClock) -> None:
    """A write that fails (no table yet) loses no quota's change: the next write stores it."""
    keys = KeyStore.from_url(sqlite_url)
    store = InProcessStore(clock, durable_quotas=True)
    writer = SqlWriter(keys.database, DurableQuotas(store, clock))
    tpd = quota("{k:a}:tpd", 100)
    try:
        assert (await store.acquire([tpd], [30])).allowed
        with pytest.raises(Exception, match="qg_quota_state"):
            await writer.write([])
        await keys.create_schema()
        await writer.write([])
        after = await restarted(keys, clock)
        assert [s.used for s in await after.status([tpd])] == [30]
    finally:
        await writer.aclose()
        await keys.close()


async def test_a_reset_quota_leaves_no_row(keys: KeyStore, prefix: str, clock: FakeClock) -> None:
    """A quota reset in the store is deleted from the database with the next write."""
    store = InProcessStore(clock, durable_quotas=True)
    writer = SqlWriter(keys.database, DurableQuotas(store, clock))
    tpd = quota(f"{prefix}:tpd", 100)
    assert (await store.acquire([tpd], [30])).allowed
    await writer.write([])
    await store.reset([tpd])
    await writer.write([])
    await writer.aclose()
    assert await saved_keys(keys, prefix) == []


async def test_a_store_without_durable_quotas_notes_nothing(clock: FakeClock) -> None:
    """The client library's and the fallback's store keep no record of changes: persistence is opt-in."""
    store = InProcessStore(clock)
    assert (await store.acquire([quota("{k:a}:tpd", 100)], [30])).allowed
    assert store.quota_changes() == ({}, [], [])
