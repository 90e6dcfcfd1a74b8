"""The SQL database, used from asyncio through SQLAlchemy Core.

PostgreSQL goes through asyncpg and SQLAlchemy's asyncio engine. SQLite goes through the standard
library's driver on one thread of its own, which is what aiosqlite did: SQLite has no network to
wait on, and its connections are not to be shared between threads. Keeping SQLAlchemy's asyncio
extension out of the SQLite path spares every start of the embedded default the ORM it imports
(about a tenth of the gateway's start-up instructions).

Work is written once, as a function of a synchronous ``sqlalchemy.Connection``, and runs in a
transaction on either: on the SQLite thread, or under the asyncio engine's ``run_sync``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

T = TypeVar("T")


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
        if full_url.startswith("sqlite"):
            # One thread uses the connection (the executor below), but not the one that made it.
            self.engine = sa.create_engine(full_url, connect_args={"check_same_thread": False})
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            from sqlalchemy.ext.asyncio import create_async_engine

            self._async_engine = create_async_engine(full_url, pool_pre_ping=True)
            self.engine = self._async_engine.sync_engine

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def sqlite_file(self) -> str | None:
        """The SQLite database's path; None for PostgreSQL and an in-memory SQLite."""
        database = self.engine.url.database
        return database if self.dialect == "sqlite" and database not in (None, "", ":memory:") else None

    async def run(self, work: Callable[[sa.Connection], T]) -> T:
        """``work(connection)`` in a transaction, committed if it returns, rolled back if it raises."""
        if self._async_engine is not None:
            async with self._async_engine.begin() as conn:
                return await conn.run_sync(work)
        if self._thread is None:
            self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="quotagate-sqlite")
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._run_here, work)

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
