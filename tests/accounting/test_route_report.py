"""The route report (`usage --by route`, GET /admin/usage?by=route) and model tiering's metrics."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from quotagate.accounting import Metrics, UsageRow, usage_report
from quotagate.cli import app
from quotagate.tiering import RoutePlan

from ..conftest import RunningGateway, ServerThread, gateway_config
from ..server.test_books import M, N, RecordingLedger, books, refused, served
from .test_reports import _seed
from .test_stream_ledger import usage_row


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, sqlite_url: str) -> str:
    """On SQLite and on the real PostgreSQL, which groups by expressions more strictly."""
    if request.param == "sqlite":
        return sqlite_url
    return str(request.getfixturevalue("postgres_url"))


def _routed(request_id: str, route_class: str, model_served: str | None, cost: float, baseline: float) -> UsageRow:
    return usage_row(request_id)._replace(
        model_requested="auto",
        model_served=model_served,
        route_class=route_class,
        cost_usd=cost,
        baseline_usd=baseline,
    )


def _rows() -> list[UsageRow]:
    """Routed requests of three classes (one also downgraded, one refused), a downgraded request
    for a model that is not routed, and one that tiering left alone."""
    plain = usage_row("req_plain")._replace(cost_usd=0.5)
    return [
        plain,
        _routed("req_simple_1", "simple", "gemini-2.5-flash", 0.001, 0.01),
        _routed("req_simple_2", "simple", "gemini-2.5-flash", 0.002, 0.02),
        _routed("req_complex", "complex", "claude-sonnet-4.5", 0.02, 0.02),
        # Refused by a limit: nothing used, nothing cost, nothing saved; an error of its class.
        _routed("req_complex_refused", "complex", None, 0.0, 0.0)._replace(
            prompt_tokens=0, completion_tokens=0, status=429
        ),
        # Routed, then downgraded: it stays under its class.
        _routed("req_routine", "routine", "gemini-2.5-flash", 0.001, 0.02)._replace(downgraded_from="deepseek-v3.2"),
        usage_row("req_downgraded")._replace(
            model_requested="claude-sonnet-4.5",
            model_served="gemini-2.5-flash",
            downgraded_from="claude-sonnet-4.5",
            cost_usd=0.001,
            baseline_usd=0.005,
        ),
    ]


async def test_the_route_report_groups_routed_and_downgraded_requests_with_their_savings(database: str) -> None:
    """Only the requests tiering moved, by routed model and class or as downgrades of the model
    asked for: their sums, what they would have cost, and what routing saved."""
    store = await _seed(database, _rows())
    try:
        report = await usage_report(store.database, "route")
    finally:
        await store.close()
    groups = {row["route"]: row for row in report.rows}
    assert list(groups) == ["auto/complex", "auto/routine", "auto/simple", "claude-sonnet-4.5/downgrade"]
    summed = {
        name: (row["requests"], row["errors"], row["prompt_tokens"], row["cost_usd"], row["baseline_usd"])
        for name, row in groups.items()
    }
    assert summed == {
        "auto/complex": (2, 1, 11, 0.02, 0.02),
        "auto/routine": (1, 0, 11, 0.001, 0.02),
        "auto/simple": (2, 0, 22, 0.003, 0.03),
        "claude-sonnet-4.5/downgrade": (1, 0, 11, 0.001, 0.005),
    }
    assert {name: row["routing_saved_usd"] for name, row in groups.items()} == {
        "auto/complex": 0.0,
        "auto/routine": 0.019,
        "auto/simple": 0.027,
        "claude-sonnet-4.5/downgrade": 0.004,
    }
    totals = report.totals
    assert (totals["requests"], totals["errors"], totals["cost_usd"]) == (6, 1, 0.025)
    assert (totals["baseline_usd"], totals["routing_saved_usd"]) == (0.075, 0.05)


async def test_the_route_reports_amounts_are_also_in_the_display_currency(database: str) -> None:
    """baseline and routing_saved, like cost and saved, also in the display currency, after the
    report's usual fields; the other reports gain no field."""
    store = await _seed(database, _rows())
    try:
        report = await usage_report(store.database, "route", currency="EUR", rate=0.5)
        by_model = await usage_report(store.database, "model", currency="EUR", rate=0.5)
    finally:
        await store.close()
    simple = next(row for row in report.rows if row["route"] == "auto/simple")
    assert list(simple) == [
        "route",
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
        "baseline_usd",
        "baseline_eur",
        "routing_saved_usd",
        "routing_saved_eur",
    ]
    assert (simple["baseline_eur"], simple["routing_saved_eur"], simple["cost_eur"]) == (0.015, 0.0135, 0.0015)
    assert (report.totals["baseline_eur"], report.totals["routing_saved_eur"]) == (0.0375, 0.025)
    assert not any("baseline" in field or "routing" in field for field in [*by_model.totals, *by_model.rows[0]])
    # The model report still counts every row.
    assert by_model.totals["requests"] == 7


async def test_a_ledger_without_tiered_requests_gives_an_empty_route_report(database: str) -> None:
    """No routed or downgraded row: no group, and totals of zero (the new fields included)."""
    store = await _seed(database, [usage_row("req_plain")])
    try:
        report = await usage_report(store.database, "route")
    finally:
        await store.close()
    assert report.rows == []
    assert (report.totals["requests"], report.totals["baseline_usd"], report.totals["routing_saved_usd"]) == (0, 0, 0)


def test_the_cli_shows_the_route_report_in_every_format(database: str, tmp_path: Path) -> None:
    """`quotagate usage --by route`: the groups, the baseline and the saving as plain decimals,
    in the table, the CSV and the JSON."""

    async def seed() -> None:
        await (await _seed(database, _rows())).close()

    asyncio.run(seed())
    config = tmp_path / "report.yaml"
    config.write_text(f"database: {database}\ncurrency: {{display: CNY, rate: 7}}\n")
    runner = CliRunner()
    outputs = {
        fmt: runner.invoke(app, ["usage", "--by", "route", "--format", fmt, "-c", str(config)], terminal_width=300)
        for fmt in ("table", "csv", "json")
    }
    assert all(result.exit_code == 0 for result in outputs.values()), {f: r.output for f, r in outputs.items()}
    groups = ["auto/complex", "auto/routine", "auto/simple", "claude-sonnet-4.5/downgrade"]
    table = [[cell.strip() for cell in line.split("│")[1:-1]] for line in outputs["table"].output.splitlines()]
    table = [row for row in table if row]
    header = [cell for line in outputs["table"].output.splitlines()[:3] for cell in line.split("┃")[1:-1]]
    assert [cell.strip() for cell in header][-4:] == [
        "baseline_usd",
        "baseline_cny",
        "routing_saved_usd",
        "routing_saved_cny",
    ]
    assert [row[0] for row in table] == [*groups, "TOTAL"]
    assert table[-1][-4:] == ["0.075", "0.525", "0.05", "0.35"]
    rows = list(csv.reader(io.StringIO(outputs["csv"].output)))
    assert rows[0][0] == "route" and rows[0][-4:] == [
        "baseline_usd",
        "baseline_cny",
        "routing_saved_usd",
        "routing_saved_cny",
    ]
    assert [row[0] for row in rows[1:]] == [*groups, "TOTAL"]
    assert rows[-1][-4:] == ["0.075", "0.525", "0.05", "0.35"]
    document = json.loads(outputs["json"].output)
    assert [row["route"] for row in document["data"]] == groups
    assert (document["totals"]["baseline_usd"], document["totals"]["routing_saved_cny"]) == (0.075, 0.35)


def test_the_admin_api_gives_the_route_report(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """GET /admin/usage?by=route: the same groups; an unknown grouping names route among the choices."""
    running = start_gateway(gateway_config(sqlite_url, mock_upstream.url))

    async def seed() -> None:
        await (await _seed(sqlite_url, _rows())).close()

    asyncio.run(seed())
    with running.admin() as admin:
        report = admin.get("/admin/usage", params={"by": "route"}).json()
        wrong = admin.get("/admin/usage", params={"by": "class"})
    assert report["by"] == "route"
    assert [row["route"] for row in report["data"]] == [
        "auto/complex",
        "auto/routine",
        "auto/simple",
        "claude-sonnet-4.5/downgrade",
    ]
    assert report["totals"]["routing_saved_usd"] == 0.05
    assert wrong.status_code == 400 and "day or route" in wrong.json()["error"]["message"]


def _families(metrics: Metrics) -> dict[str, dict[tuple[str, ...], float]]:
    """Tiering's counters as scraped: samples by their labels' values."""
    families = {f.name: f for f in text_string_to_metric_families(metrics.exposition()[0].decode())}
    labels = {
        "quotagate_routed_requests": ("model", "class", "served"),
        "quotagate_downgrades": ("requested", "served"),
    }
    return {
        name: {tuple(sample.labels[label] for label in names): sample.value for sample in families[name].samples}
        for name, names in labels.items()
    }


def _plan(route_class: str, model: str) -> RoutePlan:
    """A plan of the routed model "auto", whose classes are served by "m" and, the strongest, "n"."""
    models = ("m", "n") if model == "m" else ("n",)
    return RoutePlan("auto", route_class, model, models, "n", "default", "no rule matched")


async def test_routed_and_downgraded_requests_are_counted_by_configured_names() -> None:
    """quotagate_routed_requests_total by routed model, class and serving model ("" for none);
    quotagate_downgrades_total by the refused model and the serving one; untiered requests in
    neither."""
    stage = books(RecordingLedger())
    simple = served(M, model="auto")
    simple.route = _plan("simple", "m")
    moved_up = served(N, model="auto")  # the class's model was down: the stronger one served it
    moved_up.route = _plan("simple", "m")
    downgraded_class = served(M, model="auto")  # its class's model refused it: "m" served it instead
    downgraded_class.route, downgraded_class.downgraded_from = _plan("complex", "n"), "n"
    downgraded = served(M, model="n")
    downgraded.downgraded_from = "n"
    refused_routed = refused("auto")
    refused_routed.route = _plan("complex", "n")
    for record in (simple, moved_up, downgraded_class, downgraded, refused_routed, served(N, model="n")):
        await stage.account(record, 200 if record.exchange is not None else 429, None)
    assert _families(stage.metrics) == {
        "quotagate_routed_requests": {
            ("auto", "simple", "m"): 1.0,
            ("auto", "simple", "n"): 1.0,
            ("auto", "complex", "m"): 1.0,
            ("auto", "complex", ""): 1.0,
        },
        "quotagate_downgrades": {("n", "m"): 2.0},
    }
