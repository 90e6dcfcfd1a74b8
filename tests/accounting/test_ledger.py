"""The ledger, budgets, reports, alerts and metrics, through a running gateway."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import aiohttp
import httpx
import pytest
import redis
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from quotagate.accounting import SqlWriter, usage_report, usage_table
from quotagate.accounting.ledger import FIELDS_V1
from quotagate.keys import Database, KeyStore

from ..conftest import REDIS_URL, RunningGateway, ServerThread, gateway_config

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


def post(gw: RunningGateway, key: str, body: dict[str, Any] = CHAT, **headers: str) -> httpx.Response:
    return httpx.post(
        gw.v1 + "/chat/completions", headers={"Authorization": f"Bearer {key}", **headers}, json=body, timeout=30
    )


def stream(
    gw: RunningGateway, key: str, body: dict[str, Any], **headers: str
) -> AbstractContextManager[httpx.Response]:
    """A streamed chat completion, as a context manager over its response."""
    return httpx.stream(
        "POST",
        gw.v1 + "/chat/completions",
        headers={"Authorization": f"Bearer {key}", **headers},
        json={**body, "stream": True},
    )


def ledger_rows(database: str) -> list[Any]:
    async def read() -> list[Any]:
        db = Database(database)
        rows = await db.run(lambda conn: conn.execute(sa.select(usage_table)).all())
        await db.dispose()
        return list(rows)

    result: list[list[Any]] = []
    thread = threading.Thread(target=lambda: result.append(asyncio.run(read())))
    thread.start()
    thread.join()
    return result[0]


def wait_for_rows(database: str, count: int, timeout: float = 10.0) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        rows = ledger_rows(database)
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def test_one_row_per_request_with_cost(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """Every request leaves a row: tokens, cost at list price, latencies, status; streams included."""
    mock = start_mock(completion_tokens=8)
    gw = start_gateway(gateway_config(sqlite_url, mock.url))
    key = gw.create_key(user="ledger-user")["key"]
    plain = post(gw, key, **{"x-request-id": "req-plain-1"})
    assert plain.status_code == 200
    usage = plain.json()["usage"]
    with stream(gw, key, CHAT, **{"x-request-id": "req-stream-1"}) as response:
        response.read()
    assert post(gw, key, {**CHAT, "model": "nope"}).status_code == 404  # refused before routing: a row too
    rows = {row.client_request_id: row for row in wait_for_rows(sqlite_url, 3)}
    plain_row, stream_row = rows["req-plain-1"], rows["req-stream-1"]
    # The row is keyed by the gateway's id, the one the client got back; its own id is kept beside.
    assert plain_row.request_id == plain.headers["x-request-id"] and plain_row.request_id.startswith("req_")
    assert plain.headers["x-client-request-id"] == "req-plain-1"
    assert (plain_row.prompt_tokens, plain_row.completion_tokens) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert plain_row.cost_usd == pytest.approx(
        (usage["prompt_tokens"] * 0.15 + usage["completion_tokens"] * 0.60) / 1e6
    )
    assert (plain_row.user_id, plain_row.model_requested, plain_row.model_served, plain_row.status) == (
        "ledger-user",
        "gpt-4o-mini",
        "gpt-4o-mini",
        200,
    )
    assert plain_row.deployment == "gpt-4o-mini#0 (openai/gpt-4o-mini)" and not plain_row.stream
    assert plain_row.upstream_ms > 0 and plain_row.overhead_ms >= 0 and plain_row.latency_ms >= plain_row.upstream_ms
    assert (
        stream_row.stream
        and stream_row.completion_tokens == 8
        and stream_row.cost_usd == pytest.approx(plain_row.cost_usd)
    )


def test_broken_and_abandoned_streams_leave_rows_that_say_so(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """A stream the provider broke off was answered 200 and then failed; one the client left is 499."""
    dropping = start_mock(rate_drop=1.0, completion_tokens=10)
    gw = start_gateway(gateway_config(sqlite_url, dropping.url))
    key = gw.create_key()["key"]
    with stream(gw, key, CHAT, **{"x-request-id": "req-broken"}) as response:
        assert response.status_code == 200
        assert b"broke off the stream" in response.read()

    slow = start_mock(stream_chunk_delay_ms=200, completion_tokens=20)
    other = start_gateway(gateway_config(sqlite_url.replace("quotagate.db", "other.db"), slow.url))
    other_key = other.create_key()["key"]
    with stream(other, other_key, {**CHAT, "max_tokens": 20}, **{"x-request-id": "req-left"}) as response:
        next(response.iter_lines())  # the first event, then hang up

    (broken,) = wait_for_rows(sqlite_url, 1)
    assert (broken.client_request_id, broken.status, broken.error_type, broken.stream) == (
        "req-broken",
        200,
        "bad_gateway",
        True,
    )
    (left,) = wait_for_rows(sqlite_url.replace("quotagate.db", "other.db"), 1)
    assert (left.client_request_id, left.status, left.error_type) == ("req-left", 499, "client_disconnected")


def test_a_reused_client_request_id_loses_no_row(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """Clients resend their own id (retries, a fixed value): each request is still billed once."""
    mock = start_mock(completion_tokens=8)
    gw = start_gateway(gateway_config(sqlite_url, mock.url))
    key = gw.create_key()["key"]
    responses = [post(gw, key, **{"x-client-request-id": "retry-me"}) for _ in range(3)]
    refused = post(gw, key, {**CHAT, "max_tokens": -1}, **{"x-client-request-id": "retry-me"})
    assert [r.status_code for r in responses] == [200, 200, 200] and refused.status_code == 400
    gateway_ids = [r.headers["x-request-id"] for r in responses]
    assert len(set(gateway_ids)) == 3
    assert refused.headers["x-client-request-id"] == "retry-me" and refused.headers["x-request-id"] not in gateway_ids
    rows = wait_for_rows(sqlite_url, 4)
    assert sorted(row.request_id for row in rows) == sorted([*gateway_ids, refused.headers["x-request-id"]])
    assert {row.client_request_id for row in rows} == {"retry-me"}
    assert sum(row.completion_tokens for row in rows) == 24


def test_every_authenticated_request_leaves_one_row(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """Requests refused after authentication (a limit, a bad body, a model the key may not use,
    an unknown model, a body too large) leave one row each with their status and error type, on
    every endpoint; an anonymous one leaves none, and no name a client makes up becomes a metrics
    label or a report group of None."""
    gw = start_gateway(
        gateway_config(sqlite_url, mock_upstream.url, tiers={"free": {"rpm": 2}}, server={"max_body_bytes": 2048})
    )
    key = gw.create_key(models=["gpt-4o-mini", "text-embedding-3-small"])["key"]
    hi = [{"role": "user", "content": "hi"}]
    too_large = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 4000}]}
    cases: list[tuple[str, dict[str, Any] | bytes, int, str | None, str | None]] = [
        ("/chat/completions", {"model": "gpt-4o-mini", "messages": hi}, 200, None, "gpt-4o-mini"),
        ("/embeddings", {"model": "text-embedding-3-small", "input": "hi"}, 200, None, "text-embedding-3-small"),
        ("/completions", {"model": "gpt-4o-mini", "prompt": "hi"}, 429, "rate_limit_exceeded", "gpt-4o-mini"),
        ("/chat/completions", {"model": "gpt-4o-mini", "messages": []}, 400, "empty_array", "gpt-4o-mini"),
        ("/completions", {"prompt": "hi"}, 400, "missing_required_parameter", None),
        ("/embeddings", b"{not json", 400, "invalid_json", None),
        ("/embeddings", {"model": "house-model", "input": "hi"}, 403, "model_not_allowed", "house-model"),
        ("/completions", {"model": "made-up", "prompt": "hi", "stream": True}, 404, "model_not_found", "made-up"),
        ("/chat/completions", too_large, 413, "request_too_large", None),
    ]
    headers = {"Authorization": f"Bearer {key}"}
    answered = {}
    for path, body, status, error_type, model in cases:
        if isinstance(body, bytes):
            response = httpx.post(gw.v1 + path, headers=headers, content=body)
        else:
            response = httpx.post(gw.v1 + path, headers=headers, json=body)
        assert response.status_code == status, response.text
        answered[response.headers["x-request-id"]] = (status, error_type, model)
    # A body too large that announces no length: refused while it is read.
    chunked = httpx.post(gw.v1 + "/chat/completions", headers=headers, content=iter([b" " * 1500, b" " * 1500]))
    assert chunked.status_code == 413
    answered[chunked.headers["x-request-id"]] = (413, "request_too_large", None)
    assert httpx.post(gw.v1 + "/chat/completions", json={"model": "gpt-4o-mini", "messages": hi}).status_code == 401

    rows = wait_for_rows(sqlite_url, len(answered) + 1, timeout=3)
    assert len(rows) == len(answered)
    assert {row.request_id: (row.status, row.error_type, row.model_requested) for row in rows} == answered
    assert [row.model_requested for row in rows if row.stream] == ["made-up"]
    assert all(row.key_id == rows[0].key_id for row in rows)
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'model="made-up"' not in metrics and 'model="house-model"' in metrics
    with gw.admin() as admin:
        by_model = {row["model"]: row["requests"] for row in admin.get("/admin/usage?by=model").json()["data"]}
        by_deployment = admin.get("/admin/usage?by=deployment").json()["data"]
    assert by_model == {"(none)": 4, "gpt-4o-mini": 3, "house-model": 1, "made-up": 1, "text-embedding-3-small": 1}
    assert [row["requests"] for row in by_deployment if row["deployment"] == "(none)"] == [len(answered) - 2]


def test_an_existing_ledger_gains_the_client_request_id_column(tmp_path: Any) -> None:
    """A database written by an earlier version is upgraded in place at start: its rows stay, and
    the indexes no query uses any more are dropped."""
    database = f"sqlite:///{tmp_path / 'old.db'}"
    old = sa.MetaData()
    earlier = FIELDS_V1[: FIELDS_V1.index("client_request_id")]
    columns = [sa.Column(c.name, c.type, primary_key=c.primary_key) for c in usage_table.columns]
    sa.Table("qg_usage", old, *(c for c in columns if c.name in earlier))

    async def upgrade() -> tuple[set[str], set[str], list[Any]]:
        def create_old(conn: sa.Connection) -> None:
            old.create_all(conn)
            conn.execute(sa.text("CREATE INDEX ix_qg_usage_day ON qg_usage (day)"))
            conn.execute(sa.text("CREATE INDEX ix_qg_usage_user_id ON qg_usage (user_id)"))
            conn.execute(sa.text("CREATE INDEX ix_qg_usage_key_id ON qg_usage (key_id)"))
            conn.execute(
                sa.text(
                    "INSERT INTO qg_usage (request_id, ts, day, prompt_tokens, completion_tokens, cached_tokens, "
                    "cost_usd, status, stream, cache_hit) "
                    "VALUES ('req_old', '2026-11-01 10:00:00', '2026-11-01', 5, 3, 0, 0.001, 200, 0, 0)"
                )
            )

        db = Database(database)
        await db.run(create_old)
        await db.dispose()
        store = KeyStore.from_url(database)
        await store.create_schema()
        await store.create_schema()  # and again: nothing left to add
        names = await store.database.run(lambda c: {col["name"] for col in sa.inspect(c).get_columns("qg_usage")})
        indexes = await store.database.run(lambda c: {ix["name"] for ix in sa.inspect(c).get_indexes("qg_usage")})
        await store.close()
        return names, indexes, ledger_rows(database)

    names, indexes, rows = asyncio.run(upgrade())
    assert "client_request_id" in names and "ix_qg_usage_client_request_id" in indexes
    assert not indexes & {"ix_qg_usage_day", "ix_qg_usage_user_id", "ix_qg_usage_key_id"}
    assert [(row.request_id, row.prompt_tokens, row.client_request_id) for row in rows] == [("req_old", 5, None)]


def test_an_existing_ledger_gains_the_cache_saved_usd_column(tmp_path: Any) -> None:
    """A database of the version before cache_saved_usd is upgraded in place at start: its rows
    stay, saving nothing in the reports, and the rows written after it keep what a hit saved."""
    from .test_stream_ledger import usage_row  # here: that module imports this one

    database = f"sqlite:///{tmp_path / 'previous.db'}"
    previous = sa.MetaData()
    columns = [sa.Column(c.name, c.type, primary_key=c.primary_key) for c in usage_table.columns]
    sa.Table("qg_usage", previous, *(c for c in columns if c.name in FIELDS_V1))
    hit = usage_row("req_hit")._replace(cache_hit=True, cost_usd=0.0, cache_saved_usd=0.25)

    async def upgrade() -> tuple[set[str], Any]:
        def create_previous(conn: sa.Connection) -> None:
            previous.create_all(conn)
            conn.execute(
                sa.text(
                    "INSERT INTO qg_usage (request_id, ts, day, model_served, prompt_tokens, completion_tokens, "
                    "cached_tokens, cost_usd, status, stream, cache_hit) VALUES ('req_old', '2026-09-21 10:00:00', "
                    "'2026-09-21', 'gpt-4o-mini', 5, 3, 0, 0.5, 200, 0, 1)"
                )
            )

        db = Database(database)
        await db.run(create_previous)
        await db.dispose()
        store = KeyStore.from_url(database)
        await store.create_schema()
        await store.create_schema()  # and again: nothing left to add
        names = await store.database.run(lambda c: {col["name"] for col in sa.inspect(c).get_columns("qg_usage")})
        writer = SqlWriter(store.database)
        await writer.write([hit])
        await writer.aclose()
        report = await usage_report(store.database, "model")
        await store.close()
        return names, report

    names, report = asyncio.run(upgrade())
    assert "cache_saved_usd" in names
    rows = {row.request_id: row for row in ledger_rows(database)}
    assert (rows["req_old"].cache_saved_usd, rows["req_hit"].cache_saved_usd) == (None, 0.25)
    (group,) = report.rows
    assert (group["requests"], group["cache_hits"], group["hit_rate"], group["saved_usd"]) == (2, 2, 1.0, 0.25)


def test_a_row_written_without_cache_saved_usd_saves_nothing(tmp_path: Any) -> None:
    """A node of the version before cache_saved_usd writes rows that do not name it (from the shared
    stream, into a database this version made): the database's default stands in, not a NULL that
    NOT NULL refuses."""
    database = f"sqlite:///{tmp_path / 'ledger.db'}"

    async def write_as_previous_version() -> None:
        store = KeyStore.from_url(database)
        await store.create_schema()
        await store.database.run(
            lambda conn: conn.execute(
                sa.text(
                    "INSERT INTO qg_usage (request_id, ts, day, prompt_tokens, completion_tokens, cached_tokens, "
                    "cost_usd, status, stream, cache_hit) "
                    "VALUES ('req_prev', '2026-09-21 10:00:00', '2026-09-21', 5, 3, 0, 0.5, 200, 0, 0)"
                )
            )
        )
        await store.close()

    asyncio.run(write_as_previous_version())
    assert [(row.request_id, row.cache_saved_usd) for row in ledger_rows(database)] == [("req_prev", 0.0)]


def test_budget_holds_under_64_concurrent_requests(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """64 requests at once against a $0.20 daily budget: the spend never exceeds it."""
    mock = start_mock(completion_tokens=8)
    gw = start_gateway(
        gateway_config(
            sqlite_url,
            mock.url,
            tiers={"free": {"usd_per_day": 0.20}},
            pricing={"gpt-4o-mini": {"input": 1000, "output": 1000}},
        )
    )
    key = gw.create_key()["key"]

    async def storm() -> list[tuple[int, dict[str, Any]]]:
        async with aiohttp.ClientSession() as session:

            async def one() -> tuple[int, dict[str, Any]]:
                async with session.post(
                    gw.v1 + "/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"}
                ) as r:
                    return r.status, await r.json()

            return await asyncio.gather(*(one() for _ in range(64)))

    results = asyncio.run(storm())
    admitted = [body for status, body in results if status == 200]
    refused = [body for status, body in results if status == 429]
    assert len(admitted) + len(refused) == 64 and admitted and refused
    assert all(body["error"]["code"] == "insufficient_quota" for body in refused)
    assert "USD per day (budget)" in refused[0]["error"]["message"] and "$0.20" in refused[0]["error"]["message"]
    rows = wait_for_rows(sqlite_url, 64)
    spent = sum(row.cost_usd for row in rows)
    assert spent <= 0.20 + 1e-9
    # Each request reserves its most (prompt + max_tokens) and settles to what it used.
    quota = httpx.get(gw.v1 + "/quota", headers={"Authorization": f"Bearer {key}"}).json()["limits"][0]
    assert quota["unit"] == "spend" and quota["used_usd"] == pytest.approx(spent, abs=1e-5)


def test_report_totals_equal_ledger_sums(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """The admin report's totals, in USD and the display currency, are the ledger's sums."""
    mock = start_mock(completion_tokens=5)
    gw = start_gateway(gateway_config(sqlite_url, mock.url, currency={"display": "CNY", "rate": 7.3}))
    keys = [gw.create_key(user=u)["key"] for u in ("ann", "bob")]
    for index in range(7):
        assert (
            post(gw, keys[index % 2], {**CHAT, "messages": [{"role": "user", "content": "x " * index}]}).status_code
            == 200
        )
    rows = wait_for_rows(sqlite_url, 7)
    with gw.admin() as admin:
        report = admin.get("/admin/usage", params={"by": "user"}).json()
        by_day = admin.get("/admin/usage", params={"by": "day", "since": "2000-01-01", "until": "2999-01-01"}).json()
        assert admin.get("/admin/usage", params={"by": "colour"}).status_code == 400
    totals = report["totals"]
    assert totals["requests"] == 7 == by_day["totals"]["requests"]
    assert totals["prompt_tokens"] == sum(r.prompt_tokens for r in rows)
    assert totals["completion_tokens"] == sum(r.completion_tokens for r in rows) == 35
    assert totals["cost_usd"] == pytest.approx(sum(r.cost_usd for r in rows))
    assert totals["cost_cny"] == pytest.approx(totals["cost_usd"] * 7.3)
    assert [row["user"] for row in report["data"]] == ["ann", "bob"] and [
        row["requests"] for row in report["data"]
    ] == [4, 3]


class Hook:
    """A webhook receiver on 127.0.0.1 that records what it is sent."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        import orjson

        self.events.append(orjson.loads(body))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def test_webhook_fires_once_per_threshold_across_nodes(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """Two nodes sharing Redis; a daily quota crossing 50 % and 100 % sends exactly two alerts,
    and the requests it then refuses on both nodes one refusal."""
    redis.Redis.from_url(REDIS_URL).flushdb()
    hook = Hook()
    receiver = ServerThread(hook).start()
    try:
        overrides = {
            "redis": REDIS_URL,
            "tiers": {"free": {"rpd": 4}},
            "alerts": {"webhook": receiver.url + "/hook", "thresholds": [0.5, 1.0]},
        }
        first = start_gateway(gateway_config(sqlite_url, mock_upstream.url, **overrides))
        second = start_gateway(gateway_config(sqlite_url, mock_upstream.url, **overrides))
        key = first.create_key()["key"]
        statuses = [post(node, key).status_code for node in (first, second, first, second, first, second)]
        assert statuses == [200, 200, 200, 200, 429, 429]
        deadline = time.monotonic() + 5
        while len(hook.events) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        reached = [e for e in hook.events if e["event"] == "limit_threshold_reached"]
        assert sorted((e["threshold"], e["used"]) for e in reached) == [(0.5, 2), (1.0, 4)]
        assert {e["limit"] for e in hook.events} == {"requests per day (RPD)"}
        assert hook.events[0]["amount"] == 4
        # Refused on both nodes: one event, with the real figures.
        refused = [e for e in hook.events if e["event"] == "limit_refused"]
        assert [(e["used"], e["requested"]) for e in refused] == [(4, 1)] and len(hook.events) == 3
    finally:
        receiver.stop()


def test_metrics_are_exposed_and_parse(gateway: RunningGateway, api_key: str) -> None:
    """GET /metrics is Prometheus text that parses, with requests, tokens, cost and latency."""

    def token_counts() -> dict[str, float]:
        text = httpx.get(gateway.url + "/metrics").text
        counted: dict[str, float] = {"prompt": 0.0, "completion": 0.0}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "quotagate_tokens_total":
                    counted[sample.labels["kind"]] = counted.get(sample.labels["kind"], 0.0) + sample.value
        return counted

    before = token_counts()
    usages = []
    for _ in range(3):
        response = post(gateway, api_key)
        assert response.status_code == 200
        usages.append(response.json()["usage"])
    after = token_counts()
    assert after["prompt"] - before["prompt"] == sum(u["prompt_tokens"] for u in usages)
    assert after["completion"] - before["completion"] == sum(u["completion_tokens"] for u in usages)
    text = httpx.get(gateway.url + "/metrics").text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    requests = [s for s in families["quotagate_requests"].samples if s.name == "quotagate_requests_total"]
    assert sum(s.value for s in requests if s.labels["status"] == "200") == 3
    assert {
        "quotagate_tokens",
        "quotagate_cost_usd",
        "quotagate_overhead_seconds",
        "quotagate_upstream_seconds",
        "quotagate_limit_decisions",
        "quotagate_queue_depth",
        "quotagate_breaker_state",
    } <= set(families)
    assert all("key" not in s.labels for s in requests)  # no per-key labels unless configured


async def _json_whatever_was_asked(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An upstream that answers every request with a plain JSON completion, streams included,
    and reports no usage (some OpenAI-compatible servers ignore stream=true)."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    body = b'{"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "three small words"}}]}'
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def test_a_stream_answered_with_plain_json_is_charged_its_text(
    start_gateway: Callable[..., RunningGateway], sqlite_url: str
) -> None:
    """A streamed request that the upstream answers with plain JSON, without usage, is counted by
    the text it generated, as a non-streamed one is."""
    upstream = ServerThread(_json_whatever_was_asked).start()
    try:
        gw = start_gateway(gateway_config(sqlite_url, upstream.url))
        key = gw.create_key()["key"]
        streamed = post(gw, key, {**CHAT, "stream": True})
        assert (
            streamed.status_code == 200 and streamed.json()["choices"][0]["message"]["content"] == "three small words"
        )
        rows = wait_for_rows(sqlite_url, 1)
    finally:
        upstream.stop()
    assert [(row.stream, row.completion_tokens) for row in rows] == [(True, 3)]
