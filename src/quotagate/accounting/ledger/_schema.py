"""The usage table, ``qg_usage``, and ``UsageRow``, one request's row as the gateway makes it.

Contract: ``UsageRow``'s fields are the table's columns, by name and in order (the row is what
the SQLite writer binds). A column added goes last in both, with a default for rows that lack
it: the row encoding's field list follows the table by itself, and readers fill the default in
for the rows of versions before it (see _rows). A NOT NULL one has the same default in the
database too, for the nodes of versions before it, which write rows without it. The indexes
that earlier versions created and no query uses are named in ``usage_table.info["retired_indexes"]``,
which KeyStore.create_schema drops.

``qg_usage_rollup`` holds the same rows summed per UTC day and group, for the console's charts and
the usage reports, which would otherwise sum up to a month of rows per answer. The database keeps
it, with triggers on qg_usage: see _rollup.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import sqlalchemy as sa

from ...keys._store import metadata

usage_table = sa.Table(
    "qg_usage",
    metadata,
    sa.Column("request_id", sa.String(128), primary_key=True),
    # Every index is one more B-tree written per row, a cost of the SQLite writer's for each row
    # (bench/NOTES.md). The reports filter on ts and group by a column, which scans the range
    # either way; the day, user and key indexes of earlier versions served no query (see
    # retired_indexes below). Whoever looks rows up by key often can add one under a name of
    # their own (start-up drops the retired names): CREATE INDEX my_usage_by_key ON qg_usage (key_id).
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
    # After the columns of version 1 (_rows.FIELDS_V1): the arrays of versions before it stop
    # short of it (read as NULL, see _rows).
    sa.Column("client_request_id", sa.String(128)),
    # What a cache hit saved: the cost its answer had when the provider gave it (0 for any other
    # request). The database's own default too: a node of the version before it, writing rows
    # from the shared stream, names no such column, and NULL would break NOT NULL. A database
    # upgraded in place gets it without NOT NULL (keys._store._upgrade adds the bare column), its
    # older rows NULL: the reports' SUM skips them.
    sa.Column("cache_saved_usd", sa.Float, nullable=False, default=0.0, server_default=sa.text("0")),
    # Model tiering (NULL on every other row): the class a routed model gave the request, the
    # model whose limits refused it when a cheaper one served it instead (a downgrade), and what it
    # would have cost at the price of the model it would have had without either (the routed
    # model's strongest class's, or the refused one's): the reports' savings are that less cost_usd.
    sa.Column("route_class", sa.String(100)),
    sa.Column("downgraded_from", sa.String(200)),
    sa.Column("baseline_usd", sa.Float),
    # The team of the request's key (NULL: a key of no team, and every row of the versions before
    # teams). No index, as user_id has none: the team report filters on ts and scans that range.
    sa.Column("team", sa.String(100)),
    # Only rows that have one: most clients send no id, and a NULL costs an index entry too.
    sa.Index(
        "ix_qg_usage_client_request_id",
        "client_request_id",
        sqlite_where=sa.text("client_request_id IS NOT NULL"),
        postgresql_where=sa.text("client_request_id IS NOT NULL"),
    ),
    # The errors' rows alone, newest first: the console's request log filtered on an error status
    # reads these, not the month of rows that a rare code (418) would otherwise have it read. A
    # few percent of the rows, and only theirs are written to it.
    sa.Index(
        "ix_qg_usage_errors",
        "ts",
        sqlite_where=sa.text("status >= 400"),
        postgresql_where=sa.text("status >= 400"),
    ),
)
# Indexes of earlier versions that no query uses: KeyStore.create_schema drops them.
usage_table.info["retired_indexes"] = ("ix_qg_usage_day", "ix_qg_usage_user_id", "ix_qg_usage_key_id")

# What the rollup groups by besides the day: the columns a report or a chart groups by, and the
# filters of the console's request log (which finds its rows through the rollup's hours, see
# accounting._ledger_views). '' stands for NULL: a key of the primary key cannot be NULL, and an
# upsert could not find a row by one (NULL equals nothing). No name of these is ever ''.
ROLLUP_GROUPS = ("team", "user_id", "key_id", "tier", "model_served", "model_requested", "deployment")
# Summed per group; hours and error_hours are bit sets instead (bit h: the group has a row, or an
# error, in hour h of the day, UTC), a superset after rows are deleted (bits are never cleared).
ROLLUP_SUMS = (
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cost_usd",
    "cache_hits",
    "saved_usd",
)


def _rollup_columns() -> list[sa.Column[Any]]:
    groups = [sa.Column(name, usage_table.c[name].type, primary_key=True) for name in ROLLUP_GROUPS]
    sums = [
        sa.Column(name, sa.Float if name.endswith("_usd") else sa.BigInteger, nullable=False) for name in ROLLUP_SUMS
    ]
    masks = [sa.Column(name, sa.Integer, nullable=False) for name in ("hours", "error_hours")]
    return [sa.Column("utc_day", sa.Date, primary_key=True), *groups, *sums, *masks]


# No index besides the primary key: a day's rows are one range of it, which every query reads.
# WITHOUT ROWID on SQLite: the table is its primary key's B-tree, one write per upsert, not two.
# Not in the key store's ``metadata``: create_all would make it again, empty, where it was dropped,
# and with its triggers still there it would pass for filled. Only set_up_rollup makes it, in the
# transaction that fills it.
usage_rollup_table = sa.Table("qg_usage_rollup", sa.MetaData(), *_rollup_columns(), sqlite_with_rowid=False)


@sa.event.listens_for(metadata, "after_create")
def _upgrade_usage(target: sa.MetaData, connection: sa.Connection, **kw: Any) -> None:
    """At every create_schema (create_all, then keys._store._upgrade): the indexes of qg_usage
    that a table made by an earlier version lacks (create_all makes a table's indexes only with
    the table; an index of a column not added yet is _upgrade's), and the rollup's triggers, with
    the rollup filled from the rows of a database made before it, if they are not there yet."""
    from ._rollup import serialize_setup, set_up_rollup  # a module of its own, which imports this one

    # One node's start at a time from here to the end of its transaction (PostgreSQL): two starting
    # together would both make the indexes and the rollup, and the second fail on the first's.
    serialize_setup(connection)
    inspector = sa.inspect(connection)
    if not inspector.has_table(usage_table.name):
        return
    present = {column["name"] for column in inspector.get_columns(usage_table.name)}
    for index in usage_table.indexes:
        if all(column.name in present for column in index.columns):
            index.create(connection, checkfirst=True)
    set_up_rollup(connection)


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
    cache_saved_usd: float = 0.0  # the provider's cost of the answer a cache hit gave again
    route_class: str | None = None
    downgraded_from: str | None = None
    baseline_usd: float | None = None
    team: str | None = None
