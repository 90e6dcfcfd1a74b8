"""The ledger: one row per request, durable before its response completes, never doubled.

Embedded (no Redis): before a request's response completes, its row is appended to a journal
file next to the database, with every row of the same turn of the event loop in one write (no
fsync: in the kernel, which a process killed outright does not lose; a machine that loses power
may lose the last ones). The rows are written to SQL in batches (every ``flush_seconds`` or
``batch_size`` rows), after which their journal is removed; a ledger starting writes the rows
of a journal that a killed process left (see Ledger). The calendar quotas' state goes in the
batches' transactions (see _quotas), so it survives a restart as of the last batch.

Distributed (Redis): before a request's response completes, its row is appended to a Redis
stream (``XADD``). Rows produced in the same turn of the event loop go in one stream entry, one
round trip (group commit), so the cost per request stays small. Every node runs a consumer of
the stream's consumer group that writes rows to the database in batches and acknowledges them
after the write; rows left pending by a node that died are claimed by the others
(``XAUTOCLAIM``). A gateway killed with SIGKILL therefore loses no row of a response it
completed, and because rows are inserted by request id (the gateway's own, unique per request)
with ON CONFLICT DO NOTHING, a row delivered twice is written once. A node keeps what it
appended until it sees it in the database, so a Redis that restarts empty loses nothing either,
and a Redis that does not answer within the store's timeout is not waited for (see StreamLedger).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import fcntl
import functools
import glob
import hashlib
import logging
import marshal
import math
import os
import socket
import sqlite3
import struct
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, cast

import orjson
import sqlalchemy as sa

from .._logging import EveryFewSeconds
from ..keys import Database
from ..keys._store import metadata
from ..limits import RedisConnection, RedisReplyError
from ._quotas import DurableQuotas, QuotaChanges

logger = logging.getLogger("quotagate.ledger")

usage_table = sa.Table(
    "qg_usage",
    metadata,
    sa.Column("request_id", sa.String(128), primary_key=True),
    # Every index is one more B-tree written per row: about 2 µs of the SQLite writer's time a
    # row, each. The reports filter on ts and group by a column, which scans the range either way;
    # the day, user and key indexes of earlier versions served no query (see retired_indexes
    # below). Whoever looks rows up by key often can add one under a name of their own (start-up
    # drops the retired names): CREATE INDEX my_usage_by_key ON qg_usage (key_id).
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("day", sa.String(10), nullable=False),  # in the configured time zone
    sa.Column("key_id", sa.String(32)),
    sa.Column("user_id", sa.String(200)),
    sa.Column("tier", sa.String(100)),
    sa.Column("model_requested", sa.String(200)),
    sa.Column("model_served", sa.String(200)),
    sa.Column("deployment", sa.String(300)),
    sa.Column("prompt_tokens", sa.Integer, nullable=False, default=0),
    sa.Column("completion_tokens", sa.Integer, nullable=False, default=0),
    sa.Column("cached_tokens", sa.Integer, nullable=False, default=0),
    sa.Column("cost_usd", sa.Float, nullable=False, default=0.0),
    sa.Column("latency_ms", sa.Float),
    sa.Column("upstream_ms", sa.Float),
    sa.Column("overhead_ms", sa.Float),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("error_type", sa.String(100)),
    sa.Column("stream", sa.Boolean, nullable=False, default=False),
    sa.Column("cache_hit", sa.Boolean, nullable=False, default=False),
    # The id the client sent (x-client-request-id or x-request-id), for finding its rows. Not the
    # key: clients reuse ids (retries, fixed values), and a reused key would drop the later rows.
    # Last, because rows travel as arrays in column order and older entries stop before it.
    sa.Column("client_request_id", sa.String(128)),
    # Only rows that have one: most clients send no id, and a NULL costs an index entry too.
    sa.Index(
        "ix_qg_usage_client_request_id",
        "client_request_id",
        sqlite_where=sa.text("client_request_id IS NOT NULL"),
        postgresql_where=sa.text("client_request_id IS NOT NULL"),
    ),
)
# Indexes of earlier versions that no query uses: KeyStore.create_schema drops them.
usage_table.info["retired_indexes"] = ("ix_qg_usage_day", "ix_qg_usage_user_id", "ix_qg_usage_key_id")


class UsageRow(NamedTuple):
    """One request's row: its values in the table's column order (the row is what is bound)."""

    request_id: str
    ts: float  # epoch seconds
    day: str
    key_id: str | None
    user_id: str | None
    tier: str | None
    model_requested: str | None
    model_served: str | None
    deployment: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_usd: float
    latency_ms: float
    upstream_ms: float | None
    overhead_ms: float
    status: int
    error_type: str | None
    stream: bool
    cache_hit: bool = False
    client_request_id: str | None = None


_FIELDS = tuple(column.name for column in usage_table.columns)
_TS = _FIELDS.index("ts")
_BOOLEANS = tuple(i for i, column in enumerate(usage_table.columns) if isinstance(column.type, sa.Boolean))
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


def row_json(row: UsageRow) -> bytes:
    """A row as the ledger carries it: a JSON array of its values in column order."""
    values = list(row)
    values[_TS] = _ts_text(row.ts)
    return orjson.dumps(values)


def batch_json(rows: list[bytes]) -> bytes:
    return b"[" + b",".join(rows) + b"]"


def _insert_sql(dialect: str) -> str:
    """One statement inserting a whole batch given as one JSON document (an array of rows), for
    the engine's connections (PostgreSQL; SQLite in memory): the database unpacks the rows itself,
    in one round trip."""
    columns = ", ".join(_FIELDS)
    if dialect == "postgresql":
        casts = []
        for index, column in enumerate(usage_table.columns):
            value = f"(e->>{index})"
            if isinstance(column.type, sa.DateTime):
                value = f"({value} || '+00')::timestamptz"
            elif isinstance(column.type, sa.Boolean):
                value += "::boolean"
            elif isinstance(column.type, sa.Integer):
                value += "::integer"
            elif isinstance(column.type, sa.Float):
                value += "::double precision"
            casts.append(value)
        return (
            f"INSERT INTO qg_usage ({columns}) SELECT {', '.join(casts)} "
            "FROM jsonb_array_elements($1::jsonb) AS e ON CONFLICT (request_id) DO NOTHING"
        )
    values = ", ".join(f"json_extract(value, '$[{index}]')" for index in range(len(_FIELDS)))
    # "WHERE true" tells SQLite's parser that ON CONFLICT belongs to the INSERT, not a join.
    return (
        f"INSERT INTO qg_usage ({columns}) SELECT {values} FROM json_each(?) "
        "WHERE true ON CONFLICT (request_id) DO NOTHING"
    )


@functools.lru_cache(maxsize=16)
def _values_sql(rows: int) -> str:
    """INSERT of ``rows`` rows given as parameters, in column order."""
    one = "(" + ", ".join("?" * len(_FIELDS)) + ")"
    return (
        f"INSERT INTO qg_usage ({', '.join(_FIELDS)}) VALUES {', '.join([one] * rows)} "
        "ON CONFLICT (request_id) DO NOTHING"
    )


def _statement_sizes(count: int, largest: int) -> Iterator[int]:
    """Rows per INSERT for a batch of ``count`` rows: powers of two, none above ``largest``.

    SQLite prepares a statement per distinct text and the driver keeps them. With a size per
    batch remainder, the ledger kept preparing statements of up to a hundred rows for remainders
    it had not met yet (13,000 instructions per proxied request over 2,000 requests, callgrind),
    and would keep a hundred of them. Powers of two are prepared once each, eight in all."""
    size = 1 << (largest.bit_length() - 1)
    while count:
        while size > count:
            size >>= 1
        yield size
        count -= size


def _bind_null_directly() -> None:
    """The sqlite3 driver binds int, float and str at once, but None (a row's error_type and
    client_request_id, mostly) through its adapter protocol: with no adapter registered for
    NoneType it looks for __adapt__ and __conform__, raising and clearing an AttributeError for
    each, 3,400 instructions per NULL (callgrind, 2 a row). With one registered, it is a
    dictionary lookup and a call. The adapter is the bound method of an empty dict, which answers
    None for any value: C, with no state. NULL is bound either way, for every user of sqlite3 in
    the process; registered when a SQLite ledger opens, not when quotagate is imported."""
    sqlite3.register_adapter(type(None), cast(Callable[[None], None], {}.get))


def _parameters(rows: list[list[Any]]) -> list[Any]:
    """The rows' values, flat, each row cut or padded to today's columns: entries of earlier
    versions end before the columns added since (NULL), a later version's may go on past them.

    Booleans become 0 and 1 here. The sqlite3 driver binds int, float, str and None directly but
    sends a bool through its adapter protocol, which looks for adapters by raising and catching
    AttributeErrors: the two flags of a row cost more instructions than its other 19 values
    together (11,600 instructions per proxied request, callgrind)."""
    width = len(_FIELDS)
    flat: list[Any] = []
    for row in rows:
        for index in _BOOLEANS:
            if index < len(row) and row[index] is not None:
                row[index] = 1 if row[index] else 0
        if len(row) == width:
            flat.extend(row)
        else:
            flat.extend(row[:width])
            flat.extend([None] * (width - len(row)))
    return flat


_WRITTEN_SQLITE = "SELECT request_id FROM qg_usage WHERE request_id IN (SELECT value FROM json_each(?))"
_WRITTEN_POSTGRESQL = (
    "SELECT request_id FROM qg_usage WHERE request_id IN (SELECT jsonb_array_elements_text($1::jsonb))"
)


class SqlWriter:
    """Batches of rows into qg_usage, idempotent by request id.

    PostgreSQL is written through the database (asyncpg), one statement per batch: the database
    unpacks the rows from one JSON document.

    A SQLite file is written from the event loop itself, on a connection of its own, in multi-row
    INSERT … VALUES statements of ROWS_PER_STATEMENT rows (the rest in powers of two, see
    _statement_sizes), with the loop serving requests between them. Rows are bound as parameters:
    unpacking them in SQL with json_extract cost about 80,000 more CPU instructions per row
    (callgrind). The loop, not a thread: a writer thread took and gave back the GIL while the loop
    was busy, a voluntary context switch per proxied request, and the ledger cost the gateway 53 µs
    of CPU per request at 64 connections; from the loop, 16 µs (bench/compare.py, medians of
    interleaved runs). Nothing on the loop waits for SQLite, though: the connection's busy timeout
    is zero, and a batch that finds the file locked (by the CLI writing keys, or another worker's
    ledger) tries again after a pause in which the loop goes on, and after LOCK_WAIT_SECONDS is
    kept for the next flush. The WAL checkpoints, which sync the file to disk, are taken off it:
    automatic checkpoints are off on this connection, and a thread with a connection of its own
    checkpoints every CHECKPOINT_ROWS rows.

    With ``quotas`` (a single node without Redis), each write also stores the calendar quotas
    changed since the last one, in the same transaction; a write without rows stores only them.
    """

    ROWS_PER_STATEMENT = 128
    CHECKPOINT_ROWS = 4096
    LOCK_WAIT_SECONDS = 2.0  # then the batch is kept and written with the next flush

    def __init__(self, database: Database, quotas: DurableQuotas | None = None) -> None:
        self.database = database
        self.quotas = quotas
        self._sql = _insert_sql(database.dialect)
        self._sqlite_path = database.sqlite_file
        self._sqlite: sqlite3.Connection | None = None
        self._sqlite_lock = asyncio.Lock()  # one transaction at a time on the connection
        self._rows_per_statement = self.ROWS_PER_STATEMENT
        self._since_checkpoint = 0
        self._checkpointing: asyncio.Future[None] | None = None
        self._checkpointer: sqlite3.Connection | None = None
        self._thread: concurrent.futures.ThreadPoolExecutor | None = None

    async def write(self, rows: list[UsageRow]) -> None:
        """Rows as the gateway made them. A SQLite file takes their values as they are; they go
        through JSON only on their way through a Redis stream or to PostgreSQL (row_json)."""
        changes = self.quotas.take() if self.quotas is not None else None
        if not rows and changes is None:
            return
        try:
            if self._sqlite_path is None:
                await self._write_sql(batch_json([row_json(row) for row in rows]) if rows else None, changes)
                return
            values: list[list[Any]] = []
            for row in rows:
                row_values: list[Any] = list(row)
                row_values[_TS] = _ts_text(row.ts)
                values.append(row_values)
            await self._write_sqlite(values, changes)
        except BaseException:
            if changes is not None and self.quotas is not None:
                self.quotas.unwritten(changes)  # stored with the next write
            raise

    async def write_json(self, batch: bytes) -> None:
        """Rows as a JSON array of row_json arrays."""
        if batch == b"[]":
            return
        if self._sqlite_path is not None:
            await self._write_sqlite(orjson.loads(batch))
            return
        await self._write_sql(batch, None)

    async def _write_sql(self, batch: bytes | None, changes: QuotaChanges | None) -> None:
        text = batch.decode() if batch is not None else None
        quotas = self.quotas

        def work(conn: sa.Connection) -> None:
            if text is not None:
                conn.exec_driver_sql(self._sql, (text,))
            if changes is not None and quotas is not None:
                quotas.write(conn, changes)

        await self.database.run(work)

    async def written_ids(self, request_ids: list[str]) -> set[str]:
        """Which of ``request_ids`` have their row in the table (one statement; the ids as one
        JSON array, unpacked by the database)."""
        if not request_ids:
            return set()
        ids = orjson.dumps(request_ids).decode()
        if self._sqlite_path is not None:
            async with self._sqlite_lock:
                connection = self._sqlite or self._open_sqlite()
                found = connection.execute(_WRITTEN_SQLITE, (ids,)).fetchall()
            return {request_id for (request_id,) in found}
        sql = _WRITTEN_POSTGRESQL if self.database.dialect == "postgresql" else _WRITTEN_SQLITE

        def read(conn: sa.Connection) -> set[str]:
            return {request_id for (request_id,) in conn.exec_driver_sql(sql, (ids,))}

        return await self.database.run(read)

    def _open_sqlite(self) -> sqlite3.Connection:
        assert self._sqlite_path is not None
        _bind_null_directly()
        connection = sqlite3.connect(self._sqlite_path, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA busy_timeout=0")  # never wait on the event loop
        connection.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable through a crash
        connection.execute("PRAGMA wal_autocheckpoint=0")  # the checkpoint thread's job
        # Builds of SQLite before 3.32 take at most 999 parameters per statement.
        limit = connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        self._rows_per_statement = max(1, min(self.ROWS_PER_STATEMENT, limit // len(_FIELDS)))
        self._sqlite = connection
        return connection

    async def _begin(self, connection: sqlite3.Connection) -> None:
        """Take the file's write lock, waiting for it without holding up the loop: another
        process (the CLI, another worker's ledger) holds it for a moment at a time."""
        pause = 0.005
        waited = 0.0
        while True:
            try:
                connection.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if ("locked" not in str(exc) and "busy" not in str(exc)) or waited >= self.LOCK_WAIT_SECONDS:
                    raise
            await asyncio.sleep(pause)
            waited += pause
            pause = min(pause * 2, 0.1)

    async def _write_sqlite(self, rows: list[list[Any]], changes: QuotaChanges | None = None) -> None:
        async with self._sqlite_lock:
            connection = self._sqlite or self._open_sqlite()
            start = 0
            try:
                await self._begin(connection)
                for size in _statement_sizes(len(rows), self._rows_per_statement):
                    connection.execute(_values_sql(size), _parameters(rows[start : start + size]))
                    start += size
                    if start < len(rows):
                        await asyncio.sleep(0)  # requests go on between two statements
                if changes is not None and self.quotas is not None:
                    self.quotas.write_sqlite(connection, changes)
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            self._since_checkpoint += len(rows)
        if self._since_checkpoint >= self.CHECKPOINT_ROWS and (
            self._checkpointing is None or self._checkpointing.done()
        ):
            self._since_checkpoint = 0
            self._checkpointing = asyncio.ensure_future(self._checkpoint())

    async def _checkpoint(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self._checkpoint_thread(), self._checkpoint_here)
        except Exception as exc:
            logger.warning("could not checkpoint the ledger's WAL (%s); will try again", exc)

    def _checkpoint_thread(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._thread is None:
            self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="quotagate-checkpoint")
        return self._thread

    def _checkpoint_here(self) -> None:
        if self._checkpointer is None:
            assert self._sqlite_path is not None
            self._checkpointer = sqlite3.connect(self._sqlite_path, isolation_level=None, check_same_thread=False)
            self._checkpointer.execute("PRAGMA busy_timeout=5000")
        # PASSIVE: copies what it can without waiting for readers or writers.
        self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")

    async def aclose(self) -> None:
        if self._checkpointing is not None:
            await asyncio.gather(self._checkpointing, return_exceptions=True)
        connections = [c for c in (self._sqlite, self._checkpointer) if c is not None]
        self._sqlite = self._checkpointer = None
        if connections:
            # The last connection to close checkpoints the whole WAL: not on the loop.
            await asyncio.get_running_loop().run_in_executor(self._checkpoint_thread(), _close_all, connections)
        if self._thread is not None:
            self._thread.shutdown(wait=False)
            self._thread = None


def _close_all(connections: list[sqlite3.Connection]) -> None:
    for connection in connections:
        connection.close()


# A journal record: its payload's length and CRC-32, then the payload (marshal of a list of rows,
# each the tuple of its values in column order).
_RECORD = struct.Struct("<II")


class _JournalFile(NamedTuple):
    """An open journal file, locked (flock) by this process for as long as it is open."""

    fd: int
    path: Path


def journal_path(database: Database) -> Path | None:
    """Where the embedded ledger journals its rows: next to a SQLite file; for another database
    (PostgreSQL), in the user's state directory, named after the database's URL; None for a SQLite
    in memory, which a killed process loses whole anyway."""
    if database.sqlite_file is not None:
        return Path(f"{database.sqlite_file}.ledger-journal")
    if database.dialect == "sqlite":
        return None
    url = database.engine.url.render_as_string(hide_password=True)
    name = f"{hashlib.sha256(url.encode()).hexdigest()[:16]}.ledger-journal"
    state = os.environ.get("XDG_STATE_HOME")
    if not state:
        try:
            state = str(Path.home() / ".local" / "state")
        except RuntimeError:
            # No HOME and no passwd entry (a container's arbitrary user): the temporary
            # directory still outlives a killed process, which is all the journal is for.
            return Path(tempfile.gettempdir()) / f"quotagate-{os.getuid()}" / name
    return Path(state) / "quotagate" / name


def journal_record(rows: list[UsageRow]) -> bytes:
    # marshal, not JSON: half the bytes, and floats, booleans and None come back as they were.
    payload = marshal.dumps([tuple(row) for row in rows])
    return _RECORD.pack(len(payload), zlib.crc32(payload)) + payload


def read_journal(data: bytes) -> list[UsageRow]:
    """The rows of a journal's whole records. A record cut short or damaged (the process was
    killed in the middle of its write) ends the journal: it and anything after it are left out,
    and the responses of its rows had not completed."""
    rows: list[UsageRow] = []
    width = len(UsageRow._fields)
    offset = 0
    while offset + _RECORD.size <= len(data):
        length, crc = _RECORD.unpack_from(data, offset)
        start = offset + _RECORD.size
        payload = data[start : start + length]
        if len(payload) < length or zlib.crc32(payload) != crc:
            break
        try:
            rows.extend(UsageRow(*values[:width]) for values in marshal.loads(payload))
        except (ValueError, EOFError, TypeError):
            break
        offset = start + length
    return rows


class Ledger:
    """The embedded ledger: each row journalled to a local file before its response completes,
    and written to SQL in batches (every ``flush_seconds`` or ``batch_size`` rows).

    A row only buffered for its batch was lost when the process was killed (SIGKILL: 492-507 rows
    of about 2,600 acknowledged requests, issue 18). Committing each turn's rows to SQLite before
    their responses completed lost none, but a transaction costs about 50 µs of CPU however few
    rows it holds: 400 µs per proxied request instead of 343 µs at 64 connections. So the rows of
    one turn of the event loop are appended to the journal with one ``os.write`` (no fsync, no
    thread: what the kernel has is what a killed process does not lose; a machine that loses its
    power may lose the last ones), and the batches are written as before.

    Each flush starts a new journal file: the old ones are removed once the rows they hold are in
    the database. Each file is named after the process and locked (flock) while it is open, so
    several processes can share a database (workers of the stream ledger, whose rows come here
    when Redis does not take them): at start a ledger takes the files nobody holds, those of a
    process that died, and writes their rows (inserted by request id: a row already written is
    not written twice) before it removes them.

    The calendar quotas' state goes in the batches' transactions (see _quotas): after a SIGKILL
    it is as of the last batch, which the journal does not replay.
    """

    # How long closing waits for the last writes before giving up on them (and saying so).
    CLOSE_TIMEOUT = 10.0

    def __init__(
        self,
        writer: SqlWriter,
        batch_size: int = 500,
        flush_seconds: float = 0.5,
        journal: str | os.PathLike[str] | None = None,
    ) -> None:
        self.writer = writer
        self.batch_size = batch_size
        self.flush_seconds = flush_seconds
        self.journal = Path(journal) if journal is not None else None
        self._buffer: list[UsageRow] = []
        self._flusher: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        # One batch is written at a time: the flusher, a report and closing all flush.
        self._flush_lock = asyncio.Lock()
        self._closing = False
        # The rows of this turn of the loop, and what their commits wait for.
        self._group: list[UsageRow] = []
        self._group_done: asyncio.Future[None] | None = None
        # The journal file appended to now, and those whose rows wait for (or are in) a batch.
        self._current: _JournalFile | None = None
        self._retired: list[_JournalFile] = []
        self._journal_files = 0
        # A database that is down would otherwise log a line per flush.
        self._log_unwritten = EveryFewSeconds(logger)
        self.written = 0
        self.write_errors = 0
        self.journal_errors = 0
        self.replayed = 0  # rows taken from the journals of a process that died

    async def commit(self, row: UsageRow) -> None:
        """Return once the row is in the journal (in the kernel) and the buffer."""
        await self._keep(row)

    def _keep(self, row: UsageRow) -> asyncio.Future[None]:
        """The row, journalled with every row kept in the same turn of the loop: one write for
        the responses that came back together. The turn this takes is also what lets them be
        accounted for and sent together, each stage for all of them back to back (as the
        stream's append and the limiter's in-process decision do)."""
        if self._group_done is None:
            loop = asyncio.get_running_loop()
            self._group_done = loop.create_future()
            loop.call_soon(self._write_group)
        self._group.append(row)
        return self._group_done

    def _write_group(self) -> None:
        rows, self._group = self._group, []
        done, self._group_done = self._group_done, None
        try:
            if self.journal is not None:
                self._append(rows)
        finally:
            # Journalled or not (the journal's errors are logged), the rows go in the next batch.
            self._buffer.extend(rows)
            if len(self._buffer) >= self.batch_size:
                self._wake.set()
            if done is not None and not done.done():
                done.set_result(None)

    def _append(self, rows: list[UsageRow]) -> None:
        record = journal_record(rows)
        try:
            if self._current is None:
                self._current = self._open_journal()
            written = os.write(self._current.fd, record)
            if written == len(record):
                return
            error = f"{written} of {len(record)} bytes written"  # the disk is full
        except OSError as exc:
            error = str(exc)
        # Part of the record may be in the file: nothing goes after it; the next group opens a new one.
        self._retire()
        self.journal_errors += 1
        self._log_unwritten.warning(
            "could not journal %d usage rows (%s); a process killed before the next batch would lose them",
            len(rows),
            error,
        )

    def _open_journal(self) -> _JournalFile:
        assert self.journal is not None
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        while True:
            self._journal_files += 1
            path = self.journal.with_name(f"{self.journal.name}.{os.getpid()}-{self._journal_files}")
            try:
                fd = os.open(path, flags, 0o600)
            except FileExistsError:
                continue  # a dead process's of the same id, not replayed yet
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                # A ledger starting took it for a dead process's (it is empty, and it removes it).
                os.close(fd)
                continue
            return _JournalFile(fd, path)

    def _retire(self) -> None:
        if self._current is not None:
            self._retired.append(self._current)
            self._current = None

    def _adopt_orphans(self) -> None:
        """The journals no process holds, their rows into the buffer and their files retired."""
        assert self.journal is not None
        for path in sorted(self.journal.parent.glob(glob.escape(self.journal.name) + ".*")):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # its process has just removed it
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # a running process's
            with open(fd, "rb", closefd=False) as file:
                rows = read_journal(file.read())
            self._buffer.extend(rows)
            self.replayed += len(rows)
            self._retired.append(_JournalFile(fd, path))

    async def start(self) -> None:
        if self.journal is not None:
            try:
                self.journal.parent.mkdir(parents=True, exist_ok=True)
                self._adopt_orphans()
            except OSError as exc:
                logger.error(
                    "no ledger journal at %s (%s): a process killed outright will lose the rows of its last batch",
                    self.journal,
                    exc,
                )
                self.journal = None
        if self._retired:
            if self.replayed:
                logger.warning("writing %d usage rows journalled by a gateway that was stopped", self.replayed)
            await self.flush()
        self._flusher = asyncio.ensure_future(self._flush_forever())

    async def _flush_forever(self) -> None:
        while not self._closing:
            try:
                async with asyncio.timeout(self.flush_seconds):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Write the rows buffered now, and the quotas' changes. Rows that arrive meanwhile wait
        for the next flush (a full batch, or the next tick): writing them at once would turn a
        busy gateway's ledger into a stream of tiny batches, each paying a transaction."""
        async with self._flush_lock:
            pending, self._buffer = self._buffer, []
            # The journal files so far hold the pending rows (and perhaps rows written already):
            # new rows go to a new file, and these go once the pending rows are in the database.
            self._retire()
            journals, self._retired = self._retired, []
            # Without rows, one empty batch all the same: the writer may have the quotas' changes.
            for start in range(0, len(pending), self.batch_size) or range(1):
                batch = pending[start : start + self.batch_size]
                try:
                    await self.writer.write(batch)
                    self.written += len(batch)
                except BaseException as exc:
                    # Keep the rows and try again with the next flush: the database may be back.
                    self._buffer[:0] = pending[start:]
                    self._retired[:0] = journals
                    if not isinstance(exc, Exception):
                        raise
                    self.write_errors += 1
                    self._log_unwritten.warning(
                        "could not write %d usage rows%s (%s); will retry",
                        len(pending) - start,
                        " and the quotas' state" if self.writer.quotas is not None else "",
                        exc,
                    )
                    return
            _remove(journals)

    async def aclose(self) -> None:
        # The flusher is asked to stop, not cancelled: cancelling it in the middle of a write
        # left that connection's transaction holding SQLite's write lock, and the final flush
        # then failed with "database is locked", losing the last rows.
        self._closing = True
        self._wake.set()
        try:
            async with asyncio.timeout(self.CLOSE_TIMEOUT):
                if self._flusher is not None:
                    await self._flusher
                await self.flush()
        except TimeoutError:
            pass
        if self._buffer:
            logger.error(
                "%d usage rows could not be written before shutdown%s",
                len(self._buffer),
                "; their journal is written at the next start" if self.journal is not None else "",
            )
        # Files whose rows are not all written stay for the next start.
        self._retire()
        for journal in self._retired:
            os.close(journal.fd)
        self._retired = []
        await self.writer.aclose()


def _remove(journals: list[_JournalFile]) -> None:
    for journal in journals:
        # Removed before it is unlocked: a ledger starting never takes a live file's rows.
        journal.path.unlink(missing_ok=True)
        os.close(journal.fd)


class StreamLedger(Ledger):
    """The distributed ledger: rows go through a Redis stream and a consumer group.

    Redis is not trusted to keep them: a Redis without persistence that restarts has forgotten
    the rows no consumer had written yet (20 acknowledged requests lost, issue 18). So a node
    keeps the rows it appended (in memory, up to MAX_UNCONFIRMED) until it has seen them in the
    database: every second it looks up the request ids appended more than ``confirm_after``
    seconds ago, and writes those missing itself (inserted by request id: a row the consumers
    write as well is written once).

    Nor is Redis waited for: the append has the store's deadline (``limiter.timeout_ms``, the
    appender connection's timeout), and a row that could not be appended in time goes to the
    journal and the next batch, as without Redis. For RETRY_SECONDS after a failed append
    every row goes that way, so that a Redis that stopped answering costs one group of requests
    the deadline, not every request (a 2 s deadline of its own made each request wait 2.25 s).
    """

    STREAM = "qg:ledger"
    GROUP = "qg-ledger-writers"
    RETRY_SECONDS = 1.0
    MAX_UNCONFIRMED = 200_000  # rows; beyond it the oldest are left to Redis alone
    CONFIRM_ROWS = 10_000  # request ids looked up in one statement

    def __init__(
        self,
        writer: SqlWriter,
        appender: RedisConnection,
        consumer: RedisConnection,
        batch_size: int = 500,
        flush_seconds: float = 0.5,
        claim_after_seconds: float = 30.0,
        journal: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(writer, batch_size, flush_seconds, journal)
        self.claim_after = claim_after_seconds
        # Two pipelined connections: appends from every request share one; the consumer blocks on
        # XREADGROUP for up to flush_seconds, so it reads over its own, with a timeout longer
        # than that block.
        self.appender = appender
        self.reader = consumer
        self.consumer = f"{socket.gethostname()}-{os.getpid()}"
        self._pending: list[tuple[UsageRow, asyncio.Future[None]]] = []  # rows and their commits
        self._scheduled = False
        self._consumer_task: asyncio.Task[None] | None = None
        # Rows appended but not yet seen in the database: (loop time of the append, its rows).
        self.confirm_after = max(2.0, 4 * flush_seconds)
        self._unconfirmed: collections.deque[tuple[float, list[UsageRow]]] = collections.deque()
        self._unconfirmed_rows = 0
        self._confirm_task: asyncio.Task[None] | None = None
        self._redis_down_until = -math.inf
        self.rewritten = 0  # rows the stream lost, written by this node
        # With Redis down every group of requests would say so: one line now and then does.
        self._log_kept = EveryFewSeconds(logger)

    async def commit(self, row: UsageRow) -> None:
        """Return once the row is in the stream or, when Redis did not take it in time, in the
        journal and the buffer (as without Redis)."""
        loop = asyncio.get_running_loop()
        if loop.time() < self._redis_down_until:
            await self._keep(row)
            return
        future: asyncio.Future[None] = loop.create_future()
        self._pending.append((row, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(lambda: asyncio.ensure_future(self._append_pending()))
        try:
            await future
        except Exception:
            await self._keep(row)

    async def _append_pending(self) -> None:
        # Everything committed since the last append goes in one stream entry: a JSON array of
        # rows, each the array of its values in column order (row_json).
        self._scheduled = False
        batch, self._pending = self._pending, []
        entry = batch_json([row_json(row) for row, _ in batch])
        loop = asyncio.get_running_loop()
        try:
            # The connection's own deadline (the store's timeout) bounds the append.
            await self.appender.execute("XADD", self.STREAM, "*", "b", entry, "n", len(batch))
        except Exception as exc:
            self._log_kept.warning(
                "could not append usage rows to the stream (%s: %s); writing them to the database for %gs",
                type(exc).__name__,
                exc,
                self.RETRY_SECONDS,
            )
            self._redis_down_until = loop.time() + self.RETRY_SECONDS
            for row, future in batch:
                if not future.done():
                    future.set_exception(exc)  # commit() keeps the row
                elif future.cancelled():
                    # Its request was cancelled (the client left) while the row was on its way:
                    # nobody waits for it any more, but it is kept all the same.
                    self._keep(row)
            return
        self._unconfirmed.append((loop.time(), [row for row, _ in batch]))
        self._unconfirmed_rows += len(batch)
        while self._unconfirmed_rows > self.MAX_UNCONFIRMED:
            _, dropped = self._unconfirmed.popleft()
            self._unconfirmed_rows -= len(dropped)
            self._log_unwritten.warning(
                "over %d usage rows not yet seen in the database; the oldest are left to Redis", self.MAX_UNCONFIRMED
            )
        for _, future in batch:
            if not future.done():
                future.set_result(None)

    async def start(self) -> None:
        # Redis may be down at start: the consumer creates its group when it can.
        await super().start()
        self._consumer_task = asyncio.ensure_future(self._consume_forever())
        self._confirm_task = asyncio.ensure_future(self._confirm_forever())

    async def _confirm_forever(self) -> None:
        while not self._closing:
            await asyncio.sleep(min(1.0, self.confirm_after / 2))
            try:
                while await self.confirm(asyncio.get_running_loop().time() - self.confirm_after):
                    pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._log_unwritten.warning("could not check that the stream's rows were written (%s); will retry", exc)

    async def confirm(self, appended_before: float = math.inf) -> int:
        """Look up (up to CONFIRM_ROWS of) the rows appended before ``appended_before``, loop
        time, in the database, and write those that are missing; the number of rows looked up."""
        rows: list[UsageRow] = []
        while self._unconfirmed and self._unconfirmed[0][0] <= appended_before and len(rows) < self.CONFIRM_ROWS:
            rows.extend(self._unconfirmed.popleft()[1])
        self._unconfirmed_rows -= len(rows)
        if not rows:
            return 0
        try:
            written = await self.writer.written_ids([row.request_id for row in rows])
            missing = [row for row in rows if row.request_id not in written]
            if missing:
                await self.writer.write(missing)
        except BaseException:
            # Looked up again next time: the database may be back.
            self._unconfirmed.appendleft((-math.inf, rows))
            self._unconfirmed_rows += len(rows)
            raise
        if missing:
            self.rewritten += len(missing)
            self.written += len(missing)
            logger.warning(
                "wrote %d usage rows that no consumer had written %gs after their append (lost by a Redis "
                "that restarted empty, or the consumers are behind)",
                len(missing),
                self.confirm_after,
            )
        return len(rows)

    async def _ensure_group(self) -> None:
        try:
            await self.reader.execute("XGROUP", "CREATE", self.STREAM, self.GROUP, "0", "MKSTREAM")
        except RedisReplyError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _consume_forever(self) -> None:
        claim_every, since_claim = min(10.0, self.claim_after), 0.0
        group_ready = False
        while not self._closing:
            try:
                if not group_ready:
                    await self._ensure_group()
                    group_ready = True
                if since_claim <= 0:
                    # Rows a dead node read but never wrote: unacknowledged for long enough, ours.
                    # [next start, [[id, [field, value, ...]], ...], deleted ids]
                    claimed = await self.reader.execute(
                        "XAUTOCLAIM",
                        self.STREAM,
                        self.GROUP,
                        self.consumer,
                        int(self.claim_after * 1000),
                        "0-0",
                        "COUNT",
                        self.batch_size,
                    )
                    await self._store(claimed[1])
                    since_claim = claim_every
                started = asyncio.get_running_loop().time()
                # [[stream, [[id, [field, value, ...]], ...]]], or nil when the block ran out.
                reply = await self.reader.execute(
                    "XREADGROUP",
                    "GROUP",
                    self.GROUP,
                    self.consumer,
                    "COUNT",
                    self.batch_size,
                    "BLOCK",
                    int(self.flush_seconds * 1000),
                    "STREAMS",
                    self.STREAM,
                    ">",
                )
                written = 0
                for _, entries in reply or []:
                    written += await self._store(entries)
                if 0 < written < self.batch_size:
                    # The rows are safe in the stream: let more gather rather than pay a database
                    # transaction and three round trips for a handful of them.
                    await asyncio.sleep(self.flush_seconds / 4)
                since_claim -= asyncio.get_running_loop().time() - started
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if "NOGROUP" in str(exc):
                    group_ready = False  # Redis lost its data (a restart without persistence)
                logger.warning("ledger consumer: %s; retrying", exc)
                await asyncio.sleep(1.0)

    async def _store(self, entries: list[Any]) -> int:
        """Write the rows of stream entries, then acknowledge and delete them; the rows written."""
        if not entries:
            return 0
        rows: list[bytes] = []  # row_json arrays, joined without parsing
        count = 0
        ids = []
        for entry_id, flat in entries:
            ids.append(entry_id)
            if not flat:
                continue  # deleted from the stream while pending
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            batch = fields.get(b"b")
            if batch and batch != b"[]":
                rows.append(batch[1:-1])
                count += int(fields.get(b"n") or 0)
                continue
            # One row as an object: what nodes of earlier versions append.
            single = fields.get(b"r")
            if single:
                rows.append(row_json(UsageRow(**orjson.loads(single))))
                count += 1
        await self.writer.write_json(batch_json(rows))
        self.written += count
        # Acknowledged only once written; deleted so the stream stays small (one round trip).
        await asyncio.gather(
            self.reader.execute("XACK", self.STREAM, self.GROUP, *ids),
            self.reader.execute("XDEL", self.STREAM, *ids),
        )
        return count

    async def aclose(self) -> None:
        # Like the flusher, the consumer finishes the batch it is writing (it notices within
        # one XREADGROUP block); rows it read but did not write are claimed by another node.
        self._closing = True
        if self._confirm_task is not None:
            self._confirm_task.cancel()
            await asyncio.gather(self._confirm_task, return_exceptions=True)
        if self._consumer_task is not None:
            try:
                async with asyncio.timeout(self.flush_seconds + self.CLOSE_TIMEOUT):
                    await self._consumer_task
            except TimeoutError:
                self._consumer_task.cancel()
        # What this node appended and no consumer has written yet, it writes itself: a Redis that
        # restarts empty after this node stopped would otherwise take those rows with it.
        try:
            async with asyncio.timeout(self.CLOSE_TIMEOUT):
                while await self.confirm():
                    pass
        except Exception as exc:
            logger.error("could not check that %d usage rows were written (%s)", self._unconfirmed_rows, exc)
        await super().aclose()
        await self.reader.aclose()
        await self.appender.aclose()
