"""The SQL database, used from asyncio through SQLAlchemy Core.

PostgreSQL goes through asyncpg and SQLAlchemy's asyncio engine. SQLite goes through the standard
library's driver on one thread of its own, which is what aiosqlite did: SQLite has no network to
wait on, and its connections are not to be shared between threads. Keeping SQLAlchemy's asyncio
extension out of the SQLite path spares every start of the embedded default the ORM it imports,
a sizeable part of the gateway's start-up (bench/NOTES.md).

Work is written once, as a function of a synchronous ``sqlalchemy.Connection``, and runs in a
transaction on either: on the SQLite thread, or under the asyncio engine's ``run_sync``.

A PostgreSQL server across a network can stop answering without refusing anything (a partition,
a frozen host). asyncpg then waits 60 s for a connection and for ever for an answer on one it
has: every request whose key had to be looked up hung that long (issue 18). So connections have
``CONNECT_TIMEOUT``, callers that cannot wait bound their calls (the key lookup does), and what
the network does to the database's calls is one ``DatabaseUnavailableError`` that says where.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa

from ..errors import ServiceUnavailableError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

T = TypeVar("T")

# Seconds to open a connection to PostgreSQL: on a working network it takes milliseconds.
CONNECT_TIMEOUT = 5.0
# Seconds a call to the database may take unless its caller says otherwise: every statement the
# gateway sends is an indexed lookup, a small write or a batch of rows. One on a connection that a
# partition left open and silent waited until the operating system gave up on it (15 minutes).
STATEMENT_DEADLINE = 5.0


class DatabaseUnavailableError(ServiceUnavailableError, ConnectionError):
    """The database cannot be reached, or did not answer within the deadline; the message says
    which database (never its password) and why. A 503 to a client (an admin API call while the
    database is down was a 500), and an OSError to the command line, which reports those."""


def sqlalchemy_url(url: str) -> str:
    """The config's plain URL with the driver SQLAlchemy is to use."""
    if url.startswith("sqlite:///"):
        return url
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+asyncpg://" + url.removeprefix(scheme)
    raise ValueError(f"unsupported database URL: {url}")


class Database:
    def __init__(self, url: str) -> None:
        full_url = sqlalchemy_url(url)
        self._async_engine: AsyncEngine | None = None
        self._thread: concurrent.futures.ThreadPoolExecutor | None = None
        self._where = "SQLite"  # which database, for DatabaseUnavailableError
        if full_url.startswith("sqlite"):
            # One thread uses the connection (the executor below), but not the one that made it.
            self.engine = sa.create_engine(full_url, connect_args={"check_same_thread": False})
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            from sqlalchemy.ext.asyncio import create_async_engine

            self._async_engine = create_async_engine(
                full_url, pool_pre_ping=True, connect_args={"timeout": CONNECT_TIMEOUT}
            )
            self.engine = self._async_engine.sync_engine
            self._where = f"PostgreSQL at {self.engine.url.host or 'localhost'}:{self.engine.url.port or 5432}"

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def sqlite_file(self) -> str | None:
        """The SQLite database's path; None for PostgreSQL and an in-memory SQLite."""
        database = self.engine.url.database
        return database if self.dialect == "sqlite" and database not in (None, "", ":memory:") else None

    def unavailable(self, reason: str) -> DatabaseUnavailableError:
        """The error saying that this database cannot be reached, and ``reason``."""
        return DatabaseUnavailableError(f"{self._where}: {reason}")

    async def run(self, work: Callable[[sa.Connection], T], deadline: float | None = STATEMENT_DEADLINE) -> T:
        """``work(connection)`` in a transaction, committed if it returns, rolled back if it raises.

        Raises DatabaseUnavailableError when the database cannot be reached (refused, reset, lost,
        no connection within CONNECT_TIMEOUT, no free connection in the pool) or has not finished
        within ``deadline`` seconds (None: no deadline). Work given up on is abandoned with its
        connection (closing one that does not answer takes up to 2 s more); on SQLite its thread
        finishes it, and SQLite's own busy timeout bounds that.
        """
        try:
            async with asyncio.timeout(deadline) as waited:
                if self._async_engine is not None:
                    async with self._async_engine.begin() as conn:
                        return await conn.run_sync(work)
                if self._thread is None:
                    self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="quotagate-sqlite")
                return await asyncio.get_running_loop().run_in_executor(self._thread, self._run_here, work)
        except OSError as exc:  # TimeoutError included
            if waited.expired():
                raise self.unavailable(f"no answer within {deadline:g}s") from None
            if isinstance(exc, TimeoutError):
                raise self.unavailable(f"no connection within {CONNECT_TIMEOUT:g}s") from exc
            raise self.unavailable(exc.strerror or str(exc) or type(exc).__name__) from exc
        except sa.exc.TimeoutError as exc:
            raise self.unavailable("no free connection in the pool (every one waits on the database)") from exc
        except sa.exc.DBAPIError as exc:
            if not exc.connection_invalidated:
                raise  # the statement's error, not the network's
            raise self.unavailable(str(exc.orig or exc).strip() or "the connection was lost") from exc

    def _run_here(self, work: Callable[[sa.Connection], T]) -> T:
        with self.engine.begin() as conn:
            return work(conn)

    async def dispose(self) -> None:
        if self._async_engine is not None:
            await self._async_engine.dispose()
        elif self._thread is not None:
            thread, self._thread = self._thread, None
            await asyncio.get_running_loop().run_in_executor(thread, self.engine.dispose)
            thread.shutdown(wait=False)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the CLI write keys while the gateway reads them; busy_timeout makes the two wait
    # for each other instead of failing with "database is locked".
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()
