"""The team report (`usage --by team`, GET /admin/usage?by=team) and the ledger's ``team`` column:
on every row, in place in the databases of the versions before it, and through the journal and
the Redis stream."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import marshal
import struct
import uuid
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from quotagate.accounting import Ledger, SqlWriter, StreamLedger, UsageRow, usage_report, usage_table
from quotagate.accounting.ledger import FIELDS, journal_path, read_journal, row_json
from quotagate.auth import Principal
from quotagate.cli import app
from quotagate.keys import Database, KeyStore
from quotagate.limits import RedisConnection

from ..conftest import REDIS_URL, RunningGateway, ServerThread, gateway_config
from ..server.test_books import M, RecordingLedger, books, refused, served
from .test_ledger import ledger_rows, post, wait_for_rows
from .test_ledger_journal import journals, leave_journal
from .test_reports import _seed
from .test_stream_ledger import usage_row

# The fields of the version before teams: today's, but the last.
BEFORE_TEAMS = FIELDS[: FIELDS.index("team")]


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, sqlite_url: str) -> str:
    """On SQLite and on the real PostgreSQL."""
    if request.param == "sqlite":
        return sqlite_url
    return str(request.getfixturevalue("postgres_url"))


def _rows() -> list[UsageRow]:
    """Team a: two requests of alice's and one of carol's refused by a limit; team b: one of bob's;
    no team: one of dave's and one of alice's (a key of hers in no team)."""
    row = usage_row
    return [
        row("req_a1")._replace(team="a", cost_usd=0.01),
        row("req_a2")._replace(team="a", prompt_tokens=20, completion_tokens=5, cost_usd=0.02),
        row("req_a3")._replace(
            team="a", user_id="carol", prompt_tokens=0, completion_tokens=0, cost_usd=0.0, status=429
        ),
        row("req_b1")._replace(team="b", user_id="bob", prompt_tokens=100, completion_tokens=50, cost_usd=0.5),
        row("req_none1")._replace(user_id="dave", cost_usd=0.001),
        row("req_none2")._replace(key_id="k2", cost_usd=0.002),
    ]


async def test_the_team_report_sums_each_team_and_the_rows_of_none(database: str) -> None:
    """One group per team, and the rows of keys in no team in one group, "(none)" like every
    report's missing name; its totals are the ledger's."""
    store = await _seed(database, _rows())
    try:
        report = await usage_report(store.database, "team", currency="EUR", rate=0.5)
    finally:
        await store.close()
    assert report.by == "team"
    summed = {
        row["team"]: (row["requests"], row["errors"], row["prompt_tokens"], row["completion_tokens"], row["cost_usd"])
        for row in report.rows
    }
    assert summed == {
        "(none)": (2, 0, 22, 14, 0.003),
        "a": (3, 1, 31, 12, 0.03),
        "b": (1, 0, 100, 50, 0.5),
    }
    assert [row["cost_eur"] for row in report.rows] == [0.0015, 0.015, 0.25]
    totals = report.totals
    assert (totals["requests"], totals["errors"], totals["prompt_tokens"], totals["completion_tokens"]) == (
        6,
        1,
        153,
        76,
    )
    assert (totals["cost_usd"], totals["cost_eur"]) == (0.533, 0.2665)
    # The report's fields are every report's, the group's name first.
    assert next(iter(report.rows[0])) == "team" and "baseline_usd" not in report.rows[0]


async def test_the_team_report_covers_the_days_asked_for(database: str) -> None:
    """since and until bound the rows by time, as in every report."""
    day = 86_400.0
    rows = [
        usage_row("req_today")._replace(team="a"),
        usage_row("req_yesterday")._replace(team="b", ts=1_790_000_000.25 - day),
    ]
    store = await _seed(database, rows)
    since = datetime.fromtimestamp(1_790_000_000.25 - day / 2, UTC)
    try:
        report = await usage_report(store.database, "team", since=since)
    finally:
        await store.close()
    assert [(row["team"], row["requests"]) for row in report.rows] == [("a", 1)]


def _previous_table(metadata: sa.MetaData) -> sa.Table:
    """qg_usage as the version before teams made it: its columns, indexes and defaults, no team."""
    columns = [
        sa.Column(
            c.name,
            c.type,
            primary_key=c.primary_key,
            nullable=c.nullable,
            index=c.index,
            server_default=sa.text("0") if c.server_default is not None else None,
        )
        for c in usage_table.columns
        if c.name != "team"
    ]
    return sa.Table(
        "qg_usage",
        metadata,
        *columns,
        sa.Index(
            "ix_qg_usage_client_request_id",
            "client_request_id",
            sqlite_where=sa.text("client_request_id IS NOT NULL"),
            postgresql_where=sa.text("client_request_id IS NOT NULL"),
        ),
    )


async def test_a_ledger_of_the_version_before_teams_gains_the_column_in_place(database: str) -> None:
    """A database of the version before teams is upgraded at start (twice: nothing left to add the
    second time), with no index on team; its rows stay and report under "(none)", and the rows
    written after it keep their team."""
    previous = sa.MetaData()
    table = _previous_table(previous)
    old = usage_row("req_old")._replace(cost_usd=0.25)

    def create_previous(conn: sa.Connection) -> None:
        # The shared PostgreSQL database of the session has today's table: made again, as it was.
        conn.exec_driver_sql("DROP TABLE IF EXISTS qg_usage")
        previous.create_all(conn)
        values = {**old._asdict(), "ts": datetime.fromtimestamp(old.ts, UTC)}
        del values["team"]
        conn.execute(table.insert().values(**values))

    db = Database(database)
    await db.run(create_previous)
    await db.dispose()
    store = KeyStore.from_url(database)
    try:
        await store.create_schema()
        await store.create_schema()

        def inspect(conn: sa.Connection) -> tuple[dict[str, Any], list[set[str]]]:
            inspector = sa.inspect(conn)
            columns = {column["name"]: column for column in inspector.get_columns("qg_usage")}
            return columns, [set(index["column_names"]) for index in inspector.get_indexes("qg_usage")]

        columns, indexes = await store.database.run(inspect)
        writer = SqlWriter(store.database)
        await writer.write([usage_row("req_new")._replace(team="a", cost_usd=0.5)])
        await writer.aclose()
        report = await usage_report(store.database, "team")
        by_user = await usage_report(store.database, "user")
    finally:
        await store.close()
    assert list(columns)[-1] == "team" and columns["team"]["nullable"]
    assert isinstance(columns["team"]["type"], sa.String) and columns["team"]["type"].length == 100
    assert not any("team" in index for index in indexes)
    rows = {row.request_id: row for row in await asyncio.to_thread(ledger_rows, database)}
    assert (rows["req_old"].team, rows["req_new"].team) == (None, "a")
    assert [(row["team"], row["requests"], row["cost_usd"]) for row in report.rows] == [
        ("(none)", 1, 0.25),
        ("a", 1, 0.5),
    ]
    assert by_user.totals["requests"] == report.totals["requests"] == 2


async def test_every_row_gets_its_keys_team_refused_requests_too() -> None:
    """The account stage writes the principal's team on the row of a request served and of one
    refused before any deployment had it, beside the key and user; a key of no team gets NULL."""
    ledger = RecordingLedger()
    stage = books(ledger)
    team_a = Principal("key9", "alice", "free", None, team="a")
    answered, turned_away, teamless = served(M), refused("m"), served(M)
    answered.principal = turned_away.principal = team_a
    for record, status in ((answered, 200), (turned_away, 429), (teamless, 200)):
        await stage.account(record, status, "rate_limit_exceeded" if status == 429 else None)
    assert [(row.key_id, row.user_id, row.team, row.status) for row in ledger.rows] == [
        ("key9", "alice", "a", 200),
        ("key9", "alice", "a", 429),
        ("key1", "alice", None, 200),
    ]


async def test_a_rows_team_survives_the_journal_and_the_buffer(tmp_path: Path) -> None:
    """The embedded ledger's journal holds the row's team, and the batch written from the buffer
    and the one replayed from a killed process's journal both keep it."""
    path = tmp_path / "ledger.db"
    store = KeyStore.from_url(f"sqlite:///{path}")
    await store.create_schema()
    ledger = Ledger(SqlWriter(store.database), flush_seconds=60, journal=journal_path(store.database))
    try:
        await ledger.start()
        await ledger.commit(usage_row("req_a")._replace(team="a"))
        await ledger.commit(usage_row("req_none"))
        (journal,) = journals(path)
        journalled = read_journal(journal.read_bytes())
        await ledger.flush()
    finally:
        await ledger.aclose()
    # A journal left by a process of the version before teams: records named without the column.
    names = ",".join(BEFORE_TEAMS).encode()
    values = [tuple(usage_row("req_old"))[: len(BEFORE_TEAMS)]]
    payload = b"\x00" + struct.pack("<H", len(names)) + names + marshal.dumps(values)
    leave_journal(path, struct.pack("<II", len(payload), zlib.crc32(payload)) + payload)
    replaying = Ledger(SqlWriter(store.database), flush_seconds=60, journal=journal_path(store.database))
    try:
        await replaying.start()
        assert replaying.replayed == 1
    finally:
        await replaying.aclose()
        await store.close()
    assert [(row.request_id, row.team) for row in journalled] == [("req_a", "a"), ("req_none", None)]
    rows = await asyncio.to_thread(ledger_rows, f"sqlite:///{path}")
    assert sorted((row.request_id, row.team) for row in rows) == [
        ("req_a", "a"),
        ("req_none", None),
        ("req_old", None),
    ]


async def test_a_rows_team_survives_the_stream(tmp_path: Path) -> None:
    """A row committed through the Redis stream keeps its team; an entry of the version before
    teams (named without the column) is written with none."""
    database = f"sqlite:///{tmp_path / 'ledger.db'}"
    store = KeyStore.from_url(database)
    await store.create_schema()

    class Stream(StreamLedger):
        STREAM = f"qg:ledger:test-{uuid.uuid4().hex}"  # no other test's consumer reads it

    mine, old = (f"{kind}-{uuid.uuid4().hex}" for kind in ("mine", "old"))
    client = RedisConnection(REDIS_URL)
    before = orjson.loads(row_json(usage_row(old)))[: len(BEFORE_TEAMS)]
    await client.execute(
        "XADD", Stream.STREAM, "*", "b", orjson.dumps([before]), "n", "1", "f", ",".join(BEFORE_TEAMS).encode()
    )
    ledger = Stream(
        SqlWriter(store.database), RedisConnection(REDIS_URL), RedisConnection(REDIS_URL, timeout=5), flush_seconds=0.1
    )
    await ledger.start()
    try:
        await ledger.commit(usage_row(mine)._replace(team="b"))
        for _ in range(100):
            rows = {row.request_id: row for row in await asyncio.to_thread(ledger_rows, database)}
            if {mine, old} <= set(rows):
                break
            await asyncio.sleep(0.05)
    finally:
        await ledger.aclose()
        await client.execute("DEL", Stream.STREAM)
        await client.aclose()
        await store.close()
    assert (rows[mine].team, rows[old].team) == ("b", None)
    assert rows[old].prompt_tokens == rows[mine].prompt_tokens == 11


def test_the_cli_shows_the_team_report_in_every_format(database: str, tmp_path: Path) -> None:
    """`quotagate usage --by team`: the teams and "(none)" in the table, the CSV and the JSON."""

    async def seed() -> None:
        await (await _seed(database, _rows())).close()

    asyncio.run(seed())
    config = tmp_path / "report.yaml"
    config.write_text(f"database: {database}\n")
    runner = CliRunner()
    outputs = {
        fmt: runner.invoke(app, ["usage", "--by", "team", "--format", fmt, "-c", str(config)], terminal_width=200)
        for fmt in ("table", "csv", "json")
    }
    assert all(result.exit_code == 0 for result in outputs.values()), {f: r.output for f, r in outputs.items()}
    lines = outputs["table"].output.splitlines()
    header = [cell.strip() for line in lines[:3] for cell in line.split("┃")[1:-1]]
    assert header[:3] == ["team", "requests", "errors"]
    table = [[cell.strip() for cell in line.split("│")[1:-1]] for line in lines]
    table = [row for row in table if row]
    assert [row[:3] for row in table] == [["(none)", "2", "0"], ["a", "3", "1"], ["b", "1", "0"], ["TOTAL", "6", "1"]]
    rows = list(csv.reader(io.StringIO(outputs["csv"].output)))
    assert rows[0][0] == "team"
    assert [row[0] for row in rows[1:]] == ["(none)", "a", "b", "TOTAL"]
    document = json.loads(outputs["json"].output)
    assert document["by"] == "team"
    assert [(row["team"], row["requests"]) for row in document["data"]] == [("(none)", 2), ("a", 3), ("b", 1)]


def test_the_gateway_records_each_keys_team_and_reports_by_team(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """Keys of teams a and b and one of none, each with a request served and one refused by its
    tier's limit: every row has its key's team, and GET /admin/usage?by=team sums them."""
    gw = start_gateway(
        gateway_config(sqlite_url, mock_upstream.url, tiers={"free": {"rpm": 1}}, teams={"a": {}, "b": {}})
    )
    keys = {
        "a": gw.create_key(user="alice", team="a"),
        "b": gw.create_key(user="bob", team="b"),
        None: gw.create_key(user="dave"),
    }
    for created in keys.values():
        assert post(gw, created["key"]).status_code == 200
        assert post(gw, created["key"]).status_code == 429
    rows = wait_for_rows(sqlite_url, 6)
    teams = {created["id"]: team for team, created in keys.items()}
    assert sorted((row.team or "", row.status) for row in rows) == [
        ("", 200),
        ("", 429),
        ("a", 200),
        ("a", 429),
        ("b", 200),
        ("b", 429),
    ]
    assert all(row.team == teams[row.key_id] for row in rows)
    with gw.admin() as admin:
        report = admin.get("/admin/usage", params={"by": "team"}).json()
    assert report["by"] == "team"
    assert [(row["team"], row["requests"], row["errors"]) for row in report["data"]] == [
        ("(none)", 2, 1),
        ("a", 2, 1),
        ("b", 2, 1),
    ]
