"""GET /admin/ledger and GET /admin/usage/series (server._admin_ledger): the parameters they take
and refuse, a team admin's view, the CSV download, and the rows this node has not written yet.

The handlers are called as AdminAPI calls them, with the request's scope and a ``send`` that
keeps what it is given; a GatewayError is what the gateway turns into the error answer."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest

from quotagate.accounting import Ledger, SqlWriter, UsageRow
from quotagate.config._models import CurrencySettings
from quotagate.errors import GatewayError
from quotagate.keys import Database
from quotagate.server import _admin_ledger
from quotagate.server._admin_ledger import LedgerViews

from ..accounting.test_ledger import post
from ..accounting.test_reports import _seed
from ..accounting.test_stream_ledger import usage_row
from ..conftest import RunningGateway
from .test_errors import assert_openai_error

NOW = datetime.now(UTC).replace(microsecond=0)


@dataclass
class Answer:
    status: int
    headers: dict[bytes, bytes] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, Any] | None = None

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages if m["type"] == "http.response.body")

    def json(self) -> Any:
        return orjson.loads(self.body)


async def call(views: LedgerViews, route: str, query: dict[str, str] | str = "", team: str | None = None) -> Answer:
    """The handler's answer to GET /admin/<route>?<query>, for a caller of ``team`` (a team admin)
    or of none; a GatewayError it raises, as the gateway would answer it."""
    text = query if isinstance(query, str) else urlencode(query)
    scope = {"type": "http", "method": "GET", "path": f"/admin/{route}", "query_string": text.encode()}
    messages: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        messages.append(dict(message))

    handler = views.ledger if route == "ledger" else views.series
    try:
        await handler(scope, send, team)
    except GatewayError as exc:
        assert not messages, "an error after the answer started"
        return Answer(exc.status, error=exc.to_dict()["error"])
    start = messages[0]
    assert start["type"] == "http.response.start"
    return Answer(start["status"], dict(start["headers"]), messages[1:])


def row(request_id: str, minutes_ago: float, **changes: Any) -> UsageRow:
    moment = NOW - timedelta(minutes=minutes_ago)
    return usage_row(request_id)._replace(ts=moment.timestamp(), day=moment.date().isoformat(), **changes)


ROWS = [
    row("req_a1", 1, team="a", user_id="alice"),
    row("req_a2", 2, team="a", user_id="alice", status=429, model_served=None, deployment=None),
    row("req_b1", 3, team="b", user_id="bob", model_requested="=cmd|' /C calc'!A0"),
    row("req_n1", 4, team=None, user_id="dave", cost_usd=0.5),
]


@pytest.fixture
async def views(sqlite_url: str) -> AsyncIterator[LedgerViews]:
    store = await _seed(sqlite_url, ROWS)
    yield LedgerViews(store.database, None, CurrencySettings())
    await store.close()


@pytest.mark.parametrize(
    ("route", "query", "param"),
    [
        ("ledger", "limit=0", "limit"),
        ("ledger", "limit=501", "limit"),
        ("ledger", "limit=ten", "limit"),
        ("ledger", "limit=", "limit"),
        ("ledger", "cursor=not-a-cursor", "cursor"),
        ("ledger", "cursor=", "cursor"),
        ("ledger", "status=fine", "status"),
        ("ledger", "status=99", "status"),
        ("ledger", "status=", "status"),
        ("ledger", "status=%C2%B2", "status"),
        ("ledger", "limit=%C2%B2", "limit"),
        ("ledger", "limit=%EF%BC%95", "limit"),
        ("ledger", "cursor=WzI1MzQwMjMwMDc5OTk5OTk5OSwicmVxX2xhc3QiXQ", "cursor"),
        ("ledger", "until=9999-12-31T23:00:00-05:00", "until"),
        ("ledger", "since=0001-01-01T00:00:00%2B05:00", "since"),
        ("ledger", "since=yesterday", "since"),
        ("ledger", "until=2026-13-01", "until"),
        ("ledger", "key=", "key"),
        ("ledger", "user=a%00b", "user"),
        ("ledger", "model=%0A", "model"),
        ("ledger", "format=xlsx", "format"),
        ("ledger", "format=csv&tier=", "tier"),
        ("usage/series", "window=week", "window"),
        ("usage/series", "window=", "window"),
        ("usage/series", "by=route", "by"),
        ("usage/series", "by=", "by"),
        ("usage/series", "team=", "team"),
    ],
)
async def test_a_value_that_cannot_be_what_it_names_is_a_400_naming_it(
    views: LedgerViews, route: str, query: str, param: str
) -> None:
    """Each parameter is checked before the database is asked: a 400 invalid_request_error whose
    param names it."""
    answer = await call(views, route, query)
    assert answer.status == 400 and answer.error is not None
    assert answer.error["type"] == "invalid_request_error" and answer.error["param"] == param


async def test_the_ledger_pages_through_the_rows_with_its_cursor(views: LedgerViews) -> None:
    """A page of the list, newest first, and next_cursor, which the next request gives back."""
    first = await call(views, "ledger", {"limit": "3"})
    assert first.status == 200 and first.headers[b"content-type"] == b"application/json"
    page = first.json()
    assert page["object"] == "list" and [r["request_id"] for r in page["data"]] == ["req_a1", "req_a2", "req_b1"]
    second = (await call(views, "ledger", {"limit": "3", "cursor": page["next_cursor"]})).json()
    assert [r["request_id"] for r in second["data"]] == ["req_n1"] and second["next_cursor"] is None
    errors = (await call(views, "ledger", {"status": "error", "since": NOW.date().isoformat()})).json()
    assert [r["request_id"] for r in errors["data"]] == ["req_a2"]


async def test_a_team_admin_sees_its_teams_rows_and_is_refused_another_team(views: LedgerViews) -> None:
    """A team admin's ledger and series hold its team's rows, whether or not it names its team; a
    different team is a 403, for the ledger, its CSV and the series; an admin may name any team."""
    own = (await call(views, "ledger", "", team="a")).json()
    named = (await call(views, "ledger", {"team": "a"}, team="a")).json()
    assert [r["request_id"] for r in own["data"]] == [r["request_id"] for r in named["data"]] == ["req_a1", "req_a2"]
    for route, query in (
        ("ledger", {"team": "b"}),
        ("ledger", {"team": "b", "format": "csv"}),
        ("usage/series", {"team": "b"}),
    ):
        refused = await call(views, route, query, team="a")
        assert refused.status == 403 and refused.error is not None and refused.error["code"] == "permission_denied"
    series = (await call(views, "usage/series", {"window": "hour", "by": "user"}, team="a")).json()
    assert [s["group"] for s in series["series"]] == ["alice"] and series["totals"]["requests"] == 2
    everyone = (await call(views, "usage/series", {"window": "hour", "by": "team"})).json()
    assert {s["group"] for s in everyone["series"]} == {"a", "b", "(none)"}
    just_b = (await call(views, "ledger", {"team": "b"})).json()
    assert [r["request_id"] for r in just_b["data"]] == ["req_b1"]


async def test_the_csv_is_a_streamed_attachment_of_every_matching_row(views: LedgerViews) -> None:
    """format=csv: a text/csv attachment sent in parts (more_body until the last, empty one), the
    header line first, the rows newest first, a formula in a cell defused."""
    answer = await call(views, "ledger", {"format": "csv", "limit": "1"})
    assert answer.status == 200
    assert answer.headers[b"content-type"] == b"text/csv; charset=utf-8"
    assert answer.headers[b"content-disposition"] == b'attachment; filename="quotagate-ledger.csv"'
    assert [m.get("more_body") for m in answer.messages] == [True] * (len(answer.messages) - 1) + [False]
    assert answer.messages[-1]["body"] == b""
    table = list(csv.DictReader(io.StringIO(answer.body.decode())))
    assert [r["request_id"] for r in table] == ["req_a1", "req_a2", "req_b1", "req_n1"]  # limit is the page's
    assert table[2]["model_requested"] == "'=cmd|' /C calc'!A0"


async def test_the_csv_of_a_database_that_cannot_be_read_is_an_error_not_an_empty_file() -> None:
    """The first rows are read before the answer starts: a database that does not answer is a 503."""
    database = Database("postgresql://postgres@127.0.0.1:1/none")
    try:
        answer = await call(LedgerViews(database, None, CurrencySettings()), "ledger", {"format": "csv"})
    finally:
        await database.dispose()
    assert answer.status == 503 and answer.error is not None


async def test_the_rows_this_node_holds_are_written_first(sqlite_url: str) -> None:
    """A row committed to this node's ledger but not yet written is in the next answer: the handler
    flushes first."""
    store = await _seed(sqlite_url, [])
    ledger = Ledger(SqlWriter(store.database), flush_seconds=60)
    try:
        await ledger.commit(row("req_pending", 0.5, user_id="erin"))
        views = LedgerViews(store.database, ledger.flush, CurrencySettings())
        page = (await call(views, "ledger")).json()
        series = (await call(views, "usage/series", {"window": "hour"})).json()
    finally:
        await ledger.aclose()
        await store.close()
    assert [r["request_id"] for r in page["data"]] == ["req_pending"]
    assert series["totals"]["requests"] == 1


async def test_a_flush_that_does_not_finish_is_not_waited_for(
    views: LedgerViews, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database slow to take this node's rows holds the answer FLUSH_WAIT at most."""
    monkeypatch.setattr(_admin_ledger, "FLUSH_WAIT", 0.05)
    stuck = asyncio.Event()

    async def flush() -> None:
        await stuck.wait()

    slow = LedgerViews(views.database, flush, CurrencySettings())
    answer = await asyncio.wait_for(call(slow, "ledger"), 5)
    stuck.set()
    assert answer.status == 200 and len(answer.json()["data"]) == len(ROWS)


async def test_costs_are_also_in_the_display_currency(views: LedgerViews) -> None:
    """With a display currency, each row's cost and the series' totals are in it as well."""
    euros = LedgerViews(views.database, None, CurrencySettings(display="EUR", rate=2.0))
    page = (await call(euros, "ledger", {"user": "dave"})).json()
    assert page["data"][0]["cost_eur"] == 1.0
    series = (await call(euros, "usage/series", {"window": "day"})).json()
    assert series["currency"] == "EUR" and series["totals"]["cost_eur"] == pytest.approx(
        2 * series["totals"]["cost_usd"]
    )


async def test_the_series_defaults_to_a_day_of_everything(views: LedgerViews) -> None:
    """Without window or by: the last 24 hours in hours, one series of all rows."""
    answer = (await call(views, "usage/series")).json()
    assert answer["window"] == "day" and len(answer["buckets"]) == 24
    assert [s["group"] for s in answer["series"]] == ["all"] and answer["totals"]["requests"] == len(ROWS)


def test_a_gateways_request_is_in_its_ledger_and_series_at_once(gateway: RunningGateway, api_key: str) -> None:
    """Through a running gateway with the master key: the request just answered is the newest row
    of GET /admin/ledger (its CSV too) and counted in GET /admin/usage/series, with no wait for the
    ledger's next batch; a bad parameter is the OpenAI-shaped 400."""
    answered = post(gateway, api_key)
    assert answered.status_code == 200
    with gateway.admin() as admin:
        page = admin.get("/admin/ledger", params={"limit": 1})
        series = admin.get("/admin/usage/series", params={"window": "hour", "by": "model"})
        exported = admin.get("/admin/ledger", params={"format": "csv"})
        refused = admin.get("/admin/ledger", params={"status": "sometimes"})
    assert page.status_code == 200
    (newest,) = page.json()["data"]
    assert newest["request_id"] == answered.headers["x-request-id"] and newest["status"] == 200
    assert series.json()["totals"]["requests"] >= 1 and series.json()["series"][0]["group"] == newest["model_served"]
    assert exported.headers["content-type"] == "text/csv; charset=utf-8"
    assert exported.text.splitlines()[1].startswith(newest["request_id"] + ",")
    assert_openai_error(refused, 400, "invalid_value", param="status")


async def test_the_csv_export_stops_when_its_client_has_gone(
    views: LedgerViews, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that hangs up in the middle of the download (http.disconnect on receive; uvicorn's
    send() then drops what it is given without a word): the export reads no further, and its
    pages' generator is closed."""
    produced: list[int] = []
    closed = asyncio.Event()

    async def endless(*args: Any, **kwargs: Any) -> AsyncIterator[bytes]:
        try:
            yield b"request_id\n"
            while True:
                produced.append(len(produced))
                yield f"req_{len(produced)}\n".encode()
                await asyncio.sleep(0.005)
        finally:
            closed.set()

    monkeypatch.setattr(_admin_ledger, "ledger_csv", endless)
    hung_up = asyncio.Event()
    messages: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        messages.append(dict(message))
        if len(messages) == 4:  # the start, the head and two chunks: then the client leaves
            hung_up.set()

    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await hung_up.wait()
        return {"type": "http.disconnect"}

    scope = {"type": "http", "method": "GET", "path": "/admin/ledger", "query_string": b"format=csv"}
    await asyncio.wait_for(views.ledger(scope, send, None, receive), 5)
    assert closed.is_set()
    stopped_at = len(produced)
    await asyncio.sleep(0.05)
    assert len(produced) == stopped_at and stopped_at < 10
    assert messages[0]["status"] == 200 and all(m.get("more_body") for m in messages[1:])  # no end: a failed download
