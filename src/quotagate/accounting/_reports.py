"""Usage reports: totals grouped by key, user, team, model, deployment, day or route.

Each group also shows the response cache's share: ``cache_hits`` (requests the cache answered),
``hit_rate`` (of all the group's requests) and ``saved_usd`` (what those answers had cost when
the provider gave them), like the cost also in the display currency.

Every group has a name. Requests the ledger holds without one (a request refused before any
deployment served it has no deployment, one that never named a valid model has no model; a key
of no team has no team, nor has any row written before teams) are grouped under ``NO_GROUP`` in
every form a report takes (the CLI's table, CSV and JSON, and GET /admin/usage), never under a
blank, a ``None`` or a ``null``.

The route report covers only the requests model tiering moved: a routed model's, grouped by the
name asked for and the class (``auto/simple``), and the downgraded ones, under the model asked
for (``gpt-4o/downgrade``; a routed request that was also downgraded stays under its class). Its
groups also show ``baseline_usd``, what the requests would have cost at the routed model's
strongest class's model (or at the model a downgrade moved them from), and ``routing_saved_usd``,
that less what they cost.

The groups of one column (key, user, team, model, deployment) are summed from the rollup
(ledger/_rollup: the rows summed per UTC day and group) for the whole days of the range, and
from the rows for the parts of a day at either end: a month's report reads a row per day and
group, and at most two days of rows, not a month of them (a tenth of the time with a million
rows, bench/NOTES.md). The same sums, but for the order in which costs are added (the last bits
of a float). The day report (days of the configured time zone) and the route report (columns
the rollup does not keep) sum the rows, as does every report while the rollup is not ready.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa

from ..keys import Database
from .ledger import usage_table
from .ledger._rollup import rollup_ready
from .ledger._schema import ROLLUP_SUMS, usage_rollup_table

GroupBy = Literal["key", "user", "team", "tier", "model", "deployment", "day", "route"]
NO_GROUP = "(none)"


def _text(value: str) -> sa.ColumnElement[str]:
    # SQL text, not a bound parameter: PostgreSQL does not see two parameters (the SELECT's and
    # the GROUP BY's) as the same expression.
    return sa.literal_column(f"'{value}'", sa.String)


# "auto/simple", or "gpt-4o/downgrade": ``+`` on strings is SQL's ||, which SQLite and PostgreSQL
# both have (SQLite's concat() is recent).
_ROUTE = (
    sa.func.coalesce(usage_table.c.model_requested, _text(NO_GROUP), type_=sa.String)
    + _text("/")
    + sa.func.coalesce(usage_table.c.route_class, _text("downgrade"), type_=sa.String)
)
_COLUMNS: dict[str, tuple[sa.ColumnElement[Any], ...]] = {
    "key": (usage_table.c.key_id,),
    "user": (usage_table.c.user_id,),
    "team": (usage_table.c.team,),
    "tier": (usage_table.c.tier,),
    # The model that served the request; for one that none served (refused by a limit, failed
    # upstream, rejected before routing), the model it asked for.
    "model": (usage_table.c.model_served, usage_table.c.model_requested),
    "deployment": (usage_table.c.deployment,),
    "day": (usage_table.c.day,),
    "route": (_ROUTE,),
}
# The rollup's columns of the groups summed from it: all but day and route (see the docstring).
_ROLLUP_COLUMNS: dict[str, tuple[str, ...]] = {
    "key": ("key_id",),
    "user": ("user_id",),
    "team": ("team",),
    "tier": ("tier",),
    "model": ("model_served", "model_requested"),
    "deployment": ("deployment",),
}
# Summed per group and in the totals; hit_rate is worked out from two of them. The rollup keeps
# exactly these sums, by the same names, so that a report reads them from either.
FIELDS = ROLLUP_SUMS
# The route report's fields besides those; routing_saved_usd is worked out from baseline_usd and cost_usd.
ROUTE_FIELDS = ("baseline_usd", "routing_saved_usd")
_AMOUNTS = ("cost_usd", "saved_usd", *ROUTE_FIELDS)


@dataclass(frozen=True)
class Report:
    by: str
    rows: list[dict[str, Any]]
    totals: dict[str, Any]
    currency: str
    rate: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "object": "usage_report",
            "by": self.by,
            "currency": self.currency,
            "rate": self.rate,
            "data": self.rows,
            "totals": self.totals,
        }


async def usage_report(
    database: Database,
    by: GroupBy,
    since: datetime | None = None,
    until: datetime | None = None,
    currency: str = "USD",
    rate: float = 1.0,
    team: str | None = None,
) -> Report:
    """Sums per group over [since, until), of the rows of ``team`` only if given; costs and
    savings also in the display currency."""
    start = since.astimezone(UTC) if since is not None else None
    end = until.astimezone(UTC) if until is not None else None

    def read(conn: sa.Connection) -> Sequence[sa.Row[Any]]:
        query = None
        if by in _ROLLUP_COLUMNS and rollup_ready(conn):
            query = _from_rollup(by, start, end, team)
        return conn.execute(query if query is not None else _from_rows(by, start, end, team)).all()

    result = await database.run(read)
    routes = by == "route"
    fields = (*FIELDS, *ROUTE_FIELDS) if routes else FIELDS
    rows = []
    for record in result:
        sums = {f: (record._mapping[f] or 0) for f in FIELDS}
        sums["cost_usd"], sums["saved_usd"] = float(sums["cost_usd"]), float(sums["saved_usd"])
        if routes:
            sums["baseline_usd"] = float(record.baseline_usd or 0)
            sums["routing_saved_usd"] = sums["baseline_usd"] - sums["cost_usd"]
        rows.append({by: record.group, **_shown(sums, currency, rate)})
    totals = _shown({f: sum(r[f] for r in rows) for f in fields}, currency, rate)
    return Report(by, rows, totals, currency, rate)


def _sums(group: sa.ColumnElement[Any], routes: bool = False) -> list[sa.ColumnElement[Any]]:
    """The report's columns summed over rows, the group first."""
    table = usage_table.c
    return [
        group.label("group"),
        sa.func.count().label("requests"),
        sa.func.sum(sa.case((table.status >= 400, 1), else_=0)).label("errors"),
        sa.func.sum(table.prompt_tokens).label("prompt_tokens"),
        sa.func.sum(table.completion_tokens).label("completion_tokens"),
        sa.func.sum(table.cached_tokens).label("cached_tokens"),
        sa.func.sum(table.cost_usd).label("cost_usd"),
        sa.func.sum(sa.case((table.cache_hit, 1), else_=0)).label("cache_hits"),
        # NULL in the rows of a database upgraded in place (see ledger._schema): SUM skips them.
        sa.func.sum(table.cache_saved_usd).label("saved_usd"),
        *([sa.func.sum(table.baseline_usd).label("baseline_usd")] if routes else []),
    ]


def _from_rows(by: str, start: datetime | None, end: datetime | None, team: str | None) -> sa.Select[Any]:
    group = sa.func.coalesce(*_COLUMNS[by], _text(NO_GROUP))
    table = usage_table.c
    query = sa.select(*_sums(group, by == "route")).group_by(group).order_by(group)
    if by == "route":
        query = query.where(sa.or_(table.route_class.is_not(None), table.downgraded_from.is_not(None)))
    if start is not None:
        query = query.where(table.ts >= start)
    if end is not None:
        query = query.where(table.ts < end)
    if team is not None:
        query = query.where(table.team == team)
    return query


def _from_rollup(by: str, start: datetime | None, end: datetime | None, team: str | None) -> sa.Select[Any] | None:
    """The rollup's whole UTC days within [start, end), and the rows of the parts of a day left at
    either end, summed together; None for a range within one day (the rows alone, then)."""
    first = _midnight(start, up=True) if start is not None else None
    last = _midnight(end, up=False) if end is not None else None
    if first is not None and last is not None and first >= last:
        return None
    rollup = usage_rollup_table.c
    # '' is the rollup's NULL (see ledger._schema).
    named = sa.func.coalesce(
        *(sa.func.nullif(rollup[name], _text("")) for name in _ROLLUP_COLUMNS[by]), _text(NO_GROUP), type_=sa.String
    )
    days = sa.select(named.label("group"), *(sa.func.sum(rollup[name]).label(name) for name in FIELDS))
    if first is not None:
        days = days.where(rollup.utc_day >= first.date())
    if last is not None:
        days = days.where(rollup.utc_day < last.date())
    if team is not None:
        days = days.where(rollup.team == team)
    parts = [days.group_by(named)]
    table = usage_table.c
    edges = []
    if start is not None and first is not None and start < first:
        edges.append(sa.and_(table.ts >= start, table.ts < first))
    if end is not None and last is not None and last < end:
        edges.append(sa.and_(table.ts >= last, table.ts < end))
    if edges:
        group = sa.func.coalesce(*_COLUMNS[by], _text(NO_GROUP))
        rows = sa.select(*_sums(group)).where(sa.or_(*edges))
        if team is not None:
            rows = rows.where(table.team == team)
        parts.append(rows.group_by(group))
    both = sa.union_all(*parts).subquery()
    # Counts summed as BIGINT: PostgreSQL sums them as NUMERIC, which would come back as Decimal.
    sums = [
        sa.func.sum(both.c[name]).label(name)
        if name.endswith("_usd")
        else sa.cast(sa.func.sum(both.c[name]), sa.BigInteger).label(name)
        for name in FIELDS
    ]
    return sa.select(both.c.group, *sums).group_by(both.c.group).order_by(both.c.group)


def _midnight(moment: datetime, up: bool) -> datetime:
    """The UTC midnight at or before ``moment``, or (``up``) at or after it."""
    midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight + timedelta(days=1) if up and midnight < moment else midnight


def _shown(sums: dict[str, Any], currency: str, rate: float) -> dict[str, Any]:
    """A group's sums as the report shows them: the amounts (cost, savings, baseline) rounded, and
    also in the display currency; the cache's hit rate after the hits."""
    shown: dict[str, Any] = {}
    for field, value in sums.items():
        if field in _AMOUNTS:
            shown[field] = round(value, 10)
            if currency != "USD":
                shown[f"{field.removesuffix('_usd')}_{currency.lower()}"] = round(shown[field] * rate, 10)
        else:
            shown[field] = value
        if field == "cache_hits":
            shown["hit_rate"] = round(value / sums["requests"], 4) if sums["requests"] else 0.0
    return shown
