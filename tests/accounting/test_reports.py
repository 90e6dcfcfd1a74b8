"""Usage reports: every group has a name, in every form the report takes."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quotagate.accounting import SqlWriter, UsageRow, usage_report
from quotagate.cli import app
from quotagate.keys import KeyStore

from .test_stream_ledger import usage_row


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, sqlite_url: str) -> str:
    """Reports run on SQLite and on the real PostgreSQL (which groups by expressions more strictly)."""
    if request.param == "sqlite":
        return sqlite_url
    return str(request.getfixturevalue("postgres_url"))


def _rows() -> list[UsageRow]:
    served = usage_row("req_served")
    # Refused by a limit: the model it asked for, no deployment.
    refused = served._replace(
        request_id="req_refused", model_served=None, deployment=None, prompt_tokens=0, completion_tokens=0, status=429
    )
    # Refused before it named a model (a body that is not JSON, one too large).
    nameless = refused._replace(request_id="req_nameless", model_requested=None, status=400)
    unknown = refused._replace(request_id="req_unknown", model_requested="gpt-9", status=404)
    return [served, refused, nameless, unknown]


async def _seed(database: str, rows: list[UsageRow] | None = None) -> KeyStore:
    store = KeyStore.from_url(database)
    await store.create_schema()
    await store.database.run(lambda conn: conn.exec_driver_sql("DELETE FROM qg_usage"))
    writer = SqlWriter(store.database)
    await writer.write(_rows() if rows is None else rows)
    await writer.aclose()
    return store


def _cache_rows() -> list[UsageRow]:
    """For alice, a miss and three hits (exact and semantic alike), the hits saving what the miss
    cost; for bob, one miss."""
    miss = usage_row("req_miss")._replace(cost_usd=0.003)
    hits = [
        miss._replace(request_id=f"req_hit_{n}", cost_usd=0.0, cache_hit=True, cache_saved_usd=0.003) for n in range(3)
    ]
    bob = miss._replace(request_id="req_bob", user_id="bob", cost_usd=0.001)
    return [miss, *hits, bob]


async def test_the_report_shows_the_cache_hits_their_rate_and_savings(database: str) -> None:
    """Per group and in the totals: the requests the cache answered, their share, and what their
    answers had cost, in USD and in the display currency like the cost."""
    store = await _seed(database, _cache_rows())
    try:
        report = await usage_report(store.database, "user", currency="EUR", rate=0.5)
    finally:
        await store.close()
    alice, bob = report.rows
    assert (alice["user"], alice["requests"], alice["cache_hits"], alice["hit_rate"]) == ("alice", 4, 3, 0.75)
    assert (alice["saved_usd"], alice["saved_eur"], alice["cost_usd"]) == (0.009, 0.0045, 0.003)
    assert (bob["cache_hits"], bob["hit_rate"], bob["saved_usd"], bob["saved_eur"]) == (0, 0.0, 0.0, 0.0)
    totals = report.totals
    assert (totals["requests"], totals["cache_hits"], totals["hit_rate"]) == (5, 3, 0.6)
    assert (totals["saved_usd"], totals["saved_eur"], totals["cost_usd"], totals["cost_eur"]) == (
        0.009,
        0.0045,
        0.004,
        0.002,
    )
    # The fields of before, in their order, then the cache's.
    assert list(alice) == [
        "user",
        "requests",
        "errors",
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "cost_usd",
        "cost_eur",
        "cache_hits",
        "hit_rate",
        "saved_usd",
        "saved_eur",
    ]


async def test_requests_no_model_served_are_grouped_under_the_model_asked_for(database: str) -> None:
    """By model, a refused request counts under the model it asked for; one that named none
    under "(none)", never under a blank or null."""
    store = await _seed(database)
    try:
        report = await usage_report(store.database, "model")
        by_deployment = await usage_report(store.database, "deployment")
    finally:
        await store.close()
    assert {row["model"]: (row["requests"], row["errors"]) for row in report.rows} == {
        "(none)": (1, 1),
        "gpt-4o-mini": (2, 1),
        "gpt-9": (1, 1),
    }
    assert {row["deployment"]: row["requests"] for row in by_deployment.rows} == {
        "(none)": 3,
        "openai/gpt-4o-mini#0": 1,
    }
    assert report.totals["requests"] == by_deployment.totals["requests"] == 4


def test_the_cli_names_the_group_without_a_deployment_alike_in_every_format(database: str, tmp_path: Path) -> None:
    """`quotagate usage --by deployment` shows "(none)" in the table, the CSV and the JSON: not
    "None" in one, an empty cell in another and null in the third."""
    import asyncio

    async def seed() -> None:
        await (await _seed(database)).close()

    asyncio.run(seed())
    config = tmp_path / "report.yaml"
    config.write_text(f"database: {database}\n")
    runner = CliRunner()
    outputs = {
        fmt: runner.invoke(app, ["usage", "--by", "deployment", "--format", fmt, "-c", str(config)], terminal_width=200)
        for fmt in ("table", "csv", "json")
    }
    assert all(result.exit_code == 0 for result in outputs.values()), {f: r.output for f, r in outputs.items()}
    table_groups = [line.split("│")[1].strip() for line in outputs["table"].output.splitlines() if "│" in line]
    assert table_groups == ["(none)", "openai/gpt-4o-mini#0", "TOTAL"]
    csv_groups = [row[0] for row in csv.reader(io.StringIO(outputs["csv"].output))][1:]
    assert csv_groups == ["(none)", "openai/gpt-4o-mini#0", "TOTAL"]
    json_groups = [row["deployment"] for row in json.loads(outputs["json"].output)["data"]]
    assert json_groups == ["(none)", "openai/gpt-4o-mini#0"]
