"""The row encoding: how usage rows travel between gateways, in the Redis stream and the journal.

Contract: a row travels as a compact array of its values (JSON in the stream, with ``ts`` as
UTC text; marshal in the journal, with ``ts`` in epoch seconds), and a batch of rows carries,
once, the names of its fields in the order of its arrays: ``FIELD_NAMES``, comma-joined. A
reader maps each array to today's columns by those names (``as_current``): a name it does not
know is ignored, and a column the batch lacks gets the column's default (NULL, 0 or false, as
the table says). So a node of the next version, with a column this one lacks, shares a stream
and journals with this one, both ways.

A batch without names comes from a version before them, and its fields are ``FIELDS_V1``,
frozen here: the columns of that version, in its order, before ``cache_saved_usd``. (Arrays of
still earlier versions stop before the last of them, ``client_request_id``, and read as NULL there.)

The names cost the request path next to nothing: they are joined once, at import, and every
stream entry and journal record carries the same bytes (the few hundred bytes more are measured
in bench/NOTES.md). Nor do they cost the consumer: a batch in today's order, every batch of a
node of this version, goes to the database as it came (``current_json``), and only a batch of
another version is parsed and re-encoded, in Python.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.sql.schema import ScalarElementColumnDefault

from ._schema import UsageRow, usage_table

# Today's fields, in the order of a row's array: the table's columns.
FIELDS: tuple[str, ...] = tuple(column.name for column in usage_table.columns)
# A batch's names: a stream entry's ``f``, and the head of a journal record (see _journal).
FIELD_NAMES: bytes = ",".join(FIELDS).encode()
# The fields of a batch that has no names: the columns of the last version that sent none, in
# its order. Frozen: a column added to the table does not go here.
FIELDS_V1: tuple[str, ...] = (
    "request_id",
    "ts",
    "day",
    "key_id",
    "user_id",
    "tier",
    "model_requested",
    "model_served",
    "deployment",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cost_usd",
    "latency_ms",
    "upstream_ms",
    "overhead_ms",
    "status",
    "error_type",
    "stream",
    "cache_hit",
    "client_request_id",
)


def _default(column: sa.Column[Any]) -> Any:
    """What a row lacking ``column`` gets: the table's default for it, else NULL."""
    default = column.default
    return default.arg if isinstance(default, ScalarElementColumnDefault) else None


_DEFAULTS = tuple(_default(column) for column in usage_table.columns)
_TS = FIELDS.index("ts")
_second: list[Any] = [None, ""]  # the last whole second formatted, and its text


def _ts_text(epoch: float) -> str:
    """UTC as SQLAlchemy writes DateTime to SQLite ("2026-11-23 10:00:00.123456"), which
    PostgreSQL also reads; the date and time part is formatted once per second."""
    second = math.floor(epoch)
    micros = round((epoch - second) * 1_000_000)
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    if _second[0] != second:
        _second[0], _second[1] = second, time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(second))
    return f"{_second[1]}.{micros:06d}"


def row_values(row: UsageRow) -> list[Any]:
    """A row's values as SQL takes them, in today's order: ``ts`` as UTC text."""
    values = list(row)
    values[_TS] = _ts_text(row.ts)
    return values


def row_json(row: UsageRow) -> bytes:
    """A row as the stream carries it: a JSON array of its values in today's order (FIELDS)."""
    return orjson.dumps(row_values(row))


def batch_json(rows: list[bytes]) -> bytes:
    """Rows (row_json arrays) as one JSON array, joined without parsing them."""
    return b"[" + b",".join(rows) + b"]"


@functools.lru_cache(maxsize=16)
def fields_of(names: bytes | str | None) -> tuple[str, ...]:
    """The fields a batch's names give, in order; a batch without names is of version 1."""
    if names is None:
        return FIELDS_V1
    if isinstance(names, bytes):
        names = names.decode()
    fields = tuple(names.split(","))
    return FIELDS if fields == FIELDS else fields


@functools.lru_cache(maxsize=16)
def _plan(fields: tuple[str, ...]) -> tuple[tuple[int, Any], ...]:
    """For each of today's columns, its place in an array of ``fields`` (-1: none) and its default."""
    places: dict[str, int] = {}
    for index, name in enumerate(fields):
        places.setdefault(name, index)
    return tuple((places.get(name, -1), default) for name, default in zip(FIELDS, _DEFAULTS, strict=True))


def as_current(rows: Iterable[Sequence[Any]], fields: Sequence[str]) -> list[list[Any]]:
    """Arrays of ``fields`` as arrays of today's columns: values under a name this version does
    not know are left out, and a column that a row lacks (not in ``fields``, or past the end of
    an array that stops short) gets its default."""
    plan = _plan(tuple(fields))
    return [[row[place] if 0 <= place < len(row) else default for place, default in plan] for row in rows]


def current_json(batch: bytes, names: bytes | None) -> bytes:
    """A JSON batch whose arrays have the fields ``names`` (None: version 1), with its arrays in
    today's order: as it came when they are already (the common case), re-encoded otherwise.

    A batch of version 1 is re-encoded too (today has columns after version 1's, cache_saved_usd
    first): its arrays, those that stop before client_request_id included, get the defaults."""
    fields = fields_of(names)
    if fields == FIELDS:
        return batch
    return orjson.dumps(as_current(orjson.loads(batch), fields))
