"""The console's views of the ledger (accounting._ledger_views): the request log's pages, filters
and CSV, the usage series' buckets, and the rollup that the series and reports read, which must
answer as the rows do, also in a database that existed before it."""

from __future__ import annotations

import asyncio
import csv
import io
import random
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from quotagate.accounting import SqlWriter, UsageRow, _ledger_views, usage_report, usage_table
from quotagate.accounting._ledger_views import (
    CSV_PAGE,
    ROW_FIELDS,
    LedgerFilters,
    Position,
    decode_cursor,
    encode_cursor,
    ledger_csv,
    ledger_page,
    usage_series,
)
from quotagate.accounting.ledger._rollup import rollup_ready
from quotagate.accounting.ledger._schema import usage_rollup_table
from quotagate.keys import Database, KeyStore

from .test_reports import _seed
from .test_stream_ledger import usage_row

NOW = datetime(2026, 9, 21, 12, 34, 56, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, sqlite_url: str) -> str:
    """On SQLite and on the real PostgreSQL."""
    if request.param == "sqlite":
        return sqlite_url
    return str(request.getfixturevalue("postgres_url"))


def at(moment: datetime) -> float:
    return moment.timestamp()


def row(request_id: str, moment: datetime, **changes: Any) -> UsageRow:
    return usage_row(request_id)._replace(ts=at(moment), day=moment.date().isoformat(), **changes)


def _mixed_rows() -> list[UsageRow]:
    """Rows of two keys, users, teams and models over three days, a routed request, errors, a cache
    hit, and three rows sharing one ts."""
    base = NOW - timedelta(days=2)
    rows = []
    for number in range(30):
        moment = base + timedelta(hours=number * 1.7, microseconds=number)
        alice = number % 3 != 0
        rows.append(
            row(
                f"req_{number:03d}",
                moment,
                key_id="k1" if alice else "k2",
                user_id="alice" if alice else "bob",
                team="a" if alice else None,
                tier="free" if number % 2 else "pro",
                model_requested="auto" if number % 7 == 0 else "gpt-4o-mini",
                model_served=None if number % 5 == 0 else "gpt-4o-mini",
                deployment=None if number % 5 == 0 else f"openai/gpt-4o-mini#{number % 2}",
                status=429 if number % 5 == 0 else (502 if number % 11 == 0 else 200),
                cache_hit=number % 4 == 0,
            )
        )
    tied = NOW - timedelta(hours=3)
    rows += [row(f"req_tie_{name}", tied, user_id="carol") for name in ("b", "a", "c")]
    return rows


def _matches(record: UsageRow, filters: LedgerFilters) -> bool:
    """What the filters mean, row by row: the reference the database's answers must equal."""
    moment = datetime.fromtimestamp(record.ts, UTC)
    status = filters.status
    return (
        (filters.since is None or moment >= filters.since)
        and (filters.until is None or moment < filters.until)
        and (filters.key is None or record.key_id == filters.key)
        and (filters.user is None or record.user_id == filters.user)
        and (filters.team is None or record.team == filters.team)
        and (filters.model is None or filters.model in (record.model_served, record.model_requested))
        and (filters.deployment is None or record.deployment == filters.deployment)
        and (filters.tier is None or record.tier == filters.tier)
        and (
            status is None
            or (status == "ok" and record.status < 400)
            or (status == "error" and record.status >= 400)
            or record.status == status
        )
    )


def _expected(rows: list[UsageRow], filters: LedgerFilters) -> list[str]:
    chosen = [r for r in rows if _matches(r, filters)]
    return [r.request_id for r in sorted(chosen, key=lambda r: (round(r.ts * 1e6), r.request_id), reverse=True)]


async def _every_page(database: Database, filters: LedgerFilters, limit: int) -> list[str]:
    ids: list[str] = []
    cursor = None
    for _ in range(1000):
        page = await ledger_page(database, filters, limit, cursor)
        assert len(page.rows) <= limit
        ids += [r["request_id"] for r in page.rows]
        cursor = page.next_cursor
        if cursor is None:
            return ids
        assert len(page.rows) == limit
    raise AssertionError("the pages did not end")


async def _drop_rollup_triggers(database: Database) -> None:
    """Takes the rollup's triggers away: readers then sum the rows (the raw answers to compare with)."""

    def drop(conn: sa.Connection) -> None:
        if conn.dialect.name == "sqlite":
            names = conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'trigger'").scalars().all()
            for name in names:
                conn.exec_driver_sql(f"DROP TRIGGER {name}")
        else:
            names = conn.exec_driver_sql(
                "SELECT tgname FROM pg_trigger WHERE tgrelid = 'qg_usage'::regclass AND NOT tgisinternal"
            ).scalars()
            for name in list(names):
                conn.exec_driver_sql(f"DROP TRIGGER {name} ON qg_usage")

    await database.run(drop)
    assert not await database.run(rollup_ready)


async def test_pages_are_newest_first_and_end_with_no_cursor(database: str) -> None:
    """Page after page, the rows come newest first, each once, and the last page has no next cursor."""
    rows = _mixed_rows()
    store = await _seed(database, rows)
    try:
        first = await ledger_page(store.database, LedgerFilters(), limit=5)
        ids = await _every_page(store.database, LedgerFilters(), limit=5)
        single = await ledger_page(store.database, LedgerFilters(), limit=500)
    finally:
        await store.close()
    assert ids == _expected(rows, LedgerFilters())
    assert [r["request_id"] for r in first.rows] == ids[:5] and first.next_cursor is not None
    assert len(single.rows) == len(rows) and single.next_cursor is None


async def test_rows_sharing_a_ts_are_neither_skipped_nor_repeated_across_pages(database: str) -> None:
    """Keyset pagination over (ts, request_id): seven rows of one ts, read in pages of 2 and 3 that
    end in the middle of them, come once each, ordered by request id within the ts."""
    moment = NOW - timedelta(minutes=5)
    rows = [row(f"req_same_{n}", moment) for n in (5, 1, 6, 3, 0, 4, 2)]
    rows += [row("req_before", moment - timedelta(microseconds=1)), row("req_after", moment + timedelta(seconds=1))]
    store = await _seed(database, rows)
    try:
        by_two = await _every_page(store.database, LedgerFilters(), limit=2)
        by_three = await _every_page(store.database, LedgerFilters(), limit=3)
    finally:
        await store.close()
    expected = ["req_after", *(f"req_same_{n}" for n in range(6, -1, -1)), "req_before"]
    assert by_two == by_three == expected


@pytest.mark.parametrize(
    "filters",
    [
        LedgerFilters(key="k2"),
        LedgerFilters(user="alice"),
        LedgerFilters(user="carol"),
        LedgerFilters(team="a"),
        LedgerFilters(model="gpt-4o-mini"),
        LedgerFilters(model="auto"),
        LedgerFilters(deployment="openai/gpt-4o-mini#1"),
        LedgerFilters(tier="pro"),
        LedgerFilters(status="ok"),
        LedgerFilters(status="error"),
        LedgerFilters(status=502),
        LedgerFilters(status=200),
        LedgerFilters(status=418),
        LedgerFilters(key="nobody"),
        LedgerFilters(since=NOW - timedelta(days=1), until=NOW - timedelta(hours=2)),
        LedgerFilters(team="a", status="error", since=NOW - timedelta(days=1, hours=12)),
        LedgerFilters(user="alice", model="auto", tier="free"),
    ],
    ids=repr,
)
@pytest.mark.parametrize("window", [10_000, 3])
async def test_each_filter_gives_the_rows_it_names(
    database: str, filters: LedgerFilters, window: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filter's pages hold exactly the rows it names, newest first: from the newest rows alone
    (a window larger than the ledger), or past a window of three rows through the hours the rollup
    names, and without the rollup (the rows read in full)."""
    monkeypatch.setattr(_ledger_views, "WINDOW", window)
    rows = _mixed_rows()
    store = await _seed(database, rows)
    try:
        through_rollup = await _every_page(store.database, filters, limit=4)
        await _drop_rollup_triggers(store.database)
        without = await _every_page(store.database, filters, limit=4)
    finally:
        await store.close()
    assert through_rollup == without == _expected(rows, filters)


async def test_a_rare_keys_rows_far_apart_are_all_found(database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the newest rows, the rollup's hours find a key's rows among many others, days apart and
    two in one hour, across page boundaries; a later page starts where the cursor says, not at
    the newest hour again; and the CSV holds them all."""
    monkeypatch.setattr(_ledger_views, "WINDOW", 50)
    rows = [row(f"req_busy_{n:04d}", NOW - timedelta(minutes=7 * n), key_id="busy") for n in range(800)]
    rare_times = [NOW - timedelta(days=d, minutes=m) for d, m in ((0, 3), (0, 4), (1, 0), (2, 30), (3, 59))]
    rows += [row(f"req_rare_{n}", moment, key_id="rare") for n, moment in enumerate(rare_times)]
    store = await _seed(database, rows)
    try:
        pages = await _every_page(store.database, LedgerFilters(key="rare"), limit=2)
        newest_two = await ledger_page(store.database, LedgerFilters(key="rare"), limit=2)
        rest = await ledger_page(store.database, LedgerFilters(key="rare"), 10, newest_two.next_cursor)
        exported = [c async for c in ledger_csv(store.database, LedgerFilters(key="rare"), page=2)]
    finally:
        await store.close()
    assert pages == [f"req_rare_{n}" for n in range(5)]
    assert [line.split(b",")[0] for line in b"".join(exported).splitlines()[1:]] == [p.encode() for p in pages]
    assert [r["request_id"] for r in rest.rows] == ["req_rare_2", "req_rare_3", "req_rare_4"]


async def test_a_row_holds_the_fields_of_the_contract(database: str) -> None:
    """Each row has the request log's fields in order, ts in ISO 8601 UTC, and booleans; with a
    display currency, its cost in it too."""
    moment = datetime(2026, 9, 21, 10, 0, 0, 250000, tzinfo=UTC)
    record = row(
        "req_full",
        moment,
        team="a",
        cost_usd=0.5,
        stream=True,
        cache_hit=True,
        route_class="simple",
        downgraded_from="gpt-4o",
        error_type=None,
    )
    store = await _seed(database, [record])
    try:
        page = await ledger_page(store.database, LedgerFilters())
        in_euros = await ledger_page(store.database, LedgerFilters(), currency="EUR", rate=0.9)
    finally:
        await store.close()
    (shown,) = page.rows
    assert tuple(shown) == ROW_FIELDS
    assert shown == {
        "request_id": "req_full",
        "ts": "2026-09-21T10:00:00.250000+00:00",
        "key_id": "k1",
        "user": "alice",
        "team": "a",
        "tier": "free",
        "model_requested": "gpt-4o-mini",
        "model_served": "gpt-4o-mini",
        "deployment": "openai/gpt-4o-mini#0",
        "prompt_tokens": 11,
        "completion_tokens": 7,
        "cached_tokens": 0,
        "cost_usd": 0.5,
        "latency_ms": 12.5,
        "status": 200,
        "error_type": None,
        "stream": True,
        "cache_hit": True,
        "route_class": "simple",
        "downgraded_from": "gpt-4o",
    }
    assert in_euros.rows[0]["cost_eur"] == 0.45
    assert list(in_euros.rows[0]).index("cost_eur") == ROW_FIELDS.index("cost_usd") + 1


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "nonsense",
        "e30",
        "WzEsMl0",
        "WyJ4IiwgInJlcV8xIl0",
        "Wzk5OTk5OTk5OTk5OTk5OTk5OTksInIiXQ",
        # The last microsecond there is: the next page's bound would be past it.
        encode_cursor(Position(datetime.max.replace(tzinfo=UTC), "req_last")),
    ],
)
async def test_a_cursor_that_is_not_one_is_refused(sqlite_url: str, cursor: str) -> None:
    """A cursor this API did not make (not base64 JSON, the wrong shape, a ts out of range) is a
    ValueError, which the admin API answers with a 400."""
    store = await _seed(sqlite_url, [])
    try:
        with pytest.raises(ValueError, match="cursor"):
            await ledger_page(store.database, LedgerFilters(), cursor=cursor)
    finally:
        await store.close()
    with pytest.raises(ValueError, match="cursor"):
        decode_cursor(cursor)


async def test_the_csv_holds_every_row_escaped_and_defused(database: str) -> None:
    """The CSV export: the header first, then every matching row newest first, in chunks of a page;
    commas, quotes and line breaks survive, and text a spreadsheet would run as a formula does not."""
    hostile = {
        "req_eq": '=HYPERLINK("http://evil","x")',
        "req_plus": "+1+1",
        "req_minus": "-2",
        "req_at": "@SUM(A1)",
        "req_tab": "\t=1",
        "req_comma": 'a,"b"\nc',
    }
    base = NOW - timedelta(hours=1)
    rows = [
        row(rid, base + timedelta(seconds=n), model_requested=text) for n, (rid, text) in enumerate(hostile.items())
    ]
    rows += [
        row(f"req_plain_{n}", base - timedelta(seconds=n + 1), status=500, error_type="api_error") for n in range(5)
    ]
    store = await _seed(database, rows)
    try:
        chunks = [chunk async for chunk in ledger_csv(store.database, LedgerFilters(), page=4)]
        errors = b"".join([chunk async for chunk in ledger_csv(store.database, LedgerFilters(status="error"))])
    finally:
        await store.close()
    assert len(chunks) == 1 + 3  # the header, and 11 rows in pages of 4
    table = list(csv.reader(io.StringIO(b"".join(chunks).decode())))
    assert tuple(table[0]) == ROW_FIELDS
    assert [line[0] for line in table[1:]] == _expected(rows, LedgerFilters())
    requested = {line[0]: line[ROW_FIELDS.index("model_requested")] for line in table[1:]}
    assert requested["req_eq"] == "'" + hostile["req_eq"]
    assert requested["req_plus"] == "'+1+1" and requested["req_minus"] == "'-2" and requested["req_at"] == "'@SUM(A1)"
    assert requested["req_tab"] == "'\t=1"
    assert requested["req_comma"] == 'a,"b"\nc'
    assert requested["req_plain_0"] == "gpt-4o-mini"
    first = dict(zip(table[0], table[1], strict=True))
    assert first["stream"] == "false" and first["error_type"] == "" and first["ts"].endswith("+00:00")
    error_rows = list(csv.reader(io.StringIO(errors.decode())))[1:]
    assert [line[0] for line in error_rows] == [f"req_plain_{n}" for n in range(5)]


async def test_the_csv_of_no_rows_is_its_header(database: str) -> None:
    """No matching row: the header line alone."""
    store = await _seed(database, [row("req_1", NOW)])
    try:
        chunks = [chunk async for chunk in ledger_csv(store.database, LedgerFilters(user="nobody"))]
    finally:
        await store.close()
    assert chunks == [(",".join(ROW_FIELDS) + "\r\n").encode()]
    assert CSV_PAGE >= 500


@pytest.mark.parametrize(
    ("window", "first", "inside", "outside"),
    [
        (
            "hour",
            "2026-09-21T11:35:00+00:00",
            [datetime(2026, 9, 21, 11, 35, tzinfo=UTC), datetime(2026, 9, 21, 12, 34, 59, 999999, tzinfo=UTC)],
            [datetime(2026, 9, 21, 11, 34, 59, 999999, tzinfo=UTC), datetime(2026, 9, 21, 12, 35, tzinfo=UTC)],
        ),
        (
            "day",
            "2026-09-20T13:00:00+00:00",
            [datetime(2026, 9, 20, 13, tzinfo=UTC), datetime(2026, 9, 21, 12, 59, 59, 999999, tzinfo=UTC)],
            [datetime(2026, 9, 20, 12, 59, 59, 999999, tzinfo=UTC), datetime(2026, 9, 21, 13, tzinfo=UTC)],
        ),
        (
            "month",
            "2026-08-23T00:00:00+00:00",
            [datetime(2026, 8, 23, tzinfo=UTC), datetime(2026, 9, 21, 23, 59, 59, 999999, tzinfo=UTC)],
            [datetime(2026, 8, 22, 23, 59, 59, 999999, tzinfo=UTC), datetime(2026, 9, 22, tzinfo=UTC)],
        ),
    ],
)
async def test_a_series_buckets_end_with_the_one_that_holds_now(
    database: str, window: str, first: str, inside: list[datetime], outside: list[datetime]
) -> None:
    """The buckets are whole UTC minutes, hours or days, the last one holding now: a row at the
    first bucket's start is in it, one a microsecond before is not; a row at the end of the last
    bucket is in it, one at its end is not."""
    rows = [row(f"req_in_{n}", moment) for n, moment in enumerate(inside)]
    rows += [row(f"req_out_{n}", moment) for n, moment in enumerate(outside)]
    store = await _seed(database, rows)
    try:
        answer = await usage_series(store.database, window, now=NOW)  # type: ignore[arg-type]
    finally:
        await store.close()
    count = {"hour": 60, "day": 24, "month": 30}[window]
    assert answer["object"] == "usage_series" and answer["window"] == window and answer["by"] is None
    assert len(answer["buckets"]) == count and answer["buckets"][0] == first
    (series,) = answer["series"]
    assert series["group"] == "all" and series["requests"] == [1] + [0] * (count - 2) + [1]
    assert series["tokens"][0] == 18 and series["errors"] == [0] * count
    assert answer["totals"]["requests"] == 2


async def test_a_series_by_a_column_keeps_the_top_eight_and_sums_the_rest(database: str) -> None:
    """Per group, ranked by requests: the top eight by name, the other groups as "(other)"; the
    totals are the window's, with the cache's hits, hit rate and savings; a team's series holds
    its rows alone."""
    rows: list[UsageRow] = []
    for user in range(10):
        for n in range(10 - user):
            moment = NOW - timedelta(minutes=n)
            rows.append(
                row(
                    f"req_u{user}_{n}",
                    moment,
                    user_id=f"u{user}",
                    team="a" if user < 2 else None,
                    cost_usd=0.25,
                    cache_hit=n == 0,
                    cache_saved_usd=0.5 if n == 0 else 0.0,
                    status=500 if n == 1 else 200,
                )
            )
    store = await _seed(database, rows)
    try:
        hour = await usage_series(store.database, "hour", "user", now=NOW)
        month = await usage_series(store.database, "month", "user", now=NOW)
        team = await usage_series(store.database, "day", "user", team="a", now=NOW)
        none = await usage_series(store.database, "day", "team", now=NOW, currency="EUR", rate=2.0)
    finally:
        await store.close()
    for answer in (hour, month):
        groups = [s["group"] for s in answer["series"]]
        assert groups == [f"u{n}" for n in range(8)] + ["(other)"]
        assert [sum(s["requests"]) for s in answer["series"]] == [10, 9, 8, 7, 6, 5, 4, 3, 2 + 1]
        assert answer["totals"] == {
            "requests": 55,
            "tokens": 55 * 18,
            "cost_usd": 13.75,
            "errors": 9,
            "cache_hits": 10,
            "hit_rate": round(10 / 55, 4),
            "saved_usd": 5.0,
        }
    assert hour["series"][0]["requests"][-1] == 1 and hour["series"][0]["requests"][-10] == 1
    assert [s["group"] for s in team["series"]] == ["u0", "u1"] and team["totals"]["requests"] == 19
    assert [s["group"] for s in none["series"]] == ["(none)", "a"]
    assert none["totals"]["cost_eur"] == 27.5 and none["currency"] == "EUR"


def _random_rows(count: int, seed: int) -> list[UsageRow]:
    """Rows over four days with every column the rollup groups by varied, NULLs included."""
    rnd = random.Random(seed)
    start = NOW - timedelta(days=4)
    rows = []
    for number in range(count):
        moment = start + timedelta(seconds=rnd.uniform(0, 4 * 86_400))
        served = rnd.choice(["gpt-4o", "gpt-4o-mini", None])
        rows.append(
            row(
                f"req_r{number:05d}",
                moment,
                key_id=rnd.choice(["k1", "k2", "k3", None]),
                user_id=rnd.choice(["alice", "bob", None]),
                team=rnd.choice(["a", "b", None]),
                tier=rnd.choice(["free", "pro"]),
                model_requested=rnd.choice(["auto", served, None]),
                model_served=served,
                deployment=None if served is None else f"openai/{served}#{rnd.randint(0, 1)}",
                prompt_tokens=rnd.randint(0, 2000),
                completion_tokens=rnd.randint(0, 500),
                cached_tokens=rnd.randint(0, 100),
                cost_usd=rnd.randint(0, 10_000) / 1e6,
                status=rnd.choice([200, 200, 200, 429, 500]),
                cache_hit=rnd.random() < 0.2,
                cache_saved_usd=rnd.randint(0, 1000) / 1e6,
            )
        )
    return rows


async def _answers(store: KeyStore) -> dict[str, Any]:
    """Every report the rollup serves (30 days, a range of whole days with parts at both ends, a
    range within one day, a team's) and every month series."""
    answers: dict[str, Any] = {}
    ranges = {
        "month": (NOW - timedelta(days=30), None),
        "middle": (NOW - timedelta(days=3, hours=5), NOW - timedelta(hours=7)),
        "hours": (NOW - timedelta(days=1, hours=3), NOW - timedelta(days=1, hours=1)),
        "all": (None, None),
    }
    for by in ("key", "user", "team", "model", "deployment"):
        for name, (since, until) in ranges.items():
            report = await usage_report(store.database, by, since, until)  # type: ignore[arg-type]
            answers[f"{by} {name}"] = (report.rows, report.totals)
        team = await usage_report(store.database, by, NOW - timedelta(days=30), team="a")  # type: ignore[arg-type]
        answers[f"{by} team a"] = (team.rows, team.totals)
    for series_by in (None, "model", "deployment", "tier", "user", "team", "key"):
        answers[f"series {series_by}"] = await usage_series(store.database, "month", series_by, now=NOW)  # type: ignore[arg-type]
    return answers


def _approx(answers: dict[str, Any]) -> Any:
    """The answers with amounts as pytest.approx: the rollup adds costs in another order."""
    if isinstance(answers, dict):
        return {k: _approx(v) for k, v in answers.items()}
    if isinstance(answers, list | tuple):
        return type(answers)(_approx(v) for v in answers)
    return pytest.approx(answers, abs=1e-9) if isinstance(answers, float) else answers


async def test_the_rollup_answers_as_the_rows_do_through_inserts_deletes_and_updates(database: str) -> None:
    """The reports and month series from the rollup equal those summed from the rows, after rows
    are inserted (a row written twice counted once), deleted and changed."""
    rows = _random_rows(600, seed=23)
    store = await _seed(database, rows)
    writer = SqlWriter(store.database)
    try:
        await writer.write(rows[:50])  # again: ON CONFLICT DO NOTHING, and no trigger
        assert await store.database.run(rollup_ready)

        def change(conn: sa.Connection) -> None:
            conn.execute(usage_table.delete().where(usage_table.c.request_id < "req_r00100"))
            conn.execute(
                usage_table.update()
                .where(usage_table.c.request_id.between("req_r00200", "req_r00250"))
                .values(user_id="carol", status=503, cost_usd=usage_table.c.cost_usd + 1, team=None)
            )

        await store.database.run(change)
        through_rollup = await _answers(store)
        rollup_rows = await store.database.run(
            lambda c: c.execute(sa.select(sa.func.count()).select_from(usage_rollup_table)).scalar()
        )
        await _drop_rollup_triggers(store.database)
        from_rows = await _answers(store)
    finally:
        await writer.aclose()
        await store.close()
    assert from_rows["user all"][1]["requests"] == 500
    assert [r["user"] for r in from_rows["user all"][0]] == ["(none)", "alice", "bob", "carol"]
    assert through_rollup == _approx(from_rows)
    assert rollup_rows and rollup_rows < 500


def _previous_table(metadata: sa.MetaData) -> sa.Table:
    """qg_usage as the version before the rollup and teams made it: no team, no error index."""
    columns = [
        sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable, index=c.index)
        for c in usage_table.columns
        if c.name != "team"
    ]
    return sa.Table("qg_usage", metadata, *columns)


async def test_a_database_made_before_the_rollup_gets_it_filled_from_its_rows(database: str) -> None:
    """A ledger of an earlier version (no rollup, no team column, no error index) is upgraded at
    start: the rollup holds its rows' sums, the error index is made, the reports answer as before,
    and rows written later reach the rollup too; a second start changes nothing."""
    previous = sa.MetaData()
    table = _previous_table(previous)
    old_rows = _random_rows(300, seed=5)

    def create_previous(conn: sa.Connection) -> None:
        conn.exec_driver_sql("DROP TABLE IF EXISTS qg_usage_rollup")
        conn.exec_driver_sql("DROP TABLE IF EXISTS qg_usage")
        previous.create_all(conn)
        values = []
        for old in old_rows:
            value = {**old._asdict(), "ts": datetime.fromtimestamp(old.ts, UTC)}
            del value["team"]
            values.append(value)
        conn.execute(table.insert(), values)

    db = Database(database)
    await db.run(create_previous)
    before = {by: (await usage_report(db, by)).rows for by in ("key", "model")}  # type: ignore[arg-type]
    await db.dispose()
    store = KeyStore.from_url(database)
    writer = SqlWriter(store.database)
    try:
        await store.create_schema()
        after = {by: (await usage_report(store.database, by)).rows for by in ("key", "model")}  # type: ignore[arg-type]
        indexes = await store.database.run(lambda c: {ix["name"] for ix in sa.inspect(c).get_indexes("qg_usage")})
        sums = await store.database.run(
            lambda c: c.execute(sa.select(sa.func.sum(usage_rollup_table.c.requests))).scalar()
        )
        await store.create_schema()
        again = await store.database.run(
            lambda c: c.execute(sa.select(sa.func.sum(usage_rollup_table.c.requests))).scalar()
        )
        await writer.write([row("req_new", NOW, team="a", key_id="k9")])
        keys = {r["key"]: r["requests"] for r in (await usage_report(store.database, "key")).rows}
        teams = {r["team"]: r["requests"] for r in (await usage_report(store.database, "team")).rows}
        assert await store.database.run(rollup_ready)
    finally:
        await writer.aclose()
        await store.close()
    assert after == _approx(before)
    assert sums == again == 300
    assert "ix_qg_usage_errors" in indexes and "ix_qg_usage_ts" in indexes
    assert keys["k9"] == 1 and teams == {"(none)": 300, "a": 1}


async def _rollup_sum(database: Database) -> Any:
    return await database.run(lambda c: c.execute(sa.select(sa.func.sum(usage_rollup_table.c.requests))).scalar())


async def test_a_dropped_rollup_is_made_again_from_the_rows_not_empty(database: str) -> None:
    """The rollup dropped with its triggers left: the next start fills it from the rows again, and
    the reports answer as the rows do (it was made again empty, and trusted)."""
    rows = _random_rows(200, seed=11)
    store = await _seed(database, rows)
    try:
        await store.database.run(lambda c: c.exec_driver_sql("DROP TABLE qg_usage_rollup"))
        assert not await store.database.run(rollup_ready)
        await store.create_schema()
        assert await store.database.run(rollup_ready)
        summed = await _rollup_sum(store.database)
        through_rollup = await _answers(store)
        await _drop_rollup_triggers(store.database)
        from_rows = await _answers(store)
    finally:
        await store.close()
    assert summed == 200
    assert through_rollup == _approx(from_rows)


async def test_two_nodes_starting_together_on_a_ledger_without_the_rollup_both_start(database: str) -> None:
    """Two starts at once on a ledger that has rows and no rollup yet (an upgrade): both succeed
    (the second waited for the first's setup, then found it made), and the rollup holds the rows'
    sums once."""
    rows = _random_rows(3000, seed=13)
    store = await _seed(database, rows)
    await store.close()
    for _ in range(3):
        first, second = KeyStore.from_url(database), KeyStore.from_url(database)
        try:
            await _drop_rollup_triggers(first.database)
            await first.database.run(lambda c: c.exec_driver_sql("DROP TABLE qg_usage_rollup"))
            await asyncio.gather(first.create_schema(), second.create_schema())
            assert await first.database.run(rollup_ready)
            assert await _rollup_sum(first.database) == len(rows)
        finally:
            await first.close()
            await second.close()


async def test_a_trigger_named_like_the_rollups_is_left_alone(database: str) -> None:
    """The rollup's triggers are found by their prefix with "_" as itself, not LIKE's any character:
    an operator's trigger whose name differs there is not dropped when the rollup is made again."""
    store = await _seed(database, [])
    name = "qgxusagexrollupxv1_audit"

    def own_trigger(conn: sa.Connection) -> None:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql(f"CREATE TRIGGER {name} AFTER INSERT ON qg_usage BEGIN SELECT 1; END")
        else:
            conn.exec_driver_sql(
                "CREATE OR REPLACE FUNCTION qg_test_noop() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RETURN NULL; END $$"
            )
            conn.exec_driver_sql(f"CREATE TRIGGER {name} AFTER INSERT ON qg_usage EXECUTE FUNCTION qg_test_noop()")

    def triggers(conn: sa.Connection) -> set[str]:
        if conn.dialect.name == "sqlite":
            return set(conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'trigger'").scalars())
        sql = "SELECT tgname FROM pg_trigger WHERE tgrelid = 'qg_usage'::regclass AND NOT tgisinternal"
        return set(conn.exec_driver_sql(sql).scalars())

    try:
        await _drop_rollup_triggers(store.database)
        await store.database.run(own_trigger)
        await store.create_schema()
        found = await store.database.run(triggers)
        await store.database.run(
            lambda c: c.exec_driver_sql(f"DROP TRIGGER {name}" + (" ON qg_usage" if c.dialect.name != "sqlite" else ""))
        )
    finally:
        await store.close()
    assert name in found


async def test_a_batch_written_while_a_page_is_read_does_not_repeat_its_rows(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page past the window reads the window's rows and then where the window ends: a batch of
    newer rows committed between the two (here, by another connection) must not move that end
    past rows already read, which would come twice."""
    monkeypatch.setattr(_ledger_views, "WINDOW", 3)
    rows = [row("req_rare_0", NOW - timedelta(minutes=1), key_id="rare")]
    rows += [row(f"req_busy_{n}", NOW - timedelta(minutes=1 + n), key_id="busy") for n in range(1, 10)]
    rows.append(row("req_rare_1", NOW - timedelta(hours=2), key_id="rare"))
    store = await _seed(database, rows)
    newer = [row(f"req_new_{n}", NOW + timedelta(minutes=n), key_id="busy") for n in range(1, 4)]

    async def write_newer() -> None:
        other = Database(database)
        writer = SqlWriter(other)
        try:
            await writer.write(newer)
        finally:
            await writer.aclose()
            await other.dispose()

    window_end = _ledger_views._window_end
    written: list[bool] = []

    def window_end_after_a_batch(conn: sa.Connection, *args: Any) -> Any:
        if not written:
            written.append(True)
            thread = threading.Thread(target=lambda: asyncio.run(write_newer()))
            thread.start()
            thread.join(10)
        return window_end(conn, *args)

    monkeypatch.setattr(_ledger_views, "_window_end", window_end_after_a_batch)
    try:
        page = await ledger_page(store.database, LedgerFilters(key="rare"), limit=10)
        count = await store.database.run(
            lambda c: c.execute(sa.select(sa.func.count()).select_from(usage_table)).scalar()
        )
    finally:
        await store.close()
    assert written and count == len(rows) + len(newer)  # the batch was written meanwhile
    assert [r["request_id"] for r in page.rows] == ["req_rare_0", "req_rare_1"]
