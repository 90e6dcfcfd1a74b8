"""Gateway keys in SQL: SQLite for the embedded default, PostgreSQL when distributed.

SQLAlchemy Core (not the ORM): a handful of small statements, and rows become plain frozen
dataclasses that are cheap to cache on the request path.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from pydantic import ValidationError

from ..config import LimitValues
from ._database import STATEMENT_DEADLINE, Database
from ._secrets import hash_key, key_hint, new_key, new_key_id

logger = logging.getLogger("quotagate.keys")

# Seconds a key lookup may take: one indexed row, milliseconds on a database that answers. A
# frozen one held every request with an uncached key for 60 s or more (issue 18).
LOOKUP_TIMEOUT = 2.0

metadata = sa.MetaData()

api_keys = sa.Table(
    "qg_api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("key_hint", sa.String(32), nullable=False),
    sa.Column("name", sa.String(200)),
    sa.Column("user_id", sa.String(200), nullable=False, index=True),
    sa.Column("tier", sa.String(100), nullable=False),
    # NULL: every configured model; otherwise the allowed model names.
    sa.Column("models", sa.JSON),
    sa.Column("expires_at", sa.DateTime(timezone=True)),
    sa.Column("disabled", sa.Boolean, nullable=False, default=False),
    # Per-key overrides of the tier's limits, e.g. {"rpm": 100}; NULL: the tier's.
    sa.Column("limits", sa.JSON),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    # The team the key belongs to (NULL: none): a limit scope shared by its keys, and a group in
    # reports. Appended last, and added in place to databases made before it.
    sa.Column("team", sa.String(100), index=True),
)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    key_hint: str
    name: str | None
    user: str
    tier: str
    models: tuple[str, ...] | None
    limits: tuple[tuple[str, float], ...] | None
    expires_at: datetime | None
    disabled: bool
    created_at: datetime
    team: str | None = None

    def is_expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def to_public_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "key_hint": self.key_hint,
            "name": self.name,
            "user": self.user,
            "team": self.team,
            "tier": self.tier,
            "models": list(self.models) if self.models is not None else None,
            "limits": dict(self.limits) if self.limits is not None else None,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "disabled": self.disabled,
            "created_at": self.created_at.isoformat(),
        }


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands datetimes back without a zone; everything is stored in UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


# What a label may not hold, as one character class that both the check below and the OpenAPI
# description's pattern use. The control characters (Cc: U+0000-001F, U+007F-009F) and the line
# and paragraph separators (U+2028, U+2029); and, though Unicode files them as formatting (Cf),
# the characters that act like controls on a screen: bidi controls reorder what follows
# ("alice\u202ecod.exe" shows as "aliceexe.doc") and the zero-width ones make two names that look
# alike differ. ZWNJ and ZWJ (U+200C, U+200D) are let through: Persian, the Indic scripts and
# emoji sequences are spelt with them.
_FORBIDDEN_CHARACTERS = r"\u0000-\u001f\u007f-\u009f\u061c\u200b\u200e\u200f\u2028-\u202e\u2060\u2066-\u2069\ufeff"
# Lone surrogates (Cs) cannot be encoded either; JSON Schema's regular expressions cannot name them.
_FORBIDDEN = re.compile(rf"[{_FORBIDDEN_CHARACTERS}\ud800-\udfff]")
LABEL_PATTERN = f"^[^{_FORBIDDEN_CHARACTERS}]*$"


def control_character(value: str) -> str | None:
    """The first character of ``value`` that a one-line label may not hold (as U+XXXX), or None.

    A key's user, tier, name and model names are one-line labels: PostgreSQL cannot store NUL in
    text at all (SQLite can, so the two backends would disagree), a newline or an escape code in a
    name forges lines in logs and terminals, and the invisible ones spoof names in a console.
    """
    found = _FORBIDDEN.search(value)
    return None if found is None else f"U+{ord(found.group()):04X}"


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be a key's user, tier, name or model name, or None."""
    found = control_character(value)
    return None if found is None else f"must not contain control characters (found {found})"


def _check_text(field: str, value: object) -> None:
    # The edges (admin API, command line) refuse these with the field's name; this is the last
    # guard, so that no caller of the store can make PostgreSQL and SQLite disagree.
    values = value if isinstance(value, list | tuple) else [value]
    for item in values:
        problem = text_problem(item) if isinstance(item, str) else None
        if problem is not None:
            raise ValueError(f"{field} {problem}")


_warned: set[tuple[str, str]] = set()


def _stored_limits(key_id: str, stored: object) -> tuple[tuple[str, float], ...] | None:
    """The key's overrides that are still valid limits; the others are ignored, with a warning.

    Overrides written before the limits were bounded (``usd_per_day: 1e308`` overflowed, ``1e-300``
    made a budget of nothing), or by a later version with a limit this one does not know, must not
    fail every request of the key: the tier's limit applies in their place until they are fixed.
    """
    if not stored:
        return None
    items = stored.items() if isinstance(stored, dict) else [("limits", stored)]
    kept: dict[str, float] = {}
    for name, value in items:
        try:
            kept.update(LimitValues.model_validate({name: value}).model_dump(exclude_none=True))
        except ValidationError as exc:
            # Once per key and limit in a process: the key is read on every auth cache miss.
            if (key_id, str(name)) not in _warned and len(_warned) < 10_000:
                _warned.add((key_id, str(name)))
                logger.warning(
                    "key %s: ignoring its stored limit %s=%r (%s); the tier's applies until it is "
                    "set again with PATCH /admin/keys/%s or `quotagate keys update`",
                    key_id,
                    name,
                    value,
                    exc.errors()[0]["msg"].removeprefix("Value error, "),
                    key_id,
                )
    return tuple(sorted(kept.items())) or None


def _record(row: sa.Row[Any]) -> KeyRecord:
    created = _aware(row.created_at)
    assert created is not None
    return KeyRecord(
        id=row.id,
        key_hint=row.key_hint,
        name=row.name,
        user=row.user_id,
        tier=row.tier,
        models=tuple(row.models) if row.models is not None else None,
        limits=_stored_limits(row.id, row.limits),
        expires_at=_aware(row.expires_at),
        disabled=bool(row.disabled),
        created_at=created,
        team=row.team,
    )


def _upgrade(sync_conn: sa.Connection) -> None:
    """Columns added since a database was created, with their indexes (create_all creates missing
    tables, but does not alter the ones that exist), and indexes a table has retired (the names in
    its ``info["retired_indexes"]``) dropped."""
    inspector = sa.inspect(sync_conn)
    for table in metadata.sorted_tables:
        if not inspector.has_table(table.name):
            continue
        present = {column["name"] for column in inspector.get_columns(table.name)}
        added = [column for column in table.columns if column.name not in present]
        for column in added:
            kind = column.type.compile(dialect=sync_conn.dialect)
            sync_conn.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}"))
        for index in table.indexes:
            if any(column in added for column in index.columns):
                index.create(sync_conn, checkfirst=True)
        retired = set(table.info.get("retired_indexes", ())) & {ix["name"] for ix in inspector.get_indexes(table.name)}
        for name in sorted(retired):
            sync_conn.execute(sa.text(f"DROP INDEX {name}"))


def merge_limits(current: Mapping[str, float] | None, patch: Mapping[str, float | None]) -> dict[str, float] | None:
    """A key's limit overrides after a merge patch: values set, None removes; None if none remain."""
    merged = {**(current or {}), **patch}
    return {name: value for name, value in merged.items() if value is not None} or None


class KeyStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    @classmethod
    def from_url(cls, url: str) -> KeyStore:
        return cls(Database(url))

    async def create_schema(self) -> None:
        def create(conn: sa.Connection) -> None:
            metadata.create_all(conn)
            _upgrade(conn)

        await self.database.run(create, deadline=None)  # an index built on a large table takes its time

    async def close(self) -> None:
        await self.database.dispose()

    async def ping(self) -> None:
        await self.database.run(lambda conn: conn.execute(sa.text("SELECT 1")))

    async def create(
        self,
        *,
        user: str,
        tier: str,
        models: Sequence[str] | None = None,
        expires_at: datetime | None = None,
        name: str | None = None,
        limits: dict[str, float] | None = None,
        team: str | None = None,
    ) -> tuple[KeyRecord, str]:
        """Store a new key and return it in clear; this is the only time it exists in clear."""
        for field, value in (("user", user), ("tier", tier), ("name", name), ("models", models), ("team", team)):
            _check_text(field, value)
        key = new_key()
        key_id = new_key_id()
        values = {
            "id": key_id,
            "key_hash": hash_key(key),
            "key_hint": key_hint(key),
            "name": name,
            "user_id": user,
            "tier": tier,
            "models": list(models) if models is not None else None,
            "limits": dict(limits) if limits else None,
            "expires_at": expires_at.astimezone(UTC) if expires_at else None,
            "disabled": False,
            "created_at": datetime.now(UTC),
            "team": team,
        }
        await self.database.run(lambda conn: conn.execute(api_keys.insert().values(**values)))
        record = await self.get(key_id)
        assert record is not None
        return record, key

    async def get(self, key_id: str) -> KeyRecord | None:
        return await self._one(api_keys.select().where(api_keys.c.id == key_id))

    async def find_by_hash(self, key_hash: str) -> KeyRecord | None:
        """The key with this hash, or None. Requests wait for this lookup, so a database that
        does not answer it within LOOKUP_TIMEOUT is given up on (DatabaseUnavailableError)."""
        return await self._one(api_keys.select().where(api_keys.c.key_hash == key_hash), LOOKUP_TIMEOUT)

    async def _one(self, query: sa.Select[Any], deadline: float = STATEMENT_DEADLINE) -> KeyRecord | None:
        row = await self.database.run(lambda conn: conn.execute(query).first(), deadline)
        return _record(row) if row else None

    async def list(self, user: str | None = None, team: str | None = None) -> list[KeyRecord]:
        query = api_keys.select().order_by(api_keys.c.created_at, api_keys.c.id)
        _check_text("user", user)
        _check_text("team", team)
        if user is not None:
            query = query.where(api_keys.c.user_id == user)
        if team is not None:
            query = query.where(api_keys.c.team == team)
        rows = await self.database.run(lambda conn: conn.execute(query).all())
        return [_record(row) for row in rows]

    async def update(self, key_id: str, **changes: Any) -> KeyRecord | None:
        """Change a key's user, team, tier, models, expiry, name, disabled flag or limit overrides.

        ``limits`` is merged into the key's overrides, as a JSON merge patch (RFC 7396) is:
        ``{"tpm": 5000}`` sets TPM and keeps the others, ``{"tpm": None}`` removes TPM's (the
        tier's applies again), ``limits=None`` removes them all. The command line's
        ``keys update --limit`` and the admin API's PATCH both come here, so they cannot differ.
        """
        allowed = {"user", "team", "tier", "models", "expires_at", "name", "disabled", "limits"}
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"cannot update {', '.join(sorted(unknown))}")
        for field in ("user", "team", "tier", "name", "models"):
            _check_text(field, changes.get(field))
        values = {("user_id" if k == "user" else k): v for k, v in changes.items()}
        if "models" in values and values["models"] is not None:
            values["models"] = list(values["models"])
        if values.get("expires_at") is not None:
            values["expires_at"] = values["expires_at"].astimezone(UTC)
        patch: Mapping[str, float | None] | None = values.pop("limits", None)
        if "limits" in changes and patch is None:
            values["limits"] = None

        def change(conn: sa.Connection) -> bool:
            where = api_keys.c.id == key_id
            if patch is not None:
                # Read and write in one transaction (the row locked on PostgreSQL), so that two
                # patches of different limits made at once both take effect.
                row = conn.execute(sa.select(api_keys.c.limits).where(where).with_for_update()).first()
                if row is None:
                    return False
                # Only the stored overrides that are still valid: a patch also clears bad old ones.
                values["limits"] = merge_limits(dict(_stored_limits(key_id, row.limits) or ()), patch)
            if not values:
                return conn.execute(sa.select(api_keys.c.id).where(where)).first() is not None
            return bool(conn.execute(api_keys.update().where(where).values(**values)).rowcount)

        if not await self.database.run(change):
            return None
        return await self.get(key_id)

    async def rotate(self, key_id: str) -> tuple[KeyRecord, str] | None:
        """Give the key a new secret, returned in clear (the only time it exists so); None if there
        is no such key. The id stays, and with it the key's settings and every limit's usage so
        far (limits count by key id, never by secret); the old secret stops matching at once."""
        key = new_key()
        values = {"key_hash": hash_key(key), "key_hint": key_hint(key)}
        changed = await self.database.run(
            lambda conn: conn.execute(api_keys.update().where(api_keys.c.id == key_id).values(**values)).rowcount
        )
        record = await self.get(key_id) if changed else None
        return (record, key) if record is not None else None

    async def delete(self, key_id: str) -> KeyRecord | None:
        record = await self.get(key_id)
        if record is None:
            return None
        await self.database.run(lambda conn: conn.execute(api_keys.delete().where(api_keys.c.id == key_id)))
        return record
