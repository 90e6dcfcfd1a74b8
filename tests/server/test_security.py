"""Who may see and change what: the admin API, tenants' own figures, and the secrets the gateway holds."""

from __future__ import annotations

import dataclasses
import hmac
import logging
import re
import secrets
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from quotagate.auth import Authenticator
from quotagate.errors import AuthenticationError
from quotagate.keys import KeyRecord, KeyStore, hash_key

from ..conftest import MASTER_KEY, RunningGateway

UPSTREAM_KEY = "sk-upstream-test-key-123456"  # what tests/conftest.py gives the mock and the gateway
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


def _admin_routes(key_id: str) -> list[tuple[str, str, dict[str, object] | None]]:
    return [
        ("GET", "/admin/tiers", None),
        ("GET", "/admin/usage", None),
        ("GET", "/admin/deployments", None),
        ("POST", "/admin/reload", None),
        ("GET", "/admin/keys", None),
        ("POST", "/admin/keys", {"user": "mallory", "tier": "paid"}),
        ("GET", f"/admin/keys/{key_id}", None),
        ("PATCH", f"/admin/keys/{key_id}", {"limits": {"rpm": 100000}}),
        ("GET", f"/admin/keys/{key_id}/quota", None),
        ("POST", f"/admin/keys/{key_id}/disable", None),
        ("POST", f"/admin/keys/{key_id}/enable", None),
        ("DELETE", f"/admin/keys/{key_id}", None),
    ]


@pytest.mark.parametrize(
    "credentials",
    [
        {},
        {"Authorization": "Bearer", "x-api-key": ""},
        {"Authorization": f"Bearer {MASTER_KEY[:-1]}"},  # one character short
        {"Authorization": f"Bearer {MASTER_KEY}x"},  # one character more
        {"Authorization": f"Basic {MASTER_KEY}"},
        {"x-api-key": MASTER_KEY[::-1]},
        "tenant",
    ],
    ids=["none", "empty", "short", "long", "basic", "reversed", "tenant-key"],
)
def test_every_admin_route_refuses_anything_but_the_master_key(
    gateway: RunningGateway, credentials: dict[str, str] | str
) -> None:
    """No admin route answers, or changes anything, without the master key: a tenant's own key included."""
    victim = gateway.create_key(user="victim")
    if credentials == "tenant":
        credentials = {"Authorization": f"Bearer {gateway.create_key(user='mallory')['key']}"}
    assert isinstance(credentials, dict)
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        for method, path, body in _admin_routes(victim["id"]):
            response = client.request(method, path, json=body, headers=credentials)
            assert response.status_code == 401, (method, path, response.status_code)
            assert response.json()["error"]["code"] in ("invalid_master_key", "invalid_api_key", "missing_api_key")
    # Nothing was changed: the victim's key still works, with its own limits, and no key was made.
    assert (
        httpx.post(
            gateway.v1 + "/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {victim['key']}"}
        ).status_code
        == 200
    )
    with gateway.admin() as admin:
        keys = admin.get("/admin/keys").json()["data"]
        assert {k["user"] for k in keys} <= {"victim", "mallory"}
        assert not any(k["user"] == "mallory" and k["tier"] == "paid" for k in keys)
        assert admin.get(f"/admin/keys/{victim['id']}").json().get("limits") in (None, {})


def test_a_tenant_sees_only_its_own_quota(gateway: RunningGateway) -> None:
    """/v1/quota answers for the calling key alone; a model the key may not use is not shown."""
    alice, bob = gateway.create_key(user="alice"), gateway.create_key(user="bob", models=["house-model"])
    for key in (alice, bob):
        quota = httpx.get(gateway.v1 + "/quota", headers={"Authorization": f"Bearer {key['key']}"}).json()
        assert (quota["key_id"], quota["user"]) == (key["id"], key["user"])
    refused = httpx.get(
        gateway.v1 + "/quota", params={"model": "gpt-4o-mini"}, headers={"Authorization": f"Bearer {bob['key']}"}
    )
    assert refused.status_code == 403
    models = httpx.get(gateway.v1 + "/models", headers={"Authorization": f"Bearer {bob['key']}"}).json()["data"]
    assert [m["id"] for m in models] == ["house-model"]


def test_keys_are_stored_hashed(gateway: RunningGateway, sqlite_url: str) -> None:
    """The database file holds no gateway key in clear, only its hash and a short hint."""
    created = gateway.create_key()
    path = Path(sqlite_url.removeprefix("sqlite:///"))
    stored = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))  # the WAL too
    assert created["key"].encode() not in stored
    assert created["key"][-20:].encode() not in stored


def test_the_upstream_and_master_keys_never_reach_a_client(
    gateway: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    """Answers, their headers, /metrics, the admin views and the logs never hold the provider's key or the master key."""
    caplog.set_level(logging.DEBUG)
    key = gateway.create_key()["key"]
    auth = {"Authorization": f"Bearer {key}"}
    responses = [
        httpx.post(gateway.v1 + "/chat/completions", json=CHAT, headers=auth),
        httpx.post(gateway.v1 + "/chat/completions", json={**CHAT, "stream": True}, headers=auth),
        httpx.post(gateway.v1 + "/embeddings", json={"model": "text-embedding-3-small", "input": "x"}, headers=auth),
        httpx.post(gateway.v1 + "/chat/completions", json={**CHAT, "messages": []}, headers=auth),
        httpx.post(gateway.v1 + "/chat/completions", json=CHAT, headers={"Authorization": "Bearer qg-wrong"}),
        httpx.get(gateway.v1 + "/models", headers=auth),
        httpx.get(gateway.v1 + "/quota", headers=auth),
        httpx.get(gateway.url + "/metrics"),
        httpx.get(gateway.url + "/ready"),
    ]
    with gateway.admin() as admin:
        responses += [admin.get("/admin/deployments"), admin.get("/admin/tiers"), admin.get("/admin/usage")]
    assert responses[0].status_code == 200
    for response in responses:
        seen = response.text + " ".join(f"{k}: {v}" for k, v in response.headers.items())
        assert UPSTREAM_KEY not in seen, response.url
        assert MASTER_KEY not in seen, response.url
    assert UPSTREAM_KEY not in caplog.text and MASTER_KEY not in caplog.text


# Constant-time key checks, shown by the code path rather than by timing (which would flake on a
# busy CI machine): a tenant's key is looked up by its SHA-256 digest, so what the database compares
# is a digest, whose prefix says nothing about the key; the master key is compared with
# hmac.compare_digest. A presented key sharing all but its last character with the real one takes
# the same path, with the same calls, as a random one.


class _Watched(str):
    """A key that records every == or != it takes part in (Python asks a str subclass's __eq__
    first, whichever side of the comparison it is on)."""

    __slots__ = ()
    compared: ClassVar[list[str]] = []

    def __eq__(self, other: object) -> bool:
        _Watched.compared.append(str(other))
        return str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        _Watched.compared.append(str(other))
        return str.__ne__(self, other)

    __hash__ = str.__hash__


@pytest.fixture
def watched() -> list[str]:
    _Watched.compared = []
    return _Watched.compared


def _near_miss(key: str) -> str:
    """``key`` with its last character changed: the longest prefix a wrong key can share."""
    return key[:-1] + ("A" if key[-1] != "A" else "B")


def test_the_master_key_is_checked_with_compare_digest_alone(
    gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch, watched: list[str]
) -> None:
    """A near-miss, a random key and the master key itself each cost one hmac.compare_digest of the
    whole key, and the master key is never compared with ==."""
    calls: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    gateway.gateway.admin._master_key = _Watched(MASTER_KEY)
    presented = [_near_miss(MASTER_KEY), "qg-" + secrets.token_hex(len(MASTER_KEY))[: len(MASTER_KEY) - 3], MASTER_KEY]
    statuses = []
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        for key in presented:
            statuses.append(client.get("/admin/tiers", headers={"Authorization": f"Bearer {key}"}).status_code)
    assert statuses == [401, 401, 200]
    assert calls == [(key.encode(), MASTER_KEY.encode()) for key in presented]
    assert watched == []


def test_a_tenant_key_is_looked_up_by_its_digest_alone(
    gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A near-miss, a random key and the real key each cost one lookup, and what the key store is
    given is the key's SHA-256 digest, never the key."""
    lookups: list[str] = []
    real = KeyStore.find_by_hash

    async def spy(self: KeyStore, key_hash: str) -> KeyRecord | None:
        lookups.append(key_hash)
        return await real(self, key_hash)

    monkeypatch.setattr(KeyStore, "find_by_hash", spy)
    stored = gateway.create_key()["key"]
    presented = [_near_miss(stored), "qg-" + secrets.token_urlsafe(32), stored]
    statuses = [
        httpx.post(gateway.v1 + "/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"}).status_code
        for key in presented
    ]
    assert statuses == [401, 401, 200]
    assert lookups == [hash_key(key) for key in presented]
    assert all(re.fullmatch("[0-9a-f]{64}", digest) for digest in lookups)
    # What a lookup returns holds no key, hashed or not: there is nothing to compare a key with.
    assert not {"key", "key_hash"} & {field.name for field in dataclasses.fields(KeyRecord)}


async def test_a_presented_key_is_never_compared_with_equals(sqlite_url: str, watched: list[str]) -> None:
    """Authenticating a near-miss and the real key compares neither with == at any step."""
    store = KeyStore.from_url(sqlite_url)
    await store.create_schema()
    try:
        _, stored = await store.create(user="u", tier="free")
        authenticator = Authenticator(store)
        with pytest.raises(AuthenticationError):
            await authenticator.authenticate(_Watched(_near_miss(stored)))
        principal = await authenticator.authenticate(_Watched(stored))
        assert principal.user == "u"
        assert watched == []
    finally:
        await store.close()
