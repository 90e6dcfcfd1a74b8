"""The console's views of the ledger: the request log and the usage charts.

``ledger_page`` is the request log, filtered, newest first, a page at a time: keyset pagination
over (ts, request_id), so a page costs the same however deep it is, and rows sharing a ts are
neither skipped nor repeated across pages. The cursor is opaque to callers (a malformed one is a
ValueError). ``ledger_csv`` streams every matching row the same way, a page at a time.

``usage_series`` is a window's requests, tokens, cost and errors per bucket (hour: 60 minutes,
day: 24 hours, month: 30 days, UTC), for the top groups of one column and the rest together.

Where the time goes, with a million rows (bench/console_ledger.py, bench/NOTES.md): a page of
the log without filters reads the newest rows of the ts index and stops, and so does a filter
that many rows match. One that a month of rows holds rarely (a key used now and then, one that
never was, an error code) would have that walk read the whole month to fill a page: an error
status reads the errors' own index, and a filter on another column reads the newest WINDOW rows
and then only the hours that the rollup (ledger/_rollup) says hold a matching row. The month
chart and the reports sum the rollup's days rather than the rows; the hour and day charts sum
at most a day of rows.
"""

from __future__ import annotations

import base64
import binascii
import csv
import functools
import io
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

import orjson
import sqlalchemy as sa

from ..keys import Database
from ._reports import NO_GROUP, _text
from .ledger._rollup import rollup_ready
from .ledger._schema import usage_rollup_table, usage_table

Window = Literal["hour", "day", "month"]
SeriesBy = Literal["model", "deployment", "tier", "user", "team", "key"]

# A page's largest size (the admin API's), and the CSV export's page.
MAX_LIMIT = 500
CSV_PAGE = 1000
# Rows a filtered page reads in order before it asks the rollup where the rest are (_read_page):
# a filter that one row in 40 matches fills a page of 50 from them. SQLite sorts them all again
# (it does not see that they come in order), a few milliseconds' work (bench/NOTES.md).
WINDOW = 2_000
TOP_GROUPS = 8
OTHER_GROUP = "(other)"

_rows = usage_table.c
_rollup = usage_rollup_table.c
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_HOUR = timedelta(hours=1)
_LAST = datetime.max.replace(tzinfo=UTC)

# A row of the log as the API shows it: (field, column).
_FIELDS: tuple[tuple[str, sa.Column[Any]], ...] = (
    ("request_id", _rows.request_id),
    ("ts", _rows.ts),
    ("key_id", _rows.key_id),
    ("user", _rows.user_id),
    ("team", _rows.team),
    ("tier", _rows.tier),
    ("model_requested", _rows.model_requested),
    ("model_served", _rows.model_served),
    ("deployment", _rows.deployment),
    ("prompt_tokens", _rows.prompt_tokens),
    ("completion_tokens", _rows.completion_tokens),
    ("cached_tokens", _rows.cached_tokens),
    ("cost_usd", _rows.cost_usd),
    ("latency_ms", _rows.latency_ms),
    ("status", _rows.status),
    ("error_type", _rows.error_type),
    ("stream", _rows.stream),
    ("cache_hit", _rows.cache_hit),
    ("route_class", _rows.route_class),
    ("downgraded_from", _rows.downgraded_from),
)
ROW_FIELDS = tuple(name for name, _ in _FIELDS)


@dataclass(frozen=True)
class LedgerFilters:
    """Which rows: [since, until), and each field given equal to its value. ``model`` matches the
    model that served the request or the one it asked for; ``status`` is "ok" (below 400),
    "error" (400 and above) or a status code."""

    since: datetime | None = None
    until: datetime | None = None
    key: str | None = None
    user: str | None = None
    team: str | None = None
    model: str | None = None
    deployment: str | None = None
    tier: str | None = None
    status: str | int | None = None

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if value == "" and field.name != "status":
                raise ValueError(f"{field.name} is empty")
        if self.status is not None and self.status not in ("ok", "error") and not isinstance(self.status, int):
            raise ValueError("status must be ok, error or a status code")

    def narrows(self) -> bool:
        """Whether a filter on a column the rollup groups by is given (key, user, team, model,
        deployment or tier): one that may leave few rows in a month. The errors, the rarest
        status, have an index of their own."""
        values = (self.key, self.user, self.team, self.model, self.deployment, self.tier)
        return any(value is not None for value in values)


@dataclass(frozen=True)
class Position:
    """Where a page ends: its last row's ts and request id; the next page starts after it."""

    ts: datetime
    request_id: str


@dataclass(frozen=True)
class LedgerPage:
    rows: list[dict[str, Any]]
    next_cursor: str | None


def encode_cursor(position: Position) -> str:
    """An opaque cursor: the position's ts (whole microseconds since the epoch, exact) and request
    id, as URL-safe base64 of a JSON array."""
    micros = (position.ts - _EPOCH) // _MICROSECOND
    return base64.urlsafe_b64encode(orjson.dumps([micros, position.request_id])).decode().rstrip("=")


def decode_cursor(cursor: str) -> Position:
    """The position a cursor of encode_cursor holds; ValueError for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        micros, request_id = orjson.loads(raw)
    except (binascii.Error, orjson.JSONDecodeError, ValueError, TypeError):
        raise ValueError("not a cursor of this API") from None
    if not isinstance(micros, int) or not isinstance(request_id, str) or not 0 < len(request_id) <= 128:
        raise ValueError("not a cursor of this API")
    if any(ord(char) < 32 for char in request_id):  # PostgreSQL cannot even compare a NUL
        raise ValueError("not a cursor of this API")
    try:
        ts = _EPOCH + micros * _MICROSECOND
    except OverflowError:
        raise ValueError("not a cursor of this API") from None
    if ts == _LAST:  # the next page's bound, just after it (_bounds), would be past the last time
        raise ValueError("not a cursor of this API")
    return Position(ts, request_id)


def _utc(value: datetime) -> datetime:
    """Aware and in UTC. SQLite gives ts back naive (it holds UTC text); a bound datetime is
    written there as its digits, whatever its zone, so every one bound is UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _conditions(filters: LedgerFilters, rows: Any = _rows) -> list[sa.ColumnElement[bool]]:
    """The filters but the time bounds, on ``rows``: qg_usage's columns, or a subquery's."""
    conditions: list[sa.ColumnElement[bool]] = []
    for value, column in (
        (filters.key, rows.key_id),
        (filters.user, rows.user_id),
        (filters.team, rows.team),
        (filters.deployment, rows.deployment),
        (filters.tier, rows.tier),
    ):
        if value is not None:
            conditions.append(column == value)
    if filters.model is not None:
        conditions.append(sa.or_(rows.model_served == filters.model, rows.model_requested == filters.model))
    status = filters.status
    if status == "ok":
        conditions.append(rows.status < 400)
    elif status is not None:
        if status == "error" or (isinstance(status, int) and status >= 400):
            # Spelled as ix_qg_usage_errors's condition, a constant, not a parameter: that is how
            # both databases see that the index holds every row the query can want.
            conditions.append(rows.status >= sa.literal_column("400"))
        if status != "error":
            conditions.append(rows.status == status)
    return conditions


def _in_time(
    query: sa.Select[Any], filters: LedgerFilters, position: Position | None, span: tuple[datetime, datetime] | None
) -> sa.Select[Any]:
    """``query`` with the rows' time bounds: since, until, after ``position`` and within ``span``.

    One lower and one upper bound on ts, the tightest: given two, SQLite reads the index from
    either, and from the span's end rather than the position, a later page would read again every
    row of the pages before it."""
    lower, upper = _bounds(filters, position, span)
    if lower is not None:
        query = query.where(_rows.ts >= lower)
    if upper is not None:
        query = query.where(_rows.ts < upper)
    if position is not None:
        # The rows of the position's ts that come after it (ts is at most the position's, above).
        query = query.where(sa.or_(_rows.ts < position.ts, _rows.request_id < position.request_id))
    return query


def _newest_first(query: sa.Select[Any], rows: Any = _rows) -> sa.Select[Any]:
    return query.order_by(rows.ts.desc(), rows.request_id.desc())


def _page_query(
    filters: LedgerFilters, position: Position | None, span: tuple[datetime, datetime] | None, limit: int
) -> sa.Select[Any]:
    """The newest ``limit`` rows matching, after ``position``, within ``span`` if given."""
    query = sa.select(*(column for _, column in _FIELDS)).where(*_conditions(filters))
    return _newest_first(_in_time(query, filters, position, span)).limit(limit)


def _window_query(filters: LedgerFilters, position: Position | None, limit: int) -> sa.Select[Any]:
    """The newest ``limit`` rows matching among the newest WINDOW rows after ``position``."""
    newest = _newest_first(_in_time(sa.select(*(column for _, column in _FIELDS)), filters, position, None))
    window = newest.limit(WINDOW).subquery()
    query = sa.select(*(window.c[column.name] for _, column in _FIELDS)).where(*_conditions(filters, window.c))
    return _newest_first(query, window.c).limit(limit)


def _window_end(conn: sa.Connection, filters: LedgerFilters, position: Position | None) -> Position | None:
    """The last of the newest WINDOW rows after ``position``; None if there are fewer."""
    newest = _newest_first(_in_time(sa.select(_rows.ts, _rows.request_id), filters, position, None))
    last = conn.execute(newest.offset(WINDOW - 1).limit(1)).first()
    return Position(_utc(last.ts), last.request_id) if last is not None else None


def _candidate_hours(
    conn: sa.Connection, filters: LedgerFilters, upper: datetime | None
) -> list[tuple[datetime, datetime]] | None:
    """The spans of time (whole UTC hours, joined when adjacent, newest first) within which the
    rows matching ``filters`` before ``upper`` lie, from the rollup's hour bits; None when the
    whole range is to be read (no filter beyond time, or no rollup to ask).

    The bits are never fewer than the hours that hold a matching row (rows deleted leave theirs
    set), so a span may hold none, never the other way round."""
    if not filters.narrows() or not rollup_ready(conn):
        return None
    wanted = [_rollup[column] == value for column, value in _rollup_filters(filters)]
    if filters.model is not None:
        wanted.append(sa.or_(_rollup.model_served == filters.model, _rollup.model_requested == filters.model))
    status = filters.status
    errors = status == "error" or (isinstance(status, int) and status >= 400)
    if errors:
        wanted.append(_rollup.errors > 0)
    elif status is not None:
        wanted.append(_rollup.requests > _rollup.errors)
    lower = _utc(filters.since) if filters.since is not None else None
    if lower is not None:
        wanted.append(_rollup.utc_day >= lower.date())
    if upper is not None:
        wanted.append(_rollup.utc_day <= upper.date())
    mask = _rollup.error_hours if errors else _rollup.hours
    # DISTINCT: most groups of a day have the same bits (every hour), one row each is enough.
    query = sa.select(_rollup.utc_day, mask).where(*wanted).distinct()
    days: dict[date, int] = {}
    for day, bits in conn.execute(query):
        day = day if isinstance(day, date) else date.fromisoformat(day)
        days[day] = days.get(day, 0) | bits
    spans: list[tuple[datetime, datetime]] = []
    for day in sorted(days, reverse=True):
        midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
        for hour in range(23, -1, -1):
            if not days[day] >> hour & 1:
                continue
            start, end = midnight + hour * _HOUR, midnight + (hour + 1) * _HOUR
            if (upper is not None and start >= upper) or (lower is not None and end <= lower):
                continue
            if spans and spans[-1][0] == end:
                spans[-1] = (start, spans[-1][1])
            else:
                spans.append((start, end))
    return spans


def _rollup_filters(filters: LedgerFilters) -> list[tuple[str, str]]:
    pairs = (
        ("key_id", filters.key),
        ("user_id", filters.user),
        ("team", filters.team),
        ("deployment", filters.deployment),
        ("tier", filters.tier),
    )
    return [(column, value) for column, value in pairs if value is not None]


def _one_snapshot(conn: sa.Connection) -> None:
    """Makes the transaction's reads see the database as at its first one: on PostgreSQL,
    REPEATABLE READ (before any statement of the transaction; a read-only one is never refused
    for it); on SQLite, a transaction begun now (the driver begins one only at a write, and each
    SELECT outside one is a read of its own)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    elif conn.dialect.name == "sqlite":
        raw = conn.connection.dbapi_connection
        if raw is not None and not getattr(raw, "in_transaction", True):
            conn.exec_driver_sql("BEGIN")


def _read_page(
    conn: sa.Connection, filters: LedgerFilters, position: Position | None, limit: int
) -> Sequence[sa.Row[Any]]:
    """Up to ``limit`` rows matching, newest first, after ``position``.

    Without a filter on a column the rollup groups by, one query: the ts index in order, the
    errors' index for an error status. With one, the newest WINDOW rows first (a filter that many
    rows match fills a page from them, nearly as fast as no filter); past them, the hours the
    rollup names (_read_spans)."""
    if not filters.narrows():
        return conn.execute(_page_query(filters, position, None, limit)).all()
    # The window's rows and its end from one snapshot: a batch committed between the two would
    # move the end past rows already read, which the hours after it would give again.
    _one_snapshot(conn)
    rows = list(conn.execute(_window_query(filters, position, limit)).all())
    if len(rows) >= limit:
        return rows
    past = _window_end(conn, filters, position)
    if past is None:
        return rows  # the window held every row there is
    spans = _candidate_hours(conn, filters, _bounds(filters, past)[1])
    return rows + list(_read_spans(conn, filters, spans, past, limit - len(rows)))


def _read_spans(
    conn: sa.Connection,
    filters: LedgerFilters,
    spans: list[tuple[datetime, datetime]] | None,
    position: Position | None,
    limit: int,
) -> Sequence[sa.Row[Any]]:
    """Up to ``limit`` rows matching after ``position``, within ``spans`` (of _candidate_hours,
    newest first; None: anywhere): one query per span until enough."""
    if spans is None:
        return conn.execute(_page_query(filters, position, None, limit)).all()
    rows: list[sa.Row[Any]] = []
    for span in spans:
        if position is not None and span[0] > position.ts:
            continue  # wholly before the position: read already
        rows.extend(conn.execute(_page_query(filters, position, span, limit - len(rows))).all())
        if len(rows) >= limit:
            break
    return rows


def _bounds(
    filters: LedgerFilters, position: Position | None, span: tuple[datetime, datetime] | None = None
) -> tuple[datetime | None, datetime | None]:
    """The time left to read, [lower, upper): the tightest of since and the span's start, and of
    until, the span's end and just after the position (the rows after it are older)."""
    lowers = [_utc(filters.since)] if filters.since is not None else []
    uppers = [_utc(filters.until)] if filters.until is not None else []
    if position is not None:
        uppers.append(position.ts + _MICROSECOND)
    if span is not None:
        lowers.append(span[0])
        uppers.append(span[1])
    return max(lowers, default=None), min(uppers, default=None)


def _row(record: sa.Row[Any], currency: str, rate: float) -> dict[str, Any]:
    row = dict(zip(ROW_FIELDS, record, strict=True))
    row["ts"] = _utc(row["ts"]).isoformat()
    row["stream"], row["cache_hit"] = bool(row["stream"]), bool(row["cache_hit"])
    if currency != "USD":
        shown: dict[str, Any] = {}
        for name, value in row.items():
            shown[name] = value
            if name == "cost_usd":
                shown[f"cost_{currency.lower()}"] = round(value * rate, 10)
        return shown
    return row


async def ledger_page(
    database: Database,
    filters: LedgerFilters,
    limit: int = 50,
    cursor: str | None = None,
    currency: str = "USD",
    rate: float = 1.0,
) -> LedgerPage:
    """The ``limit`` newest rows matching ``filters`` after ``cursor`` (a page's next_cursor; None:
    from the newest), and the cursor of the next page (None: this is the last). ValueError for a
    cursor that is not one, or a limit out of 1..MAX_LIMIT."""
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be 1 to {MAX_LIMIT}")
    position = decode_cursor(cursor) if cursor is not None else None

    def read(conn: sa.Connection) -> Sequence[sa.Row[Any]]:
        return _read_page(conn, filters, position, limit + 1)

    records = await database.run(read)
    rows = [_row(record, currency, rate) for record in records[:limit]]
    next_cursor = None
    if len(records) > limit:
        last = records[limit - 1]
        next_cursor = encode_cursor(Position(_utc(last.ts), last.request_id))
    return LedgerPage(rows, next_cursor)


# What a spreadsheet takes a cell for a formula by (OWASP's list: a tab or carriage return too).
_FORMULA = ("=", "+", "-", "@", "\t", "\r")
_TS = ROW_FIELDS.index("ts")
_COST = ROW_FIELDS.index("cost_usd")
_FLAGS = tuple(ROW_FIELDS.index(name) for name in ("stream", "cache_hit"))
_TEXTS = tuple(index for index, (_, column) in enumerate(_FIELDS) if isinstance(column.type, sa.String))


def _csv(rows: list[list[Any]]) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerows(rows)  # None as an empty cell
    return out.getvalue().encode()


def _csv_rows(records: Sequence[sa.Row[Any]], currency: str, rate: float) -> list[list[Any]]:
    """Rows as CSV lines' values, in ROW_FIELDS order (the display currency's cost after the cost):
    booleans true and false, and text a spreadsheet would run as a formula (starting with one of
    _FORMULA) starting with ' instead. Per value only what its column needs: a page is a thousand
    rows, formatted on the event loop."""
    lines = []
    for record in records:
        values = list(record)
        values[_TS] = _utc(values[_TS]).isoformat()
        for index in _FLAGS:
            values[index] = "true" if values[index] else "false"
        for index in _TEXTS:
            value = values[index]
            if value is not None and value.startswith(_FORMULA):
                values[index] = "'" + value
        if currency != "USD":
            values.insert(_COST + 1, round(values[_COST] * rate, 10))
        lines.append(values)
    return lines


async def ledger_csv(
    database: Database,
    filters: LedgerFilters,
    currency: str = "USD",
    rate: float = 1.0,
    page: int = CSV_PAGE,
) -> AsyncGenerator[bytes, None]:
    """Every row matching ``filters``, newest first, as CSV: the header line, then a chunk per
    ``page`` rows, each read in a transaction of its own, so memory holds one page at a time."""
    header = [*ROW_FIELDS]
    if currency != "USD":
        header.insert(header.index("cost_usd") + 1, f"cost_{currency.lower()}")
    yield _csv([header])
    # The hours to read, once: a page of the export is large enough that the window of a page of
    # the log (_read_page) would not often fill it.
    spans = await database.run(lambda conn: _candidate_hours(conn, filters, _bounds(filters, None)[1]))
    position: Position | None = None
    while True:
        records = await database.run(
            functools.partial(_read_spans, filters=filters, spans=spans, position=position, limit=page)
        )
        if not records:
            return
        yield _csv(_csv_rows(records, currency, rate))
        if len(records) < page:
            return
        position = Position(_utc(records[-1].ts), records[-1].request_id)


# -- usage series ----------------------------------------------------------------------------------

# Per window: a bucket's length, how many, and a bucket's name as text of its start, which
# SQLite's ts text begins with (its first ``width`` characters) and PostgreSQL's to_char gives.
_WINDOWS: dict[str, tuple[timedelta, int, int, str]] = {
    "hour": (timedelta(minutes=1), 60, 16, "YYYY-MM-DD HH24:MI"),
    "day": (_HOUR, 24, 13, "YYYY-MM-DD HH24"),
    "month": (timedelta(days=1), 30, 10, "YYYY-MM-DD"),
}
_ROW_GROUPS: dict[str, tuple[sa.ColumnElement[Any], ...]] = {
    "model": (_rows.model_served, _rows.model_requested),
    "deployment": (_rows.deployment,),
    "tier": (_rows.tier,),
    "user": (_rows.user_id,),
    "team": (_rows.team,),
    "key": (_rows.key_id,),
}
_ROLLUP_GROUPS: dict[str, tuple[str, ...]] = {
    "model": ("model_served", "model_requested"),
    "deployment": ("deployment",),
    "tier": ("tier",),
    "user": ("user_id",),
    "team": ("team",),
    "key": ("key_id",),
}
SERIES_BY = tuple(_ROW_GROUPS)


def _bucket_start(now: datetime, window: str) -> datetime:
    """The first bucket's start: the last bucket is the one that holds ``now``."""
    length, count, _, _ = _WINDOWS[window]
    now = _utc(now)
    if window == "hour":
        current = now.replace(second=0, microsecond=0)
    elif window == "day":
        current = now.replace(minute=0, second=0, microsecond=0)
    else:
        current = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return current - (count - 1) * length


def rollup_group(by: str) -> sa.ColumnElement[str]:
    """A rollup row's group for ``by``, named as a report names it ('' is NULL there)."""
    columns = [sa.func.nullif(_rollup[name], _text("")) for name in _ROLLUP_GROUPS[by]]
    return sa.func.coalesce(*columns, _text(NO_GROUP), type_=sa.String)


def _series_from_rows(
    dialect: str, window: str, by: str | None, team: str | None, start: datetime, end: datetime
) -> sa.Select[Any]:
    _, _, width, pattern = _WINDOWS[window]
    if dialect == "postgresql":
        bucket = sa.func.to_char(sa.func.timezone(_text("UTC"), _rows.ts), _text(pattern), type_=sa.String)
    else:
        bucket = sa.func.substr(_rows.ts, sa.literal_column(str(1)), sa.literal_column(str(width)), type_=sa.String)
    group = sa.func.coalesce(*_ROW_GROUPS[by], _text(NO_GROUP), type_=sa.String) if by else _text("all")
    query = sa.select(
        bucket.label("bucket"),
        group.label("group"),
        sa.func.count().label("requests"),
        sa.func.sum(_rows.prompt_tokens + _rows.completion_tokens).label("tokens"),
        sa.func.sum(_rows.cost_usd).label("cost_usd"),
        sa.func.sum(sa.case((_rows.status >= 400, 1), else_=0)).label("errors"),
        sa.func.sum(sa.case((_rows.cache_hit, 1), else_=0)).label("cache_hits"),
        sa.func.sum(_rows.cache_saved_usd).label("saved_usd"),
    ).where(_rows.ts >= start, _rows.ts < end)
    if team is not None:
        query = query.where(_rows.team == team)
    return query.group_by(bucket, group) if by else query.group_by(bucket)


def _series_from_rollup(by: str | None, team: str | None, start: datetime, end: datetime) -> sa.Select[Any]:
    group = rollup_group(by) if by else _text("all")
    query = sa.select(
        _rollup.utc_day.label("bucket"),
        group.label("group"),
        sa.func.sum(_rollup.requests).label("requests"),
        sa.func.sum(_rollup.prompt_tokens + _rollup.completion_tokens).label("tokens"),
        sa.func.sum(_rollup.cost_usd).label("cost_usd"),
        sa.func.sum(_rollup.errors).label("errors"),
        sa.func.sum(_rollup.cache_hits).label("cache_hits"),
        sa.func.sum(_rollup.saved_usd).label("saved_usd"),
    ).where(_rollup.utc_day >= start.date(), _rollup.utc_day < end.date())
    if team is not None:
        query = query.where(_rollup.team == team)
    return query.group_by(_rollup.utc_day, group) if by else query.group_by(_rollup.utc_day)


@dataclass
class _Sums:
    requests: list[int]
    tokens: list[int]
    cost_usd: list[float]
    errors: list[int]

    @classmethod
    def empty(cls, count: int) -> _Sums:
        return cls([0] * count, [0] * count, [0.0] * count, [0] * count)

    def add(self, other: _Sums) -> None:
        for index in range(len(self.requests)):
            self.requests[index] += other.requests[index]
            self.tokens[index] += other.tokens[index]
            self.cost_usd[index] += other.cost_usd[index]
            self.errors[index] += other.errors[index]

    def shown(self, group: str) -> dict[str, Any]:
        return {
            "group": group,
            "requests": self.requests,
            "tokens": self.tokens,
            "cost_usd": [round(value, 10) for value in self.cost_usd],
            "errors": self.errors,
        }


async def usage_series(
    database: Database,
    window: Window,
    by: SeriesBy | None = None,
    team: str | None = None,
    now: datetime | None = None,
    currency: str = "USD",
    rate: float = 1.0,
) -> dict[str, Any]:
    """The window's requests, tokens, cost and errors per bucket, ending with the bucket that holds
    ``now`` (UTC minutes, hours or days): per group of ``by`` for its TOP_GROUPS groups with the
    most requests, the others together as OTHER_GROUP; without ``by``, one series, "all". Only
    the rows of ``team`` if given. The totals add the cache's hits, hit rate and savings."""
    if window not in _WINDOWS:
        raise ValueError("window must be hour, day or month")
    if by is not None and by not in _ROW_GROUPS:
        raise ValueError(f"by must be one of {', '.join(SERIES_BY)}")
    length, count, width, _ = _WINDOWS[window]
    start = _bucket_start(now if now is not None else datetime.now(UTC), window)
    end = start + count * length
    names = {(start + index * length).strftime("%Y-%m-%d %H:%M")[:width]: index for index in range(count)}

    def read(conn: sa.Connection) -> Sequence[sa.Row[Any]]:
        if window == "month" and rollup_ready(conn):
            query = _series_from_rollup(by, team, start, end)
        else:
            query = _series_from_rows(conn.dialect.name, window, by, team, start, end)
        return conn.execute(query).all()

    groups: dict[str, _Sums] = {}
    cache_hits, saved = 0, 0.0
    for record in await database.run(read):
        bucket = record.bucket.isoformat() if isinstance(record.bucket, date) else record.bucket
        index = names.get(bucket)
        if index is None:
            continue  # a ts of another form, which no bucket of the gateway's rows has
        sums = groups.setdefault(record.group, _Sums.empty(count))
        sums.requests[index] += int(record.requests)
        sums.tokens[index] += int(record.tokens or 0)
        sums.cost_usd[index] += float(record.cost_usd or 0)
        sums.errors[index] += int(record.errors or 0)
        cache_hits += int(record.cache_hits or 0)
        saved += float(record.saved_usd or 0)
    ranked = sorted(groups, key=lambda name: (-sum(groups[name].requests), name))
    series = [groups[name].shown(name) for name in ranked[:TOP_GROUPS]]
    if len(ranked) > TOP_GROUPS:
        other = _Sums.empty(count)
        for name in ranked[TOP_GROUPS:]:
            other.add(groups[name])
        series.append(other.shown(OTHER_GROUP))
    if by is None and not series:
        series = [_Sums.empty(count).shown("all")]
    requests = sum(sum(sums.requests) for sums in groups.values())
    cost = sum(sum(sums.cost_usd) for sums in groups.values())
    totals: dict[str, Any] = {
        "requests": requests,
        "tokens": sum(sum(sums.tokens) for sums in groups.values()),
        "cost_usd": round(cost, 10),
        "errors": sum(sum(sums.errors) for sums in groups.values()),
        "cache_hits": cache_hits,
        "hit_rate": round(cache_hits / requests, 4) if requests else 0.0,
        "saved_usd": round(saved, 10),
    }
    if currency != "USD":
        totals[f"cost_{currency.lower()}"] = round(totals["cost_usd"] * rate, 10)
        totals[f"saved_{currency.lower()}"] = round(totals["saved_usd"] * rate, 10)
    return {
        "object": "usage_series",
        "window": window,
        "by": by,
        "currency": currency,
        "rate": rate,
        "buckets": [(start + index * length).isoformat() for index in range(count)],
        "series": series,
        "totals": totals,
    }
