"""The admin API: master key required; keys managed over HTTP."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..conftest import MASTER_KEY, RunningGateway, ServerThread, gateway_config
from .test_errors import assert_openai_error

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def test_admin_requires_the_master_key(gateway: RunningGateway, api_key: str) -> None:
    """No key, a wrong key, or a user's key: refused."""
    assert_openai_error(httpx.get(gateway.url + "/admin/keys"), 401, "missing_api_key")
    assert_openai_error(
        httpx.get(gateway.url + "/admin/keys", headers={"Authorization": "Bearer nope"}),
        401,
        "invalid_master_key",
    )
    assert_openai_error(
        httpx.get(gateway.url + "/admin/keys", headers={"Authorization": f"Bearer {api_key}"}),
        401,
        "invalid_master_key",
    )
    assert httpx.get(gateway.url + "/admin/keys", headers={"x-api-key": MASTER_KEY}).status_code == 200


def test_admin_disabled_without_master_key(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """With no master_key configured the admin API is closed."""
    gw = start_gateway(gateway_config(sqlite_url, mock_upstream.url, master_key=None))
    assert_openai_error(httpx.get(gw.url + "/admin/keys", headers={"Authorization": "Bearer x"}), 403, "admin_disabled")


def test_key_lifecycle_over_http(gateway: RunningGateway) -> None:
    """Create, list, read, change, disable, enable and delete a key; each takes effect at once."""
    with gateway.admin() as admin:
        created = admin.post(
            "/admin/keys", json={"user": "dave", "tier": "paid", "models": ["gpt-4o-mini"], "name": "laptop"}
        )
        assert created.status_code == 201
        body = created.json()
        key, key_id = body["key"], body["id"]
        assert body["user"] == "dave" and body["tier"] == "paid" and body["models"] == ["gpt-4o-mini"]

        def use() -> httpx.Response:
            return httpx.post(gateway.v1 + "/chat/completions", headers={"Authorization": f"Bearer {key}"}, json=CHAT)

        assert use().status_code == 200

        listed = admin.get("/admin/keys", params={"user": "dave"}).json()["data"]
        assert [k["id"] for k in listed] == [key_id]
        assert "key" not in listed[0] and key not in str(listed)
        assert admin.get(f"/admin/keys/{key_id}").json()["name"] == "laptop"

        patched = admin.patch(f"/admin/keys/{key_id}", json={"models": ["house-model"]})
        assert patched.json()["models"] == ["house-model"]
        assert use().status_code == 403

        assert admin.patch(f"/admin/keys/{key_id}", json={"models": None}).status_code == 200
        assert admin.post(f"/admin/keys/{key_id}/disable").json()["disabled"] is True
        assert use().status_code == 401
        assert admin.post(f"/admin/keys/{key_id}/enable").json()["disabled"] is False
        assert use().status_code == 200

        assert admin.delete(f"/admin/keys/{key_id}").json() == {
            "id": key_id,
            "object": "key",
            "deleted": True,
        }
        assert use().status_code == 401
        assert_openai_error(admin.get(f"/admin/keys/{key_id}"), 404, "key_not_found")
        assert_openai_error(admin.delete(f"/admin/keys/{key_id}"), 404, "key_not_found")


def test_bad_admin_payloads_get_400(gateway: RunningGateway) -> None:
    """Unknown tiers, unknown models, bad dates and unknown fields are refused with a reason."""
    with gateway.admin() as admin:
        assert_openai_error(
            admin.post("/admin/keys", json={"user": "x", "tier": "platinum"}), 400, "unknown_tier", "tier"
        )
        assert_openai_error(
            admin.post("/admin/keys", json={"user": "x", "tier": "free", "models": ["gpt-9"]}),
            400,
            "unknown_model",
        )
        assert_openai_error(
            admin.post("/admin/keys", json={"user": "x", "tier": "free", "expires_at": "soon"}),
            400,
            param="expires_at",
        )
        assert_openai_error(
            admin.post("/admin/keys", json={"user": "x", "tier": "free", "expires_at": "2030-01-01T00:00:00"}),
            400,
            param="expires_at",
        )
        assert_openai_error(admin.post("/admin/keys", json={"tier": "free"}), 400, param="user")
        assert_openai_error(
            admin.post("/admin/keys", json={"user": "x", "tier": "free", "colour": "red"}),
            400,
            param="colour",
        )
        assert_openai_error(admin.post("/admin/keys", content=b"{oops"), 400, "invalid_json")
        assert_openai_error(admin.put("/admin/keys"), 405)
        assert_openai_error(admin.get("/admin/nothing"), 404)
        tiers = admin.get("/admin/tiers").json()["data"]
        assert tiers["free"] == {
            "rpm": 60,
            "tpd": 100000,
            "algorithm": "gcra",
            "max_wait": 0.0,
            "priority": 0,
        }
        assert tiers["paid"]["rpm"] == 600


def test_a_key_cannot_be_created_already_expired(gateway: RunningGateway) -> None:
    """POST /admin/keys with an expiry in the past is a 400 naming expires_at; a future one is fine."""
    with gateway.admin() as admin:
        error = assert_openai_error(
            admin.post("/admin/keys", json={"user": "x", "tier": "free", "expires_at": "2020-01-01T00:00:00Z"}),
            400,
            "invalid_value",
            "expires_at",
        )
        assert error["message"] == (
            "Invalid 'expires_at': 2020-01-01T00:00:00+00:00 is in the past; a new key must expire in the future."
        )
        assert admin.get("/admin/keys").json()["data"] == []
        assert (
            admin.post(
                "/admin/keys", json={"user": "x", "tier": "free", "expires_at": "2999-01-01T00:00:00Z"}
            ).status_code
            == 201
        )


def test_patch_limits_merges_as_the_cli_does(gateway: RunningGateway, sqlite_url: str, tmp_path: Path) -> None:
    """PATCH {"limits": ...} is a merge patch (a value sets, null removes one, "limits": null removes
    all), and `keys update --limit` gives the same overrides step by step."""
    from typer.testing import CliRunner

    from quotagate.cli import app

    config = tmp_path / "cli.yaml"
    config.write_text(f"database: {sqlite_url}\ntiers: {{free: {{}}, paid: {{}}}}\nmodels: []\n")
    by_http, by_cli = gateway.create_key(limits={"rpm": 100}), gateway.create_key(limits={"rpm": 100})
    steps: list[tuple[dict[str, Any] | None, list[str]]] = [
        ({"tpm": 5000}, ["--limit", "tpm=5000"]),
        ({"rpm": None, "tpd": 9000}, ["--limit", "rpm=none", "--limit", "tpd=9000"]),
        ({}, []),
        (None, ["--clear-limits"]),
    ]
    expected = [{"rpm": 100, "tpm": 5000}, {"tpm": 5000, "tpd": 9000}, {"tpm": 5000, "tpd": 9000}, None]
    with gateway.admin() as admin:
        for (patch, options), limits in zip(steps, expected, strict=True):
            patched = admin.patch(f"/admin/keys/{by_http['id']}", json={"limits": patch})
            assert patched.status_code == 200 and patched.json()["limits"] == limits
            if options:
                result = CliRunner().invoke(app, ["keys", "update", by_cli["id"], *options, "-c", str(config)])
                assert result.exit_code == 0, result.output
            assert admin.get(f"/admin/keys/{by_cli['id']}").json()["limits"] == limits
        assert_openai_error(
            admin.patch(f"/admin/keys/{by_http['id']}", json={"limits": {"rpx": None}}), 400, param="limits.rpx"
        )


@pytest.fixture(params=["sqlite", "postgresql"])
def any_backend(
    request: pytest.FixtureRequest,
    start_gateway: Callable[..., RunningGateway],
    mock_upstream: ServerThread,
    sqlite_url: str,
) -> tuple[RunningGateway, str]:
    """A gateway on SQLite or on the real PostgreSQL, and its database's URL."""
    url = sqlite_url if request.param == "sqlite" else str(request.getfixturevalue("postgres_url"))
    tiers = {"free": {"rpm": 60, "tpd": 100000}, "default": {}}
    return start_gateway(gateway_config(url, mock_upstream.url, tiers=tiers)), url


def _uses(gw: RunningGateway, key: str, key_id: str) -> list[int]:
    """The statuses of a chat request, /v1/quota and the admin's view of the key's quota."""
    auth = {"Authorization": f"Bearer {key}"}
    with gw.admin() as admin:
        return [
            httpx.post(gw.v1 + "/chat/completions", headers=auth, json=CHAT).status_code,
            httpx.get(gw.v1 + "/quota", headers=auth).status_code,
            admin.get(f"/admin/keys/{key_id}/quota").status_code,
        ]


@pytest.mark.parametrize(
    ("limits", "field"),
    [
        ({"usd_per_day": 1e308}, "usd_per_day"),
        ({"usd_per_day": 1e-300}, "usd_per_day"),
        ({"usd_per_month": 0.0000009}, "usd_per_month"),
        ({"usd_per_month": 1.000001e9}, "usd_per_month"),
        ({"rpm": 2**63}, "rpm"),
        ({"tpd": 10**15 + 1}, "tpd"),
        ({"concurrency": 1e308}, "concurrency"),
        ({"tpm": 0}, "tpm"),
    ],
)
def test_limits_out_of_bounds_are_refused_naming_the_field(
    any_backend: tuple[RunningGateway, str], limits: dict[str, float], field: str
) -> None:
    """POST and PATCH refuse a limit no engine can hold (an overflow, a budget of nothing) with a 400
    naming it, and store nothing; before, the key was made and every request with it was a 500."""
    gw, _ = any_backend
    user = "bounds-" + secrets.token_hex(4)
    with gw.admin() as admin:
        refused = admin.post("/admin/keys", json={"user": user, "tier": "default", "limits": limits})
        assert_openai_error(refused, 400, "invalid_value", f"limits.{field}")
        assert admin.get("/admin/keys", params={"user": user}).json()["data"] == []
        key_id = gw.create_key(user=user, tier="default")["id"]
        patched = admin.patch(f"/admin/keys/{key_id}", json={"limits": limits})
        assert_openai_error(patched, 400, "invalid_value", f"limits.{field}")
        assert admin.get(f"/admin/keys/{key_id}").json()["limits"] is None


def test_limits_at_the_bounds_serve(any_backend: tuple[RunningGateway, str]) -> None:
    """The smallest and largest budgets and counts are accepted, and their key serves requests."""
    gw, _ = any_backend
    largest = {"usd_per_day": 1e9, "rpm": 10**15, "tpm": 10**15, "concurrency": 10**15}
    created = gw.create_key(user="bounds-" + secrets.token_hex(4), tier="default", limits=largest)
    assert created["limits"] == largest
    assert _uses(gw, created["key"], created["id"]) == [200, 200, 200]
    # A budget of one micro-dollar cannot pay for a chat request: a 429 that says so, not a 500.
    created = gw.create_key(user="bounds-" + secrets.token_hex(4), tier="default", limits={"usd_per_month": 0.000001})
    assert _uses(gw, created["key"], created["id"]) == [429, 200, 200]


@pytest.mark.parametrize(
    ("field", "payload"),
    [
        ("user", {"user": "a\u0000b", "tier": "free"}),
        ("user", {"user": "a\u001bb", "tier": "free"}),
        ("tier", {"user": "ok", "tier": "fr\u0000ee"}),
        ("name", {"user": "ok", "tier": "free", "name": "laptop\nforged log line"}),
        ("models", {"user": "ok", "tier": "free", "models": ["gpt-4o-mini", "m\u0000"]}),
        # Line separators forge log lines too; bidi and zero-width characters spoof names.
        ("name", {"user": "ok", "tier": "free", "name": "laptop\u2028forged log line"}),
        ("tier", {"user": "ok", "tier": "fr\u2029ee"}),
        ("user", {"user": "alice\u202ecod.exe", "tier": "free"}),
        ("user", {"user": "\u2066admin\u2069", "tier": "free"}),
        ("models", {"user": "ok", "tier": "free", "models": ["gpt-4o-mini", "gpt\u200b-4o"]}),
    ],
)
def test_control_characters_in_key_fields_get_400(
    any_backend: tuple[RunningGateway, str], field: str, payload: dict[str, Any]
) -> None:
    """NUL (which PostgreSQL cannot store), other control characters, line separators and bidi or
    zero-width characters in user, tier, name or a model name are a 400 naming the field on every
    backend, in POST and in PATCH."""
    gw, _ = any_backend
    param = "models.1" if field == "models" else field
    with gw.admin() as admin:
        before = len(admin.get("/admin/keys").json()["data"])
        error = assert_openai_error(admin.post("/admin/keys", json=payload), 400, "invalid_value", param)
        assert "control character" in error["message"]
        assert len(admin.get("/admin/keys").json()["data"]) == before
        key_id = gw.create_key(user="ctl-" + secrets.token_hex(4))["id"]
        change = {field: payload[field]}
        assert_openai_error(admin.patch(f"/admin/keys/{key_id}", json=change), 400, "invalid_value", param)


def test_control_characters_in_queries_and_ids_are_not_500(any_backend: tuple[RunningGateway, str]) -> None:
    """?user=%00 on the key list is a 400 naming user; a key id with NUL is simply not found."""
    gw, _ = any_backend
    with gw.admin() as admin:
        assert_openai_error(admin.get("/admin/keys?user=a%00b"), 400, "invalid_value", "user")
        assert_openai_error(admin.get("/admin/keys?user=%0A"), 400, "invalid_value", "user")
        assert_openai_error(admin.get("/admin/keys?user=a%E2%80%AEb"), 400, "invalid_value", "user")
        for path in ("/admin/keys/key_%00", "/admin/keys/key_%00/quota"):
            assert_openai_error(admin.get(path), 404, "key_not_found")
        assert_openai_error(admin.patch("/admin/keys/key_%00", json={"name": "x"}), 404, "key_not_found")
        assert admin.get("/admin/keys", params={"user": "ünïcode ok"}).status_code == 200
        # ZWNJ and ZWJ spell words (Persian here, "mikhaham") and emoji: they are not refused.
        assert (
            admin.get(
                "/admin/keys",
                params={"user": "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645 \U0001f469\u200d\U0001f4bb"},
            ).status_code
            == 200
        )


def test_a_key_with_invalid_stored_limits_still_serves(any_backend: tuple[RunningGateway, str]) -> None:
    """Overrides stored by an older version outside the bounds (1e308 overflowed, 1e-300 was a budget
    of nothing) are ignored, so the tier's limits apply and nothing is a 500; a PATCH of the
    limits drops them for good."""
    import sqlalchemy as sa

    from quotagate.keys import Database
    from quotagate.keys._store import api_keys

    gw, url = any_backend
    created = gw.create_key(user="legacy-" + secrets.token_hex(4), tier="free", limits={"rpm": 100})
    stored = {"usd_per_day": 1e308, "usd_per_month": 1e-300, "rpm": 0, "tph": "many", "tpm": 5000}

    async def write() -> None:
        database = Database(url)
        try:
            change = api_keys.update().where(api_keys.c.id == created["id"]).values(limits=stored)
            await database.run(lambda conn: conn.execute(change))
        finally:
            await database.dispose()

    asyncio.run(write())
    with gw.admin() as admin:
        assert admin.get(f"/admin/keys/{created['id']}").json()["limits"] == {"tpm": 5000}
        gw.gateway.authenticator.forget(created["id"])
        assert _uses(gw, created["key"], created["id"]) == [200, 200, 200]
        quota = httpx.get(gw.v1 + "/quota", headers={"Authorization": f"Bearer {created['key']}"}).json()
        assert {(q["name"], q["limit"]) for q in quota["limits"]} >= {("requests per minute (RPM)", 60)}
        patched = admin.patch(f"/admin/keys/{created['id']}", json={"limits": {"rpd": 7}})
        assert patched.json()["limits"] == {"rpd": 7, "tpm": 5000}

    async def read() -> object:
        database = Database(url)
        try:
            query = sa.select(api_keys.c.limits).where(api_keys.c.id == created["id"])
            return await database.run(lambda conn: conn.execute(query).scalar_one())
        finally:
            await database.dispose()

    assert asyncio.run(read()) == {"rpd": 7, "tpm": 5000}


def test_the_usage_report_does_not_wait_long_for_unwritten_rows(
    gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GET /admin/usage writes this node's unwritten rows first, but waits for that only briefly:
    with the database frozen it answered after 21 s (its own query has the database's deadline)."""
    import quotagate.server._admin_ledger as views_module

    never = asyncio.Event()

    async def stuck_flush() -> None:
        await never.wait()

    views = gateway.gateway.admin._ledger
    assert views is not None and gateway.gateway.ledger is not None
    monkeypatch.setattr(views, "_flush", stuck_flush)
    monkeypatch.setattr(views_module, "FLUSH_WAIT", 0.3)
    with gateway.admin() as admin:
        response = admin.get("/admin/usage")
    assert response.status_code == 200 and response.json()["object"] == "usage_report"
    assert response.elapsed.total_seconds() < 3
