"""Calendar quotas and budgets that outlive the process on a single node (no Redis).

With Redis, a quota's state lives in Redis and survives any restart of the gateway. Without it,
the in-process store holds it, and keeps a copy in the gateway's database: table
``qg_quota_state``, a row per calendar quota (tpd, rpd, the monthly quotas, the USD budgets, the
``limits[]`` per day or month) with its window's start and what has been used in it.

The store notes which quotas each decision changes; the ledger's writer upserts their rows in
the transaction that writes a group of usage rows (before those requests' responses complete),
every ``ledger.flush_seconds`` when no rows come, and once more at shutdown. A quota is thus
exactly as durable as the ledger rows of the requests that used it: a graceful stop or a
SIGKILL loses nothing a completed response accounted for (a loss of power, the last commits). At
start the rows of windows not yet over go back to the store, which takes each at its quota's
first use if the quota still counts the same thing (unit, calendar, time zone) in the same
window; rows of windows long over are deleted.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import NamedTuple

import sqlalchemy as sa

from ..keys import Database
from ..keys._store import metadata
from ..limits import InProcessStore, Limit
from ..limits._memory import QuotaState

quota_state_table = sa.Table(
    "qg_quota_state",
    metadata,
    sa.Column("limit_key", sa.Text, primary_key=True),
    sa.Column("kind", sa.String(200), nullable=False),  # unit/calendar/time zone (limits.quota_kind)
    sa.Column("window_start_ms", sa.Float, nullable=False),  # epoch milliseconds
    sa.Column("used", sa.Float, nullable=False),  # requests, tokens, or micro-dollars
    sa.Column("expires_ms", sa.Float, nullable=False),  # after this the row is moot
)

_COLUMNS = ("limit_key", "kind", "window_start_ms", "used", "expires_ms")


def _upsert_sql(marker: Callable[[str], str]) -> str:
    # ON CONFLICT ... DO UPDATE: the same text in SQLite (3.24+) and PostgreSQL.
    values = ", ".join(marker(column) for column in _COLUMNS)
    updates = ", ".join(f"{column} = excluded.{column}" for column in _COLUMNS[1:])
    return (
        f"INSERT INTO qg_quota_state ({', '.join(_COLUMNS)}) VALUES ({values}) "
        f"ON CONFLICT (limit_key) DO UPDATE SET {updates}"
    )


_UPSERT_QMARK = _upsert_sql(lambda _: "?")  # the ledger's own sqlite3 connection
_DELETE_QMARK = "DELETE FROM qg_quota_state WHERE limit_key = ?"
_UPSERT = sa.text(_upsert_sql(lambda column: f":{column}"))  # through SQLAlchemy (PostgreSQL)
_DELETE = sa.text("DELETE FROM qg_quota_state WHERE limit_key = :limit_key")


class QuotaChanges(NamedTuple):
    """What one write stores: the quotas' states, and the keys whose state is gone."""

    taken: dict[str, Limit]  # given back to the store when the write fails
    kept: list[QuotaState]
    gone: list[str]


class DurableQuotas:
    """The link between an in-process store made with ``durable_quotas=True`` and the database."""

    def __init__(self, store: InProcessStore, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self._clock = clock

    async def load(self, database: Database) -> int:
        """Hand the store the states kept by earlier processes; the number handed over."""
        now_ms = self._clock() * 1000.0

        def read(conn: sa.Connection) -> list[QuotaState]:
            table = quota_state_table
            conn.execute(table.delete().where(table.c.expires_ms <= now_ms))
            rows = conn.execute(sa.select(*(table.c[column] for column in _COLUMNS)))
            return [QuotaState(*row) for row in rows]

        states = await database.run(read)
        self.store.restore_quotas(states)
        return len(states)

    def take(self) -> QuotaChanges | None:
        """The changes since the last take, or None when there are none."""
        taken, kept, gone = self.store.quota_changes()
        return QuotaChanges(taken, kept, gone) if taken else None

    def unwritten(self, changes: QuotaChanges) -> None:
        """The write failed: the next take reports these quotas again."""
        self.store.quota_changes_unwritten(changes.taken)

    def write_sqlite(self, connection: sqlite3.Connection, changes: QuotaChanges) -> None:
        """Store ``changes`` in the transaction open on ``connection``."""
        if changes.kept:
            connection.executemany(_UPSERT_QMARK, changes.kept)
        if changes.gone:
            connection.executemany(_DELETE_QMARK, [(key,) for key in changes.gone])

    def write(self, conn: sa.Connection, changes: QuotaChanges) -> None:
        """Store ``changes`` in the transaction of ``conn``."""
        if changes.kept:
            conn.execute(_UPSERT, [dict(zip(_COLUMNS, state, strict=True)) for state in changes.kept])
        if changes.gone:
            conn.execute(_DELETE, [{"limit_key": key} for key in changes.gone])
