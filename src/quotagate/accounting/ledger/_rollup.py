"""The rollup: ``qg_usage_rollup``, qg_usage summed per UTC day and group, kept by the database.

Contract: while the rollup's triggers are on qg_usage (``rollup_ready``), the rollup holds exactly
the sums of the rows qg_usage holds: triggers on qg_usage add each row inserted, take away each
row deleted, and move each row updated, in the transaction that changes it. A database without
them (made before the rollup, or whose qg_usage was made again) gets them at the next
create_schema, in one transaction with the rollup filled from the rows there (``set_up_rollup``);
until then readers sum the rows themselves.

Triggers rather than the ledger's writer, because the rows reach qg_usage by more ways than the
writer: a node of the version before the rollup writing the shared stream's rows into the same
PostgreSQL during a rolling upgrade, a row inserted twice (ON CONFLICT DO NOTHING: no trigger
fires for it, so it is counted once), rows deleted to keep the table small. The writer would
have to tell which rows of a batch were new; the database knows.

SQLite runs a row trigger per row inserted (an upsert of one rollup row; it has no statement
triggers). PostgreSQL runs one statement trigger per INSERT, which sums the statement's new rows
(its transition table) per group and upserts the groups in their key order: two writers that
upsert the same groups take their locks in the same order and do not deadlock. What that costs
the writer per row is in bench/NOTES.md.

The triggers write to the rollup: a rollup dropped by hand with its triggers left fails every
insert into qg_usage until the next start, which makes it again from the rows (it is never made
but with its fill: see _schema). Drop the triggers (qg_usage_rollup_v*) too, and the rows are
written meanwhile.
"""

from __future__ import annotations

import sqlalchemy as sa

from ._schema import ROLLUP_GROUPS, ROLLUP_SUMS, usage_rollup_table, usage_table

# In the triggers' names: a rollup whose triggers are of another version is made again.
VERSION = 1
_PREFIX = "qg_usage_rollup_v"
_FUNCTION = f"{_PREFIX}{VERSION}"
_SQLITE_TRIGGERS = tuple(f"{_FUNCTION}_{event}" for event in ("insert", "delete", "update"))
_POSTGRESQL_TRIGGERS = tuple(f"{_FUNCTION}_{event}" for event in ("insert", "delete", "update", "truncate"))

# The PostgreSQL advisory lock that a start's schema setup holds until its transaction ends (any
# constant: this one is "qgrollup" in ASCII). Writers do not take it: it orders starts only.
SETUP_LOCK = 0x7167726F6C6C7570

_ROLLUP = usage_rollup_table.name
_USAGE = usage_table.name
_KEY = ("utc_day", *ROLLUP_GROUPS)
_COLUMNS = (*_KEY, *ROLLUP_SUMS, "hours", "error_hours")


def _day_and_hour(dialect: str, ts: str) -> tuple[str, str]:
    """SQL for a row's UTC day and hour (0-23). SQLite holds ts as UTC text, "2026-09-21
    10:00:00.250000"; PostgreSQL's timestamptz is read in UTC whatever the session's time zone."""
    if dialect == "sqlite":
        return f"substr({ts}, 1, 10)", f"CAST(substr({ts}, 12, 2) AS INTEGER)"
    utc = f"({ts} AT TIME ZONE 'UTC')"
    return f"{utc}::date", f"extract(hour FROM {utc})::integer"


def _summed(dialect: str, source: str, present: set[str] | None = None) -> str:
    """SELECT of ``source``'s rows summed per day and group, in _COLUMNS order, ordered by the
    key. ``present``: the columns qg_usage has (a database of an earlier version lacks some, whose
    rows are summed as NULL there); None: all of them."""

    def column(name: str) -> str:
        return name if present is None or name in present else "NULL"

    day, hour = _day_and_hour(dialect, "ts")
    # A sum of distinct powers of two is their bitwise OR, which SQLite has no aggregate for.
    values = [
        day,
        *(f"coalesce({column(name)}, '')" for name in ROLLUP_GROUPS),
        "count(*)",
        f"sum(CASE WHEN {column('status')} >= 400 THEN 1 ELSE 0 END)",
        f"coalesce(sum({column('prompt_tokens')}), 0)",
        f"coalesce(sum({column('completion_tokens')}), 0)",
        f"coalesce(sum({column('cached_tokens')}), 0)",
        f"coalesce(sum({column('cost_usd')}), 0)",
        f"sum(CASE WHEN {column('cache_hit')} THEN 1 ELSE 0 END)",
        f"coalesce(sum({column('cache_saved_usd')}), 0)",
        f"sum(DISTINCT 1 << {hour})",
        f"coalesce(sum(DISTINCT CASE WHEN {column('status')} >= 400 THEN 1 << {hour} END), 0)",
    ]
    positions = ", ".join(str(index) for index in range(1, len(_KEY) + 1))
    return f"SELECT {', '.join(values)} FROM {source} GROUP BY {positions} ORDER BY {positions}"


def _upsert_set(table: str) -> str:
    """The DO UPDATE of an upsert adding ``excluded`` to the row ``table`` names."""
    sums = [f"{name} = {table}{name} + excluded.{name}" for name in ROLLUP_SUMS]
    masks = [f"{name} = {table}{name} | excluded.{name}" for name in ("hours", "error_hours")]
    return ", ".join(sums + masks)


def _sqlite_values(row: str) -> list[str]:
    """One row's (NEW or OLD) values, in _COLUMNS order, as a row trigger adds it."""
    day, hour = _day_and_hour("sqlite", f"{row}.ts")
    return [
        day,
        *(f"coalesce({row}.{name}, '')" for name in ROLLUP_GROUPS),
        "1",
        f"({row}.status >= 400)",
        f"{row}.prompt_tokens",
        f"{row}.completion_tokens",
        f"{row}.cached_tokens",
        f"{row}.cost_usd",
        f"(CASE WHEN {row}.cache_hit THEN 1 ELSE 0 END)",
        f"coalesce({row}.cache_saved_usd, 0)",
        f"(1 << {hour})",
        f"(CASE WHEN {row}.status >= 400 THEN 1 << {hour} ELSE 0 END)",
    ]


def _sqlite_add(row: str) -> str:
    values = ", ".join(_sqlite_values(row))
    return (
        f"INSERT INTO {_ROLLUP} ({', '.join(_COLUMNS)}) VALUES ({values}) "
        f"ON CONFLICT ({', '.join(_KEY)}) DO UPDATE SET {_upsert_set('')};"
    )


def _sqlite_take_away(row: str) -> str:
    """Statements taking OLD's values off its group, and the group away once it has no row."""
    values = _sqlite_values(row)
    match = " AND ".join(f"{name} = {value}" for name, value in zip(_KEY, values, strict=False))
    sums = ", ".join(
        f"{name} = {name} - {value}" for name, value in zip(_COLUMNS, values, strict=False) if name in ROLLUP_SUMS
    )
    return f"UPDATE {_ROLLUP} SET {sums} WHERE {match}; DELETE FROM {_ROLLUP} WHERE {match} AND requests <= 0;"


def _sqlite_ddl() -> list[str]:
    insert, delete, update = _SQLITE_TRIGGERS
    return [
        f"CREATE TRIGGER {insert} AFTER INSERT ON {_USAGE} BEGIN {_sqlite_add('NEW')} END",
        f"CREATE TRIGGER {delete} AFTER DELETE ON {_USAGE} BEGIN {_sqlite_take_away('OLD')} END",
        f"CREATE TRIGGER {update} AFTER UPDATE ON {_USAGE} BEGIN {_sqlite_take_away('OLD')} {_sqlite_add('NEW')} END",
    ]


def _postgresql_ddl() -> list[str]:
    insert, delete, update, truncate = _POSTGRESQL_TRIGGERS
    match = " AND ".join(f"r.{name} = o.{name}" for name in _KEY)
    taken = ", ".join(f"{name} = r.{name} - o.{name}" for name in ROLLUP_SUMS)
    # The transition tables' rows, summed with the columns named as the rollup's.
    old = f"SELECT * FROM ({_summed('postgresql', 'old_rows')}) AS s ({', '.join(_COLUMNS)})"
    function = f"""
CREATE OR REPLACE FUNCTION {_FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $rollup$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        DELETE FROM {_ROLLUP};
        RETURN NULL;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        UPDATE {_ROLLUP} AS r SET {taken} FROM ({old}) AS o WHERE {match};
        DELETE FROM {_ROLLUP} AS r USING ({old}) AS o WHERE {match} AND r.requests <= 0;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        INSERT INTO {_ROLLUP} AS r ({", ".join(_COLUMNS)}) {_summed("postgresql", "new_rows")}
        ON CONFLICT ({", ".join(_KEY)}) DO UPDATE SET {_upsert_set("r.")};
    END IF;
    RETURN NULL;
END
$rollup$"""
    run = f"FOR EACH STATEMENT EXECUTE FUNCTION {_FUNCTION}()"
    return [
        function,
        f"CREATE TRIGGER {insert} AFTER INSERT ON {_USAGE} REFERENCING NEW TABLE AS new_rows {run}",
        f"CREATE TRIGGER {delete} AFTER DELETE ON {_USAGE} REFERENCING OLD TABLE AS old_rows {run}",
        f"CREATE TRIGGER {update} AFTER UPDATE ON {_USAGE} "
        f"REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows {run}",
        f"CREATE TRIGGER {truncate} AFTER TRUNCATE ON {_USAGE} {run}",
    ]


def _triggers(conn: sa.Connection) -> set[str]:
    """The names of the rollup's triggers (of any version) on qg_usage."""
    # "_" is LIKE's any character: escaped, or a trigger of the operator's named alike would go too.
    if conn.dialect.name == "sqlite":
        sql = "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ? AND name LIKE ? ESCAPE '\\'"
    else:
        sql = "SELECT tgname FROM pg_trigger WHERE tgrelid = to_regclass($1) AND tgname LIKE $2 ESCAPE '\\'"
    pattern = _PREFIX.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    return {name for (name,) in conn.exec_driver_sql(sql, (_USAGE, pattern))}


def rollup_ready(conn: sa.Connection) -> bool:
    """Whether the rollup holds the sums of qg_usage: it and its triggers of this version are there
    (the triggers were made in the transaction that filled it). One look at the catalog, made by
    every query that would read the rollup."""
    if conn.dialect.name == "sqlite":
        sql = (
            "SELECT count(*) FROM sqlite_master WHERE (type = 'trigger' AND tbl_name = ? AND name IN (?, ?, ?)) "
            "OR (type = 'table' AND name = ?)"
        )
        wanted = (_USAGE, *_SQLITE_TRIGGERS, _ROLLUP)
    elif conn.dialect.name == "postgresql":
        sql = (
            "SELECT count(*) + (to_regclass($6) IS NOT NULL)::integer FROM pg_trigger "
            "WHERE tgrelid = to_regclass($1) AND tgname IN ($2, $3, $4, $5)"
        )
        wanted = (_USAGE, *_POSTGRESQL_TRIGGERS, _ROLLUP)
    else:
        return False
    return bool(conn.exec_driver_sql(sql, wanted).scalar() == len(wanted) - 1)


def serialize_setup(conn: sa.Connection) -> None:
    """On PostgreSQL, waits for any other node's start setting the schema up, and holds them off
    until this transaction ends (SETUP_LOCK); what was checked before it is to be checked again."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({SETUP_LOCK})")


def set_up_rollup(conn: sa.Connection) -> None:
    """The rollup's triggers on qg_usage, with the rollup made again from qg_usage's rows, unless
    they are there already: one transaction (a gateway killed in the middle leaves neither), in
    which the database's other writers wait (PostgreSQL: SHARE ROW EXCLUSIVE, which inserts wait
    for; SQLite: the write lock), so that no row is written between the sums and the triggers.

    Filling it from a million rows takes seconds, once."""
    dialect = conn.dialect.name
    if dialect not in ("sqlite", "postgresql") or not sa.inspect(conn).has_table(_USAGE) or rollup_ready(conn):
        return
    if dialect == "postgresql":
        # Another start's setup first (and with it the rollup it made), then the writers.
        serialize_setup(conn)
        conn.exec_driver_sql(f"LOCK TABLE {_USAGE} IN SHARE ROW EXCLUSIVE MODE")
    else:
        raw = conn.connection.dbapi_connection
        # The sqlite3 driver opens its transaction at the first INSERT, not at a CREATE: DDL before
        # it would be committed as it goes. A transaction taken now holds the DDL too.
        if raw is not None and not getattr(raw, "in_transaction", True):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
    if rollup_ready(conn):
        return  # another node's start made it while this one waited for the lock
    for name in sorted(_triggers(conn)):
        conn.exec_driver_sql(f"DROP TRIGGER {name}" + (f" ON {_USAGE}" if dialect == "postgresql" else ""))
    usage_rollup_table.drop(conn, checkfirst=True)
    usage_rollup_table.create(conn)
    for statement in _sqlite_ddl() if dialect == "sqlite" else _postgresql_ddl():
        conn.exec_driver_sql(statement)
    present = {column["name"] for column in sa.inspect(conn).get_columns(_USAGE)}
    conn.exec_driver_sql(f"INSERT INTO {_ROLLUP} ({', '.join(_COLUMNS)}) {_summed(dialect, _USAGE, present)}")
