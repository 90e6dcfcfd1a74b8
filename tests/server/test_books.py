"""The account stage (``Books``): each request's ledger row, its cost, its metrics and its day.

Real Metrics and Pricing, real deployment targets from a parsed configuration, a ledger that
records the rows it is given, and the stage's clocks (wall, perf_counter, monotonic) fixed.
"""

from __future__ import annotations

import types
from datetime import UTC, datetime
from typing import cast

import pytest
from prometheus_client.parser import text_string_to_metric_families

from quotagate.accounting import Ledger, Metrics, Price, Pricing, UsageRow, cost_usd
from quotagate.auth import Principal
from quotagate.config import parse_config
from quotagate.router import Exchange
from quotagate.server import _books
from quotagate.server._books import Books
from quotagate.server._record import RequestRecord
from quotagate.server._tenant import TenantCharge
from quotagate.tokens import Estimate
from quotagate.upstream import DeploymentTarget, ModelRoutes, UpstreamResponse

ALICE = Principal("key1", "alice", "free", None)
ROUTES = ModelRoutes(
    parse_config(
        {
            "models": [
                # "m" is served as "prov-m", which has a price of its own; "n" as "house-n", which has none.
                {
                    "name": "m",
                    "deployments": [
                        {"provider": "openai-compatible", "base_url": "http://a.test/v1", "model": "prov-m"}
                    ],
                },
                {
                    "name": "n",
                    "deployments": [
                        {"provider": "openai-compatible", "base_url": "http://b.test/v1", "model": "house-n"}
                    ],
                },
            ]
        }
    )
)
M, N = ROUTES.deployments("m")[0], ROUTES.deployments("n")[0]
PRICES = {"m": Price(1.0, 2.0), "prov-m": Price(10.0, 20.0, 1.0), "n": Price(3.0, 4.0)}

# 2025-01-01 16:30 UTC is 2025-01-02 00:30 in Shanghai (UTC+8).
WALL = datetime(2025, 1, 1, 16, 30, tzinfo=UTC).timestamp()
PERF = 5000.0  # time.perf_counter() when the row is made
MONO = 7000.0  # time.monotonic() when the row is made


class RecordingLedger:
    """The ledger as the account stage uses it: ``commit(row)``."""

    def __init__(self) -> None:
        self.rows: list[UsageRow] = []

    async def commit(self, row: UsageRow) -> None:
        self.rows.append(row)


class CountingPricing(Pricing):
    """Pricing that counts the look-ups made in its price list."""

    def __init__(self) -> None:
        super().__init__(PRICES)
        self.lookups = 0

    def price_for(self, *names: str) -> Price | None:
        self.lookups += 1
        return super().price_for(*names)


@pytest.fixture(autouse=True)
def frozen_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        _books, "time", types.SimpleNamespace(time=lambda: WALL, perf_counter=lambda: PERF, monotonic=lambda: MONO)
    )


def books(ledger: RecordingLedger, timezone: str = "UTC", pricing: Pricing | None = None) -> Books:
    return Books(
        pricing=pricing or Pricing(PRICES),
        ledger=cast(Ledger, ledger),
        metrics=Metrics(),
        timezone=timezone,
        served_models=frozenset({"m", "n"}),
    )


def served(
    target: DeploymentTarget, model: str = "m", reported: tuple[int, int] = (100, 50), cached: int = 40
) -> RequestRecord:
    """A request for ``model`` that ``target`` answered 0.125 s ago, begun 0.25 s ago, with
    its usage reported."""
    record = RequestRecord("req-1", "client-7", ALICE, model, True, began=PERF - 0.25)
    # The account stage reads the deployment and start of the exchange, never its response.
    record.exchange = Exchange(target, cast(UpstreamResponse, None), None, MONO - 0.125, True)
    record.upstream_answered = True
    record.reported, record.cached = reported, cached
    return record


def refused(model: str) -> RequestRecord:
    """A request refused before any deployment had it."""
    return RequestRecord("req-2", None, ALICE, model, False, began=PERF - 0.25)


def requests(metrics: Metrics) -> dict[tuple[str, str, str], float]:
    """quotagate_requests by (model, deployment, status), as scraped."""
    families = {f.name: f for f in text_string_to_metric_families(metrics.exposition()[0].decode())}
    return {
        (s.labels["model"], s.labels["deployment"], s.labels["status"]): s.value
        for s in families["quotagate_requests"].samples
        if s.name == "quotagate_requests_total"
    }


async def test_the_row_holds_what_the_record_says() -> None:
    """The row carries the request's ids, caller, models, deployment, tokens, cost, timings,
    status, error type and stream flag, on the day of the configured time zone."""
    ledger = RecordingLedger()
    await books(ledger, "Asia/Shanghai").account(served(M), 200, None)
    assert ledger.rows == [
        UsageRow(
            request_id="req-1",
            ts=WALL,
            day="2025-01-02",
            key_id="key1",
            user_id="alice",
            tier="free",
            model_requested="m",
            model_served="m",
            deployment="m#0 (openai-compatible/prov-m)",
            prompt_tokens=100,
            completion_tokens=50,
            cached_tokens=40,
            cost_usd=cost_usd(PRICES["prov-m"], 100, 50, 40),
            latency_ms=250.0,
            upstream_ms=125.0,
            overhead_ms=125.0,
            status=200,
            error_type=None,
            stream=True,
            client_request_id="client-7",
        )
    ]


async def test_a_failed_requests_row_has_its_status_and_error_type() -> None:
    """A request that failed after the provider had it keeps its status and error type."""
    ledger = RecordingLedger()
    await books(ledger).account(served(M), 200, "upstream_timeout")
    assert (ledger.rows[0].status, ledger.rows[0].error_type) == (200, "upstream_timeout")


async def test_a_request_is_accounted_once() -> None:
    """A second ``account`` for the same request (the relay's, then the proxy's when the client
    leaves before the last message) writes no second row and counts no second request."""
    ledger = RecordingLedger()
    stage = books(ledger)
    record = served(M)
    await stage.account(record, 200, None)
    await stage.account(record, 499, "client_disconnected")
    assert [(row.status, row.error_type) for row in ledger.rows] == [(200, None)]
    assert requests(stage.metrics) == {("m", M.label, "200"): 1.0}


async def test_a_refused_request_costs_nothing_and_its_unknown_model_is_no_label() -> None:
    """A request refused before any deployment (no exchange, no tokens) costs 0 without the price
    list being asked, and a model the gateway does not serve is counted under "" while a served
    one keeps its name."""
    ledger, pricing = RecordingLedger(), CountingPricing()
    stage = books(ledger, pricing=pricing)
    await stage.account(refused("made-up-model-3"), 404, "model_not_found")
    await stage.account(refused("m"), 429, "rate_limit_exceeded")
    unknown, known = ledger.rows
    assert (unknown.model_requested, unknown.model_served, unknown.deployment) == ("made-up-model-3", None, None)
    assert (unknown.prompt_tokens, unknown.completion_tokens, unknown.cost_usd) == (0, 0, 0.0)
    assert (unknown.upstream_ms, unknown.overhead_ms) == (None, unknown.latency_ms)
    assert known.cost_usd == 0.0
    assert pricing.lookups == 0
    assert requests(stage.metrics) == {("", "", "404"): 1.0, ("m", "", "429"): 1.0}


async def test_cost_is_at_the_serving_deployments_provider_model_price() -> None:
    """A deployment whose provider model has a price is charged at that price (cached tokens at
    its cached rate), not at the gateway model's."""
    stage = books(RecordingLedger())
    assert stage.cost(served(M), 100, 50) == cost_usd(PRICES["prov-m"], 100, 50, 40)
    assert stage.cost(served(M), 100, 50) != cost_usd(PRICES["m"], 100, 50, 40)


async def test_cost_falls_back_to_the_models_price() -> None:
    """A deployment whose provider model has no price is charged at the gateway model's price;
    a request with no exchange, at its model's."""
    stage = books(RecordingLedger())
    assert stage.cost(served(N, model="n", cached=0), 100, 50) == cost_usd(PRICES["n"], 100, 50)
    assert stage.cost(refused("n"), 100, 50) == cost_usd(PRICES["n"], 100, 50)


async def test_a_fallback_is_charged_to_the_model_that_served_it() -> None:
    """A request for "m" that fell back to "n" is recorded as requested "m", served by "n", and
    costs what "n" costs; its metrics are under "n"."""
    ledger = RecordingLedger()
    stage = books(ledger)
    record = served(N, model="m", cached=0)
    record.tenant = TenantCharge(None, None, ALICE, "n", Estimate(100, 50), PRICES.get)
    await stage.account(record, 200, None)
    (row,) = ledger.rows
    assert (row.model_requested, row.model_served, row.deployment) == ("m", "n", N.label)
    assert row.cost_usd == cost_usd(PRICES["n"], 100, 50)
    assert requests(stage.metrics) == {("n", N.label, "200"): 1.0}


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("timezone", "times", "days"),
    [
        # Shanghai's midnight is 16:00 UTC.
        ("Asia/Shanghai", [utc(2025, 1, 1, 15, 59, 59), utc(2025, 1, 1, 16)], ["2025-01-01", "2025-01-02"]),
        ("UTC", [utc(2025, 1, 1, 15, 59, 59), utc(2025, 1, 1, 16)], ["2025-01-01", "2025-01-01"]),
        ("UTC", [utc(2025, 1, 1, 23, 59, 59), utc(2025, 1, 2)], ["2025-01-01", "2025-01-02"]),
        # New York's 2025-03-09 has 23 hours: it ends at 04:00 UTC, not 05:00.
        ("America/New_York", [utc(2025, 3, 10, 3, 59, 59), utc(2025, 3, 10, 4)], ["2025-03-09", "2025-03-10"]),
    ],
)
def test_day_is_the_calendar_day_in_the_configured_time_zone(
    timezone: str, times: list[float], days: list[str]
) -> None:
    """``day`` names the calendar day of a moment in the configured zone, on either side of its
    midnight, in either order (the day last named does not answer for the next)."""
    stage = Books(timezone=timezone)
    before, after = times
    assert [stage.day(t) for t in (before, after, before, after)] == [*days, *days]
