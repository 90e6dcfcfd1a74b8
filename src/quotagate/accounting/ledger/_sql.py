"""SqlWriter: batches of usage rows into ``qg_usage``, idempotent by request id, and the SQL of
both dialects (SQLite and PostgreSQL).

Contract: rows come as ``UsageRow`` (``write``) or as a JSON batch of arrays in today's order
(``write_json``: the stream's rows, already put in today's order by _rows.current_json); each
row is inserted by its request id with ON CONFLICT DO NOTHING, so a row written twice is there
once. A SQLite file is written on a connection of the writer's own, from the event loop,
without ever waiting on it; any other database through the engine (``Database.run``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any, cast

import orjson
import sqlalchemy as sa

from ...keys import Database
from .._quotas import DurableQuotas, QuotaChanges
from ._rows import FIELDS, batch_json, row_json, row_values
from ._schema import UsageRow, usage_table

logger = logging.getLogger("quotagate.ledger")

_BOOLEANS = tuple(i for i, column in enumerate(usage_table.columns) if isinstance(column.type, sa.Boolean))


def _insert_sql(dialect: str) -> str:
    """One statement inserting a whole batch given as one JSON document (an array of rows), for
    the engine's connections (PostgreSQL; SQLite in memory): the database unpacks the rows itself,
    in one round trip."""
    columns = ", ".join(FIELDS)
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
    values = ", ".join(f"json_extract(value, '$[{index}]')" for index in range(len(FIELDS)))
    # "WHERE true" tells SQLite's parser that ON CONFLICT belongs to the INSERT, not a join.
    return (
        f"INSERT INTO qg_usage ({columns}) SELECT {values} FROM json_each(?) "
        "WHERE true ON CONFLICT (request_id) DO NOTHING"
    )


@functools.lru_cache(maxsize=16)
def _values_sql(rows: int) -> str:
    """INSERT of ``rows`` rows given as parameters, in column order."""
    one = "(" + ", ".join("?" * len(FIELDS)) + ")"
    return (
        f"INSERT INTO qg_usage ({', '.join(FIELDS)}) VALUES {', '.join([one] * rows)} "
        "ON CONFLICT (request_id) DO NOTHING"
    )


def _statement_sizes(count: int, largest: int) -> Iterator[int]:
    """Rows per INSERT for a batch of ``count`` rows: powers of two, none above ``largest``.

    SQLite prepares a statement per distinct text and the driver keeps them. With a size per
    batch remainder, the ledger kept preparing statements of up to a hundred rows for remainders
    it had not met yet, a cost on every proxied request (bench/NOTES.md), and would keep a hundred
    of them. Powers of two are prepared once each, eight in all."""
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
    each, a cost on every NULL, two a row (bench/NOTES.md). With one registered, it is a
    dictionary lookup and a call. The adapter is the bound method of an empty dict, which answers
    None for any value: C, with no state. NULL is bound either way, for every user of sqlite3 in
    the process; registered when a SQLite ledger opens, not when quotagate is imported."""
    sqlite3.register_adapter(type(None), cast(Callable[[None], None], {}.get))


def _parameters(rows: list[list[Any]]) -> list[Any]:
    """The rows' values (in today's order, see _rows.current_json), flat, each row cut or padded
    (NULL) to today's columns: arrays of versions before client_request_id stop short of it.

    Booleans become 0 and 1 here. The sqlite3 driver binds int, float, str and None directly but
    sends a bool through its adapter protocol, which looks for adapters by raising and catching
    AttributeErrors: the two flags of a row cost more instructions than all its other values
    together (bench/NOTES.md)."""
    width = len(FIELDS)
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
    unpacking them in SQL with json_extract cost many times the CPU per row. The loop, not a
    thread: a writer thread took and gave back the GIL while the loop was busy, a voluntary
    context switch per proxied request, and the ledger cost the gateway several times the CPU per
    request that it costs from the loop (both measured in bench/NOTES.md). Nothing on the loop
    waits for SQLite, though: the connection's busy timeout is zero, and a batch that finds the
    file locked (by the CLI writing keys, or another worker's ledger) tries again after a pause in
    which the loop goes on, and after LOCK_WAIT_SECONDS is kept for the next flush. The WAL
    checkpoints, which sync the file to disk, are taken off it: automatic checkpoints are off on
    this connection, and a thread with a connection of its own checkpoints every CHECKPOINT_ROWS
    rows.

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
        """Rows as the gateway made them. A SQLite file takes their values as they are (row_values);
        they go through JSON only on their way through a Redis stream or to PostgreSQL (row_json)."""
        changes = self.quotas.take() if self.quotas is not None else None
        if not rows and changes is None:
            return
        try:
            if self._sqlite_path is None:
                await self._write_sql(batch_json([row_json(row) for row in rows]) if rows else None, changes)
                return
            await self._write_sqlite([row_values(row) for row in rows], changes)
        except BaseException:
            if changes is not None and self.quotas is not None:
                self.quotas.unwritten(changes)  # stored with the next write
            raise

    async def write_json(self, batch: bytes) -> None:
        """Rows as a JSON array of arrays in today's order (row_json, or _rows.current_json)."""
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
        self._rows_per_statement = max(1, min(self.ROWS_PER_STATEMENT, limit // len(FIELDS)))
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
