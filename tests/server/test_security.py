"""Who may see and change what: the admin API, tenants' own figures, and the secrets the gateway holds."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

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
