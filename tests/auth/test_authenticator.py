"""The Authenticator on its own: gateway key -> Principal, its cache, its single flight, and what
it does while the key database is down; and ``extract_key``, which finds the key in the headers.

The key store is an in-memory fake with KeyStore's lookup (``find_by_hash``) that counts the
lookups and can be switched off, raising what the real one raises when the database does not
answer. One fake clock drives both of the Authenticator's clocks: nothing sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from quotagate.auth import Authenticator, Principal, extract_key
from quotagate.auth import _authenticator as authenticator_module
from quotagate.errors import AuthenticationError, ServiceUnavailableError
from quotagate.keys import Database, KeyRecord, KeyStore, hash_key, key_hint

T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
TTL = 5.0
OUTAGE_RETRY = authenticator_module._OUTAGE_RETRY


class FakeClock:
    """Seconds that pass only when a test says so; the Authenticator's monotonic clock, and (as
    a UTC datetime) its wall clock."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now

    def utc(self) -> datetime:
        return datetime.fromtimestamp(self.now, UTC)

    def advance(self, seconds: float) -> None:
        self.now += seconds


def database_down() -> Exception:
    """What the real KeyStore raises when its database does not answer (DatabaseUnavailableError)."""
    return Database("sqlite:///:memory:").unavailable("no answer within 2s")


_ALICE = KeyRecord(
    id="",
    key_hint="",
    name=None,
    user="alice",
    tier="free",
    models=None,
    limits=None,
    expires_at=None,
    disabled=False,
    created_at=datetime(2023, 1, 1, tzinfo=UTC),
)


class FakeKeyStore:
    """KeyStore's lookup over records in memory: each lookup is counted; ``down`` makes lookups
    raise it; ``gate``, while set to an unset event, holds lookups until it is set."""

    def __init__(self) -> None:
        self.records: dict[str, KeyRecord] = {}
        self.lookups = 0
        self.down: Exception | None = None
        self.gate: asyncio.Event | None = None

    def add(self, key: str, **fields: Any) -> KeyRecord:
        """Store ``key`` (user alice, tier free, every model, no expiry) with ``fields`` changed."""
        record = replace(_ALICE, id="key_" + key, key_hint=key_hint(key), **fields)
        self.records[hash_key(key)] = record
        return record

    def change(self, key: str, **fields: Any) -> None:
        """Change a stored key's record (as an update through another node would)."""
        self.records[hash_key(key)] = replace(self.records[hash_key(key)], **fields)

    async def find_by_hash(self, key_hash: str) -> KeyRecord | None:
        self.lookups += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.down is not None:
            raise self.down
        return self.records.get(key_hash)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store() -> FakeKeyStore:
    return FakeKeyStore()


@pytest.fixture
def auth(store: FakeKeyStore, clock: FakeClock) -> Authenticator:
    return Authenticator(cast(KeyStore, store), ttl=TTL, monotonic=clock, now=clock.utc)


async def until(condition: Callable[[], bool]) -> None:
    """Let the event loop run until ``condition`` holds (a bounded number of turns)."""
    for _ in range(100):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


# -- a key and what it gives -------------------------------------------------------------------


async def test_a_valid_key_gives_its_principal(auth: Authenticator, store: FakeKeyStore) -> None:
    """A stored key gives the principal of its record: key id, user, tier, allowed models and
    limit overrides as the store has them; no models stored means every model."""
    store.add("qg-one", user="bob", tier="paid", models=("gpt-4o", "gpt-4o-mini"), limits=(("rpm", 100.0),))
    store.add("qg-two", user="carol", tier="free")

    assert await auth.authenticate("qg-one") == Principal(
        key_id="key_qg-one",
        user="bob",
        tier="paid",
        models=frozenset({"gpt-4o", "gpt-4o-mini"}),
        limits=(("rpm", 100.0),),
    )
    every_model = await auth.authenticate("qg-two")
    assert every_model == Principal("key_qg-two", "carol", "free", None, None)
    assert every_model.may_use("anything")


async def test_an_unknown_key_is_refused_with_a_401(auth: Authenticator, store: FakeKeyStore) -> None:
    """A key the store does not have is refused with the gateway's 401 (code invalid_api_key)."""
    store.add("qg-known")
    with pytest.raises(AuthenticationError) as refused:
        await auth.authenticate("qg-unknown")
    assert refused.value.status == 401
    assert refused.value.code == "invalid_api_key"


async def test_a_disabled_key_is_refused(auth: Authenticator, store: FakeKeyStore) -> None:
    """A disabled key is refused with a 401 whose code says it is disabled."""
    store.add("qg-off", disabled=True)
    with pytest.raises(AuthenticationError) as refused:
        await auth.authenticate("qg-off")
    assert refused.value.status == 401
    assert refused.value.code == "key_disabled"


async def test_a_key_stops_working_when_it_expires_even_while_cached(
    auth: Authenticator, store: FakeKeyStore, clock: FakeClock
) -> None:
    """Expiry is checked against the clock on every request: a cached key is refused (401,
    key_expired) from the moment it expires, without waiting for its cache entry to end."""
    store.add("qg-brief", expires_at=clock.utc() + timedelta(seconds=2))
    await auth.authenticate("qg-brief")
    clock.advance(1.75)
    await auth.authenticate("qg-brief")
    clock.advance(0.25)
    with pytest.raises(AuthenticationError) as refused:
        await auth.authenticate("qg-brief")
    assert refused.value.status == 401
    assert refused.value.code == "key_expired"
    assert store.lookups == 1


# -- the cache ---------------------------------------------------------------------------------


async def test_a_lookup_is_trusted_for_ttl_seconds(auth: Authenticator, store: FakeKeyStore, clock: FakeClock) -> None:
    """Authentications within ``ttl`` seconds of a lookup ask the store nothing; the first one
    after it looks the key up again, and sees what changed (here: the key was disabled)."""
    store.add("qg-busy")
    for _ in range(9):  # at 0, 0.5, ..., 4 s
        await auth.authenticate("qg-busy")
        clock.advance(0.5)
    store.change("qg-busy", disabled=True)
    await auth.authenticate("qg-busy")  # at 4.5 s: the cached record
    assert store.lookups == 1
    clock.advance(TTL - 4.5)
    with pytest.raises(AuthenticationError, match="disabled"):
        await auth.authenticate("qg-busy")
    assert store.lookups == 2


async def test_an_unknown_key_is_remembered_for_a_second(
    auth: Authenticator, store: FakeKeyStore, clock: FakeClock
) -> None:
    """A flood of one bad key costs one lookup per second (not per request, nor per ``ttl``)."""
    for _ in range(8):
        with pytest.raises(AuthenticationError):
            await auth.authenticate("qg-bad")
        clock.advance(0.125)
    assert store.lookups == 1  # the last at 0.875 s
    with pytest.raises(AuthenticationError):
        await auth.authenticate("qg-bad")
    assert store.lookups == 2


async def test_forget_drops_a_key_from_the_cache(auth: Authenticator, store: FakeKeyStore) -> None:
    """After ``forget(key_id)`` (the key changed on this node) the next request looks the key up
    again, so a key disabled here is refused at once, not ``ttl`` seconds later."""
    record = store.add("qg-changed")
    await auth.authenticate("qg-changed")
    store.change("qg-changed", disabled=True)
    auth.forget(record.id)
    with pytest.raises(AuthenticationError, match="disabled"):
        await auth.authenticate("qg-changed")
    assert store.lookups == 2


async def test_a_lookup_begun_before_forget_is_not_cached(auth: Authenticator, store: FakeKeyStore) -> None:
    """A lookup in flight when a key is forgotten answers its request but is not cached: it may
    have read the key as it was before the change."""
    record = store.add("qg-racing")
    store.gate = asyncio.Event()
    pending = asyncio.create_task(auth.authenticate("qg-racing"))
    await until(lambda: store.lookups == 1)
    auth.forget(record.id)
    store.gate.set()
    assert (await pending).key_id == record.id

    await auth.authenticate("qg-racing")
    assert store.lookups == 2


# -- single flight -----------------------------------------------------------------------------


async def test_concurrent_authentications_of_an_uncached_key_share_one_lookup(
    auth: Authenticator, store: FakeKeyStore
) -> None:
    """Many requests with one uncached key, at once, make a single store lookup and all get the
    key's principal."""
    store.add("qg-popular")
    store.gate = asyncio.Event()
    waiting = [asyncio.create_task(auth.authenticate("qg-popular")) for _ in range(50)]
    await until(lambda: store.lookups == 1)
    await asyncio.sleep(0)
    store.gate.set()
    principals = await asyncio.gather(*waiting)
    assert {p.key_id for p in principals} == {"key_qg-popular"}
    assert store.lookups == 1


async def test_a_cancelled_waiter_does_not_cancel_the_others_lookup(auth: Authenticator, store: FakeKeyStore) -> None:
    """When the request that started a shared lookup is cancelled (its client left), the other
    requests waiting on that lookup still get its answer, without a second lookup."""
    store.add("qg-shared")
    store.gate = asyncio.Event()
    first = asyncio.create_task(auth.authenticate("qg-shared"))
    await until(lambda: store.lookups == 1)
    second = asyncio.create_task(auth.authenticate("qg-shared"))
    await asyncio.sleep(0)
    first.cancel()
    store.gate.set()
    assert (await second).key_id == "key_qg-shared"
    assert first.cancelled()
    assert store.lookups == 1


# -- while the database is down ----------------------------------------------------------------


async def test_a_key_seen_before_keeps_working_while_the_database_is_down(
    auth: Authenticator, store: FakeKeyStore, clock: FakeClock
) -> None:
    """During an outage a key this node has looked up before keeps working, however long past
    its ``ttl`` (its last known record is served)."""
    store.add("qg-regular", tier="paid")
    before = await auth.authenticate("qg-regular")
    store.down = database_down()
    for _ in range(5):
        clock.advance(3600.0)
        assert await auth.authenticate("qg-regular") == before


@pytest.mark.parametrize(
    "failure",
    [database_down, lambda: RuntimeError("a fault of ours")],
    ids=["database-unavailable", "other-error"],
)
async def test_a_key_never_seen_gets_a_503_with_retry_after_while_the_database_is_down(
    store: FakeKeyStore, clock: FakeClock, failure: Callable[[], Exception]
) -> None:
    """A key this node has not seen cannot be checked while lookups fail, whatever the error:
    a 503 (ServiceUnavailableError, not a 401: the key may be fine) with Retry-After: 1."""
    auth = Authenticator(cast(KeyStore, store), ttl=TTL, monotonic=clock, now=clock.utc)
    store.add("qg-new")
    store.down = failure()
    with pytest.raises(ServiceUnavailableError) as unavailable:
        await auth.authenticate("qg-new")
    assert not isinstance(unavailable.value, AuthenticationError)
    assert unavailable.value.status == 503
    assert unavailable.value.code == "service_unavailable"
    assert unavailable.value.headers == {"Retry-After": "1"}


async def test_a_key_last_seen_as_unknown_gets_a_503_while_the_database_is_down(
    auth: Authenticator, store: FakeKeyStore, clock: FakeClock
) -> None:
    """A key that was unknown at its last lookup gets a 503, not a 401, once that lookup is over
    a second old and the database is down: it may have been created since."""
    with pytest.raises(AuthenticationError):
        await auth.authenticate("qg-later")
    store.add("qg-later")
    store.down = database_down()
    clock.advance(1.0)
    with pytest.raises(ServiceUnavailableError) as unavailable:
        await auth.authenticate("qg-later")
    assert unavailable.value.status == 503


async def test_a_failed_lookup_is_not_retried_for_the_outage_interval(
    auth: Authenticator, store: FakeKeyStore, clock: FakeClock
) -> None:
    """After a failed lookup no request asks the store again for ``_OUTAGE_RETRY`` seconds,
    whichever key it carries (known keys are served stale, others get a 503); the first request
    after that tries the store once more."""
    store.add("qg-known")
    await auth.authenticate("qg-known")
    clock.advance(TTL)
    store.down = database_down()
    await auth.authenticate("qg-known")  # the lookup fails: stale
    assert store.lookups == 2
    for _ in range(7):
        clock.advance(OUTAGE_RETRY / 8)
        await auth.authenticate("qg-known")
        with pytest.raises(ServiceUnavailableError):
            await auth.authenticate("qg-unseen")
    assert store.lookups == 2
    clock.advance(OUTAGE_RETRY / 8)
    with pytest.raises(ServiceUnavailableError):
        await auth.authenticate("qg-unseen")
    assert store.lookups == 3


async def test_lookups_resume_once_the_database_is_back(
    auth: Authenticator, store: FakeKeyStore, clock: FakeClock
) -> None:
    """Once the database answers again (and the retry interval has passed), keys are looked up
    as before: a key never seen works, and a key disabled during the outage, served stale until
    then, is refused."""
    store.add("qg-old")
    await auth.authenticate("qg-old")
    store.down = database_down()
    clock.advance(TTL)
    await auth.authenticate("qg-old")
    store.change("qg-old", disabled=True)
    store.add("qg-fresh", user="dave")

    store.down = None
    await auth.authenticate("qg-old")  # within the retry interval: still stale
    clock.advance(OUTAGE_RETRY)
    with pytest.raises(AuthenticationError, match="disabled"):
        await auth.authenticate("qg-old")
    assert (await auth.authenticate("qg-fresh")).user == "dave"
    assert store.lookups == 4


# -- extract_key -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "x_api_key", "key"),
    [
        ("Bearer qg-abc", None, "qg-abc"),
        ("bearer   qg-abc  ", None, "qg-abc"),
        ("BEARER qg-abc", "qg-other", "qg-abc"),
        (None, "qg-abc", "qg-abc"),
        ("", " qg-abc ", "qg-abc"),
    ],
)
def test_extract_key_finds_the_key_in_either_header(authorization: str | None, x_api_key: str | None, key: str) -> None:
    """The key is the token of 'Authorization: Bearer KEY' (any case of 'Bearer', spaces
    trimmed), else the x-api-key header's value; the Authorization header comes first."""
    assert extract_key(authorization, x_api_key) == key


@pytest.mark.parametrize(("authorization", "x_api_key"), [(None, None), ("", ""), (None, "   "), ("", None)])
def test_extract_key_refuses_a_request_without_a_key(authorization: str | None, x_api_key: str | None) -> None:
    """No key in either header is a 401 with code missing_api_key, telling how to send one."""
    with pytest.raises(AuthenticationError, match="Bearer YOUR_KEY") as refused:
        extract_key(authorization, x_api_key)
    assert refused.value.status == 401
    assert refused.value.code == "missing_api_key"


@pytest.mark.parametrize(
    ("authorization", "x_api_key"),
    [
        ("Basic dXNlcjpwYXNz", None),
        ("Bearer", None),
        ("Bearer    ", None),
        ("qg-abc", None),
        ("Token qg-abc", "qg-abc"),
    ],
)
def test_extract_key_refuses_a_malformed_authorization_header(authorization: str, x_api_key: str | None) -> None:
    """An Authorization header that is not 'Bearer KEY' is a 401 (invalid_api_key), even when
    an x-api-key header is present too: the gateway does not guess which one was meant."""
    with pytest.raises(AuthenticationError, match="Invalid Authorization header") as refused:
        extract_key(authorization, x_api_key)
    assert refused.value.status == 401
    assert refused.value.code == "invalid_api_key"
