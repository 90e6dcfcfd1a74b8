"""Admin keys: who may use the admin API and the console besides the master key, and as what.

An admin key has a role: ``viewer`` reads everything and changes nothing, ``team_admin`` manages
the keys of one team (and sees only that team's keys, ledger and usage), ``admin`` does
everything the master key does. They live in their own table, apart from the gateway keys: an
admin key never authenticates a model request, and a gateway key never opens the admin API.

Like gateway keys, only a hash is stored; the key exists in clear once, in the answer that made it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, get_args

import sqlalchemy as sa

from ._secrets import hash_key, key_hint
from ._store import _aware, _check_text, metadata

Role = Literal["viewer", "team_admin", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)
ADMIN_KEY_PREFIX = "qga-"

admin_keys = sa.Table(
    "qg_admin_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("key_hint", sa.String(32), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("role", sa.String(20), nullable=False),
    # The one team a team_admin manages (NULL for the other roles).
    sa.Column("team", sa.String(100)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True, slots=True)
class AdminKeyRecord:
    id: str
    key_hint: str
    name: str
    role: Role
    team: str | None
    created_at: datetime

    def to_public_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "key_hint": self.key_hint,
            "name": self.name,
            "role": self.role,
            "team": self.team,
            "created_at": self.created_at.isoformat(),
        }


def _record(row: sa.Row[Any]) -> AdminKeyRecord:
    created = _aware(row.created_at)
    assert created is not None
    return AdminKeyRecord(row.id, row.key_hint, row.name, row.role, row.team, created)


def role_problem(role: str, team: str | None) -> str | None:
    """Why an admin key cannot have this role and team, or None."""
    if role not in ROLES:
        return f"role must be one of {', '.join(ROLES)}"
    if role == "team_admin" and not team:
        return "a team_admin key needs the team it manages"
    if role != "team_admin" and team is not None:
        return f"only a team_admin key has a team (this one is {role})"
    return None


class AdminKeyStore:
    """The admin keys table, on the gateway keys' database (KeyStore.create_schema makes it)."""

    def __init__(self, database: Any) -> None:
        self.database = database

    async def create(self, *, name: str, role: Role, team: str | None = None) -> tuple[AdminKeyRecord, str]:
        """Store a new admin key and return it in clear; the only time it exists in clear."""
        problem = role_problem(role, team)
        if problem is not None:
            raise ValueError(problem)
        _check_text("name", name)
        _check_text("team", team)
        key = ADMIN_KEY_PREFIX + secrets.token_urlsafe(32)
        key_id = "adm_" + secrets.token_hex(8)
        values = {
            "id": key_id,
            "key_hash": hash_key(key),
            "key_hint": key_hint(key),
            "name": name,
            "role": role,
            "team": team,
            "created_at": datetime.now(UTC),
        }
        await self.database.run(lambda conn: conn.execute(admin_keys.insert().values(**values)))
        record = await self.get(key_id)
        assert record is not None
        return record, key

    async def get(self, key_id: str) -> AdminKeyRecord | None:
        return await self._one(admin_keys.select().where(admin_keys.c.id == key_id))

    async def find(self, key: str) -> AdminKeyRecord | None:
        return await self._one(admin_keys.select().where(admin_keys.c.key_hash == hash_key(key)))

    async def _one(self, query: sa.Select[Any]) -> AdminKeyRecord | None:
        row = await self.database.run(lambda conn: conn.execute(query).first())
        return _record(row) if row else None

    async def list(self) -> list[AdminKeyRecord]:
        query = admin_keys.select().order_by(admin_keys.c.created_at, admin_keys.c.id)
        return [_record(row) for row in await self.database.run(lambda conn: conn.execute(query).all())]

    async def delete(self, key_id: str) -> AdminKeyRecord | None:
        record = await self.get(key_id)
        if record is not None:
            await self.database.run(lambda conn: conn.execute(admin_keys.delete().where(admin_keys.c.id == key_id)))
        return record
