"""The distributed ledger reads what nodes of earlier versions left in the Redis stream."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import orjson

from quotagate.accounting import SqlWriter, StreamLedger, UsageRow
from quotagate.accounting.ledger import FIELDS_V1, row_json
from quotagate.keys import KeyStore
from quotagate.limits import RedisConnection

from ..conftest import REDIS_URL
from .test_ledger import ledger_rows


def usage_row(request_id: str) -> UsageRow:
    return UsageRow(
        request_id=request_id,
        ts=1_790_000_000.25,
        day="2026-09-21",
        key_id="k1",
        user_id="alice",
        tier="free",
        model_requested="gpt-4o-mini",
        model_served="gpt-4o-mini",
        deployment="openai/gpt-4o-mini#0",
        prompt_tokens=11,
        completion_tokens=7,
        cached_tokens=0,
        cost_usd=0.0000058,
        latency_ms=12.5,
        upstream_ms=11.0,
        overhead_ms=1.5,
        status=200,
        error_type=None,
        stream=False,
    )


async def test_entries_of_earlier_versions_are_written(tmp_path: Path) -> None:
    """Upgrading nodes while the stream holds rows in the formats of earlier versions loses none."""
    database = f"sqlite:///{tmp_path / 'ledger.db'}"
    store = KeyStore.from_url(database)
    await store.create_schema()
    old_id, batched_id, new_id = (f"{kind}-{uuid.uuid4().hex}" for kind in ("old", "batched", "new"))
    client = RedisConnection(REDIS_URL)
    # What nodes of earlier versions appended: one row as a JSON object, and batches of rows as
    # arrays that end before client_request_id.
    single = usage_row(old_id)._asdict()
    del single["client_request_id"], single["cache_saved_usd"]
    await client.execute("XADD", StreamLedger.STREAM, "*", "r", orjson.dumps(single))
    shorter = orjson.loads(row_json(usage_row(batched_id)))[: len(FIELDS_V1) - 1]
    await client.execute("XADD", StreamLedger.STREAM, "*", "b", orjson.dumps([shorter]), "n", "1")
    ledger = StreamLedger(
        SqlWriter(store.database), RedisConnection(REDIS_URL), RedisConnection(REDIS_URL, timeout=5), flush_seconds=0.1
    )
    await ledger.start()
    try:
        await ledger.commit(usage_row(new_id)._replace(client_request_id="mine-1"))  # today's format
        for _ in range(100):
            rows = {row.request_id: row for row in await asyncio.to_thread(ledger_rows, database)}
            if {old_id, batched_id, new_id} <= set(rows):
                break
            await asyncio.sleep(0.05)
    finally:
        await ledger.aclose()
        await client.aclose()
        await store.close()
    old, batched, new = rows[old_id], rows[batched_id], rows[new_id]
    assert (old.client_request_id, batched.client_request_id, new.client_request_id) == (None, None, "mine-1")
    assert (batched.prompt_tokens, batched.status, batched.day) == (11, 200, "2026-09-21")
    assert (old.cache_saved_usd, batched.cache_saved_usd, new.cache_saved_usd) == (0.0, 0.0, 0.0)
    assert (old.prompt_tokens, old.completion_tokens, old.cost_usd, old.status) == (11, 7, 0.0000058, 200)
    assert [getattr(old, c) for c in ("user_id", "deployment", "latency_ms", "day")] == [
        getattr(new, c) for c in ("user_id", "deployment", "latency_ms", "day")
    ]


async def test_a_row_whose_request_was_cancelled_during_a_failed_append_is_kept(tmp_path: Path) -> None:
    """The client leaves while its row is on the way to a Redis that never answers: the row is still written."""
    database = f"sqlite:///{tmp_path / 'ledger.db'}"
    store = KeyStore.from_url(database)
    await store.create_schema()
    # A "Redis" that accepts connections and never answers: every append runs into its deadline.
    silent = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    ledger = StreamLedger(
        SqlWriter(store.database),
        RedisConnection(f"redis://127.0.0.1:{port}/0", timeout=0.3, connect_timeout=0.3),
        RedisConnection(REDIS_URL, timeout=5),
        flush_seconds=0.1,
    )
    request_id = f"left-{uuid.uuid4().hex}"
    try:
        committing = asyncio.ensure_future(ledger.commit(usage_row(request_id)))
        await asyncio.sleep(0.05)
        committing.cancel()  # what the proxy's disconnect watch does when the client hangs up
        await asyncio.sleep(0.5)  # the append times out meanwhile
        await ledger.flush()
        rows = await asyncio.to_thread(ledger_rows, database)
    finally:
        await ledger.aclose()
        silent.close()
        await store.close()
    assert request_id in {row.request_id for row in rows}
