"""The row encoding: rows as arrays, each batch with the names of its fields, read by name across
gateway versions (in the Redis stream and in the journal)."""

from __future__ import annotations

import asyncio
import marshal
import struct
import uuid
import zlib
from pathlib import Path
from typing import Any

import orjson

from quotagate.accounting import SqlWriter, StreamLedger, UsageRow
from quotagate.accounting.ledger import (
    FIELD_NAMES,
    FIELDS,
    FIELDS_V1,
    as_current,
    batch_json,
    current_json,
    fields_of,
    journal_record,
    read_journal,
    row_json,
)
from quotagate.keys import KeyStore
from quotagate.redis import RedisConnection

from ..conftest import REDIS_URL
from .test_ledger import ledger_rows
from .test_stream_ledger import usage_row

# A hypothetical next version: a column this one lacks ("region"), and status moved first.
NEXT_FIELDS = ("status", *(name for name in FIELDS if name != "status"), "region")


def next_version_row(row: UsageRow) -> list[Any]:
    """``row`` as a node of the next version encodes it (row_json, in NEXT_FIELDS' order)."""
    values = dict(zip(FIELDS, orjson.loads(row_json(row)), strict=True))
    values["region"] = "eu-west"
    return [values[name] for name in NEXT_FIELDS]


def test_the_fields_are_the_table_columns_and_version_1_is_frozen() -> None:
    """UsageRow, the table and the names a batch carries agree; version 1's columns come first,
    in their order, and the columns added since follow them."""
    assert UsageRow._fields == FIELDS
    assert ",".join(FIELDS).encode() == FIELD_NAMES
    assert fields_of(FIELD_NAMES) is FIELDS
    assert fields_of(None) == FIELDS_V1 == FIELDS[: len(FIELDS_V1)]
    assert FIELDS[len(FIELDS_V1) :] == ("cache_saved_usd", "route_class", "downgraded_from", "baseline_usd", "team")


def test_a_batch_of_this_version_round_trips_untouched() -> None:
    """A batch in today's order goes to the database as it came: the same bytes, not parsed."""
    rows = [usage_row("req_1"), usage_row("req_2")._replace(client_request_id="c2", stream=True)]
    batch = batch_json([row_json(row) for row in rows])
    assert current_json(batch, FIELD_NAMES) is batch
    decoded = [dict(zip(FIELDS, values, strict=True)) for values in orjson.loads(batch)]
    assert [(r["request_id"], r["stream"], r["client_request_id"]) for r in decoded] == [
        ("req_1", False, None),
        ("req_2", True, "c2"),
    ]
    assert decoded[0]["ts"] == "2026-09-21 14:13:20.250000"


def test_a_batch_without_names_is_read_as_version_1() -> None:
    """An entry of the previous version (no names) is read in version 1's order, arrays that stop
    before client_request_id included; the columns added since get their defaults."""
    full = orjson.loads(row_json(usage_row("req_full")._replace(client_request_id="c1")))[: len(FIELDS_V1)]
    short = full[:-1]
    batch = orjson.dumps([full, short])
    rows = orjson.loads(current_json(batch, None))
    assert [row[FIELDS.index("client_request_id")] for row in rows] == ["c1", None]
    assert [row[FIELDS.index("cache_saved_usd")] for row in rows] == [0.0, 0.0]
    assert as_current([short], FIELDS_V1)[0] == [*short, None, 0.0, None, None, None, None]


def test_a_batch_of_the_version_before_cache_saved_usd_gets_0() -> None:
    """A batch named with the fields of the version before cache_saved_usd (version 1's) reads as
    saving nothing, and a batch of today's keeps what a hit saved."""
    hit = usage_row("req_hit")._replace(cache_hit=True, cost_usd=0.0, cache_saved_usd=0.0042)
    today = orjson.loads(row_json(hit))
    before = today[: len(FIELDS_V1)]
    (read,) = orjson.loads(current_json(orjson.dumps([before]), ",".join(FIELDS_V1).encode()))
    assert read == [*before, 0.0, None, None, None, None]
    assert orjson.loads(current_json(batch_json([row_json(hit)]), FIELD_NAMES)) == [today]
    assert today[FIELDS.index("cache_saved_usd")] == 0.0042


def test_a_batch_of_the_next_version_is_read_by_name() -> None:
    """A column reordered is found by its name; a column this version lacks is left out."""
    row = usage_row("req_next")._replace(status=429, client_request_id="c9")
    batch = orjson.dumps([next_version_row(row)])
    names = ",".join(NEXT_FIELDS).encode()
    assert orjson.loads(current_json(batch, names)) == [orjson.loads(row_json(row))]


def test_a_column_missing_from_a_batch_gets_its_default() -> None:
    """Columns a batch does not name get the table's default: 0, false or NULL."""
    missing = ("prompt_tokens", "cost_usd", "cache_hit", "client_request_id", "upstream_ms", "cache_saved_usd")
    fields = [name for name in FIELDS if name not in missing]
    values = dict(zip(FIELDS, orjson.loads(row_json(usage_row("req_old"))), strict=True))
    batch = orjson.dumps([[values[name] for name in fields]])
    (read,) = orjson.loads(current_json(batch, ",".join(fields).encode()))
    row = dict(zip(FIELDS, read, strict=True))
    assert [row[name] for name in missing] == [0, 0.0, False, None, None, 0.0]
    assert (row["request_id"], row["status"], row["completion_tokens"]) == ("req_old", 200, 7)


def test_journal_records_round_trip_with_their_names() -> None:
    """A record holds its rows with their field names, and reads back as the same rows."""
    rows = [
        usage_row("req_1"),
        usage_row("req_2")._replace(cache_hit=True, client_request_id="c2", cost_usd=0.0, cache_saved_usd=0.0042),
    ]
    assert read_journal(journal_record(rows) + journal_record(rows[:1])) == [*rows, rows[0]]


def test_a_journal_of_the_previous_version_is_read() -> None:
    """A journal written before the names (each record a bare list of rows) is read as version 1."""
    rows = [usage_row("req_1"), usage_row("req_2")._replace(client_request_id="c2")]

    def old_record(rows: list[UsageRow]) -> bytes:
        # The previous version's journal_record, byte for byte: its rows had version 1's fields.
        payload = marshal.dumps([tuple(row)[: len(FIELDS_V1)] for row in rows])
        return struct.pack("<II", len(payload), zlib.crc32(payload)) + payload

    data = old_record(rows) + old_record(rows[:1]) + journal_record([usage_row("req_3")])
    assert read_journal(data) == [*rows, rows[0], usage_row("req_3")]


def test_a_journal_of_the_version_before_cache_saved_usd_is_read() -> None:
    """A record with names, written by the version before cache_saved_usd, reads as saving nothing."""
    row = usage_row("req_named")._replace(cache_hit=True, client_request_id="c3")
    names = ",".join(FIELDS_V1).encode()
    payload = b"\x00" + struct.pack("<H", len(names)) + names + marshal.dumps([tuple(row)[: len(FIELDS_V1)]])
    record = struct.pack("<II", len(payload), zlib.crc32(payload)) + payload
    assert read_journal(record) == [row]
    assert read_journal(record)[0].cache_saved_usd == 0.0


def test_a_journal_of_the_next_version_is_read_by_name() -> None:
    """A record of a version with another column order and a column more reads as the same rows."""
    row = usage_row("req_next")._replace(status=503, error_type="upstream")
    values = dict(zip(FIELDS, row, strict=True), region="eu-west")
    names = ",".join(NEXT_FIELDS).encode()
    payload = b"\x00" + struct.pack("<H", len(names)) + names + marshal.dumps([tuple(values[n] for n in NEXT_FIELDS)])
    record = struct.pack("<II", len(payload), zlib.crc32(payload)) + payload
    assert read_journal(record) == [row]


async def test_a_next_version_batch_is_written_to_sqlite(tmp_path: Path) -> None:
    """Re-encoded into today's order, a next version's batch goes into the table like any other."""
    database = f"sqlite:///{tmp_path / 'ledger.db'}"
    store = KeyStore.from_url(database)
    await store.create_schema()
    writer = SqlWriter(store.database)
    row = usage_row("req_next")._replace(status=429, stream=True)
    try:
        await writer.write_json(current_json(orjson.dumps([next_version_row(row)]), ",".join(NEXT_FIELDS).encode()))
    finally:
        await writer.aclose()
        await store.close()
    (written,) = ledger_rows(database)
    assert (written.request_id, written.status, written.stream, written.prompt_tokens) == ("req_next", 429, True, 11)


async def test_stream_entries_carry_the_names_of_their_fields(tmp_path: Path) -> None:
    """Each entry this version appends names its fields once, besides its rows and their number."""
    store = KeyStore.from_url(f"sqlite:///{tmp_path / 'ledger.db'}")
    await store.create_schema()

    class Ledger(StreamLedger):
        STREAM = f"qg:ledger:test-{uuid.uuid4().hex}"  # no other test's consumer reads it

    client = RedisConnection(REDIS_URL)
    ledger = Ledger(SqlWriter(store.database), RedisConnection(REDIS_URL), RedisConnection(REDIS_URL, timeout=5))
    try:
        await asyncio.gather(ledger.commit(usage_row("req_1")), ledger.commit(usage_row("req_2")))
        ((_, flat),) = await client.execute("XRANGE", Ledger.STREAM, "-", "+")
    finally:
        await ledger.aclose()
        await client.execute("DEL", Ledger.STREAM)
        await client.aclose()
        await store.close()
    entry = dict(zip(flat[::2], flat[1::2], strict=True))
    assert (entry[b"f"], entry[b"n"]) == (FIELD_NAMES, b"2")
    assert [row[0] for row in orjson.loads(entry[b"b"])] == ["req_1", "req_2"]


def test_a_batch_of_the_version_before_tiering_reads_as_not_routed() -> None:
    """Rows of a node without the tiering columns read as neither routed nor downgraded (NULL),
    and today's rows keep the class, the model refused and the baseline cost."""
    routed = usage_row("req_routed")._replace(route_class="simple", downgraded_from="big", baseline_usd=0.01)
    today = orjson.loads(row_json(routed))
    before = today[: FIELDS.index("route_class")]
    names = ",".join(FIELDS[: FIELDS.index("route_class")]).encode()
    (read,) = orjson.loads(current_json(orjson.dumps([before]), names))
    assert read == [*before, None, None, None, None]
    (kept,) = orjson.loads(current_json(batch_json([row_json(routed)]), FIELD_NAMES))
    assert kept[FIELDS.index("route_class") :] == ["simple", "big", 0.01, None]
