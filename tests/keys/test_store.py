"""The key store, on SQLite and on the real PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from quotagate.auth import Authenticator
from quotagate.errors import AuthenticationError, ServiceUnavailableError
from quotagate.keys import KeyRecord, KeyStore, hash_key
from quotagate.keys._database import Database, DatabaseUnavailableError
from quotagate.keys._store import api_keys


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, sqlite_url: str) -> AsyncIterator[KeyStore]:
    url = sqlite_url if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    key_store = KeyStore.from_url(url)
    await key_store.create_schema()
    await key_store.database.run(lambda conn: conn.execute(api_keys.delete()))
    yield key_store
    await key_store.close()


async def test_keys_are_stored_only_hashed(store: KeyStore) -> None:
    """The database holds the key's hash and a hint, never the key."""
    record, key = await store.create(user="alice", tier="free")
    rows = await store.database.run(lambda conn: conn.execute(sa.select(api_keys)).all())
    assert len(rows) == 1
    assert key not in repr(rows[0])
    assert rows[0].key_hash == hash_key(key)
    assert record.key_hint.startswith(key[:7]) and record.key_hint.endswith(key[-4:])


async def test_create_list_update_delete(store: KeyStore) -> None:
    """Keys round-trip with their user, tier, models and expiry, and can be changed and removed."""
    expires = datetime(2031, 5, 1, 12, 0, tzinfo=UTC)
    first, _ = await store.create(user="alice", tier="free", models=["gpt-4o-mini"], expires_at=expires, name="ci")
    second, _ = await store.create(user="bob", tier="paid")
    assert [r.id for r in await store.list()] == [first.id, second.id]
    assert [r.id for r in await store.list(user="bob")] == [second.id]
    fetched = await store.get(first.id)
    assert fetched is not None
    assert (fetched.user, fetched.tier, fetched.models, fetched.expires_at, fetched.name) == (
        "alice",
        "free",
        ("gpt-4o-mini",),
        expires,
        "ci",
    )

    changed = await store.update(first.id, disabled=True, tier="paid", models=None)
    assert changed is not None and changed.disabled and changed.tier == "paid" and changed.models is None
    assert await store.update("key_missing", disabled=True) is None
    assert (await store.delete(second.id)) is not None
    assert await store.get(second.id) is None
    assert await store.delete(second.id) is None


async def test_authenticator_checks_state_and_caches(store: KeyStore) -> None:
    """Disabled, expired and unknown keys are refused; a valid key is served from the cache."""
    clock = [0.0]
    auth = Authenticator(store, ttl=5.0, monotonic=lambda: clock[0])
    record, key = await store.create(user="carol", tier="free", models=["a", "b"])
    principal = await auth.authenticate(key)
    assert (principal.key_id, principal.user, principal.tier, principal.models) == (
        record.id,
        "carol",
        "free",
        frozenset({"a", "b"}),
    )

    await store.update(record.id, disabled=True)
    # Within the TTL, this node still trusts its cached lookup...
    assert (await auth.authenticate(key)).key_id == record.id
    clock[0] = 6.0  # ...and after it, the key is refused.
    with pytest.raises(AuthenticationError, match="disabled"):
        await auth.authenticate(key)

    await store.update(record.id, disabled=False, expires_at=datetime.now(UTC) - timedelta(seconds=1))
    auth.forget(record.id)
    with pytest.raises(AuthenticationError, match="expired"):
        await auth.authenticate(key)
    with pytest.raises(AuthenticationError, match="Incorrect"):
        await auth.authenticate("qg-unknown")


async def test_concurrent_lookups_share_one_query(sqlite_url: str) -> None:
    """When a busy key's cache entry expires, concurrent requests cause one database query."""
    store = KeyStore.from_url(sqlite_url)
    await store.create_schema()
    _, key = await store.create(user="erin", tier="free")
    queries = 0
    original = store.find_by_hash

    async def counting(key_hash: str) -> KeyRecord | None:
        nonlocal queries
        queries += 1
        return await original(key_hash)

    store.find_by_hash = counting  # type: ignore[method-assign]
    clock = [0.0]
    auth = Authenticator(store, ttl=5.0, monotonic=lambda: clock[0])
    results = await asyncio.gather(*(auth.authenticate(key) for _ in range(64)))
    assert queries == 1 and {p.user for p in results} == {"erin"}
    clock[0] = 10.0  # expired: the next burst refreshes it, once
    await asyncio.gather(*(auth.authenticate(key) for _ in range(64)))
    assert queries == 2
    await store.close()


async def test_limit_overrides_are_merged(store: KeyStore) -> None:
    """update(limits=...) merges: a value sets one override, None removes one, limits=None removes
    all; two patches made at once both take effect."""
    record, _ = await store.create(user="alice", tier="free", limits={"rpm": 100})
    changed = await store.update(record.id, limits={"tpm": 5000})
    assert changed is not None and dict(changed.limits or ()) == {"rpm": 100, "tpm": 5000}
    changed = await store.update(record.id, limits={"rpm": None})
    assert changed is not None and changed.limits == (("tpm", 5000),)
    await asyncio.gather(store.update(record.id, limits={"rpd": 7}), store.update(record.id, limits={"tpd": 9}))
    changed = await store.get(record.id)
    assert changed is not None and dict(changed.limits or ()) == {"tpm": 5000, "rpd": 7, "tpd": 9}
    changed = await store.update(record.id, limits=None)
    assert changed is not None and changed.limits is None
    assert await store.update("key_missing", limits={"rpm": 1}) is None


async def test_control_characters_never_reach_the_database(store: KeyStore) -> None:
    """The store itself refuses NUL and other control characters in user, tier, name and models
    (PostgreSQL cannot hold NUL; SQLite could, so the backends would disagree)."""
    refused = ({"user": "a\x00b"}, {"tier": "f\x00"}, {"name": "a\nb"}, {"models": ["m", "\x7f"]}, {"name": "a\u2028b"})
    for fields in refused:
        with pytest.raises(ValueError, match="control characters"):
            await store.create(**{"user": "u", "tier": "free", **fields})  # type: ignore[arg-type]
    record, _ = await store.create(user="u", tier="free")
    with pytest.raises(ValueError, match="user must not contain control characters"):
        await store.update(record.id, user="\x00")
    with pytest.raises(ValueError, match="user must not contain control characters"):
        await store.list(user="\x00")
    assert [r.id for r in await store.list()] == [record.id]


async def test_stored_limits_out_of_bounds_are_ignored_with_a_warning(store: KeyStore) -> None:
    """Overrides an older version stored out of bounds are left out of the record (the tier's
    apply), each named once in a warning; a merge patch drops them from the row."""
    record, _ = await store.create(user="u", tier="free", limits={"tpm": 5000})
    stored = {"usd_per_day": 1e308, "usd_per_month": 1e-300, "rpm": 0, "colour": 3, "tpm": 5000}
    change = api_keys.update().where(api_keys.c.id == record.id).values(limits=stored)
    await store.database.run(lambda conn: conn.execute(change))
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]
    logger = logging.getLogger("quotagate.keys")
    logger.addHandler(handler)
    try:
        first, again = await store.get(record.id), await store.get(record.id)
    finally:
        logger.removeHandler(handler)
    assert first is not None and first.limits == again.limits == (("tpm", 5000),)  # type: ignore[union-attr]
    warned = sorted(m.getMessage().split("stored limit ", 1)[1].split("=")[0] for m in seen)
    assert warned == ["colour", "rpm", "usd_per_day", "usd_per_month"]
    assert all(m.levelno == logging.WARNING and record.id in m.getMessage() for m in seen)
    patched = await store.update(record.id, limits={"rpd": 9})
    assert patched is not None and patched.limits == (("rpd", 9), ("tpm", 5000))
    raw = await store.database.run(
        lambda conn: conn.execute(sa.select(api_keys.c.limits).where(api_keys.c.id == record.id)).scalar_one()
    )
    assert raw == {"rpd": 9, "tpm": 5000}


async def test_known_keys_outlive_a_database_outage_and_unknown_ones_get_503(
    store: KeyStore, caplog: pytest.LogCaptureFixture
) -> None:
    """While lookups fail, a key this node looked up before keeps working past its cache's
    lifetime; one it never saw gets a 503 with Retry-After (not a 401: the key may be fine); and a
    failed lookup is not retried for a second, so an outage costs the database one query a second,
    not one per request."""
    clock = [0.0]
    auth = Authenticator(store, ttl=5.0, monotonic=lambda: clock[0])
    _, known = await store.create(user="dana", tier="free")
    _, unseen = await store.create(user="eve", tier="free")
    assert (await auth.authenticate(known)).user == "dana"

    lookups = 0

    async def down(key_hash: str) -> None:
        nonlocal lookups
        lookups += 1
        raise DatabaseUnavailableError("PostgreSQL at db:5432: Connection refused")

    store.find_by_hash = down  # type: ignore[method-assign,assignment]
    clock[0] = 60.0  # long past the cached lookup's 5 s
    assert (await auth.authenticate(known)).user == "dana"
    with pytest.raises(ServiceUnavailableError) as refused:
        await auth.authenticate(unseen)
    assert refused.value.status == 503 and refused.value.headers == {"Retry-After": "1"}
    assert lookups == 1  # the second came within the second after the first failed
    for _ in range(50):
        await auth.authenticate(known)
    assert lookups == 1
    clock[0] = 61.5
    assert (await auth.authenticate(known)).user == "dana"
    assert lookups == 2
    # Why, in the log: once, not once per failed lookup.
    said = [r.getMessage() for r in caplog.records if r.name == "quotagate.auth"]
    assert said == ["key lookups are failing: DatabaseUnavailableError: PostgreSQL at db:5432: Connection refused"]


async def test_a_database_call_past_its_deadline_is_a_503_naming_the_database(sqlite_url: str) -> None:
    """Every call to the database has a deadline (10 s unless the caller sets one, 2 s for a key
    lookup): past it the caller gets DatabaseUnavailableError, a 503, rather than waiting for a
    database that does not answer (PostgreSQL on a dead connection waited 15 minutes)."""
    database = Database(sqlite_url)
    began = time.monotonic()
    with pytest.raises(DatabaseUnavailableError, match=r"^SQLite: no answer within 0.2s$") as raised:
        await database.run(lambda conn: time.sleep(1.0), deadline=0.2)
    assert time.monotonic() - began < 0.9
    assert raised.value.status == 503
    assert await database.run(lambda conn: conn.execute(sa.text("SELECT 7")).scalar()) == 7
    await database.dispose()
