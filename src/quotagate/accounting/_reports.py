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
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa

from ..keys import Database
from .ledger import usage_table

GroupBy = Literal["key", "user", "team", "model", "deployment", "day", "route"]
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
    # The model that served the request; for one that none served (refused by a limit, failed
    # upstream, rejected before routing), the model it asked for.
    "model": (usage_table.c.model_served, usage_table.c.model_requested),
    "deployment": (usage_table.c.deployment,),
    "day": (usage_table.c.day,),
    "route": (_ROUTE,),
}
# Summed per group and in the totals; hit_rate is worked out from two of them.
FIELDS = (
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cost_usd",
    "cache_hits",
    "saved_usd",
)
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
) -> Report:
    """Sums per group over [since, until); costs and savings also in the display currency."""
    group = sa.func.coalesce(*_COLUMNS[by], _text(NO_GROUP))
    table = usage_table.c
    routes = by == "route"
    query = (
        sa.select(
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
        )
        .group_by(group)
        .order_by(group)
    )
    if routes:
        query = query.where(sa.or_(table.route_class.is_not(None), table.downgraded_from.is_not(None)))
    if since is not None:
        query = query.where(table.ts >= since.astimezone(UTC))
    if until is not None:
        query = query.where(table.ts < until.astimezone(UTC))
    result = await database.run(lambda conn: conn.execute(query).all())
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
