"""The console's ledger queries over 1,000,000 usage rows, in SQLite and in PostgreSQL, and what
the rollup costs the ledger's writer.

    .venv/bin/python bench/console_ledger.py [--rows 1000000] [--writer-rows 100000]
        [--postgres postgresql://postgres@127.0.0.1:5432/postgres] [--only sqlite|postgresql]

The rows (``generate``): 30 days ending now, busier in working hours and on weekdays; 50 users
with 1 to 3 keys each (a few users send most requests), six teams and a few users in none, three
tiers, eight models on twelve deployments, each user favouring three models; ~3 % errors (most
refused by a limit, with no deployment), ~7 % cache hits, ~8 % asked of a routed model ("auto").

They are written as the gateway writes them: SqlWriter.write, batches of 500, into a fresh SQLite
file (temporary) and a PostgreSQL database of the script's own (``qg_bench_console``, dropped at
the end), whose triggers fill the rollup as they do on a gateway. PostgreSQL is ANALYZEd after
the fill, as its autovacuum would have it in a gateway's steady state; SQLite is not (the gateway
never runs ANALYZE there).

Each console query is then timed as the admin API runs it (the functions of
accounting._ledger_views and accounting._reports, through Database.run): its first run (a new
connection; the rows are in the page cache, having just been written) and the best of 3 after;
then again with the indexes of the version before (the ts index alone: the rollup's triggers and
the error index dropped, so that every query reads the rows), the "plain indexes" columns.

The writer (``--writer-rows``, 0 to skip): rows as a busy gateway makes them (the generator's,
1,000 a second, ending now), written in batches of 500 into a new database with the schema of
this version, and into one with the schema before it (the rollup's triggers and the error index
dropped), in alternating rounds; the median of three rounds each. SQLite: this process's CPU per
row (the writer runs on the gateway's event loop; its checkpoint thread's CPU is in it too).
PostgreSQL: the wall time per row, which holds the server's work (the trigger's included). The
writer's closing (a last checkpoint of the whole WAL, mostly I/O) is in neither.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import sqlalchemy as sa

from quotagate.accounting import SqlWriter, UsageRow, usage_report
from quotagate.accounting._ledger_views import LedgerFilters, ledger_csv, ledger_page, usage_series
from quotagate.keys import Database, KeyStore

DAY = 86_400.0

# name, share of requests, deployments, price per million tokens (input, output)
MODELS: tuple[tuple[str, float, tuple[str, ...], tuple[float, float]], ...] = (
    ("gpt-4o-mini", 0.28, ("openai/gpt-4o-mini#0", "azure/gpt-4o-mini#1"), (0.15, 0.6)),
    ("gpt-4o", 0.16, ("openai/gpt-4o#0", "openai/gpt-4o#1", "azure/gpt-4o#2"), (2.5, 10.0)),
    ("claude-sonnet-4", 0.13, ("anthropic/claude-sonnet-4#0", "bedrock/claude-sonnet-4#1"), (3.0, 15.0)),
    ("claude-haiku-3.5", 0.10, ("anthropic/claude-haiku-3.5#0",), (0.8, 4.0)),
    ("gemini-2.0-flash", 0.10, ("gemini/gemini-2.0-flash#0",), (0.1, 0.4)),
    ("deepseek-chat", 0.07, ("deepseek/deepseek-chat#0",), (0.27, 1.1)),
    ("o3-mini", 0.05, ("openai/o3-mini#0",), (1.1, 4.4)),
    ("text-embedding-3-small", 0.11, ("openai/text-embedding-3-small#0",), (0.02, 0.0)),
)
TEAMS = ("research", "support", "platform", "growth", "data", "mobile")
TIERS = ("free", "pro", "enterprise")


@dataclass(frozen=True)
class Key:
    key_id: str
    user: str
    team: str | None
    tier: str
    weights: tuple[float, ...]  # of MODELS: what this key's user mostly asks for


def make_keys(rnd: random.Random, users: int = 50) -> tuple[list[Key], list[float]]:
    """Keys of ``users`` users (1 to 3 each; most in one of six teams, a few in none), and how
    much traffic each sends (a few users send most of it); and four keys used now and then (a
    script's, a test's: a few dozen requests a month in a million)."""
    keys: list[Key] = []
    activity: list[float] = []
    for number in range(users):
        user = f"user-{number:02d}"
        team = None if number % 11 == 10 else TEAMS[number % len(TEAMS)]
        favourites = set(rnd.sample(range(len(MODELS)), 3))
        weights = tuple(share * (6.0 if index in favourites else 1.0) for index, (_, share, _, _) in enumerate(MODELS))
        weight = 1.0 / (number + 1) ** 0.8  # Zipf-like
        for _ in range(rnd.choice((1, 1, 2, 3))):
            keys.append(Key(f"key_{rnd.getrandbits(48):012x}", user, team, rnd.choice(TIERS), weights))
            activity.append(weight)
    for number, weight in enumerate((0.0002, 0.0003, 0.0005, 0.001)):
        owner = keys[number * 7]
        keys.append(Key(f"key_{rnd.getrandbits(48):012x}", owner.user, owner.team, owner.tier, owner.weights))
        activity.append(weight)
    return keys, activity


def _busy(epoch: float) -> float:
    """How busy the gateway is at ``epoch`` (UTC), 0 to 1: working hours, and less at weekends."""
    hours = (epoch / 3600.0) % 24.0
    day = int(epoch // DAY + 4) % 7  # 0 = Monday
    shape = 0.15 + 0.85 * math.exp(-(((hours - 14.0) / 4.5) ** 2))
    return shape * (0.35 if day >= 5 else 1.0)


def generate(count: int, now: float, seed: int = 23) -> Iterator[UsageRow]:
    """``count`` rows spread over the 30 days before ``now``, oldest first, as the gateway writes
    them: ~3 % errors (most refused by a limit, with no deployment), ~7 % cache hits, ~8 % asked
    of a routed model (model_requested "auto"), tokens and latencies spread log-normally."""
    rnd = random.Random(seed)
    keys, activity = make_keys(rnd)
    start = now - 30 * DAY
    stamps: list[float] = []
    while len(stamps) < count:
        epoch = rnd.uniform(start, now)
        if rnd.random() < _busy(epoch):
            stamps.append(epoch)
    stamps.sort()
    prefix = f"req_{rnd.getrandbits(64):016x}"
    chosen = rnd.choices(keys, activity, k=count)
    for number, (epoch, key) in enumerate(zip(stamps, chosen, strict=True)):
        name, _, deployments, (price_in, price_out) = rnd.choices(MODELS, key.weights)[0]
        embedding = name.startswith("text-embedding")
        requested, route_class = name, None
        if not embedding and rnd.random() < 0.08:
            requested, route_class = "auto", ("simple" if name in ("gpt-4o-mini", "claude-haiku-3.5") else "complex")
        served: str | None = name
        deployment: str | None = rnd.choice(deployments)
        prompt = int(rnd.lognormvariate(6.4, 1.0))
        completion = 0 if embedding else int(rnd.lognormvariate(5.3, 0.9))
        status, error = 200, None
        chance = rnd.random()
        if chance < 0.022:
            status, error, served, deployment = 429, "rate_limit_exceeded", None, None
        elif chance < 0.027:
            status, error = rnd.choice(((502, "upstream_error"), (500, "api_error"), (504, "timeout")))
        elif chance < 0.03:
            status, error, served, deployment = 400, "invalid_request_error", None, None
        if status != 200:
            prompt = completion = 0 if served is None else prompt
            completion = 0
        cost = (prompt * price_in + completion * price_out) / 1e6 if status == 200 else 0.0
        hit = status == 200 and not embedding and rnd.random() < 0.07
        latency = rnd.lognormvariate(6.5, 0.8) if not hit else rnd.lognormvariate(1.0, 0.5)
        day = time.strftime("%Y-%m-%d", time.gmtime(epoch))
        yield UsageRow(
            request_id=f"{prefix}{number:x}",
            ts=epoch,
            day=day,
            key_id=key.key_id,
            user_id=key.user,
            tier=key.tier,
            model_requested=requested,
            model_served=served,
            deployment=None if hit else deployment,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached_tokens=int(prompt * 0.3) if status == 200 and rnd.random() < 0.2 else 0,
            cost_usd=0.0 if hit else cost,
            latency_ms=latency,
            upstream_ms=None if hit or served is None else latency * 0.97,
            overhead_ms=0.4,
            status=status,
            error_type=error,
            stream=not embedding and rnd.random() < 0.6,
            cache_hit=hit,
            cache_saved_usd=cost if hit else 0.0,
            route_class=route_class,
            team=key.team,
        )


# -- filling --------------------------------------------------------------------------------------

BATCH = 500


async def fill(database: Database, rows: list[UsageRow]) -> tuple[float, float]:
    """Write ``rows`` as the ledger does: the seconds it took, wall and this process's CPU (the
    writer's and its checkpoint thread's). Its closing, a last checkpoint of the whole WAL, is not
    in them."""
    writer = SqlWriter(database)
    try:
        cpu, wall = time.process_time(), time.perf_counter()
        for start in range(0, len(rows), BATCH):
            await writer.write(rows[start : start + BATCH])
        return time.perf_counter() - wall, time.process_time() - cpu
    finally:
        await writer.aclose()


async def open_store(url: str) -> KeyStore:
    store = KeyStore.from_url(url)
    await store.create_schema()
    return store


async def _admin(admin_url: str, sql: str) -> None:
    connection = await asyncpg.connect(admin_url)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


# -- the writer's cost ----------------------------------------------------------------------------


def _previous_schema(conn: sa.Connection) -> None:
    """The schema of the version before the rollup: its triggers and the error index dropped."""
    if conn.dialect.name == "sqlite":
        triggers = conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'trigger'").scalars().all()
        for name in triggers:
            conn.exec_driver_sql(f"DROP TRIGGER {name}")
    else:
        triggers = (
            conn.exec_driver_sql(
                "SELECT tgname FROM pg_trigger WHERE tgrelid = 'qg_usage'::regclass AND NOT tgisinternal"
            )
            .scalars()
            .all()
        )
        for name in triggers:
            conn.exec_driver_sql(f"DROP TRIGGER {name} ON qg_usage")
    conn.exec_driver_sql("DROP INDEX IF EXISTS ix_qg_usage_errors")


async def writer_round(url: str, rows: list[UsageRow], previous: bool) -> tuple[float, float]:
    """(wall, CPU) µs per row writing ``rows`` into ``url``, an empty database, with this version's
    schema or (``previous``) the one before."""
    store = await open_store(url)
    try:
        if previous:
            await store.database.run(_previous_schema)
        wall, cpu = await fill(store.database, rows)
    finally:
        await store.close()
    return wall / len(rows) * 1e6, cpu / len(rows) * 1e6


async def writer_cost(
    empty: Callable[[], Awaitable[str]], rows: list[UsageRow], rounds: int = 3
) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) µs per row, "before" (no rollup) and "after", in alternating rounds, each
    into a new database (``empty`` makes one and gives its URL)."""
    results: dict[str, list[tuple[float, float]]] = {"before": [], "after": []}
    for _ in range(rounds):
        for name in ("before", "after"):
            results[name].append(await writer_round(await empty(), rows, previous=name == "before"))
    return {
        name: (statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs))
        for name, runs in results.items()
    }


def live_rows(count: int) -> list[UsageRow]:
    """``count`` rows as a busy gateway writes them: the generator's, 1,000 a second, ending now."""
    rows = list(generate(count, time.time(), seed=7))
    start = time.time() - count / 1000
    return [r._replace(ts=start + n / 1000, day=time.strftime("%Y-%m-%d")) for n, r in enumerate(rows)]


# -- the console's queries ------------------------------------------------------------------------


@dataclass
class Timing:
    name: str
    first_ms: float
    best_ms: float
    note: str = ""


async def timed(name: str, run: Callable[[], Awaitable[Any]], note: Callable[[Any], str] | None = None) -> Timing:
    """The first run and the best of the three after it, in ms."""
    times = []
    result: Any = None
    for _ in range(4):
        started = time.perf_counter()
        result = await run()
        times.append((time.perf_counter() - started) * 1000)
    return Timing(name, times[0], min(times[1:]), note(result) if note else "")


def _rows_note(page: Any) -> str:
    return f"{len(page.rows)} rows"


async def console_queries(url: str) -> list[Timing]:
    """Every query a console page makes, on a fresh connection to the filled database."""
    store = KeyStore.from_url(url)  # no create_schema: the start of a gateway is not what is timed
    database = store.database
    try:
        newest = await database.run(
            lambda c: c.exec_driver_sql(
                "SELECT key_id, user_id, team, model_served FROM qg_usage ORDER BY ts DESC LIMIT 1"
            ).one()
        )
        rare_key, rare_rows = await database.run(
            lambda c: c.exec_driver_sql(
                "SELECT key_id, count(*) FROM qg_usage GROUP BY key_id ORDER BY count(*), key_id LIMIT 1"
            ).one()
        )
        key, user, team, model = newest
        timings = [
            await timed("ledger, first page (50 rows)", lambda: ledger_page(database, LedgerFilters()), _rows_note)
        ]
        page = await ledger_page(database, LedgerFilters())
        timings.append(
            await timed(
                "ledger, page 2 (cursor)",
                lambda: ledger_page(database, LedgerFilters(), cursor=page.next_cursor),
                _rows_note,
            )
        )
        deep = page
        for _ in range(19):
            deep = await ledger_page(database, LedgerFilters(), cursor=deep.next_cursor)
        timings.append(
            await timed(
                "ledger, page 21 (cursor)",
                lambda: ledger_page(database, LedgerFilters(), cursor=deep.next_cursor),
                _rows_note,
            )
        )
        for label, filters in (
            ("key (the newest row's)", LedgerFilters(key=key)),
            (f"key (the rarest: {rare_rows} rows)", LedgerFilters(key=rare_key)),
            ("user", LedgerFilters(user=user)),
            ("team", LedgerFilters(team=team)),
            (f"model ({model})", LedgerFilters(model=model)),
            ("model (auto, asked for)", LedgerFilters(model="auto")),
            ("status=error", LedgerFilters(status="error")),
            ("status=504", LedgerFilters(status=504)),
            ("team + status=error", LedgerFilters(team=team, status="error")),
            ("key (none such)", LedgerFilters(key="key_none")),
        ):
            timings.append(await timed(f"ledger, by {label}", lambda f=filters: ledger_page(database, f), _rows_note))
        filtered = await ledger_page(database, LedgerFilters(key=rare_key), limit=10)
        if filtered.next_cursor is not None:
            timings.append(
                await timed(
                    "ledger, by key (the rarest), page 2",
                    lambda: ledger_page(database, LedgerFilters(key=rare_key), 10, filtered.next_cursor),
                    _rows_note,
                )
            )
        for window in ("hour", "day", "month"):
            for by in (None, "model", "key"):
                timings.append(
                    await timed(
                        f"series {window}" + (f" by {by}" if by else ""),
                        lambda w=window, b=by: usage_series(database, w, b),  # type: ignore[arg-type]
                        lambda answer: f"{answer['totals']['requests']:,} requests",
                    )
                )
        timings.append(
            await timed(
                "series month by user, a team's",
                lambda: usage_series(database, "month", "user", team=team),
                lambda answer: f"{answer['totals']['requests']:,} requests",
            )
        )
        since = datetime.now(UTC) - timedelta(days=30)
        for by in ("model", "user", "team", "key", "deployment"):
            timings.append(
                await timed(
                    f"usage report by {by}, 30 days",
                    lambda b=by: usage_report(database, b, since),  # type: ignore[arg-type]
                    lambda report: f"{report.totals['requests']:,} requests",
                )
            )
        timings.append(
            await timed(
                "usage report by day, 30 days (rows)",
                lambda: usage_report(database, "day", since),
                lambda report: f"{report.totals['requests']:,} requests",
            )
        )

        async def export() -> int:
            size = 0
            async for chunk in ledger_csv(database, LedgerFilters(team=team)):
                size += len(chunk)
            return size

        started = time.perf_counter()
        size = await export()
        timings.append(
            Timing(
                f"CSV export, team {team}", (time.perf_counter() - started) * 1000, math.nan, f"{size / 2**20:.0f} MiB"
            )
        )
        return timings
    finally:
        await store.close()


def table(title: str, timings: list[Timing], plain: list[Timing]) -> str:
    """The timings, and those of the same queries with the indexes alone (``plain``)."""
    lines = [
        title,
        "",
        "| query | first ms | best of 3 ms | plain indexes, first ms | plain indexes, best of 3 ms | answer |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for t, p in zip(timings, plain, strict=True):
        best, plain_best = ("-" if math.isnan(x) else f"{x:,.1f}" for x in (t.best_ms, p.best_ms))
        lines.append(f"| {t.name} | {t.first_ms:,.1f} | {best} | {p.first_ms:,.1f} | {plain_best} | {t.note} |")
    return "\n".join(lines)


async def plain_indexes(url: str) -> list[Timing]:
    """The console's queries on the indexes of the version before (ts, client_request_id): the
    rollup's triggers and the error index dropped, so that every query reads the rows."""
    store = KeyStore.from_url(url)
    try:
        await store.database.run(_previous_schema)
    finally:
        await store.close()
    return await console_queries(url)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--writer-rows", type=int, default=100_000)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--only", choices=("sqlite", "postgresql"))
    args = parser.parse_args()
    started = time.perf_counter()
    rows = list(generate(args.rows, time.time()))
    print(f"{len(rows):,} rows generated in {time.perf_counter() - started:.0f} s", flush=True)
    writer_rows = live_rows(args.writer_rows) if args.writer_rows else []
    outputs = []
    with tempfile.TemporaryDirectory() as directory:
        files = itertools.count()

        async def sqlite_file() -> str:
            return f"sqlite:///{Path(directory) / f'writer-{next(files)}.db'}"

        base = args.postgres.rsplit("/", 1)[0]

        async def postgres_database(name: str = "qg_bench_console_writer") -> str:
            await _admin(args.postgres, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await _admin(args.postgres, f'CREATE DATABASE "{name}"')
            return f"{base}/{name}"

        targets: list[tuple[str, str, Callable[[], Awaitable[str]]]] = []
        if args.only in (None, "sqlite"):
            targets.append(("SQLite", f"sqlite:///{Path(directory) / 'console.db'}", sqlite_file))
        if args.only in (None, "postgresql"):
            targets.append(("PostgreSQL", await postgres_database("qg_bench_console"), postgres_database))
        try:
            for label, url, empty in targets:
                if writer_rows:
                    cost = await writer_cost(empty, writer_rows)
                    before, after = cost["before"], cost["after"]
                    outputs.append(
                        f"{label} writer, {len(writer_rows):,} rows in batches of {BATCH} (median of 3 rounds): "
                        f"before the rollup {before[0]:.1f} µs/row wall, {before[1]:.1f} µs/row CPU; "
                        f"with it {after[0]:.1f} µs/row wall, {after[1]:.1f} µs/row CPU"
                    )
                    print(outputs[-1], flush=True)
                store = await open_store(url)
                seconds, _ = await fill(store.database, rows)
                if label == "PostgreSQL":
                    await store.database.run(lambda c: c.exec_driver_sql("ANALYZE"), deadline=None)
                rollup = await store.database.run(
                    lambda c: c.exec_driver_sql("SELECT count(*) FROM qg_usage_rollup").scalar()
                )
                await store.close()
                print(
                    f"{label}: {len(rows):,} rows written in {seconds:.0f} s ({seconds / len(rows) * 1e6:.1f} µs/row), {rollup:,} rollup rows",
                    flush=True,
                )
                timings = await console_queries(url)
                title = f"{label}, {len(rows):,} rows over 30 days, {rollup:,} rollup rows:"
                outputs.append(table(title, timings, await plain_indexes(url)))
                print(outputs[-1], flush=True)
        finally:
            if args.only in (None, "postgresql"):
                for name in ("qg_bench_console", "qg_bench_console_writer"):
                    await _admin(args.postgres, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print()
    print("\n\n".join(outputs))


if __name__ == "__main__":
    asyncio.run(main())
