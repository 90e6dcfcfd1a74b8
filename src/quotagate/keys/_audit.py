"""The audit log: one row per change made through the admin API, the console or the CLI.

Who (the master key, an admin key's id, or the command line), what (``key.create``,
``key.update``, ``key.rotate``, ``config.reload``, ...), to what (a key's id), and the change's
details. Secrets never go in: a key made or rotated is logged by its id and hint only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from ._store import _aware, metadata

audit_log = sa.Table(
    "qg_audit_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
    # "master", an admin key's id, or "cli"
    sa.Column("actor", sa.String(64), nullable=False),
    sa.Column("actor_name", sa.String(200)),
    sa.Column("action", sa.String(40), nullable=False),
    sa.Column("target", sa.String(200)),
    sa.Column("details", sa.JSON),
)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    ts: datetime
    actor: str
    actor_name: str | None
    action: str
    target: str | None
    details: dict[str, Any] | None

    def to_public_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ts": self.ts.isoformat(),
            "actor": self.actor,
            "actor_name": self.actor_name,
            "action": self.action,
            "target": self.target,
            "details": self.details,
        }


class AuditLog:
    def __init__(self, database: Any) -> None:
        self.database = database

    async def record(
        self,
        actor: str,
        action: str,
        target: str | None = None,
        details: dict[str, Any] | None = None,
        actor_name: str | None = None,
    ) -> None:
        values = {
            "ts": datetime.now(UTC),
            "actor": actor,
            "actor_name": actor_name,
            "action": action,
            "target": target[:200] if target is not None else None,  # the column's width
            "details": details or None,
        }
        await self.database.run(lambda conn: conn.execute(audit_log.insert().values(**values)))

    async def page(self, limit: int = 50, before: int | None = None) -> tuple[list[AuditEntry], bool]:
        """Newest first, ``limit`` entries older than entry ``before``; and whether more remain."""
        query = audit_log.select().order_by(audit_log.c.id.desc()).limit(limit + 1)
        if before is not None:
            query = query.where(audit_log.c.id < before)
        rows = await self.database.run(lambda conn: conn.execute(query).all())
        entries = [
            AuditEntry(row.id, _aware(row.ts) or row.ts, row.actor, row.actor_name, row.action, row.target, row.details)
            for row in rows[:limit]
        ]
        return entries, len(rows) > limit
